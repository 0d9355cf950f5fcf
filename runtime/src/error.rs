use thiserror::Error;

/// Failures of the runtime itself (engine set-up, artifact storage).
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The engine or linker could not be configured.
    #[error("engine setup failed: {0}")]
    Engine(String),
    /// A setting is unusable (e.g. the egress CA file).
    #[error("invalid runtime configuration: {0}")]
    Config(String),
    /// An artifact could not be read, written or rebuilt.
    #[error("artifact error: {0}")]
    Artifact(String),
}

impl RuntimeError {
    pub(crate) fn engine(e: impl std::fmt::Debug) -> Self {
        RuntimeError::Engine(format!("{e:?}"))
    }
    pub(crate) fn artifact(what: &str, e: impl std::fmt::Display) -> Self {
        RuntimeError::Artifact(format!("{what}: {e}"))
    }
}

/// Why an uploaded component was refused. Messages are safe to show the
/// uploader: they describe their own bytes.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// Not a WebAssembly binary at all.
    #[error("not a WebAssembly component: the bytes do not start with the wasm magic header")]
    NotWasm,
    /// A core module rather than a component.
    #[error(
        "this is a core WebAssembly module, not a component: build for wasm32-wasip2 (or wrap it with `wasm-tools component new`) so it exports wasi:http/incoming-handler"
    )]
    CoreModule,
    /// Malformed or failed to compile.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// Does not export the HTTP handler.
    #[error("{0}")]
    MissingExport(String),
    /// Imports something Perch does not provide.
    #[error("component imports `{name}`, which Perch does not provide{detail}")]
    UnsupportedImport {
        /// The import's full name.
        name: String,
        /// Extra explanation (starts with a separator when present).
        detail: String,
    },
    /// Compilation ran out of its CPU-time, memory or wall-clock budget (or
    /// the compiler died): the component is refused, the node unaffected.
    #[error("{0}")]
    CompileFailed(String),
    /// Storing the artifact failed (a server-side problem, not the upload's).
    #[error("storing the artifact failed")]
    Storage(#[source] RuntimeError),
}

/// How a request to a function failed. The gateway maps each to a status
/// and a generic JSON error; details are logged, never sent to the client.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum InvokeError {
    /// The guest trapped or returned without a response.
    #[error("function failed: {0}")]
    FunctionError(String),
    /// The instance hit its memory limit.
    #[error("memory limit hit")]
    MemoryLimit,
    /// CPU-time limit hit.
    #[error("CPU-time limit hit")]
    CpuTimeout,
    /// Wall-clock limit hit.
    #[error("wall-time limit hit")]
    WallTimeout,
    /// No instance slot is free on the node.
    #[error("instance pool exhausted")]
    Overloaded,
    /// The request body exceeded its limit while the guest was reading it.
    #[error("request body too large")]
    BodyTooLarge,
    /// Host-side failure (artifact missing, store set-up).
    #[error("internal error: {0}")]
    Internal(String),
}
