//! The admin API (v1): JSON over HTTP on its own listener.
//!
//! | method, path | who |
//! |---|---|
//! | `GET /healthz`, `GET /readyz`, `GET /metrics` | anyone |
//! | `GET /v1/tenants` | admin |
//! | `PUT`, `DELETE /v1/tenants/{tenant}` | admin |
//! | `POST`, `GET /v1/tenants/{tenant}/tokens`, `DELETE …/tokens/{id}` | admin |
//! | `GET /v1/tenants/{tenant}/functions` | `functions` |
//! | `PUT`, `GET`, `DELETE /v1/tenants/{tenant}/functions/{name}` | `functions` |
//! | `PUT /v1/tenants/{tenant}/functions/{name}/settings` | `functions` |
//! | `GET /v1/tenants/{tenant}/routes` | `routes` |
//! | `PUT`, `DELETE /v1/tenants/{tenant}/routes/{host}` | `routes` |
//! | `GET /v1/tenants/{tenant}/kv`, `PUT …/kv/{ns}` | `kv` |
//! | `GET …/kv/{ns}/keys?prefix=&cursor=&limit=` | `kv` |
//! | `GET`, `PUT`, `DELETE …/kv/{ns}/values/{key}` | `kv` |
//!
//! `Authorization: Bearer <token>`; the admin token works everywhere, a
//! tenant token only under its own tenant and with the scope the path names.
//! Errors are `{"error":{"code","message"}}`. An upload that is not a
//! valid component is 400 `invalid_component`; one whose compilation runs
//! out of its budget (`[compile]`: CPU time, address space, wall clock — it
//! runs in a child process) is 422 `compile_failed`.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::app::App;
use crate::auth::{bearer, new_token, random_hex, token_hash};
use crate::http::{
    ResBody, error, full, internal_error, json, method_not_allowed, no_content, off_thread, tri,
};
use crate::names::valid_name;
use std::collections::BTreeMap;

use crate::config::LimitOverrides;
use crate::registry::{Outbound, RegistryError, SCOPES, TokenRecord, now};

/// Body limit for JSON requests.
const JSON_LIMIT: usize = 1 << 20;

type Resp = Response<ResBody>;

enum Principal {
    Admin,
    Tenant(TokenRecord),
}

/// Handles one admin request.
pub async fn handle(app: Arc<App>, peer: SocketAddr, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => return json(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, "/readyz") => {
            return if app.ready.load(Ordering::Relaxed) {
                json(StatusCode::OK, &json!({"status": "ready"}))
            } else {
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting_down",
                    "the server is shutting down",
                )
            };
        }
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(full(app.metrics.render(app.runtime.stats())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return resp;
        }
        _ => {}
    }

    let principal = match authenticate(&app, &req) {
        Some(p) => p,
        None => {
            if let Some(wait) = app.throttle.blocked(peer.ip()) {
                let mut resp = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_attempts",
                    "too many failed authentication attempts; retry later",
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(wait));
                return resp;
            }
            app.throttle.fail(peer.ip());
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required",
            );
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    };

    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    route(app, principal, req, &segs).await
}

fn authenticate(app: &App, req: &Request<Incoming>) -> Option<Principal> {
    let hash = token_hash(bearer(req.headers())?);
    if hash == app.admin_token_hash {
        return Some(Principal::Admin);
    }
    app.registry.lookup_token(&hash).map(Principal::Tenant)
}

fn forbidden() -> Resp {
    error(
        StatusCode::FORBIDDEN,
        "forbidden",
        "this token may not do that",
    )
}

fn not_found_endpoint() -> Resp {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// 400 `invalid_name` for a tenant, function or namespace name.
pub(crate) fn invalid_name(what: &str, name: &str) -> Resp {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_name",
        &format!("{what} name `{name}` must match [a-z0-9][a-z0-9-]{{0,62}}"),
    )
}

fn registry_error(e: RegistryError) -> Resp {
    match e {
        RegistryError::NotFound(m) => error(StatusCode::NOT_FOUND, "not_found", &m),
        RegistryError::HostTaken(m) => error(StatusCode::CONFLICT, "host_taken", &m),
        RegistryError::HostNotAllowed(m) => error(StatusCode::FORBIDDEN, "host_not_allowed", &m),
        RegistryError::Invalid(m) => error(StatusCode::BAD_REQUEST, "invalid_request", &m),
        other => {
            tracing::error!(error = %other, "registry failure");
            internal_error()
        }
    }
}

/// Runs blocking registry work off the async threads.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, RegistryError> + Send + 'static,
) -> Result<R, Resp> {
    off_thread(f, registry_error).await
}

/// Why a body could not be read.
pub enum BodyError {
    /// Over the limit (declared or actual).
    TooLarge,
    /// Another failure, already rendered.
    Other(Resp),
}

/// Reads a body of at most `limit` bytes, refusing a larger declared length
/// before reading anything.
pub async fn read_limited(req: Request<Incoming>, limit: u64) -> Result<Bytes, BodyError> {
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limit
    {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(req.into_body(), limit as usize)
        .collect()
        .await
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(BodyError::TooLarge)
        }
        Err(e) => Err(BodyError::Other(error(
            StatusCode::BAD_REQUEST,
            "bad_body",
            &format!("could not read the request body: {e}"),
        ))),
    }
}

async fn read_body(req: Request<Incoming>, limit: u64) -> Result<Bytes, Resp> {
    read_limited(req, limit).await.map_err(|e| match e {
        BodyError::TooLarge => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!("request body is over the {limit}-byte limit"),
        ),
        BodyError::Other(resp) => resp,
    })
}

async fn read_json<T: for<'de> Deserialize<'de>>(
    req: Request<Incoming>,
    optional: bool,
) -> Result<Option<T>, Resp> {
    let body = read_body(req, JSON_LIMIT as u64).await?;
    if optional && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&body).map(Some).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            &format!("invalid JSON body: {e}"),
        )
    })
}

async fn route(app: Arc<App>, who: Principal, req: Request<Incoming>, segs: &[&str]) -> Resp {
    let method = req.method().clone();
    match segs {
        ["v1", "tenants"] => {
            if !matches!(who, Principal::Admin) {
                return forbidden();
            }
            match method {
                Method::GET => {
                    let tenants: Vec<_> = app
                        .registry
                        .list_tenants()
                        .into_iter()
                        .map(|t| json!({"name": t.name, "domains": t.domains}))
                        .collect();
                    json(StatusCode::OK, &json!({ "tenants": tenants }))
                }
                _ => method_not_allowed("GET"),
            }
        }
        ["v1", "tenants", tenant, rest @ ..] => {
            let tenant = tenant.to_string();
            // Authorisation before anything about the tenant is revealed.
            let scope = match rest.first() {
                None | Some(&"tokens") => None,
                Some(s @ (&"functions" | &"routes" | &"kv" | &"logs")) => Some(*s),
                Some(_) => {
                    return if matches!(who, Principal::Admin) {
                        not_found_endpoint()
                    } else {
                        forbidden()
                    };
                }
            };
            if let Principal::Tenant(rec) = &who {
                let Some(scope) = scope else {
                    return forbidden();
                };
                if rec.tenant != tenant || !rec.allows(scope) {
                    return forbidden();
                }
            }
            if !valid_name(&tenant) {
                return invalid_name("tenant", &tenant);
            }
            match rest {
                [] => tenant_endpoint(app, method, req, tenant).await,
                ["tokens"] => tokens_endpoint(app, method, req, tenant).await,
                ["tokens", id] => match method {
                    Method::DELETE => {
                        let id = id.to_string();
                        tri!(blocking(move || app.registry.revoke_token(&tenant, &id)).await);
                        no_content()
                    }
                    _ => method_not_allowed("DELETE"),
                },
                ["functions"] => match method {
                    Method::GET => {
                        let list =
                            tri!(blocking(move || app.registry.list_functions(&tenant)).await);
                        let list: Vec<_> = list
                            .iter()
                            .map(|f| json!({"name": f.name, "active_version": f.active_version}))
                            .collect();
                        json(StatusCode::OK, &json!({ "functions": list }))
                    }
                    _ => method_not_allowed("GET"),
                },
                ["functions", name] => {
                    function_endpoint(app, method, req, tenant, name.to_string()).await
                }
                ["functions", name, "settings"] => match method {
                    Method::PUT => settings_endpoint(app, req, tenant, name.to_string()).await,
                    _ => method_not_allowed("PUT"),
                },
                ["routes"] => match method {
                    Method::GET => {
                        let list = tri!(blocking(move || app.registry.list_routes(&tenant)).await);
                        let list: Vec<_> = list
                            .iter()
                            .map(|r| json!({"host": r.host, "function": r.function}))
                            .collect();
                        json(StatusCode::OK, &json!({ "routes": list }))
                    }
                    _ => method_not_allowed("GET"),
                },
                ["routes", host] => {
                    route_endpoint(app, method, req, tenant, host.to_string()).await
                }
                ["kv", rest @ ..] => crate::kv_api::handle(app, method, req, tenant, rest).await,
                _ => not_found_endpoint(),
            }
        }
        _ => not_found_endpoint(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantBody {
    domains: Option<Vec<String>>,
}

async fn tenant_endpoint(
    app: Arc<App>,
    method: Method,
    req: Request<Incoming>,
    tenant: String,
) -> Resp {
    match method {
        Method::PUT => {
            let body: Option<TenantBody> = tri!(read_json(req, true).await);
            let domains = body.and_then(|b| b.domains);
            let (t, created) =
                tri!(blocking(move || app.registry.put_tenant(&tenant, domains)).await);
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json(status, &json!({"name": t.name, "domains": t.domains}))
        }
        Method::DELETE => {
            let registry = app.registry.clone();
            let t = tenant.clone();
            tri!(blocking(move || registry.delete_tenant(&t)).await);
            if let Err(e) = app.kv.delete_tenant(&tenant).await {
                return crate::kv_api::kv_error(e);
            }
            no_content()
        }
        _ => method_not_allowed("PUT, DELETE"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    scopes: Vec<String>,
}

async fn tokens_endpoint(
    app: Arc<App>,
    method: Method,
    req: Request<Incoming>,
    tenant: String,
) -> Resp {
    match method {
        Method::POST => {
            let body: TokenBody = tri!(read_json(req, false).await).expect("required body");
            if body.scopes.is_empty() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_scopes",
                    "at least one scope is required",
                );
            }
            if let Some(bad) = body.scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_scopes",
                    &format!("unknown scope `{bad}`; scopes are functions, routes, kv, logs and *"),
                );
            }
            let mut scopes = body.scopes;
            scopes.sort();
            scopes.dedup();
            let token = new_token("perch_");
            let record = TokenRecord {
                id: random_hex(8),
                tenant: tenant.clone(),
                scopes,
                created_at: now(),
                hash: token_hash(&token),
            };
            let rec = tri!(blocking(move || app.registry.add_token(record)).await);
            json(
                StatusCode::CREATED,
                &json!({"id": rec.id, "token": token, "scopes": rec.scopes}),
            )
        }
        Method::GET => {
            let list = tri!(blocking(move || app.registry.list_tokens(&tenant)).await);
            let list: Vec<_> = list
                .iter()
                .map(|t| json!({"id": t.id, "scopes": t.scopes, "created_at": t.created_at}))
                .collect();
            json(StatusCode::OK, &json!({ "tokens": list }))
        }
        _ => method_not_allowed("POST, GET"),
    }
}

async fn function_endpoint(
    app: Arc<App>,
    method: Method,
    req: Request<Incoming>,
    tenant: String,
    name: String,
) -> Resp {
    if !valid_name(&name) {
        return invalid_name("function", &name);
    }
    match method {
        Method::PUT => upload(app, req, tenant, name).await,
        Method::GET => {
            let f = tri!(blocking(move || app.registry.get_function(&tenant, &name)).await);
            let versions: Vec<_> = f
                .versions
                .iter()
                .map(|v| json!({"version": v.version, "digest": v.digest, "created_at": v.created_at}))
                .collect();
            let settings = f.active().map(|v| {
                let st = &v.settings;
                json!({
                    "vars": st.vars,
                    "secrets": st.secrets.keys().collect::<Vec<_>>(),
                    "kv": st.kv,
                    "limits": st.limits,
                    "outbound": st.outbound,
                })
            });
            json(
                StatusCode::OK,
                &json!({"name": f.name, "active_version": f.active_version, "versions": versions, "settings": settings}),
            )
        }
        Method::DELETE => {
            tri!(blocking(move || app.registry.delete_function(&tenant, &name)).await);
            no_content()
        }
        _ => method_not_allowed("PUT, GET, DELETE"),
    }
}

async fn upload(app: Arc<App>, req: Request<Incoming>, tenant: String, name: String) -> Resp {
    if !app.registry.tenant_exists(&tenant) {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("tenant `{tenant}` does not exist"),
        );
    }
    let bytes = tri!(read_body(req, app.config.max_upload_bytes).await);
    let Ok(_slot) = app.compile_slots.acquire().await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        );
    };
    let runtime = app.runtime.clone();
    let stored = tokio::task::spawn_blocking(move || runtime.store_component(&bytes)).await;
    let digest = match stored {
        Ok(Ok(d)) => d.to_string(),
        Ok(Err(perch_runtime::ValidationError::Storage(e))) => {
            tracing::error!(error = %e, "storing artifact failed");
            return internal_error();
        }
        Ok(Err(e @ perch_runtime::ValidationError::CompileFailed(_))) => {
            tracing::warn!(%tenant, function = %name, error = %e, "upload refused: compilation budget");
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "compile_failed",
                &e.to_string(),
            );
        }
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, "invalid_component", &e.to_string()),
        Err(e) => {
            tracing::error!(error = %e, "compile task failed");
            return internal_error();
        }
    };
    let (t, n, d) = (tenant.clone(), name.clone(), digest.clone());
    let registry = app.registry.clone();
    let version = tri!(blocking(move || registry.add_version(&t, &n, &d)).await);
    tracing::info!(%tenant, function = %name, version, %digest, "deployed");
    json(
        StatusCode::CREATED,
        &json!({"function": name, "version": version, "digest": digest}),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsBody {
    #[serde(default)]
    vars: BTreeMap<String, String>,
    secrets: Option<BTreeMap<String, Option<String>>>,
    #[serde(default)]
    kv: BTreeMap<String, String>,
    #[serde(default)]
    limits: LimitOverrides,
    #[serde(default)]
    outbound: Outbound,
}

/// Bytes of vars and secrets a version may carry.
const MAX_SETTINGS_BYTES: usize = 64 * 1024;

fn invalid_settings(message: String) -> Resp {
    error(StatusCode::BAD_REQUEST, "invalid_settings", &message)
}

fn check_settings(body: &SettingsBody, max: &crate::config::LimitSet) -> Result<(), String> {
    let secret_names = body.secrets.iter().flat_map(|m| m.keys());
    for name in body.vars.keys().chain(secret_names) {
        if !crate::names::valid_var_name(name) {
            return Err(format!(
                "`{name}` is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)"
            ));
        }
    }
    if let Some(secrets) = &body.secrets
        && let Some(both) = body.vars.keys().find(|k| secrets.contains_key(*k))
    {
        return Err(format!("`{both}` is both a var and a secret"));
    }
    let size: usize = body
        .vars
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum::<usize>()
        + body
            .secrets
            .iter()
            .flatten()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, String::len))
            .sum::<usize>();
    if size > MAX_SETTINGS_BYTES {
        return Err(format!(
            "vars and secrets total {size} bytes; the limit is {MAX_SETTINGS_BYTES}"
        ));
    }
    for (binding, ns) in &body.kv {
        if binding.is_empty() || binding.len() > 64 || binding == "default" {
            return Err(format!(
                "KV binding `{binding}` must be 1 to 64 characters and not `default`"
            ));
        }
        if !valid_name(ns) {
            return Err(format!(
                "KV namespace `{ns}` must match [a-z0-9][a-z0-9-]{{0,62}}"
            ));
        }
    }
    let l = &body.limits;
    let checks = [
        ("memory_mb", l.memory_mb, max.memory_mb),
        ("cpu_ms", l.cpu_ms, max.cpu_ms),
        ("wall_ms", l.wall_ms, max.wall_ms),
        (
            "outbound_requests",
            l.outbound_requests.map(u64::from),
            u64::from(max.outbound_requests),
        ),
        (
            "instance_reuse",
            l.instance_reuse.map(u64::from),
            u64::from(max.instance_reuse),
        ),
    ];
    for (name, value, limit) in checks {
        match value {
            Some(0) => return Err(format!("limits.{name} must be positive")),
            Some(v) if v > limit => {
                return Err(format!(
                    "limits.{name} = {v} is above the operator maximum {limit}"
                ));
            }
            _ => {}
        }
    }
    for host in &body.outbound.allow {
        crate::names::HostPattern::parse(host).map_err(|e| format!("outbound.allow: {e}"))?;
    }
    Ok(())
}

async fn settings_endpoint(
    app: Arc<App>,
    req: Request<Incoming>,
    tenant: String,
    name: String,
) -> Resp {
    if !valid_name(&name) {
        return invalid_name("function", &name);
    }
    let body: SettingsBody = tri!(read_json(req, false).await).expect("required body");
    if let Err(m) = check_settings(&body, &app.config.max) {
        return invalid_settings(m);
    }
    let registry = app.registry.clone();
    let (t, n) = (tenant.clone(), name.clone());
    let version = tri!(
        blocking(move || {
            let sealer = registry.secrets().clone();
            registry.put_settings(&t, &n, |st| {
                st.vars = body.vars;
                st.kv = body.kv;
                st.limits = body.limits;
                st.outbound = body.outbound;
                if let Some(secrets) = body.secrets {
                    for (secret, value) in secrets {
                        match value {
                            Some(v) => {
                                let context = crate::registry::secret_context(&t, &n, &secret);
                                st.secrets.insert(secret, sealer.seal(&context, &v));
                            }
                            None => {
                                st.secrets.remove(&secret);
                            }
                        }
                    }
                }
                if let Some(both) = st.vars.keys().find(|k| st.secrets.contains_key(*k)) {
                    return Err(RegistryError::Invalid(format!(
                        "`{both}` is both a var and a secret"
                    )));
                }
                Ok(())
            })
        })
        .await
    );
    tracing::info!(%tenant, function = %name, version, "settings updated");
    json(
        StatusCode::CREATED,
        &json!({"function": name, "version": version}),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteBody {
    function: String,
}

async fn route_endpoint(
    app: Arc<App>,
    method: Method,
    req: Request<Incoming>,
    tenant: String,
    host: String,
) -> Resp {
    match method {
        Method::PUT => {
            let body: RouteBody = tri!(read_json(req, false).await).expect("required body");
            if !valid_name(&body.function) {
                return invalid_name("function", &body.function);
            }
            let (route, created) = tri!(
                blocking(move || app.registry.put_route(&tenant, &host, &body.function)).await
            );
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json(
                status,
                &json!({"host": route.host, "function": route.function}),
            )
        }
        Method::DELETE => {
            tri!(blocking(move || app.registry.delete_route(&tenant, &host)).await);
            no_content()
        }
        _ => method_not_allowed("PUT, DELETE"),
    }
}

/// Decodes `%XX` escapes once; invalid escapes are kept literally.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_once() {
        assert_eq!(percent_decode("%2A.w.test"), "*.w.test");
        assert_eq!(percent_decode("a%252F"), "a%2F");
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
    }
}
