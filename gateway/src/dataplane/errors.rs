//! Perch's own answers on the data plane: `{"error":{"code","message"}}`
//! with a generic message. Detail about a failure goes to the log, never
//! into the body.
use http::{HeaderValue, Response, StatusCode, header};

use crate::http::{ResBody, error, internal_error};

/// Why an executor could not answer a request. Each carries the detail for
/// the server log; the client only sees the generic answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// The instance hit its memory limit.
    #[error("{0}")]
    MemoryLimit(String),
    /// CPU-time or wall-time limit.
    #[error("{0}")]
    Timeout(String),
    /// No capacity left on the node.
    #[error("{0}")]
    Overloaded(String),
    /// The request body crossed the limit while the function read it.
    #[error("{0}")]
    BodyTooLarge(String),
    /// The function trapped or returned without a response.
    #[error("{0}")]
    Function(String),
    /// A container instance failed the request (refused, cut, crashed).
    #[error("{0}")]
    Container(String),
    /// No container instance became ready in time.
    #[error("{0}")]
    ContainerUnavailable(String),
    /// Perch failed.
    #[error("{0}")]
    Internal(String),
}

/// 404 `no_route`.
pub fn no_route() -> Response<ResBody> {
    error(
        StatusCode::NOT_FOUND,
        "no_route",
        "no function is bound to this host",
    )
}

/// 414 `uri_too_long`.
pub fn uri_too_long() -> Response<ResBody> {
    error(
        StatusCode::URI_TOO_LONG,
        "uri_too_long",
        "the request URL is too long",
    )
}

/// 431 `headers_too_large`.
pub fn headers_too_large() -> Response<ResBody> {
    error(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
        "the request headers are too large",
    )
}

/// 429 `tenant_busy` with `Retry-After`.
pub fn tenant_busy() -> Response<ResBody> {
    retry_after(error(
        StatusCode::TOO_MANY_REQUESTS,
        "tenant_busy",
        "too many concurrent requests for this tenant; retry shortly",
    ))
}

/// 429 `rate_limited` with `Retry-After`: the tenant's
/// `requests_per_second` quota on this node.
pub fn rate_limited() -> Response<ResBody> {
    retry_after(error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "this tenant is over its request rate; retry shortly",
    ))
}

/// 413 `body_too_large`.
pub fn body_too_large() -> Response<ResBody> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "the request body is too large",
    )
}

fn retry_after(mut resp: Response<ResBody>) -> Response<ResBody> {
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// The answer to an executor's failure.
pub fn failure(f: &Failure) -> Response<ResBody> {
    match f {
        Failure::MemoryLimit(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "memory_limit",
            "the function exceeded its memory limit",
        ),
        Failure::Timeout(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "function_timeout",
            "the function exceeded its time limit",
        ),
        Failure::Overloaded(_) => retry_after(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the node has no capacity left; retry shortly",
        )),
        Failure::BodyTooLarge(_) => body_too_large(),
        Failure::Function(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "function_error",
            "the function failed",
        ),
        Failure::Container(_) => error(
            StatusCode::BAD_GATEWAY,
            "container_error",
            "the container failed to answer",
        ),
        Failure::ContainerUnavailable(_) => retry_after(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "container_unavailable",
            "the container did not become ready in time",
        )),
        Failure::Internal(_) => internal_error(),
    }
}
