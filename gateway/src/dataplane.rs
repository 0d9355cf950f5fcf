//! The data plane: route by host, apply the per-tenant and input limits,
//! run the function, stream its response back.
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use perch_runtime::{HttpError, InvokeError};

use crate::app::App;
use crate::http::{BoxError, ResBody, error, internal_error};
use crate::names::normalize_host;
use crate::routing::GatePermit;

/// Handles one data-plane request.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<ResBody> {
    let start = Instant::now();
    let config = &app.config;

    let uri_len = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().len())
        .unwrap_or(0);
    if uri_len > config.max_uri_bytes {
        return error(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            "the request URL is too long",
        );
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > config.max_header_bytes {
        return error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "the request headers are too large",
        );
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
        return error(
            StatusCode::NOT_FOUND,
            "no_route",
            "no function is bound to this host",
        );
    };
    drop(routes);

    let respond = |status: StatusCode, resp: Response<ResBody>| {
        app.metrics.record(
            &target.tenant,
            &target.function,
            status.as_u16(),
            start.elapsed(),
        );
        resp
    };

    let Some(permit) = target.gate.try_enter(config.tenant_concurrency) else {
        let mut resp = error(
            StatusCode::TOO_MANY_REQUESTS,
            "tenant_busy",
            "too many concurrent requests for this tenant; retry shortly",
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return respond(StatusCode::TOO_MANY_REQUESTS, resp);
    };

    let limit = config.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return respond(StatusCode::PAYLOAD_TOO_LARGE, body_too_large());
    }
    let exceeded = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| LimitedBody {
        inner: body,
        remaining: limit,
        exceeded: exceeded.clone(),
    });

    match app.runtime.handle(&target.invocation, req).await {
        Ok(resp) => {
            let status = resp.status();
            let resp = resp.map(|body| {
                WithPermit {
                    inner: body,
                    _permit: permit,
                }
                .map_err(|e| Box::new(e) as BoxError)
                .boxed_unsync()
            });
            respond(status, resp)
        }
        Err(e) => {
            let resp = if exceeded.load(Ordering::Relaxed) {
                body_too_large()
            } else {
                tracing::warn!(
                    tenant = %target.tenant,
                    function = %target.function,
                    version = target.version,
                    error = %e,
                    "request failed"
                );
                invoke_error(&e)
            };
            respond(resp.status(), resp)
        }
    }
}

fn body_too_large() -> Response<ResBody> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "the request body is too large",
    )
}

fn invoke_error(e: &InvokeError) -> Response<ResBody> {
    match e {
        InvokeError::MemoryLimit => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "memory_limit",
            "the function exceeded its memory limit",
        ),
        InvokeError::CpuTimeout | InvokeError::WallTimeout => error(
            StatusCode::GATEWAY_TIMEOUT,
            "function_timeout",
            "the function exceeded its time limit",
        ),
        InvokeError::Overloaded => {
            let mut resp = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the node has no capacity left; retry shortly",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            resp
        }
        InvokeError::BodyTooLarge => body_too_large(),
        InvokeError::FunctionError(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "function_error",
            "the function failed",
        ),
        _ => internal_error(),
    }
}

/// The request body as the guest sees it: an error once it passes the limit.
struct LimitedBody {
    inner: Incoming,
    remaining: u64,
    exceeded: Arc<AtomicBool>,
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > self.remaining {
                        self.exceeded.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(HttpError::HttpRequestBodySize(None))));
                    }
                    self.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpError::from(e)))),
            other => other.map(|o| o.map(|r| r.map_err(HttpError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Holds the tenant's concurrency slot until the response body is done.
struct WithPermit<B> {
    inner: B,
    _permit: GatePermit,
}

impl<B: Body + Unpin> Body for WithPermit<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
