//! A tenant's functions: list, upload a component as a new version (it is
//! validated and compiled first), show versions and settings, delete.
use std::sync::Arc;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::common::{Resp, TenantCall, blocking, invalid_name, read_body};
use crate::app::App;
use crate::http::{error, internal_error, json, method_not_allowed, no_content, tri};
use crate::names::valid_name;

/// `GET …/functions`.
pub(super) async fn list(call: TenantCall) -> Resp {
    let (app, method, _, tenant) = call.into_parts();
    match method {
        Method::GET => {
            let list = tri!(blocking(move || app.registry.list_functions(&tenant)).await);
            let list: Vec<_> = list
                .iter()
                .map(|f| json!({"name": f.name, "active_version": f.active_version}))
                .collect();
            json(StatusCode::OK, &json!({ "functions": list }))
        }
        _ => method_not_allowed("GET"),
    }
}

/// `PUT` (upload a version), `GET` and `DELETE` one function.
pub(super) async fn one(call: TenantCall, name: String) -> Resp {
    let (app, method, req, tenant) = call.into_parts();
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
