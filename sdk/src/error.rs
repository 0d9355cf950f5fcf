//! One error type for handlers: a status, a machine-readable code and a
//! message, answered as Perch's JSON error shape.
//!
//! ```no_run
//! use perch_sdk::prelude::*;
//!
//! async fn get_user(req: Request) -> Result<Response> {
//!     let id = req.param("id").ok_or_else(|| Error::bad_request("missing id"))?;
//!     if id != "42" {
//!         return Err(Error::not_found(format!("no user {id}")));
//!     }
//!     Ok(Response::from_text("Ada\n"))
//! }
//! ```
//!
//! Client errors (4xx) answer with their message; server errors (5xx)
//! answer with a generic message and write the detail to the function's log,
//! so internals never reach the client.
use std::borrow::Cow;
use std::fmt;

use crate::http::{Body, Response, StatusCode};

/// The result type of handlers and SDK calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error that becomes an HTTP response: `{"error":{"code","message"}}`.
#[derive(Debug)]
pub struct Error {
    status: StatusCode,
    code: Cow<'static, str>,
    message: String,
}

impl Error {
    /// An error with any status, code (`snake_case`) and message.
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Error {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 500 `internal_error`; the message goes to the log, not the client.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The full message (also for server errors, whose response hides it).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The response: JSON, with the message hidden for server errors.
    pub fn into_response(self) -> Response {
        let message = if self.status.is_server_error() {
            eprintln!(
                "[error] {} {}: {}",
                self.status.as_u16(),
                self.code,
                self.message
            );
            self.status
                .canonical_reason()
                .unwrap_or("error")
                .to_ascii_lowercase()
        } else {
            self.message
        };
        let body = serde_json::json!({"error": {"code": self.code, "message": message}});
        let mut resp = Response::new(Body::from(body.to_string()));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            crate::http::header::CONTENT_TYPE,
            crate::http::HeaderValue::from_static("application/json"),
        );
        resp
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for Error {}

impl From<crate::kv::Error> for Error {
    fn from(e: crate::kv::Error) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "kv_error", e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    /// A JSON error is the client's fault when decoding its request, which
    /// is where handlers meet it.
    fn from(e: serde_json::Error) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string())
    }
}

impl From<wstd::http::Error> for Error {
    fn from(e: wstd::http::Error) -> Self {
        Self::internal(format!("{e:#}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::internal(e.to_string())
    }
}
