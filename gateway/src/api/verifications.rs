//! A tenant's host verifications (`node.verify_hosts`): ask for a token
//! for a host, publish it (over HTTP on the host's current server, or as a
//! TXT record), ask Perch to check, then route the host. Scope `routes`.
use std::sync::Arc;

use http::{Method, StatusCode};
use serde_json::json;

use super::common::{Resp, TenantCall, blocking, not_found_endpoint};
use crate::app::App;
use crate::http::{error, json, method_not_allowed, no_content, tri};
use crate::registry::HostVerification;
use crate::verify::{Checker, HTTP_PREFIX, TXT_LABEL};

/// `…/verifications`, `…/verifications/{host}` and `…/{host}/check`.
pub(super) async fn handle(call: TenantCall, rest: &[&str]) -> Resp {
    let (app, method, _req, tenant) = call.into_parts();
    match rest {
        [] => match method {
            Method::GET => {
                let list = tri!(blocking(move || app.registry.verifications(&tenant)).await);
                let items: Vec<_> = list.iter().map(|(h, v)| verification_json(h, v)).collect();
                json(StatusCode::OK, &json!({ "verifications": items }))
            }
            _ => method_not_allowed("GET"),
        },
        [host] if !host.is_empty() => {
            let host = host.to_ascii_lowercase();
            match method {
                Method::PUT => {
                    let token = crate::secrets::random_hex(16);
                    let (v, created) = tri!(
                        blocking({
                            let host = host.clone();
                            move || app.registry.start_verification(&tenant, &host, token)
                        })
                        .await
                    );
                    let status = if created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    };
                    json(status, &verification_json(&host, &v))
                }
                Method::GET => {
                    let list = tri!(blocking(move || app.registry.verifications(&tenant)).await);
                    match list.iter().find(|(h, _)| *h == host) {
                        Some((h, v)) => json(StatusCode::OK, &verification_json(h, v)),
                        None => error(
                            StatusCode::NOT_FOUND,
                            "not_found",
                            &format!("no verification of `{host}`"),
                        ),
                    }
                }
                Method::DELETE => {
                    tri!(blocking(move || app.registry.delete_verification(&tenant, &host)).await);
                    no_content()
                }
                _ => method_not_allowed("PUT, GET, DELETE"),
            }
        }
        [host, "check"] if !host.is_empty() => match method {
            Method::POST => check(app, tenant, host.to_ascii_lowercase()).await,
            _ => method_not_allowed("POST"),
        },
        _ => not_found_endpoint(),
    }
}

fn verification_json(host: &str, v: &HostVerification) -> serde_json::Value {
    json!({
        "host": host,
        "token": v.token,
        "status": if v.verified_at.is_some() { "verified" } else { "pending" },
        "http": {"url": format!("http://{host}{HTTP_PREFIX}{}", v.token), "body": v.token},
        "dns": {"name": format!("{TXT_LABEL}.{host}"), "type": "TXT", "value": v.token},
        "created_at": v.created_at,
        "verified_at": v.verified_at,
    })
}

async fn check(app: Arc<App>, tenant: String, host: String) -> Resp {
    let list = {
        let (app, tenant) = (app.clone(), tenant.clone());
        tri!(blocking(move || app.registry.verifications(&tenant)).await)
    };
    let Some((_, v)) = list.into_iter().find(|(h, _)| *h == host) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no verification of `{host}`: PUT it first"),
        );
    };
    if v.verified_at.is_some() {
        return json(StatusCode::OK, &verification_json(&host, &v));
    }
    let checker = Checker {
        dns: app.config.verify_dns,
    };
    match checker.check(&host, &v.token).await {
        Ok(how) => {
            let token = v.token.clone();
            let done = tri!(
                blocking({
                    let host = host.clone();
                    move || app.registry.mark_verified(&tenant, &host, &token)
                })
                .await
            );
            let mut body = verification_json(&host, &done);
            body["method"] = json!(how);
            json(StatusCode::OK, &body)
        }
        Err(found) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "verification_failed",
            &format!("`{host}` does not show its token yet: {found}"),
        ),
    }
}
