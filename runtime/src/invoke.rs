//! Running one request: a fresh store and instance per request (or an idle
//! one for functions that opted into reuse), CPU time
//! measured while the guest is being polled, a wall-clock deadline over the
//! whole exchange, failures classified for the gateway, and the
//! invocation's record handed to its log sink at the end.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::oneshot;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

use perch_kv::guest::{KvAccess, KvCtx};
use wasmtime_wasi_config::WasiConfigVariables;

use crate::egress::OutboundPolicy;
use crate::host::{GuestStream, Host, PerchHooks};
use crate::internal::InternalDestinations;
use crate::limits::InstanceLimiter;
use crate::logs::{GuestOutput, LogSink, LogStream, TracingLogSink};
use crate::meter::{CpuTimed, RequestState};
use crate::pool::InstancePool;
use crate::record::{Consumer, Ledger, TaskEnd, outcome_of};
use crate::{Digest, InvokeError, Limits, Runtime};

/// What to run for one request.
#[derive(Clone)]
pub struct Invocation {
    /// The component's digest.
    pub digest: Digest,
    /// Resource limits for this request.
    pub limits: Limits,
    /// Environment variables the guest sees.
    pub env: Vec<(String, String)>,
    /// What `wasi:config/store` answers.
    pub config: Arc<WasiConfigVariables>,
    /// The KV namespaces the function may open; `None` disables KV.
    pub kv: Option<Arc<KvAccess>>,
    /// Outbound HTTP allow-list and request budget.
    pub outbound: Arc<OutboundPolicy>,
    /// Destinations Perch serves itself, asked before the egress policy
    /// about each outbound request; `None`: there are none.
    pub internal: Option<Arc<dyn InternalDestinations>>,
    /// Where the record of each request (the guest's output, the outcome)
    /// goes; [`TracingLogSink`] by default.
    pub log_sink: Arc<dyn LogSink>,
    /// Names the function in logs, e.g. `tenant/function@3`.
    pub label: Arc<str>,
    /// Requests one instance may serve in sequence. 1 (the default) is a
    /// fresh instance per request; more is an opt-in for trusted, stateless
    /// functions: state left in the instance is seen by later requests.
    /// CPU, wall-time, outbound and KV budgets still apply per request.
    pub max_reuse: u32,
    pool: Arc<InstancePool>,
}

impl std::fmt::Debug for Invocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Env and config may hold secrets: never print them.
        f.debug_struct("Invocation")
            .field("digest", &self.digest)
            .field("limits", &self.limits)
            .field("label", &self.label)
            .field("max_reuse", &self.max_reuse)
            .finish_non_exhaustive()
    }
}

impl Invocation {
    /// An invocation with no environment, config, KV or internal
    /// destinations, logging to the server log.
    pub fn new(digest: Digest, limits: Limits, label: &str) -> Self {
        Invocation {
            digest,
            limits,
            env: Vec::new(),
            config: Arc::default(),
            kv: None,
            outbound: Arc::new(OutboundPolicy {
                allow: Vec::new(),
                max_requests: 50,
            }),
            internal: None,
            log_sink: Arc::new(TracingLogSink),
            label: label.into(),
            max_reuse: 1,
            pool: Arc::default(),
        }
    }
}

/// The streamed response body of a function.
pub type ResponseBody = GuardedBody;

struct InUse(Arc<crate::RuntimeStats>);
impl Drop for InUse {
    fn drop(&mut self) {
        self.0.instances_in_use.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request's trace as the KV host's tracer of guest calls.
fn kv_tracer(
    trace: &Option<Arc<dyn crate::RequestTrace>>,
) -> Option<Arc<dyn perch_kv::guest::CallTracer>> {
    trace
        .clone()
        .map(|t| t as Arc<dyn perch_kv::guest::CallTracer>)
}

/// How the request gets its instance.
enum Instance {
    Fresh(ProxyPre<Host>),
    Reused(Proxy, u32),
}

impl Runtime {
    /// A new store for `inv`: WASI, wasi-http, KV and config contexts, the
    /// memory limiter, the CPU-limit epoch callback.
    fn new_store(
        &self,
        inv: &Invocation,
        trace: Option<Arc<dyn crate::RequestTrace>>,
    ) -> Store<Host> {
        let memory_hit = Arc::new(AtomicBool::new(false));
        let output = GuestOutput::default();
        let stream = |stream| GuestStream {
            output: output.clone(),
            stream,
        };
        let wasi = WasiCtx::builder()
            .envs(&inv.env)
            .stdout(stream(LogStream::Stdout))
            .stderr(stream(LogStream::Stderr))
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(inv.limits.table_capacity);
        let host = Host {
            wasi,
            config: inv.config.clone(),
            kv: inv.kv.clone().map(|kv| KvCtx::new(kv, kv_tracer(&trace))),
            http: WasiHttpCtx::new(),
            table,
            limiter: InstanceLimiter::new(inv.limits.memory_bytes, memory_hit.clone()),
            hooks: PerchHooks {
                egress: self.egress.clone(),
                policy: inv.outbound.clone(),
                internal: inv.internal.clone(),
                stats: self.stats.clone(),
                label: inv.label.clone(),
                sent: 0,
                trace,
            },
            meter: Arc::new(RequestState::new(inv.limits.cpu, memory_hit)),
            output,
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limiter);
        store.epoch_deadline_callback(|ctx| {
            let meter = &ctx.data().meter;
            if meter.cpu_used() >= meter.cpu_limit {
                meter.cpu_hit.store(true, Ordering::Relaxed);
                return Err(wasmtime::format_err!("CPU-time limit exceeded"));
            }
            // Yield so other requests run; the guest resumes next tick.
            Ok(UpdateDeadline::Yield(1))
        });
        store
    }

    /// Builds a request's store and instantiates the invocation's component
    /// in it: the fixed cost every fresh-instance request pays before the
    /// guest's handler runs. Dropping the returned store is the teardown a
    /// request pays after it (the pooled slots are reset then). For
    /// benchmarks.
    pub async fn instantiate_only(
        self: &Arc<Self>,
        inv: &Invocation,
    ) -> Result<Store<Host>, InvokeError> {
        let pre = self
            .load_async(&inv.digest)
            .await
            .map_err(|e| InvokeError::Internal(e.to_string()))?;
        let mut store = self.new_store(inv, None);
        store.set_epoch_deadline(1);
        pre.instantiate_async(&mut store)
            .await
            .map_err(|e| InvokeError::Internal(format!("{e:?}")))?;
        Ok(store)
    }

    /// The store and instance for one request: an idle instance of the
    /// function if it opted into reuse and one is parked, else a fresh store
    /// for the loaded component.
    async fn prepare(
        self: &Arc<Self>,
        inv: &Invocation,
        trace: Option<Arc<dyn crate::RequestTrace>>,
    ) -> Result<(Store<Host>, Instance, bool), InvokeError> {
        let idle = if inv.max_reuse > 1 {
            inv.pool.take()
        } else {
            None
        };
        Ok(match idle {
            Some(idle) => {
                let mut store = idle.store;
                let host = store.data_mut();
                // Per-request budgets start again; the memory limit spans
                // the instance's life (its memory never shrinks).
                host.meter = Arc::new(RequestState::new(inv.limits.cpu, host.limiter.hit.clone()));
                host.limiter.hit.store(false, Ordering::Relaxed);
                host.hooks.sent = 0;
                host.hooks.trace = trace.clone();
                host.kv = inv.kv.clone().map(|kv| KvCtx::new(kv, kv_tracer(&trace)));
                (store, Instance::Reused(idle.proxy, idle.served), false)
            }
            None => {
                let (pre, cold) = self
                    .load_cold(&inv.digest)
                    .await
                    .map_err(|e| InvokeError::Internal(e.to_string()))?;
                (self.new_store(inv, trace), Instance::Fresh(pre), cold)
            }
        })
    }

    /// Runs `req` through an instance of the invocation's component: a fresh
    /// one, or, when the function opted into reuse, an idle one that has
    /// served fewer than `max_reuse` requests.
    ///
    /// Returns once the guest has set its response head; the body streams
    /// from the still-running instance. If the guest fails after the head,
    /// the body ends with an error (so the connection is aborted, not
    /// finished cleanly). A failed instance is never reused. Once both the
    /// instance and the response are done (or dropped), the invocation's
    /// record goes to its `log_sink`.
    pub async fn handle<B>(
        self: &Arc<Self>,
        inv: &Invocation,
        req: hyper::Request<B>,
    ) -> Result<hyper::Response<ResponseBody>, InvokeError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        self.handle_logged(inv, req, inv.log_sink.clone()).await
    }

    /// [`Runtime::handle`], with this request's record going to `sink`
    /// instead of the invocation's `log_sink` (a sink that knows the
    /// request: its id, method, path).
    pub async fn handle_logged<B>(
        self: &Arc<Self>,
        inv: &Invocation,
        req: hyper::Request<B>,
        sink: Arc<dyn LogSink>,
    ) -> Result<hyper::Response<ResponseBody>, InvokeError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let trace = sink.trace();
        let ledger = Ledger::new(sink, inv.label.clone());
        let mut consumer = Consumer::new(ledger.clone());
        // Hyper drops the body of these unread: no sign of a client gone.
        let head_only = req.method() == http::Method::HEAD;

        let (resp_tx, resp_rx) = oneshot::channel();
        let prepared = self
            .prepare(inv, trace)
            .await
            .and_then(|(mut store, instance, cold)| {
                ledger.cold_start(cold);
                let internal = |e: wasmtime::Error| InvokeError::Internal(format!("{e:?}"));
                // The gateway gives a request over TLS an `https` URI.
                let scheme = match req.uri().scheme_str() {
                    Some("https") => Scheme::Https,
                    _ => Scheme::Http,
                };
                let req = store
                    .data_mut()
                    .http()
                    .new_incoming_request(scheme, req)
                    .map_err(internal)?;
                let out = store
                    .data_mut()
                    .http()
                    .new_response_outparam(resp_tx)
                    .map_err(internal)?;
                Ok((store, instance, req, out))
            });
        let (mut store, instance, req, out) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                ledger.task_ended(TaskEnd::host_failure());
                consumer.refused();
                consumer.done();
                return Err(e);
            }
        };
        store.set_epoch_deadline(1);
        let state = store.data().meter.clone();
        let output = store.data().output.clone();

        self.stats.instances_in_use.fetch_add(1, Ordering::Relaxed);
        let in_use = InUse(self.stats.clone());
        let (done_tx, done_rx) = oneshot::channel::<bool>();
        let label = inv.label.clone();
        let wall = inv.limits.wall;
        let (pool, max_reuse) = (inv.pool.clone(), inv.max_reuse);
        let task = tokio::spawn(async move {
            let run = CpuTimed {
                state: state.clone(),
                fut: Box::pin(async move {
                    let (proxy, served) = match instance {
                        Instance::Fresh(pre) => (pre.instantiate_async(&mut store).await?, 0),
                        Instance::Reused(proxy, served) => (proxy, served),
                    };
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, req, out)
                        .await?;
                    wasmtime::Result::Ok((store, proxy, served + 1))
                }),
            };
            let result = match tokio::time::timeout(wall, run).await {
                Ok(Ok(instance)) => Ok(instance),
                Ok(Err(e)) => Err(classify(&state, e)),
                Err(_) => Err(InvokeError::WallTimeout),
            };
            drop(in_use);
            let (logs, truncated) = output.take();
            ledger.task_ended(TaskEnd {
                failure: result.as_ref().err().map(outcome_of),
                cpu: state.cpu_used(),
                logs,
                truncated,
            });
            let result = match result {
                Ok((store, proxy, served)) => {
                    if served < max_reuse {
                        pool.put(store, proxy, served);
                    }
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!(function = %label, error = %e, cpu_ms = state.cpu_used().as_millis() as u64, "function failed");
                    Err(e)
                }
            };
            let _ = done_tx.send(result.is_err());
            result
        });

        match resp_rx.await {
            Ok(Ok(resp)) => {
                let status = resp.status();
                consumer.head(status.as_u16());
                if head_only || status == 204 || status == 304 {
                    consumer.done();
                }
                Ok(resp.map(|body| GuardedBody {
                    inner: body,
                    done: Some(done_rx),
                    consumer,
                }))
            }
            Ok(Err(code)) => {
                consumer.refused();
                consumer.done();
                Err(InvokeError::FunctionError(format!(
                    "guest answered with error {code:?}"
                )))
            }
            Err(_) => {
                // No response will come: the outcome is the task's.
                consumer.refused();
                consumer.done();
                match task.await {
                    Ok(Err(e)) => Err(e),
                    Ok(Ok(())) => Err(InvokeError::FunctionError(
                        "returned without setting a response".into(),
                    )),
                    Err(e) => Err(InvokeError::Internal(format!("request task failed: {e}"))),
                }
            }
        }
    }
}

fn classify(state: &RequestState, e: wasmtime::Error) -> InvokeError {
    if state.cpu_hit.load(Ordering::Relaxed) {
        return InvokeError::CpuTimeout;
    }
    if state.memory_hit.load(Ordering::Relaxed) {
        return InvokeError::MemoryLimit;
    }
    if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
        .is_some()
    {
        return InvokeError::Overloaded;
    }
    InvokeError::FunctionError(format!("{e:?}"))
}

/// The guest's response body, which turns "the instance failed after the
/// head went out" into a body error instead of a clean end.
pub struct GuardedBody {
    inner: HyperOutgoingBody,
    done: Option<oneshot::Receiver<bool>>,
    consumer: Consumer,
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {}
            Poll::Ready(Some(Err(e))) => {
                // The guest's side broke the body: not the client leaving.
                self.consumer.done();
                return Poll::Ready(Some(Err(e)));
            }
            other => return other,
        }
        // The body ended: clean only if the instance also finished cleanly.
        let Some(done) = self.done.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(done).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(failed) => {
                self.done = None;
                // The record goes out now, before the client sees the end.
                self.consumer.done();
                if failed.unwrap_or(true) {
                    Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpResponseIncomplete)))
                } else {
                    Poll::Ready(None)
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
