//! Rust SDK for Perch functions.
//!
//! A Perch function is a standard `wasi:http/proxy` component built for
//! `wasm32-wasip2`. This crate makes one short to write:
//!
//! ```no_run
//! use perch_sdk::prelude::*;
//!
//! perch_sdk::export!(hello);
//!
//! async fn hello(req: Request) -> Response {
//!     let name = req.query("name").unwrap_or_else(|| "world".into());
//!     Response::from_text(format!("Hello, {name}!\n"))
//! }
//! ```
//!
//! - [`export!`] makes an async function the component's
//!   `wasi:http/incoming-handler`. It may return anything that is
//!   [`IntoResponse`](http::IntoResponse): a [`Response`](http::Response), a
//!   `String`, [`Json`](http::Json), or a [`Result`] whose [`Error`] becomes a
//!   JSON error response.
//! - [`http`]: [`Request`](http::Request) and [`Response`](http::Response) are
//!   the `http` crate's types with a streaming body; [`http::RequestExt`] and
//!   [`http::ResponseExt`] add query, cookie, JSON and body helpers.
//! - [`router`]: methods and path patterns with parameters.
//! - [`fetch`]: outbound HTTP under Perch's egress policy.
//! - [`kv`]: the tenant's key-value store (TTL, metadata, listing, counters,
//!   compare-and-swap).
//! - [`config`]: vars and secrets from the function's settings.
//! - [`log`]: [`info!`], [`warn!`], … to the function's log.
//!
//! Build with `cargo build --release --target wasm32-wasip2` and deploy the
//! `.wasm` with `perch deploy`. [`wstd`] (the async runtime underneath) is
//! re-exported for timers, streams and randomness.
#![deny(missing_docs)]

pub use wstd;

#[allow(missing_docs)]
mod bindings {
    wit_bindgen::generate!({
        path: ["../wit", "wit"],
        world: "perch:sdk/guest",
        generate_all,
    });
}

pub mod config;
mod error;
pub mod fetch;
pub mod http;
pub mod kv;
pub mod log;
pub mod router;

pub use error::{Error, Result};

/// What most functions need: `use perch_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::error::{Error, Result};
    pub use crate::http::{
        Body, IntoResponse, Json, Method, ReadBody, Request, RequestExt, Response, ResponseExt,
        StatusCode,
    };
}

/// Exports an async handler as the component's HTTP entry point.
///
/// The handler takes a [`Request`](http::Request) and returns anything
/// [`IntoResponse`](http::IntoResponse). Use it once per component, at the
/// crate root or in any module.
///
/// ```no_run
/// use perch_sdk::prelude::*;
///
/// perch_sdk::export!(handle);
///
/// async fn handle(_req: Request) -> Result<Json<Vec<u32>>> {
///     Ok(Json(vec![1, 2, 3]))
/// }
/// ```
#[macro_export]
macro_rules! export {
    ($handler:path) => {
        #[doc(hidden)]
        struct __PerchFunction;

        impl $crate::__private::wasip2::exports::http::incoming_handler::Guest for __PerchFunction {
            fn handle(
                request: $crate::__private::wasip2::http::types::IncomingRequest,
                response_out: $crate::__private::wasip2::http::types::ResponseOutparam,
            ) {
                $crate::__private::serve(request, response_out, $handler)
            }
        }

        $crate::__private::wasip2::http::proxy::export!(
            __PerchFunction with_types_in $crate::__private::wasip2
        );
    };
}

#[doc(hidden)]
pub mod __private {
    use std::future::Future;

    pub use wstd::__internal::wasip2;
    use wstd::__internal::wasip2::http::types::{IncomingRequest, ResponseOutparam};

    use crate::http::{IntoResponse, Request};

    /// Runs one request through `handler` ([`export!`](crate::export)'s body).
    pub fn serve<H, F, R>(request: IncomingRequest, out: ResponseOutparam, handler: H)
    where
        H: FnOnce(Request) -> F,
        F: Future<Output = R>,
        R: IntoResponse,
    {
        let responder = wstd::http::server::Responder::new(out);
        wstd::runtime::block_on(async move {
            let response = match wstd::http::request::try_from_incoming(request) {
                Ok(request) => handler(request).await.into_response(),
                Err(e) => {
                    crate::Error::bad_request(format!("unreadable request: {e:#}")).into_response()
                }
            };
            // The head is out by now; a failing body is cut short, which
            // the client sees as an incomplete response.
            if let Err(e) = responder.respond(response).await {
                crate::error!("sending the response body failed: {e:#}");
            }
        })
    }
}
