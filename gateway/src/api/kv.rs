//! Admin API for the KV store: namespaces, key listings and values.
//!
//! `PUT /v1/tenants/{t}/kv/{ns}` creates a namespace, `GET /v1/tenants/{t}/kv`
//! lists them, `GET …/kv/{ns}/keys?prefix=&cursor=&limit=` lists keys, and
//! `GET`/`PUT`/`DELETE …/kv/{ns}/values/{key}` reads and writes values (the
//! key is the rest of the path, percent-decoded once; metadata travels in the
//! `Perch-KV-Metadata` header, TTL as `?ttl=SECONDS`). Sizes, metadata and
//! listing limits are checked by the store (`perch_kv::CheckedKv`); its
//! errors map to answers in [`kv_error`].
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use perch_kv::{KvError, KvStore, NamespaceId, PutOptions};
use serde_json::{Value, json};

use super::common::{BodyError, Resp, TenantCall, invalid_name, query_params, read_limited};
use crate::http::{error, full, internal_error, json, method_not_allowed, no_content, tri};
use crate::names::valid_name;

/// Header carrying a value's JSON metadata (requests and answers).
pub const METADATA_HEADER: &str = "perch-kv-metadata";
/// Header of a GET answer carrying the value's expiry (unix seconds).
pub const EXPIRES_AT_HEADER: &str = "perch-kv-expires-at";

/// Maps a KV error to the admin API's answer.
pub fn kv_error(e: KvError) -> Resp {
    match e {
        KvError::KeyTooLong(..) => error(StatusCode::BAD_REQUEST, "key_too_long", &e.to_string()),
        KvError::EmptyKey => error(StatusCode::BAD_REQUEST, "invalid_key", &e.to_string()),
        KvError::ValueTooLarge(..) | KvError::MetadataTooLarge(..) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            &e.to_string(),
        ),
        KvError::InvalidMetadata => {
            error(StatusCode::BAD_REQUEST, "invalid_metadata", &e.to_string())
        }
        KvError::BadLimit(_) => error(StatusCode::BAD_REQUEST, "invalid_limit", &e.to_string()),
        KvError::BadCursor => error(StatusCode::BAD_REQUEST, "invalid_cursor", &e.to_string()),
        KvError::NoSuchNamespace => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "namespace does not exist",
        ),
        KvError::NotACounter(m) => error(StatusCode::CONFLICT, "not_a_counter", &m),
        KvError::QuotaExceeded { quota, limit } => super::common::quota_exceeded(
            quota,
            limit,
            &format!("the write would take the tenant past its {quota} quota of {limit}"),
        ),
        KvError::Unavailable(m) => super::common::storage_unavailable(&m),
        other => {
            tracing::error!(error = %other, "KV failure");
            internal_error()
        }
    }
}

fn expires_secs(ms: Option<u64>) -> Value {
    ms.map(|ms| json!(ms.div_ceil(1000))).unwrap_or(Value::Null)
}

fn metadata_json(m: &Option<String>) -> Value {
    m.as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null)
}

/// Handles `…/kv` and below, after authorisation. `rest` starts after `kv`.
pub async fn handle(call: TenantCall, rest: &[&str]) -> Resp {
    let (app, method, req, tenant) = call.into_parts();
    if !app.registry.tenant_exists(&tenant) {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("tenant `{tenant}` does not exist"),
        );
    }
    let kv = app.kv.clone();
    match rest {
        [] => match method {
            Method::GET => {
                let names = tri!(kv.list_namespaces(&tenant).await.map_err(kv_error));
                json(StatusCode::OK, &json!({ "namespaces": names }))
            }
            _ => method_not_allowed("GET"),
        },
        [ns] => {
            if !valid_name(ns) {
                return invalid_name("namespace", ns);
            }
            match method {
                Method::PUT => {
                    let id = NamespaceId::new(&tenant, ns);
                    let created = tri!(kv.create_namespace(&id).await.map_err(kv_error));
                    let status = if created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    };
                    json(status, &json!({ "namespace": ns }))
                }
                _ => method_not_allowed("PUT"),
            }
        }
        [ns, sub, key @ ..] => {
            if !valid_name(ns) {
                return invalid_name("namespace", ns);
            }
            let id = NamespaceId::new(&tenant, ns);
            let exists = tri!(kv.namespace_exists(&id).await.map_err(kv_error));
            if !exists {
                return error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("namespace `{ns}` does not exist"),
                );
            }
            match (*sub, key) {
                ("keys", []) => match method {
                    Method::GET => list_keys(kv.as_ref(), id, &req).await,
                    _ => method_not_allowed("GET"),
                },
                ("values", key) if !key.is_empty() => {
                    value(kv.as_ref(), method, req, id, key.join("/")).await
                }
                _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
            }
        }
    }
}

async fn list_keys(kv: &dyn KvStore, id: NamespaceId, req: &Request<Incoming>) -> Resp {
    let max_page = kv.limits().unwrap_or_default().max_page;
    let (mut prefix, mut cursor, mut limit) = (String::new(), None, max_page);
    for (k, v) in query_params(req) {
        match k.as_str() {
            "prefix" => prefix = v,
            "cursor" => cursor = Some(v),
            // The store checks the range.
            "limit" => match v.parse::<usize>() {
                Ok(n) => limit = n,
                Err(_) => return kv_error(KvError::BadLimit(max_page)),
            },
            _ => {}
        }
    }
    let page = tri!(
        kv.list(&id, &prefix, cursor.as_deref(), limit)
            .await
            .map_err(kv_error)
    );
    let keys: Vec<Value> = page
        .keys
        .iter()
        .map(|k| json!({"name": k.name, "expires_at": expires_secs(k.expires_at_ms), "metadata": metadata_json(&k.metadata)}))
        .collect();
    json(
        StatusCode::OK,
        &json!({ "keys": keys, "cursor": page.cursor }),
    )
}

async fn value(
    kv: &dyn KvStore,
    method: Method,
    req: Request<Incoming>,
    id: NamespaceId,
    key: String,
) -> Resp {
    match method {
        Method::GET => match tri!(kv.get(&id, &key).await.map_err(kv_error)) {
            None => error(StatusCode::NOT_FOUND, "not_found", "no such key"),
            Some(entry) => {
                let mut resp = Response::new(full(entry.value));
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                if let Some(m) = entry.metadata.and_then(|m| HeaderValue::from_str(&m).ok()) {
                    h.insert(METADATA_HEADER, m);
                }
                if let Some(ms) = entry.expires_at_ms {
                    h.insert(EXPIRES_AT_HEADER, HeaderValue::from(ms.div_ceil(1000)));
                }
                resp
            }
        },
        Method::PUT => {
            let mut ttl = None;
            for (k, v) in query_params(&req) {
                if k == "ttl" {
                    match v.parse::<u64>() {
                        Ok(n) if n > 0 => ttl = Some(Duration::from_secs(n)),
                        _ => {
                            return error(
                                StatusCode::BAD_REQUEST,
                                "invalid_ttl",
                                "ttl must be a positive number of seconds",
                            );
                        }
                    }
                }
            }
            let metadata = match req.headers().get(METADATA_HEADER).map(|v| v.to_str()) {
                None => None,
                Some(Ok(text)) => Some(text.to_string()),
                Some(Err(_)) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_metadata",
                        "metadata must be JSON text",
                    );
                }
            };
            // Bounds the read; the store checks the value's size again.
            let max_value = kv.limits().unwrap_or_default().max_value;
            let body = match read_limited(req, max_value as u64).await {
                Ok(b) => b,
                Err(BodyError::TooLarge) => {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "value_too_large",
                        &format!("value is over the {max_value}-byte limit"),
                    );
                }
                Err(BodyError::Other(resp)) => return resp,
            };
            let options = PutOptions {
                ttl,
                metadata,
                expires_at_ms: None,
            };
            tri!(
                kv.put(&id, &key, body.to_vec(), options)
                    .await
                    .map_err(kv_error)
            );
            no_content()
        }
        Method::DELETE => {
            tri!(kv.delete(&id, &key).await.map_err(kv_error));
            no_content()
        }
        _ => method_not_allowed("GET, PUT, DELETE"),
    }
}
