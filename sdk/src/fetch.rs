//! Outbound HTTP requests (`wasi:http/outgoing-handler`).
//!
//! Perch checks every outbound request against its egress policy: private
//! and loopback addresses are refused unless the operator exempts them, a
//! function's `outbound.allow` settings narrow what it may reach, and each
//! invocation has a request budget. A refusal is an [`Error`] (502
//! `fetch_failed`) the function can handle, not a crash.
//!
//! ```no_run
//! use perch_sdk::prelude::*;
//! use perch_sdk::fetch;
//! use std::time::Duration;
//!
//! async fn proxy(req: Request) -> Result<Response> {
//!     // A plain GET.
//!     let mut status = fetch::get("https://status.example.com/health").await?;
//!     let healthy = status.status().is_success() && status.text().await? == "ok";
//!     // Forward the incoming request, body streamed, with a timeout.
//!     let outgoing = fetch::request(req.method().clone(), "https://origin.example.com/api")
//!         .header("x-healthy", healthy.to_string())
//!         .body(req.into_body())
//!         .map_err(|e| Error::internal(e.to_string()))?;
//!     fetch::Fetch::new()
//!         .first_byte_timeout(Duration::from_secs(5))
//!         .send(outgoing)
//!         .await
//! }
//! ```
use std::time::Duration;

use crate::error::{Error, Result};
use crate::http::{Body, Method, Request, RequestBuilder, Response, StatusCode};

/// Sends `request` with Perch's default timeouts.
pub async fn fetch(request: Request) -> Result<Response> {
    Fetch::new().send(request).await
}

/// `GET url`.
pub async fn get(url: &str) -> Result<Response> {
    let request = request(Method::GET, url)
        .body(Body::empty())
        .map_err(|e| Error::bad_request(format!("invalid url {url:?}: {e}")))?;
    fetch(request).await
}

/// Starts an outgoing request; finish it with `.header(…)` and `.body(…)`.
pub fn request(method: Method, url: &str) -> RequestBuilder {
    ::http::Request::builder().method(method).uri(url)
}

/// An outgoing request's options. Perch caps the timeouts at the
/// operator's maxima.
#[derive(Default)]
pub struct Fetch {
    client: wstd::http::Client,
}

impl Fetch {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Time allowed to connect.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.client.set_connect_timeout(timeout);
        self
    }

    /// Time allowed until the response head arrives.
    pub fn first_byte_timeout(mut self, timeout: Duration) -> Self {
        self.client.set_first_byte_timeout(timeout);
        self
    }

    /// Time allowed between two chunks of the response body.
    pub fn between_bytes_timeout(mut self, timeout: Duration) -> Self {
        self.client.set_between_bytes_timeout(timeout);
        self
    }

    /// Sends `request`; the response body streams.
    pub async fn send(&self, request: Request) -> Result<Response> {
        let target = request.uri().to_string();
        self.client.send(request).await.map_err(|e| {
            Error::new(
                StatusCode::BAD_GATEWAY,
                "fetch_failed",
                format!("fetching {target}: {e:#}"),
            )
        })
    }
}
