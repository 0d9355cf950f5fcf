//! `GET /v1/tenants/{t}/usage` (any scope of that tenant): what the tenant
//! holds of each stored quota, its counters since it was created
//! (`telemetry::usage`), and its quotas in force.
use http::{Method, StatusCode};
use serde_json::json;

use super::common::{Resp, TenantCall, blocking};
use crate::http::{json, method_not_allowed, tri};

/// The tenant's usage and quotas.
pub(super) async fn show(call: TenantCall) -> Resp {
    let (app, method, _req, tenant) = call.into_parts();
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    let (held, quotas) = {
        let (registry, tenant) = (app.registry.clone(), tenant.clone());
        tri!(blocking(move || registry.holdings(&tenant)).await)
    };
    let mut counted = app.registry.usage().totals(&tenant);
    let elsewhere = {
        let (store, tenant) = (app.usage_store.clone(), tenant.clone());
        tri!(
            blocking(move || store
                .elsewhere(&tenant)
                .map_err(super::common::storage_error))
            .await
        )
    };
    counted.requests += elsewhere.requests;
    counted.cpu_us += elsewhere.cpu_us;
    counted.egress_bytes += elsewhere.egress_bytes;
    counted.container_ms += elsewhere.container_ms;
    let kv = match app.kv.usage(&tenant).await {
        Ok(kv) => kv,
        Err(e) => return super::kv::kv_error(e),
    };
    json(
        StatusCode::OK,
        &json!({
            "tenant": tenant,
            "usage": {
                "functions": held.functions,
                "routes": held.routes,
                "image_bytes": held.image_bytes,
                "container_memory_mb": held.container_memory_mb,
                "artifact_bytes": held.artifact_bytes,
                "kv_bytes": kv.bytes,
                "kv_keys": kv.keys,
                "requests": counted.requests,
                "cpu_ms": counted.cpu_us / 1000,
                "egress_bytes": counted.egress_bytes,
                "container_seconds": counted.container_ms as f64 / 1000.0,
            },
            "quotas": quotas,
        }),
    )
}
