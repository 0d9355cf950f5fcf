//! The seam through which a request's trace sees what its guest does: each
//! KV call and each outbound request becomes a child span of the request's
//! span, and an outbound request carries the trace on (W3C
//! `traceparent`). The runtime knows no tracing library; the gateway
//! implements these over OpenTelemetry, and hands one to an invocation
//! through its [`LogSink`](crate::LogSink) (`trace`).
pub use perch_kv::guest::{CallSpan, CallTracer, KvOp};

/// One traced request, as the host sees it.
pub trait RequestTrace: CallTracer {
    /// An outbound request (`method`, `uri`) is about to go: its client
    /// span starts, and the headers that carry the trace on are added to
    /// `headers`.
    fn outbound(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        headers: &mut http::HeaderMap,
    ) -> Box<dyn OutboundSpan>;
}

/// The client span of one outbound request.
pub trait OutboundSpan: Send {
    /// Ends it: the response's status, or why there was none.
    fn end(self: Box<Self>, result: Result<u16, String>);
}
