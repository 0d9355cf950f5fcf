//! The seam between the supervisor and a container engine. The Docker
//! Engine API implementation (`docker.rs`) works against Docker and
//! Podman; a Kubernetes driver (a Deployment and Service per version,
//! scaled 0↔N) would implement the same calls.
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// The labels Perch puts on every container it runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Labels {
    /// The node that runs it.
    pub node: String,
    /// Owner.
    pub tenant: String,
    /// Function name.
    pub function: String,
    /// Version number.
    pub version: u32,
}

/// Label keys.
pub const LABEL_NODE: &str = "perch.node";
/// Label keys.
pub const LABEL_TENANT: &str = "perch.tenant";
/// Label keys.
pub const LABEL_FUNCTION: &str = "perch.function";
/// Label keys.
pub const LABEL_VERSION: &str = "perch.version";
/// The host port an instance is published on (so a restarted node can
/// adopt it without asking the engine).
pub const LABEL_PORT: &str = "perch.port";

impl Labels {
    /// As the engine's label map, with the published port.
    pub fn to_map(&self, host_port: u16) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_NODE.into(), self.node.clone()),
            (LABEL_TENANT.into(), self.tenant.clone()),
            (LABEL_FUNCTION.into(), self.function.clone()),
            (LABEL_VERSION.into(), self.version.to_string()),
            (LABEL_PORT.into(), host_port.to_string()),
        ])
    }

    /// Read back from an engine's label map (`None` unless all are there).
    pub fn from_map(map: &HashMap<String, String>) -> Option<(Labels, u16)> {
        Some((
            Labels {
                node: map.get(LABEL_NODE)?.clone(),
                tenant: map.get(LABEL_TENANT)?.clone(),
                function: map.get(LABEL_FUNCTION)?.clone(),
                version: map.get(LABEL_VERSION)?.parse().ok()?,
            },
            map.get(LABEL_PORT)?.parse().ok()?,
        ))
    }
}

/// One instance to create and start.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// Engine-wide unique name.
    pub name: String,
    /// Image id.
    pub image: String,
    /// `None` runs the image's command.
    pub command: Option<Vec<String>>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// The port inside the container.
    pub port: u16,
    /// The port published on 127.0.0.1.
    pub host_port: u16,
    /// Memory limit, bytes (swap is not allowed).
    pub memory_bytes: u64,
    /// CPU limit, in billionths of a CPU.
    pub nano_cpus: i64,
    /// Processes at most.
    pub pids: i64,
    /// The tenant's network.
    pub network: String,
    /// Perch's labels.
    pub labels: Labels,
}

/// How a container is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// Running.
    Running,
    /// Stopped with this exit code; `oom` when the kernel killed it for
    /// memory (an engine may not say so: exit 137 under a memory limit
    /// counts too).
    Exited {
        /// Exit code.
        code: i64,
        /// Killed for memory.
        oom: bool,
    },
    /// The engine has no such container.
    Gone,
}

/// A tenant's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantNetwork {
    /// Its name (`perch-net-<tenant>`).
    pub name: String,
    /// Its bridge interface on the host, when the engine says.
    pub bridge: Option<String>,
}

/// A container Perch labelled, as the engine lists it.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Engine id.
    pub id: String,
    /// Its labels.
    pub labels: Labels,
    /// Its published port.
    pub host_port: u16,
    /// Whether it runs.
    pub running: bool,
}

/// Engine failures. The text is for the server log, never for clients.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The engine refused the request (status and its message).
    #[error("engine answered {status}: {message}")]
    Refused {
        /// HTTP status of the engine's answer.
        status: u16,
        /// The engine's message.
        message: String,
    },
    /// The engine cannot be reached, or the call failed on the way.
    #[error("engine: {0}")]
    Unavailable(String),
}

impl DriverError {
    /// Whether the engine said the thing does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, DriverError::Refused { status: 404, .. })
    }
}

/// What the supervisor asks of an engine.
#[async_trait::async_trait]
pub trait ContainerDriver: Send + Sync + 'static {
    /// Loads the image archive at `archive` (already checked by
    /// [`crate::archive::inspect`]).
    async fn load_image(&self, archive: &Path) -> Result<(), DriverError>;

    /// Whether the engine has image `id`.
    async fn has_image(&self, id: &str) -> Result<bool, DriverError>;

    /// Removes image `id` (absent is fine).
    async fn remove_image(&self, id: &str) -> Result<(), DriverError>;

    /// The tenant's own network, created (isolated from every other
    /// network, its bridge named by [`crate::isolation::bridge_name`])
    /// when missing.
    async fn tenant_network(&self, node: &str, tenant: &str) -> Result<TenantNetwork, DriverError>;

    /// Creates and starts an instance; returns its id.
    async fn run(&self, req: &RunRequest) -> Result<String, DriverError>;

    /// Stops an instance (SIGTERM, SIGKILL after `grace`) and removes it;
    /// one that is already gone is fine.
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), DriverError>;

    /// How an instance is doing.
    async fn state(&self, id: &str) -> Result<ContainerState, DriverError>;

    /// Every container labelled for `node`, running or not.
    async fn list(&self, node: &str) -> Result<Vec<Listed>, DriverError>;

    /// Sends what the container prints, line by line as `(stderr?, line)`
    /// (a line without its break; at most 16 KiB, longer ones are split),
    /// from `since` (unix seconds) until it stops or `out` is closed.
    async fn follow_output(
        &self,
        id: &str,
        since: i64,
        out: tokio::sync::mpsc::Sender<(bool, String)>,
    ) -> Result<(), DriverError>;

    /// Sends the id of each container labelled for `node` that exits, as
    /// the engine reports it, until the engine's event stream ends (or
    /// `exits` is closed).
    async fn watch_exits(
        &self,
        node: &str,
        exits: tokio::sync::mpsc::Sender<String>,
    ) -> Result<(), DriverError>;
}
