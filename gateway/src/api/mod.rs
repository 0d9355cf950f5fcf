//! The admin API (v1): JSON over HTTP on its own listener.
//!
//! | method, path | who | file |
//! |---|---|---|
//! | `GET /healthz`, `GET /readyz`, `GET /metrics` | anyone | `health.rs` |
//! | `GET /v1/tenants` | admin | `tenants.rs` |
//! | `PUT`, `DELETE /v1/tenants/{tenant}` | admin | `tenants.rs` |
//! | `POST`, `GET /v1/tenants/{tenant}/tokens`, `DELETE …/tokens/{id}` | admin | `tokens.rs` |
//! | `GET /v1/tenants/{tenant}/functions` | `functions` | `functions.rs` |
//! | `PUT`, `GET`, `DELETE /v1/tenants/{tenant}/functions/{name}` | `functions` | `functions.rs` |
//! | `PUT /v1/tenants/{tenant}/functions/{name}/settings` | `functions` | `settings.rs` |
//! | `GET …/functions/{name}/versions`, `GET …/versions/{v}` | `functions` | `versions.rs` |
//! | `GET`, `PUT …/functions/{name}/deployment` | `functions` | `deployment.rs` |
//! | `POST …/functions/{name}/scheduled?cron=EXPR` | `functions` | `scheduled.rs` |
//! | `PUT`, `GET …/images`, `GET`, `DELETE …/images/{id}` | `images` | `images.rs` |
//! | `GET /v1/audit`, `GET …/audit` | admin; any scope of the tenant | `audit.rs` |
//! | `GET /v1/backup` | admin | `backup.rs` |
//! | `GET /v1/nodes` | admin | `nodes.rs` |
//! | `GET /v1/tenants/{tenant}/usage` | any scope of the tenant | `usage.rs` |
//! | `GET /v1/tenants/{tenant}/logs?function=&status=&limit=&follow=` | `logs` | `logs.rs` |
//! | `GET /v1/tenants/{tenant}/routes` | `routes` | `routes.rs` |
//! | `GET …/verifications`, `PUT`, `GET`, `DELETE …/verifications/{host}`, `POST …/{host}/check` | `routes` | `verifications.rs` |
//! | `GET …/certificates`, `PUT`, `GET`, `DELETE …/certificates/{host}` | `certificates` | `certificates.rs` |
//! | `PUT`, `DELETE /v1/tenants/{tenant}/routes/{pattern}` (`host[/path]`) | `routes` | `routes.rs` |
//! | `GET /v1/tenants/{tenant}/kv`, `PUT …/kv/{ns}` | `kv` | `kv.rs` |
//! | `GET …/kv/{ns}/keys?prefix=&cursor=&limit=` | `kv` | `kv.rs` |
//! | `GET`, `PUT`, `DELETE …/kv/{ns}/values/{key}` | `kv` | `kv.rs` |
//!
//! `Authorization: Bearer <token>` (`auth.rs`); the admin token works
//! everywhere, a tenant token only under its own tenant and with the scope
//! the path names. Errors are `{"error":{"code","message"}}` (`common.rs`).
//! An upload that is not a valid component is 400 `invalid_component`; one
//! whose compilation runs out of its budget (`[compile]`: CPU time, address
//! space, wall clock — it runs in a child process) is 422 `compile_failed`.
use std::net::SocketAddr;
use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;

use crate::app::App;

mod audit;
pub mod auth;
mod backup;
mod certificates;
pub mod common;
mod deployment;
mod functions;
mod health;
mod images;
mod usage;
pub use images::images_dir;
pub mod kv;
mod logs;
mod nodes;
mod routes;
mod scheduled;
mod settings;
mod tenants;
mod tokens;
mod verifications;
mod versions;

use auth::Principal;
use common::{Resp, TenantCall, invalid_name, not_found_endpoint, percent_decode};

/// Handles one admin request.
pub async fn handle(app: Arc<App>, peer: SocketAddr, req: Request<Incoming>) -> Resp {
    if let Some(resp) = health::handle(&app, &req) {
        return resp;
    }
    let principal = match auth::authenticate(&app, peer, &req) {
        Ok(p) => p,
        Err(refused) => return refused.response(),
    };
    let segments: Vec<String> = req
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let change = crate::audit::action(req.method(), &segs);
    let token_id = match &principal {
        Principal::Admin => "admin".to_string(),
        Principal::Tenant(rec) => rec.id.clone(),
    };
    let resp = route(app.clone(), principal, req, &segs).await;
    if let Some((tenant, action, target)) = change {
        audit::record(
            &app,
            tenant,
            action,
            target,
            token_id,
            resp.status().as_u16(),
        )
        .await;
    }
    resp
}

async fn route(app: Arc<App>, who: Principal, req: Request<Incoming>, segs: &[&str]) -> Resp {
    let method = req.method().clone();
    match segs {
        ["v1", "audit"] => match who {
            Principal::Admin => audit::list(app, method, &req, None).await,
            Principal::Tenant(_) => common::forbidden(),
        },
        ["v1", "backup"] => match who {
            Principal::Admin => backup::get(app, method).await,
            Principal::Tenant(_) => common::forbidden(),
        },
        ["v1", "nodes"] => match who {
            Principal::Admin => nodes::list(app, method).await,
            Principal::Tenant(_) => common::forbidden(),
        },
        ["v1", "tenants"] => match who {
            Principal::Admin => tenants::list(app, method, &req),
            Principal::Tenant(_) => common::forbidden(),
        },
        ["v1", "tenants", tenant, rest @ ..] => {
            let tenant = tenant.to_string();
            // Authorisation before anything about the tenant is revealed.
            if let Err(refused) = auth::authorize(&who, &tenant, rest) {
                return refused.response();
            }
            if !crate::names::valid_name(&tenant) {
                return invalid_name("tenant", &tenant);
            }
            let call = TenantCall {
                app,
                method,
                req,
                tenant,
                principal: who,
            };
            match rest {
                [] => tenants::one(call).await,
                ["tokens", rest @ ..] => tokens::handle(call, rest).await,
                ["functions"] => functions::list(call).await,
                ["functions", name] => functions::one(call, name.to_string()).await,
                ["functions", name, "settings"] => settings::handle(call, name.to_string()).await,
                ["functions", name, "versions", rest @ ..] => {
                    versions::handle(call, name.to_string(), rest).await
                }
                ["functions", name, "deployment"] => {
                    deployment::handle(call, name.to_string()).await
                }
                ["functions", name, "scheduled"] => scheduled::handle(call, name.to_string()).await,
                ["logs"] => logs::handle(call).await,
                ["audit"] => {
                    let (app, method, req, tenant) = call.into_parts();
                    audit::list(app, method, &req, Some(tenant)).await
                }
                ["usage"] => usage::show(call).await,
                ["images"] => images::list_or_upload(call).await,
                ["images", id] => images::one(call, id.to_string()).await,
                ["routes", rest @ ..] => routes::handle(call, rest).await,
                ["certificates", rest @ ..] => certificates::handle(call, rest).await,
                ["verifications", rest @ ..] => verifications::handle(call, rest).await,
                ["kv", rest @ ..] => kv::handle(call, rest).await,
                _ => not_found_endpoint(),
            }
        }
        _ => not_found_endpoint(),
    }
}
