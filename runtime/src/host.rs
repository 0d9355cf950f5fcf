//! The per-request store data: WASI and wasi-http contexts, the resource
//! table and the limiter, the outbound hooks, and the guest's captured
//! stdout/stderr.
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use perch_kv::guest::{KvCtx, KvCtxView, KvView};
use wasmtime_wasi_config::WasiConfigVariables;

use crate::egress::{EgressConfig, OutboundPolicy};
use crate::internal::{InternalDestinations, OutboundFuture, OutboundResponse, Route};
use crate::limits::InstanceLimiter;
use crate::logs::{GuestOutput, LogStream};
use crate::meter::RequestState;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};

/// Store data of one instance (one request's, or a few sequential requests'
/// when the function opted into instance reuse).
pub struct Host {
    pub(crate) wasi: WasiCtx,
    pub(crate) config: Arc<WasiConfigVariables>,
    pub(crate) kv: Option<KvCtx>,
    pub(crate) http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: InstanceLimiter,
    pub(crate) hooks: PerchHooks,
    /// CPU accounting of the request being served; replaced per request.
    pub(crate) meter: Arc<RequestState>,
    /// The guest's captured stdout and stderr, taken after each request.
    pub(crate) output: GuestOutput,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl KvView for Host {
    fn kv(&mut self) -> Option<KvCtxView<'_>> {
        let ctx = self.kv.as_mut()?;
        Some(KvCtxView {
            ctx,
            table: &mut self.table,
        })
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Perch's wasi-http policy hooks: at most `max_requests` outbound requests
/// per invocation, each offered to the internal destinations first, else
/// through the egress checks.
pub(crate) struct PerchHooks {
    pub(crate) egress: Arc<EgressConfig>,
    pub(crate) policy: Arc<OutboundPolicy>,
    pub(crate) internal: Option<Arc<dyn InternalDestinations>>,
    pub(crate) label: Arc<str>,
    pub(crate) sent: u32,
    /// Counts refusals (`egress_refused`).
    pub(crate) stats: Arc<crate::RuntimeStats>,
    /// The request's trace, if it is traced (replaced per request).
    pub(crate) trace: Option<Arc<dyn crate::RequestTrace>>,
}

impl WasiHttpHooks for PerchHooks {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                    ),
                    HttpError,
                >,
            > + Send,
    > {
        self.sent = self.sent.saturating_add(1);
        if self.sent > self.policy.max_requests {
            tracing::info!(function = %self.label, limit = self.policy.max_requests, "outbound request refused: per-invocation limit");
            self.stats.egress_refused.fetch_add(1, Ordering::Relaxed);
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        let span = self.trace.as_ref().map(|t| {
            let (method, uri) = (request.method().clone(), request.uri().clone());
            t.outbound(&method, &uri, request.headers_mut())
        });
        let (request, options) = match &self.internal {
            Some(internal) => match internal.route(request, options) {
                Route::Internal(response) => return traced(span, response),
                Route::External(request, options) => (request, options),
            },
            None => (request, options),
        };
        let (egress, policy, label) =
            (self.egress.clone(), self.policy.clone(), self.label.clone());
        let stats = self.stats.clone();
        traced(
            span,
            Box::pin(async move {
                let sent = crate::egress::send(egress, policy, label, request, options).await;
                if let Err(HttpError::HttpRequestDenied | HttpError::DestinationIpProhibited) =
                    &sent
                {
                    stats.egress_refused.fetch_add(1, Ordering::Relaxed);
                }
                sent
            }),
        )
    }
}

/// `sent`, ending the request's client span (if traced) with its status
/// or its error once the response head is in.
fn traced(
    span: Option<Box<dyn crate::OutboundSpan>>,
    sent: OutboundFuture,
) -> Box<dyn Future<Output = Result<OutboundResponse, HttpError>> + Send> {
    let Some(span) = span else {
        return Box::new(sent);
    };
    Box::new(async move {
        let sent = sent.await;
        span.end(match &sent {
            Ok((resp, _)) => Ok(resp.status().as_u16()),
            Err(e) => Err(format!("{e:?}")),
        });
        sent
    })
}

/// One of the guest's output streams, captured into its [`GuestOutput`].
#[derive(Clone)]
pub(crate) struct GuestStream {
    pub(crate) output: GuestOutput,
    pub(crate) stream: LogStream,
}

impl GuestStream {
    fn append(&self, data: &[u8]) {
        self.output.append(self.stream, data);
    }
}

impl IsTerminal for GuestStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for GuestStream {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestStream {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for GuestStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
