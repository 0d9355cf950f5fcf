//! A tenant's functions: list (paged), upload a component as a new
//! version (validated and compiled first; deployed alone, or staged with
//! `?activate=false`), show one, delete one. Versions and the deployment
//! have their own files (`versions.rs`, `deployment.rs`).
use std::sync::Arc;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::common::{
    PageQuery, Resp, TenantCall, blocking, collect_garbage, invalid_name, query_flag, read_body,
    registry_error,
};
use super::images::{containers_disabled, refuse_unread};
use crate::app::App;
use crate::http::{error, internal_error, json, method_not_allowed, no_content, tri};
use crate::names::valid_name;
use crate::registry::Function;

/// `active_version` as the API shows it: null while nothing is deployed.
pub(super) fn active_version(f: &Function) -> Value {
    match f.active_version {
        0 => Value::Null,
        n => json!(n),
    }
}

/// `GET …/functions?limit=&cursor=`, by name.
pub(super) async fn list(call: TenantCall) -> Resp {
    let (app, method, req, tenant) = call.into_parts();
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    let page = tri!(PageQuery::of(&req));
    let list = tri!(blocking(move || app.registry.list_functions(&tenant)).await);
    let after = page.cursor.clone();
    let (items, cursor) = page.cut(
        list.iter()
            .filter(|f| after.as_deref().is_none_or(|c| f.name.as_str() > c)),
        |f| f.name.clone(),
    );
    let items: Vec<_> = items
        .iter()
        .map(|f| json!({"name": f.name, "active_version": active_version(f)}))
        .collect();
    json(
        StatusCode::OK,
        &json!({ "functions": items, "cursor": cursor }),
    )
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
            let settings = f
                .active()
                .map(|v| super::versions::settings_json(&v.settings));
            json(
                StatusCode::OK,
                &json!({"name": f.name, "active_version": active_version(&f), "versions": versions, "settings": settings}),
            )
        }
        Method::DELETE => {
            let (t, n) = (tenant.clone(), name.clone());
            let registry = app.registry.clone();
            let dropped = tri!(blocking(move || registry.delete_function(&t, &n)).await);
            app.logs.forget_function(&tenant, &name);
            collect_garbage(&app, dropped).await;
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
    let activate = tri!(query_flag(&req, "activate", true));
    // A new function's place within the quota is held from before the
    // body is read and compiled until its version committed.
    let _place = match app.registry.reserve_function(&tenant, &name) {
        Ok(place) => place,
        Err(e) => return refuse_unread(req, registry_error(e)).await,
    };
    if is_json(&req) {
        return upload_container(app, req, tenant, name, activate).await;
    }
    let bytes = tri!(read_body(req, app.config.max_upload_bytes).await);
    // A component the tenant does not run yet must fit its artifact_bytes
    // quota before it is compiled (and again when its version commits).
    let size = bytes.len() as u64;
    let sum = perch_runtime::Digest::of(&bytes);
    if let Err(e) = app.registry.admit_artifact(&tenant, &sum.to_string(), size) {
        return registry_error(e);
    }
    let Ok(_slot) = app.compile_slots.acquire().await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        );
    };
    // Held from before the bytes are written until the version committed,
    // so no collection deletes them in between.
    let _hold = app.artifacts.hold(sum);
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
    let added = tri!(blocking(move || registry.add_version(&t, &n, &d, size, activate)).await);
    tracing::info!(%tenant, function = %name, version = added.version, %digest, active = added.active, "uploaded");
    collect_garbage(&app, added.dropped).await;
    json(
        StatusCode::CREATED,
        &json!({"function": name, "version": added.version, "digest": digest, "active": added.active}),
    )
}

/// Whether the upload's media type is `application/json` (a container
/// version's spec); anything else is component bytes.
fn is_json(req: &Request<Incoming>) -> bool {
    crate::http::media_type(req.headers()).as_deref() == Some("application/json")
}

fn invalid_container(message: &str) -> Resp {
    error(StatusCode::BAD_REQUEST, "invalid_container", message)
}

/// `PUT …/functions/{name}` with `{"container":{…}}`: a container version.
async fn upload_container(
    app: Arc<App>,
    req: Request<Incoming>,
    tenant: String,
    name: String,
    activate: bool,
) -> Resp {
    let Some(cc) = app.config.containers.clone() else {
        return refuse_unread(req, containers_disabled()).await;
    };
    let body = tri!(read_body(req, super::common::JSON_LIMIT as u64).await);
    let mut spec = match perch_containers::ContainerSpec::from_upload(&body) {
        Ok(spec) => spec,
        Err(e) => return invalid_container(&format!("invalid container spec: {e}")),
    };
    if let Err(e) = spec.validate(&cc.maxima) {
        return invalid_container(&e.to_string());
    }
    let (t, reference) = (tenant.clone(), spec.image.clone());
    let registry = app.registry.clone();
    spec.image =
        tri!(blocking(move || registry.resolve_image(&t, &reference, &cc.allowed_images)).await);
    let (t, n, s) = (tenant.clone(), name.clone(), spec.clone());
    let registry = app.registry.clone();
    let added = tri!(blocking(move || registry.add_container_version(&t, &n, s, activate)).await);
    tracing::info!(%tenant, function = %name, version = added.version, image = %spec.image, active = added.active, "container version created");
    collect_garbage(&app, added.dropped).await;
    json(
        StatusCode::CREATED,
        &json!({"function": name, "version": added.version, "kind": "container", "image": spec.image, "active": added.active}),
    )
}
