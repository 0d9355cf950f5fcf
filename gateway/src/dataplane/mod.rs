//! The data plane: check the request's size limits, route by host, pick
//! the deployed version, strip Perch's reserved headers, take the tenant's
//! concurrency slot, hand the request to the [`Executor`] of the version,
//! stream its response back with its `Perch-Request-Id`; the request's
//! event goes to the function's log.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Request, Response, header};
use hyper::body::Incoming;

use crate::config::Config;
use crate::http::ResBody;
use crate::logs::{Counted, LogHub, RequestEvent, RequestLog, Run, request_id, unix_ms};
use crate::names::normalize_host;
use crate::registry::Registry;
use crate::telemetry::Metrics;
use crate::telemetry::trace::{Routed, Tracing};
use crate::telemetry::usage::Metered;
use http_body_util::BodyExt;

mod body;
mod container;
pub mod errors;
mod executor;

pub use body::LimitedBody;
pub use container::ContainerExecutor;
pub use errors::Failure;
pub use executor::{Execution, Executor, NodeExecutor, WasmExecutor};

/// What the data plane needs: the limits, the routing snapshot (through
/// the registry), the metrics, the functions' logs, and what runs a routed
/// version.
pub struct DataPlane {
    /// Resolved configuration (the request limits, the concurrency cap).
    pub config: Config,
    /// Source of the routing snapshot.
    pub registry: Arc<Registry>,
    /// Request counters.
    pub metrics: Arc<Metrics>,
    /// Functions' logs.
    pub logs: Arc<LogHub>,
    /// The node's name in log events.
    pub node: Arc<str>,
    /// Runs the versions (wasm and containers).
    pub executor: Arc<dyn Executor>,
    /// Trace export, when it is on.
    pub tracing: Option<Arc<Tracing>>,
    /// ACME's pending HTTP-01 answers, when ACME is on.
    pub acme: Option<Arc<crate::tls::acme::Challenges>>,
}

/// The header every data-plane answer carries.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("perch-request-id");

/// Handles one data-plane request that came from `peer`, over TLS or not:
/// every answer, Perch's own errors included, carries `Perch-Request-Id`.
pub async fn handle(
    app: Arc<DataPlane>,
    peer: std::net::SocketAddr,
    tls: bool,
    req: Request<Incoming>,
) -> Response<ResBody> {
    let id = request_id();
    let value = HeaderValue::from_str(&id).expect("hex is a valid header value");
    let mut resp = serve(&app, peer, tls, req, id, value.clone()).await;
    resp.headers_mut().insert(REQUEST_ID, value);
    resp
}

/// `id_value` is `id` as a header value, for the server log.
async fn serve(
    app: &Arc<DataPlane>,
    peer: std::net::SocketAddr,
    tls: bool,
    mut req: Request<Incoming>,
    id: String,
    id_value: HeaderValue,
) -> Response<ResBody> {
    let start = Instant::now();
    let arrived = unix_ms();
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

    // The CA fetches its HTTP-01 challenges over plain HTTP, for any host;
    // an unknown token goes to the host's function like any other path.
    if !tls
        && let Some(challenges) = &app.acme
        && req.method() == http::Method::GET
        && let Some(answer) = challenges.answer(req.uri().path())
    {
        return crate::http::text(http::StatusCode::OK, answer);
    }
    let raw_host = request_host(&req);
    let host = raw_host.as_deref().map(normalize_host).unwrap_or_default();
    let client = config.trusted_proxies.client(peer.ip(), tls, req.headers());
    let traced = app.tracing.as_ref().map(|t| {
        t.server(
            req.method(),
            req.uri().path(),
            req.headers(),
            &host,
            client.ip,
        )
    });
    let routes = app.registry.routes();
    let Some(target) = routes.lookup(&host, req.uri().path()).cloned() else {
        app.metrics.record_no_route();
        if let Some(t) = &traced {
            t.finish(404, "no_route", Duration::ZERO, false);
        }
        return errors::no_route();
    };
    let traced = traced.filter(|t| t.recording());
    let http_route = traced
        .as_ref()
        .and_then(|_| routes.http_route(&host, req.uri().path()));
    drop(routes);

    // The version is picked (the override header read) before Perch's
    // reserved headers are taken away from the guest.
    let index = target.pick(req.headers());
    strip_reserved(req.headers_mut());
    crate::forwarded::set(req.headers_mut(), &client);
    set_scheme(&mut req, tls, raw_host.as_deref());
    if let Some(t) = &traced {
        t.routed(&Routed {
            tenant: &target.tenant,
            function: &target.function,
            version: target.versions[index].version,
            route: http_route,
            invocation_id: &id,
        });
        t.propagate(req.headers_mut());
    }
    let wasm = match target.versions[index].run {
        crate::routing::Runnable::Wasm(_) => true,
        crate::routing::Runnable::Container(_) => false,
    };

    let exceeded = Arc::new(AtomicBool::new(false));
    let log = RequestLog {
        hub: app.logs.clone(),
        tenant: target.tenant.clone(),
        event: RequestEvent {
            time: arrived,
            request_id: id,
            node: app.node.clone(),
            function: target.function.clone(),
            version: target.versions[index].version,
            method: req.method().as_str().to_string(),
            path: req.uri().path().to_string(),
            run: Run::pending(),
        },
        body_exceeded: exceeded.clone(),
        counted: Counted {
            metrics: app.metrics.clone(),
            usage: target.usage.clone(),
            function: target.metric_function.clone(),
            wasm,
            trace: traced,
        },
    };

    // The body's bytes count as the tenant's egress as they go out.
    let respond = |resp: Response<ResBody>| {
        app.metrics.observe_latency(start.elapsed());
        let usage = target.usage.clone();
        resp.map(|body| Metered::new(body, usage).boxed_unsync())
    };
    let reject = |log: RequestLog, resp: Response<ResBody>| {
        log.rejected(resp.status().as_u16(), start.elapsed().as_millis() as u64);
        respond(resp)
    };

    if !target.gate.admit() {
        return reject(log, errors::rate_limited());
    }
    let Some(permit) = target.gate.try_enter(config.tenant_concurrency) else {
        return reject(log, errors::tenant_busy());
    };

    let limit = config.max_body_bytes;
    if crate::http::declared_length(req.headers()).is_some_and(|n| n > limit) {
        return reject(log, errors::body_too_large());
    }
    let req = req.map(|body| LimitedBody {
        inner: Some(body),
        remaining: limit,
        exceeded: exceeded.clone(),
    });

    match app
        .executor
        .execute(&target, index, req, permit, Arc::new(log))
        .await
    {
        Ok(resp) => respond(resp),
        Err(_) if exceeded.load(Ordering::Relaxed) => respond(errors::body_too_large()),
        Err(failure) => {
            tracing::warn!(
                tenant = %target.tenant,
                function = %target.function,
                version = target.versions[index].version,
                request_id = %id_value.to_str().unwrap_or(""),
                error = %failure,
                "request failed"
            );
            respond(errors::failure(&failure))
        }
    }
}

/// The guest learns the scheme of the connection from the URI: `https`
/// over TLS (HTTP/1.1 sends only the path, HTTP/2 the whole URI), and
/// never `https` on the plaintext listener, whatever URI the client sent.
/// `host` is the request's as it came ([`request_host`]).
fn set_scheme<B>(req: &mut Request<B>, tls: bool, host: Option<&str>) {
    if tls == (req.uri().scheme_str() == Some("https")) {
        return;
    }
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let uri = match host.filter(|_| tls) {
        Some(host) => format!("https://{host}{path}").parse(),
        None => path.parse(),
    };
    if let Ok(uri) = uri {
        *req.uri_mut() = uri;
    }
}

/// The host a request names: its URI's authority, else its `Host` header.
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
}

/// Removes every request header whose name starts with `perch-`: the guest
/// never sees Perch's reserved headers from a client.
fn strip_reserved(headers: &mut HeaderMap) {
    let reserved = |name: &HeaderName| name.as_str().starts_with("perch-");
    if !headers.keys().any(reserved) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| reserved(n)).cloned().collect();
    for name in names {
        headers.remove(name);
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

#[cfg(test)]
mod reserved_tests {
    use super::*;

    #[test]
    fn perch_headers_never_reach_the_guest() {
        let mut h = HeaderMap::new();
        h.insert("perch-cron", HeaderValue::from_static("* * * * *"));
        h.append("Perch-Version-Override", HeaderValue::from_static("2"));
        h.insert("x-perch", HeaderValue::from_static("kept"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_reserved(&mut h);
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort();
        assert_eq!(names, ["accept", "x-perch"]);
    }
}
