//! The data plane: check the request's size limits, route by host, take
//! the tenant's concurrency slot, hand the request to the [`Executor`] of
//! the routed version, stream its response back.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use http::{Request, Response, header};
use hyper::body::Incoming;

use crate::config::Config;
use crate::http::ResBody;
use crate::names::normalize_host;
use crate::registry::Registry;
use crate::telemetry::Metrics;

mod body;
pub mod errors;
mod executor;

pub use body::LimitedBody;
pub use errors::Failure;
pub use executor::{Execution, Executor, WasmExecutor};

/// What the data plane needs: the limits, the routing snapshot (through
/// the registry), the metrics, and what runs a routed version.
pub struct DataPlane {
    /// Resolved configuration (the request limits, the concurrency cap).
    pub config: Config,
    /// Source of the routing snapshot.
    pub registry: Arc<Registry>,
    /// Request counters.
    pub metrics: Arc<Metrics>,
    /// Runs wasm versions.
    pub executor: Arc<dyn Executor>,
}

/// Handles one data-plane request.
pub async fn handle(app: Arc<DataPlane>, req: Request<Incoming>) -> Response<ResBody> {
    let start = Instant::now();
    let config = &app.config;

    let uri_len = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().len())
        .unwrap_or(0);
    if uri_len > config.max_uri_bytes {
        return errors::uri_too_long();
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > config.max_header_bytes {
        return errors::headers_too_large();
    }

    let raw_host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
    let host = raw_host.as_deref().map(normalize_host).unwrap_or_default();
    let routes = app.registry.routes();
    let Some(target) = routes.lookup(&host).cloned() else {
        app.metrics.record_no_route();
        return errors::no_route();
    };
    drop(routes);

    let respond = |resp: Response<ResBody>| {
        app.metrics.record(
            &target.tenant,
            &target.function,
            resp.status().as_u16(),
            start.elapsed(),
        );
        resp
    };

    let Some(permit) = target.gate.try_enter(config.tenant_concurrency) else {
        return respond(errors::tenant_busy());
    };

    let limit = config.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return respond(errors::body_too_large());
    }
    let exceeded = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| LimitedBody {
        inner: body,
        remaining: limit,
        exceeded: exceeded.clone(),
    });

    match app.executor.execute(&target, req, permit).await {
        Ok(resp) => respond(resp),
        Err(_) if exceeded.load(Ordering::Relaxed) => respond(errors::body_too_large()),
        Err(failure) => {
            tracing::warn!(
                tenant = %target.tenant,
                function = %target.function,
                version = target.version,
                error = %failure,
                "request failed"
            );
            respond(errors::failure(&failure))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn every_failure_has_a_status_and_code() {
        let cases = [
            (Failure::MemoryLimit("m".into()), 500),
            (Failure::Timeout("t".into()), 504),
            (Failure::Overloaded("o".into()), 503),
            (Failure::BodyTooLarge("b".into()), 413),
            (Failure::Function("trap".into()), 500),
            (Failure::Internal("x".into()), 500),
        ];
        for (f, status) in cases {
            let resp = errors::failure(&f);
            assert_eq!(resp.status(), StatusCode::from_u16(status).unwrap(), "{f}");
        }
        assert!(
            errors::failure(&Failure::Overloaded("o".into()))
                .headers()
                .contains_key(header::RETRY_AFTER)
        );
    }
}
