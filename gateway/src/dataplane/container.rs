//! Container versions on the data plane: take an instance from the
//! version's pool (starting one, or waiting in its queue), proxy the
//! request to it on 127.0.0.1 with the hop-by-hop headers removed and
//! `X-Forwarded-*` set by Perch, and stream the answer back. The request's
//! event is written when the response head arrives (or the attempt fails).
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use perch_containers::{AcquireError, Lease};
use perch_runtime::{InvocationRecord, LogSink, Outcome};

use super::body::{LimitedBody, Prefixed};
use super::errors::Failure;
use super::executor::{Execution, Executor};
use crate::http::{BoxError, Holding};
use crate::routing::{GatePermit, Runnable, Target};

/// Proxies container versions' requests to their instances.
pub struct ContainerExecutor {
    client: Client<HttpConnector, LimitedBody>,
}

impl ContainerExecutor {
    /// An executor with its own connection pool to the instances.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        ContainerExecutor { client }
    }
}

impl Default for ContainerExecutor {
    fn default() -> Self {
        Self::new()
    }
}

/// Headers that describe one hop and are not forwarded.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// The tokens of the `Connection` headers (`keep-alive`, `upgrade`, names
/// of other hop-by-hop headers).
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// The protocol a request asks to switch to (`Connection: upgrade` with an
/// `Upgrade` header), if any.
fn upgrade_of(headers: &HeaderMap) -> Option<HeaderValue> {
    connection_tokens(headers)
        .any(|t| t.eq_ignore_ascii_case("upgrade"))
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(listed.iter()) {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

/// The request as the instance at `lease` gets it; `upgrade` is the
/// protocol it asks to switch to ([`upgrade_of`]), kept for the instance.
fn upstream(
    mut req: Request<LimitedBody>,
    lease: &Lease,
    upgrade: Option<HeaderValue>,
) -> Result<Request<LimitedBody>, Failure> {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let host = super::request_host(&req);
    *req.uri_mut() = Uri::try_from(format!("http://{}{path}", lease.addr()))
        .map_err(|e| Failure::Internal(format!("upstream uri: {e}")))?;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    // X-Forwarded-For and -Proto are Perch's already (forwarded::set).
    if let Some(h) = host.and_then(|h| HeaderValue::from_str(&h).ok()) {
        headers.insert("x-forwarded-host", h.clone());
        headers.insert(header::HOST, h);
    }
    Ok(req)
}

/// How long a container's response head waits for its first body bytes.
const FIRST_FRAME: Duration = Duration::from_millis(100);

fn record(
    label: &str,
    outcome: Outcome,
    status: Option<u16>,
    started: Instant,
    coldstart: bool,
) -> InvocationRecord {
    InvocationRecord {
        label: Arc::from(label),
        outcome,
        status,
        cpu: Duration::ZERO,
        duration: started.elapsed(),
        logs: Vec::new(),
        truncated: false,
        coldstart,
    }
}

impl Executor for ContainerExecutor {
    fn execute(
        &self,
        target: &Arc<Target>,
        version: usize,
        req: Request<LimitedBody>,
        permit: GatePermit,
        log: Arc<dyn LogSink>,
    ) -> Execution {
        let client = self.client.clone();
        let target = target.clone();
        Box::pin(async move {
            let started = Instant::now();
            let Runnable::Container(pool) = &target.versions[version].run else {
                return Err(Failure::Internal("not a container version".into()));
            };
            let label = pool.id.to_string();
            let lease = match pool.acquire().await {
                Ok(lease) => lease,
                Err(e @ AcquireError::Overloaded) => {
                    log.record(record(&label, Outcome::Overloaded, None, started, false));
                    return Err(Failure::Overloaded(format!("{label}: {e}")));
                }
                Err(e @ AcquireError::Unavailable(_)) => {
                    log.record(record(
                        &label,
                        Outcome::ContainerUnavailable,
                        None,
                        started,
                        false,
                    ));
                    return Err(Failure::ContainerUnavailable(format!("{label}: {e}")));
                }
            };
            let mut req = req;
            let upgrade = upgrade_of(req.headers());
            let client_upgrade = upgrade
                .as_ref()
                .and_then(|_| req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>());
            let mut req = upstream(req, &lease, upgrade)?;
            // The hop to the instance is the request's client span; the
            // instance continues the trace from it.
            let span = log.trace().map(|t| {
                let (method, uri) = (req.method().clone(), req.uri().clone());
                t.outbound(&method, &uri, req.headers_mut())
            });
            // A safe request without a body (GET, HEAD, OPTIONS) is sent
            // again when the kept-alive connection it went out on turned out
            // closed before anything came back.
            let safe = matches!(
                *req.method(),
                http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
            );
            let replay = (safe && http_body::Body::is_end_stream(req.body())).then(|| {
                let mut again = Request::new(LimitedBody::empty());
                *again.method_mut() = req.method().clone();
                *again.uri_mut() = req.uri().clone();
                *again.headers_mut() = req.headers().clone();
                again
            });
            let mut sent = client.request(req).await;
            if let (Err(e), Some(again)) = (&sent, replay)
                && stale_connection(e)
            {
                sent = client.request(again).await;
            }
            if let Some(span) = span {
                span.end(match &sent {
                    Ok(resp) => Ok(resp.status().as_u16()),
                    Err(e) => Err(e.to_string()),
                });
            }
            let ok = |status: http::StatusCode| {
                record(
                    &label,
                    Outcome::Ok,
                    Some(status.as_u16()),
                    started,
                    lease.cold_start(),
                )
            };
            match sent {
                Ok(resp) => {
                    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
                        && let Some(client_side) = client_upgrade
                    {
                        log.record(ok(resp.status()));
                        return Ok(switch(resp, client_side, lease, permit));
                    }
                    let (mut parts, mut body) = resp.into_parts();
                    // hyper sends a response head with its first body
                    // bytes: a body that fails before them closes the
                    // connection with no answer at all. So the first frame
                    // is read before the head goes out (briefly: a slow
                    // stream is not held back), and an instance that dies
                    // between its head and its body is a 502.
                    let first = match tokio::time::timeout(FIRST_FRAME, body.frame()).await {
                        Ok(Some(Err(e))) => {
                            lease.failed();
                            log.record(record(
                                &label,
                                Outcome::ContainerError,
                                None,
                                started,
                                lease.cold_start(),
                            ));
                            return Err(Failure::Container(format!(
                                "{label}: the response broke before its body: {e}"
                            )));
                        }
                        Ok(Some(Ok(frame))) => Some(frame),
                        Ok(None) | Err(_) => None,
                    };
                    log.record(ok(parts.status));
                    strip_hop_by_hop(&mut parts.headers);
                    let body = Holding::new(Prefixed::new(first, body), (lease, permit))
                        .map_err(|e| Box::new(e) as BoxError)
                        .boxed_unsync();
                    Ok(http::Response::from_parts(parts, body))
                }
                Err(e) => {
                    lease.failed();
                    log.record(record(
                        &label,
                        Outcome::ContainerError,
                        None,
                        started,
                        lease.cold_start(),
                    ));
                    Err(Failure::Container(format!("{label}: {e}")))
                }
            }
        })
    }
}

/// Answers a 101 from the instance: the client gets the instance's head,
/// and once both sides have switched, their bytes are copied both ways
/// until either closes. The instance's slot and the tenant's concurrency
/// permit are held as long as the upgraded connection lives.
fn switch(
    mut upstream: http::Response<hyper::body::Incoming>,
    client_side: hyper::upgrade::OnUpgrade,
    lease: Lease,
    permit: GatePermit,
) -> http::Response<crate::http::ResBody> {
    let instance_side = hyper::upgrade::on(&mut upstream);
    tokio::spawn(async move {
        let (client, instance) = match tokio::join!(client_side, instance_side) {
            (Ok(c), Ok(i)) => (c, i),
            (c, i) => {
                tracing::info!(
                    client = c.is_ok(),
                    instance = i.is_ok(),
                    "an upgrade did not complete"
                );
                return;
            }
        };
        let mut client = hyper_util::rt::TokioIo::new(client);
        let mut instance = hyper_util::rt::TokioIo::new(instance);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut instance).await;
        drop((lease, permit));
    });
    let (parts, _) = upstream.into_parts();
    http::Response::from_parts(
        parts,
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    )
}

/// Whether a request failed because the kept-alive connection it went out
/// on had been closed by the instance (nothing came back).
fn stale_connection(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            return h.is_incomplete_message() || h.is_canceled();
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_do_not_cross() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept"]);
    }
}
