//! The registry of tenants, tokens, functions, versions and routes.
//!
//! Records live in a [`RegistryStore`] (durable before any write returns)
//! and in memory. Every change is made on a copy of the in-memory state by
//! the rules (`rules.rs`), committed to the store as one batch against the
//! revision the copy was made from, and only after the commit installed —
//! together with a new routing snapshot (`snapshot.rs`) that the data plane
//! picks up atomically. A commit that lost a race with another writer of
//! the same store is recomputed on the reloaded state and retried, never
//! surfaced. No lock is held by the data plane, and none across a guest call.
//!
//! The in-memory state and the snapshot are persistent maps (`imbl`): a copy
//! shares everything it does not change, and a change rebuilds the targets
//! of only the functions and hosts it wrote. An admin change therefore costs
//! the same with ten functions deployed as with ten thousand.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::limits::LimitSet;
use crate::routing::{RouteTable, TenantGate};
use crate::secrets::SecretBox;

mod model;
mod pg_store;
mod redb_store;
mod rules;
mod snapshot;
mod state;
mod store;

pub use model::{
    CertificateRecord, Deployment, Function, Holdings, HostVerification, ImageRecord, Outbound,
    QUOTAS, Quotas, Route, SCOPES, Settings, Split, Tenant, TokenRecord, Version, VersionKind,
    WORLD_P2, certificate_context, now, scopes_text, secret_context, var_secret_collision,
};
pub use pg_store::PgStore;
pub use redb_store::{RedbStore, SCHEMA_VERSION};
pub use rules::{AcmeHost, FunctionHold, MAX_DEPLOYED, NewVersion};
pub use snapshot::KV_OPS_PER_INVOCATION;
pub use store::{Change, Kind, Loaded, Records, RegistryStore, StoreError};

use snapshot::Inner;
use state::{State, Touched};

/// Registry failures, mapped to HTTP statuses by the admin API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The object or its parent does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The host is claimed by another tenant.
    #[error("{0}")]
    HostTaken(String),
    /// The host is outside the tenant's domains.
    #[error("{0}")]
    HostNotAllowed(String),
    /// The host must be verified first (`node.verify_hosts`).
    #[error("{0}")]
    HostNotVerified(String),
    /// A malformed value.
    #[error("{0}")]
    Invalid(String),
    /// A deployment that breaks the rules (versions, percents, sticky key).
    #[error("{0}")]
    InvalidDeployment(String),
    /// Retention could drop no version to make room for a new one.
    #[error("{0}")]
    TooManyVersions(String),
    /// Settings that do not apply to the version's kind.
    #[error("{0}")]
    InvalidSettings(String),
    /// An image some kept version runs.
    #[error("{0}")]
    ImageInUse(String),
    /// An image the tenant may not run.
    #[error("{0}")]
    ImageNotAllowed(String),
    /// The change would take the tenant past one of its quotas.
    #[error("{message}")]
    QuotaExceeded {
        /// Which quota (one of `QUOTAS`).
        quota: &'static str,
        /// Its limit.
        limit: u64,
        /// For people.
        message: String,
    },
    /// The store failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// The store cannot be reached (cluster mode: PostgreSQL is down);
    /// nothing was changed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => RegistryError::Unavailable(m),
            other => RegistryError::Storage(other.to_string()),
        }
    }
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Times a change is recomputed after losing a commit race before the
/// registry gives up (each retry reloads the store first).
const COMMIT_ATTEMPTS: usize = 16;

/// The registry.
pub struct Registry {
    store: Arc<dyn RegistryStore>,
    /// The latest revision the store has announced (subscribed at open, so
    /// no commit after the load is missed).
    revisions: watch::Receiver<u64>,
    secrets: Arc<SecretBox>,
    kv: std::sync::OnceLock<Arc<dyn perch_kv::KvStore>>,
    containers: std::sync::OnceLock<Arc<perch_containers::Backend>>,
    /// Functions with container versions, for `NAME.containers.internal`.
    directory: Arc<crate::routing::ContainerDirectory>,
    inner: Mutex<Inner>,
    routes: ArcSwap<RouteTable>,
    gates: Mutex<HashMap<String, Arc<TenantGate>>>,
    /// Tenant → new function name → uploads in progress holding a place
    /// for it within the `functions` quota.
    holds: Mutex<HashMap<String, HashMap<String, u32>>>,
    /// Tenants' usage counters, which their targets hold.
    usage: Arc<crate::telemetry::Usage>,
    /// Guest KV operations, counted by every function's KV access.
    kv_counters: Arc<perch_kv::guest::KvCounters>,
    /// Tenants' `kv_bytes` and `kv_keys`, which the KV store enforces.
    kv_quotas: Arc<perch_kv::KvQuotas>,
    defaults: LimitSet,
    /// Versions kept per function (`max.versions_per_function`).
    max_versions: u32,
    /// The config's `[quotas]`: what a tenant without its own may hold.
    quota_defaults: Quotas,
    /// Counts installs that changed a certificate, for the TLS listener.
    certificates: watch::Sender<u64>,
    /// Counts every install (a change here, or another node's caught up).
    installs: watch::Sender<u64>,
    /// `node.verify_hosts`: hosts outside a tenant's domains need a
    /// verification first.
    verify_hosts: bool,
}

/// Versions kept per function unless the config says otherwise.
pub const DEFAULT_MAX_VERSIONS: u32 = 100;

impl Registry {
    /// Loads the registry from `store`. Blocking.
    pub fn open(
        store: Arc<dyn RegistryStore>,
        defaults: LimitSet,
        secrets: Arc<SecretBox>,
    ) -> Result<Registry> {
        let registry = Registry {
            revisions: store.subscribe(),
            store,
            secrets,
            kv: std::sync::OnceLock::new(),
            containers: std::sync::OnceLock::new(),
            directory: Arc::default(),
            inner: Mutex::new(Inner::default()),
            routes: ArcSwap::from_pointee(RouteTable::default()),
            gates: Mutex::new(HashMap::new()),
            holds: Mutex::default(),
            usage: Arc::default(),
            kv_counters: Arc::default(),
            kv_quotas: Arc::default(),
            defaults,
            max_versions: DEFAULT_MAX_VERSIONS,
            quota_defaults: Quotas::default(),
            certificates: watch::channel(0).0,
            installs: watch::channel(0).0,
            verify_hosts: false,
        };
        registry.reload(&mut registry.lock())?;
        Ok(registry)
    }

    /// Tenants' usage counters.
    pub fn usage(&self) -> &Arc<crate::telemetry::Usage> {
        &self.usage
    }

    /// Tenants' KV quotas, for the KV store to enforce (kept in step with
    /// the tenants' records and the defaults).
    pub fn kv_quotas(&self) -> &Arc<perch_kv::KvQuotas> {
        &self.kv_quotas
    }

    /// Guest KV operations so far.
    pub fn kv_counters(&self) -> &perch_kv::guest::KvCounters {
        &self.kv_counters
    }

    /// A function's label in metrics: its name if it is among its tenant's
    /// first 50 functions, else `_other`.
    pub fn metric_function(&self, tenant: &str, function: &str) -> Arc<str> {
        self.lock().metric_function(tenant, function)
    }

    /// What a tenant without quotas of its own may hold.
    pub fn with_quota_defaults(mut self, defaults: Quotas) -> Self {
        self.quota_defaults = defaults;
        self
    }

    /// `node.verify_hosts`: a host outside a tenant's domains (a tenant
    /// without any) must be verified before it is routed.
    pub fn with_verify_hosts(mut self, on: bool) -> Self {
        self.verify_hosts = on;
        self
    }

    /// Keeps at most `n` versions per function (retention).
    pub fn with_max_versions(mut self, n: u32) -> Self {
        self.max_versions = n.max(1);
        self
    }

    /// Connects the KV store that functions' buckets open, and republishes
    /// the routes so every target can reach it.
    pub fn attach_kv(&self, kv: Arc<dyn perch_kv::KvStore>) {
        let _ = self.kv.set(kv);
        let mut inner = self.lock();
        let (state, revision) = (inner.state.clone(), inner.revision);
        self.republish(&mut inner, state, revision);
    }

    /// Connects the container backend that container versions run on, and
    /// republishes the routes so their targets get their pools.
    pub fn attach_containers(&self, backend: Arc<perch_containers::Backend>) {
        let _ = self.containers.set(backend);
        let mut inner = self.lock();
        let (state, revision) = (inner.state.clone(), inner.revision);
        self.republish(&mut inner, state, revision);
    }

    /// Follows revisions other writers of the store commit, reloading the
    /// state (and the routes) when one is newer than ours. Runs until the
    /// store closes its notifications.
    pub async fn follow(self: Arc<Self>) {
        let mut revisions = self.revisions.clone();
        loop {
            let this = self.clone();
            let caught_up = tokio::task::spawn_blocking(move || this.catch_up()).await;
            if let Ok(Err(e)) = caught_up {
                tracing::error!(error = %e, "registry could not load a newer revision");
            }
            if revisions.changed().await.is_err() {
                return;
            }
        }
    }

    /// Reloads if the store announced a revision newer than ours.
    fn catch_up(&self) -> Result<()> {
        let mut inner = self.lock();
        self.catch_up_locked(&mut inner)
    }

    fn catch_up_locked(&self, inner: &mut Inner) -> Result<()> {
        let latest = *self.revisions.borrow();
        if latest > inner.revision {
            self.reload(inner)?;
        }
        Ok(())
    }

    /// Replaces the in-memory state with what the store holds now.
    fn reload(&self, inner: &mut Inner) -> Result<()> {
        let loaded = self.store.load()?;
        self.republish(inner, State::from_records(loaded.records), loaded.revision);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node's secret sealing box.
    pub fn secrets(&self) -> &Arc<SecretBox> {
        &self.secrets
    }

    /// Changes whenever a certificate record is written (here or, once
    /// caught up, by another node).
    pub fn certificate_changes(&self) -> watch::Receiver<u64> {
        self.certificates.subscribe()
    }

    /// Changes whenever the registry's state changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.installs.subscribe()
    }

    /// The current routing snapshot.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.load_full()
    }

    /// The store revision the in-memory state is at.
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.lock().state)
    }

    /// Applies a change: `f` edits a copy of the state and lists its
    /// writes; they commit durably, then the copy and a new route snapshot
    /// go live. When another writer committed first, the store is reloaded
    /// and `f` runs again on the new state.
    fn change<R>(&self, mut f: impl FnMut(&mut State, &mut Vec<Change>) -> Result<R>) -> Result<R> {
        let mut inner = self.lock();
        // Rules run on the newest state this node has heard of; a commit
        // made elsewhere that is not announced yet still loses the race
        // below and is recomputed.
        self.catch_up_locked(&mut inner)?;
        for _ in 0..COMMIT_ATTEMPTS {
            let mut next = inner.state.clone();
            let mut batch = Vec::new();
            let out = f(&mut next, &mut batch)?;
            if batch.is_empty() {
                return Ok(out);
            }
            match self.store.commit(inner.revision, &batch) {
                Ok(revision) => {
                    inner.revision = revision;
                    let current = RouteTable::clone(&self.routes.load());
                    self.install(&mut inner, current, next, &Touched::of(&batch));
                    return Ok(out);
                }
                Err(StoreError::Conflict { .. }) => self.reload(&mut inner)?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(RegistryError::Storage(format!(
            "the registry changed concurrently {COMMIT_ATTEMPTS} times in a row"
        )))
    }
}

#[cfg(test)]
mod tests;
