//! Tenants (admin only): list, create or update domains, delete with
//! everything the tenant owns.
use std::sync::Arc;

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::common::{Resp, TenantCall, blocking, read_json};
use crate::app::App;
use crate::http::{json, method_not_allowed, no_content, tri};

/// `GET /v1/tenants`.
pub(super) fn list(app: Arc<App>, method: Method) -> Resp {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantBody {
    domains: Option<Vec<String>>,
}

/// `PUT` (create, or replace the domains) and `DELETE` one tenant.
pub(super) async fn one(call: TenantCall) -> Resp {
    let (app, method, req, tenant) = call.into_parts();
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
            let kv = app.kv.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || {
                use perch_kv::KvBackend;
                kv.delete_tenant(&tenant)
            })
            .await
            {
                return super::kv::kv_error(e);
            }
            no_content()
        }
        _ => method_not_allowed("PUT, DELETE"),
    }
}
