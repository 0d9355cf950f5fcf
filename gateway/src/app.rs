//! The admin API's state.
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use perch_runtime::Runtime;

use crate::artifacts::Artifacts;
use crate::config::Config;
use crate::cron::Scheduler;
use crate::logs::LogHub;
use crate::registry::Registry;
use crate::telemetry::Metrics;
use crate::throttle::Throttle;

/// Everything an admin request handler needs.
pub struct App {
    /// Resolved configuration.
    pub config: Config,
    /// Tenants, functions, routes, tokens.
    pub registry: Arc<Registry>,
    /// The wasmtime host.
    pub runtime: Arc<Runtime>,
    /// Deletes components no version uses.
    pub artifacts: Arc<Artifacts>,
    /// Functions' logs (shared with the data plane).
    pub logs: Arc<LogHub>,
    /// Runs cron ticks (and the ones asked for over the API).
    pub scheduler: Arc<Scheduler>,
    /// The container backend, when `[containers]` turns it on.
    pub containers: Option<Arc<perch_containers::Backend>>,
    /// The audit log of admin changes.
    pub audit: Arc<dyn crate::audit::AuditStore>,
    /// The node's database (registry, KV, usage, audit), for backups;
    /// `None` in cluster mode (the state is in PostgreSQL: `pg_dump`).
    pub db: Option<Arc<redb::Database>>,
    /// Where usage totals are kept (and, in cluster mode, what other
    /// nodes counted).
    pub usage_store: Arc<dyn crate::telemetry::usage::UsageStore>,
    /// The key-value store, its limits checked.
    pub kv: Arc<dyn perch_kv::KvStore>,
    /// Counters (shared with the data plane).
    pub metrics: Arc<Metrics>,
    /// SHA-256 (hex) of the admin token.
    pub admin_token_hash: String,
    /// Failed-auth throttle.
    pub throttle: Throttle,
    /// Bounds concurrent compilations so uploads cannot starve the node.
    pub compile_slots: tokio::sync::Semaphore,
    /// The nodes' heartbeats (`GET /v1/nodes`).
    pub nodes: Arc<dyn crate::nodes::NodeStore>,
    /// Whether the node's last heartbeat reached its storage (always, on
    /// a single node); false: `/readyz` says degraded.
    pub storage_ok: AtomicBool,
    /// False once shutdown begins.
    pub ready: AtomicBool,
    /// Turns true once shutdown begins (ends live log streams).
    pub stopping: tokio::sync::watch::Receiver<bool>,
}
