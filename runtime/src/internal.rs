//! Destinations Perch serves itself, asked about every outbound request
//! before the egress policy. The runtime knows nothing of what they are:
//! the gateway decides (later: a tenant's containers at
//! `NAME.containers.internal`), per invocation.
use std::future::Future;
use std::pin::Pin;

use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};

/// An outbound response: its head and body, and a future that drives the
/// exchange until the body has been read (it resolves to an error of the
/// request side, if any; `async { Ok(()) }` when there is nothing to drive).
pub type OutboundResponse = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
);

/// The pending response to an outbound request.
pub type OutboundFuture = Pin<Box<dyn Future<Output = Result<OutboundResponse, HttpError>> + Send>>;

/// What [`InternalDestinations::route`] decided about a request.
#[non_exhaustive]
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per outbound request and taken apart at once; boxing the request would cost an allocation each time"
)]
pub enum Route {
    /// Perch serves the request itself; this is its response. An error is
    /// what the guest sees (e.g. `HttpRequestDenied` for a name it may not
    /// reach).
    Internal(OutboundFuture),
    /// Not an internal destination: the request goes on to the egress
    /// policy and out, unchanged.
    External(http::Request<WasiBody>, Option<RequestOptions>),
}

/// Decides, for each outbound request of an invocation, whether Perch
/// serves it itself. Asked after the request was counted toward the
/// invocation's `max_requests` and before the egress policy (allow-list,
/// address checks), which internal requests never reach.
pub trait InternalDestinations: Send + Sync {
    /// Takes the request to serve it, or hands it back. A request taken
    /// should have its body read (as a server reads it): the guest may
    /// still be writing it, and sees an error once it is dropped.
    fn route(&self, request: http::Request<WasiBody>, options: Option<RequestOptions>) -> Route;
}
