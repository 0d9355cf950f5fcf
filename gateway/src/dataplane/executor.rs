//! The seam between the data plane and what runs a function version: a
//! wasm component on `perch-runtime` today, a container later. The data
//! plane has done routing, the tenant's concurrency gate and the input
//! limits before an executor sees the request.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};
use http_body_util::BodyExt;
use perch_runtime::{InvokeError, LogSink, Runtime};

use super::body::{LimitedBody, WithPermit};
use super::errors::Failure;
use crate::http::{BoxError, ResBody};
use crate::routing::{GatePermit, Target};

/// The future of one execution.
pub type Execution = Pin<Box<dyn Future<Output = Result<Response<ResBody>, Failure>> + Send>>;

/// Serves a routed request for one deployed version of a target.
pub trait Executor: Send + Sync + 'static {
    /// Runs `req` on `target.versions[version]`; the response head is
    /// returned as soon as there is one, its body may still be streaming.
    /// `permit` (the tenant's concurrency slot) is held until the response
    /// body is done. The request's event goes to `log` once the execution
    /// and the response are both done (the sink's `record`).
    fn execute(
        &self,
        target: &Arc<Target>,
        version: usize,
        req: Request<LimitedBody>,
        permit: GatePermit,
        log: Arc<dyn LogSink>,
    ) -> Execution;
}

/// Runs wasm versions on the node's wasmtime host.
pub struct WasmExecutor {
    runtime: Arc<Runtime>,
}

impl WasmExecutor {
    /// An executor over `runtime`.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        WasmExecutor { runtime }
    }
}

impl Executor for WasmExecutor {
    fn execute(
        &self,
        target: &Arc<Target>,
        version: usize,
        req: Request<LimitedBody>,
        permit: GatePermit,
        log: Arc<dyn LogSink>,
    ) -> Execution {
        let runtime = self.runtime.clone();
        let target = target.clone();
        Box::pin(async move {
            let invocation = &target.versions[version].invocation;
            match runtime.handle_logged(invocation, req, log).await {
                Ok(resp) => Ok(resp.map(|body| {
                    WithPermit {
                        inner: body,
                        _permit: permit,
                    }
                    .map_err(|e| Box::new(e) as BoxError)
                    .boxed_unsync()
                })),
                Err(e) => {
                    let detail = e.to_string();
                    Err(match e {
                        InvokeError::MemoryLimit => Failure::MemoryLimit(detail),
                        InvokeError::CpuTimeout | InvokeError::WallTimeout => {
                            Failure::Timeout(detail)
                        }
                        InvokeError::Overloaded => Failure::Overloaded(detail),
                        InvokeError::BodyTooLarge => Failure::BodyTooLarge(detail),
                        InvokeError::FunctionError(_) => Failure::Function(detail),
                        _ => Failure::Internal(detail),
                    })
                }
            }
        })
    }
}
