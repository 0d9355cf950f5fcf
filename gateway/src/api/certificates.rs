//! A tenant's certificates: upload one for a host the tenant may hold
//! (checked: it parses, its key matches, it covers the host, it is within
//! its validity), list them (with ACME's for the tenant's hosts), show and
//! delete one. The key is sealed at rest and never returned; the TLS
//! listener serves a new certificate from the next handshake on.
use std::sync::Arc;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::common::{Resp, TenantCall, blocking, not_found_endpoint, read_json};
use crate::app::App;
use crate::http::{error, json, method_not_allowed, no_content, tri};
use crate::names::HostPattern;
use crate::registry::{CertificateRecord, certificate_context, now};
use crate::tls::Certificate;

/// `…/certificates` and `…/certificates/{host}`; `rest` starts after
/// `certificates`.
pub(super) async fn handle(call: TenantCall, rest: &[&str]) -> Resp {
    let (app, method, req, tenant) = call.into_parts();
    match rest {
        [] => match method {
            Method::GET => {
                let list = tri!(blocking(move || app.registry.list_certificates(&tenant)).await);
                let items: Vec<_> = list.iter().map(certificate_json).collect();
                json(StatusCode::OK, &json!({ "certificates": items }))
            }
            _ => method_not_allowed("GET"),
        },
        [host] if !host.is_empty() => one(app, method, req, tenant, host).await,
        _ => not_found_endpoint(),
    }
}

fn certificate_json(c: &CertificateRecord) -> serde_json::Value {
    json!({
        "host": c.host,
        "sans": c.sans,
        "not_before": c.not_before,
        "not_after": c.not_after,
        "issuer": c.issuer,
        "source": c.source,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateBody {
    cert_pem: String,
    key_pem: String,
}

fn invalid(reason: &str) -> Resp {
    error(StatusCode::BAD_REQUEST, "invalid_certificate", reason)
}

/// What is wrong with `cert` for `host` at `now`, if anything.
fn unfit(cert: &Certificate, host: &HostPattern, now: i64) -> Option<String> {
    let name = host.as_string();
    let covered = match host {
        HostPattern::Exact(h) => cert.covers(h),
        // A wildcard host needs the same wildcard in the certificate.
        HostPattern::Wildcard(_) => cert.names.contains(&name),
    };
    if !covered {
        return Some(format!(
            "the certificate does not cover `{name}` (it names {})",
            cert.names.join(", ")
        ));
    }
    if now >= cert.not_after {
        return Some(format!(
            "the certificate expired (not_after {})",
            cert.not_after
        ));
    }
    if now < cert.not_before {
        return Some(format!(
            "the certificate is not valid yet (not_before {})",
            cert.not_before
        ));
    }
    None
}

async fn one(
    app: Arc<App>,
    method: Method,
    req: Request<Incoming>,
    tenant: String,
    host: &str,
) -> Resp {
    let pattern = match HostPattern::parse(host) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_request", &e),
    };
    let host = pattern.as_string();
    match method {
        Method::PUT => {
            let body: CertificateBody = tri!(read_json(req, false).await).expect("required body");
            let cert =
                match Certificate::from_pem(body.cert_pem.as_bytes(), body.key_pem.as_bytes()) {
                    Ok(c) => c,
                    Err(reason) => return invalid(&reason),
                };
            if let Some(reason) = unfit(&cert, &pattern, crate::tls::cert::unix_now()) {
                return invalid(&reason);
            }
            let record = CertificateRecord {
                key_sealed: app
                    .registry
                    .secrets()
                    .seal(&certificate_context(&host), &body.key_pem),
                host,
                tenant,
                source: "tenant".into(),
                cert_pem: body.cert_pem,
                sans: cert.names,
                not_before: cert.not_before,
                not_after: cert.not_after,
                issuer: cert.issuer,
                updated_at: now(),
            };
            let answer = certificate_json(&record);
            let created = tri!(blocking(move || app.registry.put_certificate(record)).await);
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json(status, &answer)
        }
        Method::GET => {
            let list = tri!(blocking(move || app.registry.list_certificates(&tenant)).await);
            match list.iter().find(|c| c.host == host) {
                Some(c) => json(StatusCode::OK, &certificate_json(c)),
                None => error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("no certificate for `{host}`"),
                ),
            }
        }
        Method::DELETE => {
            tri!(blocking(move || app.registry.delete_certificate(&tenant, &host)).await);
            no_content()
        }
        _ => method_not_allowed("PUT, GET, DELETE"),
    }
}
