//! `GET /healthz`, `GET /readyz` and `GET /metrics`: open to anyone.
use std::sync::atomic::Ordering;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use serde_json::json;

use super::common::Resp;
use crate::app::App;
use crate::http::{error, full, json};
use crate::telemetry::metrics::Sources;

/// The answer to a health or metrics request, or `None` for any other path.
pub(super) fn handle<B>(app: &App, req: &Request<B>) -> Option<Resp> {
    if req.method() != Method::GET {
        return None;
    }
    Some(match req.uri().path() {
        "/healthz" => json(StatusCode::OK, &json!({"status": "ok"})),
        // Storage out of reach: still 200 (routed functions answer from
        // the snapshot), so a load balancer keeps sending traffic.
        "/readyz" if app.ready.load(Ordering::Relaxed) => {
            if app.storage_ok.load(Ordering::Relaxed) {
                json(StatusCode::OK, &json!({"status": "ready"}))
            } else {
                json(
                    StatusCode::OK,
                    &json!({"status": "degraded", "storage": "unavailable"}),
                )
            }
        }
        "/readyz" => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        ),
        "/metrics" => {
            let registry = &app.registry;
            let body = app.metrics.render(&Sources {
                runtime: app.runtime.stats(),
                kv: registry.kv_counters(),
                log_followers: app.logs.followers(),
                containers: app.containers.as_deref(),
                function_label: &|t, f| registry.metric_function(t, f),
            });
            let mut resp = Response::new(full(body));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        }
        _ => return None,
    })
}
