//! The seam between the data plane and what runs a function version: a
//! wasm component on `perch-runtime`, or a container (`container.rs`).
//! [`NodeExecutor`] sends each version to the one that runs it. The data
//! plane has done routing, the tenant's concurrency gate and the input
//! limits before an executor sees the request.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};
use http_body_util::BodyExt;
use perch_runtime::{InvokeError, LogSink, Runtime};

use super::body::LimitedBody;
use super::container::ContainerExecutor;
use super::errors::Failure;
use crate::http::{BoxError, Holding, ResBody};
use crate::routing::{GatePermit, Runnable, Target};

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
            let Runnable::Wasm(invocation) = &target.versions[version].run else {
                return Err(Failure::Internal("not a wasm version".into()));
            };
            match runtime.handle_logged(invocation, req, log).await {
                Ok(resp) => Ok(resp.map(|body| {
                    Holding::new(body, permit)
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

/// Runs each version on what it is: wasm on the runtime, containers on the
/// container backend.
pub struct NodeExecutor {
    wasm: WasmExecutor,
    containers: ContainerExecutor,
}

impl NodeExecutor {
    /// An executor over `runtime` (container versions are proxied to their
    /// pools' instances).
    pub fn new(runtime: Arc<Runtime>) -> Self {
        NodeExecutor {
            wasm: WasmExecutor::new(runtime),
            containers: ContainerExecutor::new(),
        }
    }
}

impl Executor for NodeExecutor {
    fn execute(
        &self,
        target: &Arc<Target>,
        version: usize,
        req: Request<LimitedBody>,
        permit: GatePermit,
        log: Arc<dyn LogSink>,
    ) -> Execution {
        match &target.versions[version].run {
            Runnable::Wasm(_) => self.wasm.execute(target, version, req, permit, log),
            Runnable::Container(_) => self.containers.execute(target, version, req, permit, log),
        }
    }
}
