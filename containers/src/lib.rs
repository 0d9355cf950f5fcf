//! Perch's container backend, the second runtime.
//!
//! - `spec.rs`: a container version's spec, its defaults and bounds.
//! - `archive.rs`: image archives checked before an engine sees them.
//! - `driver.rs`: the [`ContainerDriver`] seam; `docker.rs` implements it
//!   over the Docker Engine API (Docker, Podman).
//! - `isolation.rs`: the node's nftables table that keeps tenant networks
//!   apart whatever the engine's own rules do.
//! - `pool.rs`: the supervisor of one version's instances.
//! - `shared.rs`: the [`SharedArchives`] seam: image archives every node
//!   of a cluster can fetch.
//! - this file: the node's [`Backend`]: a pool per deployed container
//!   version, the reaper that scales them down, and the reconcile at
//!   start that adopts or removes what a previous run left.
//!
//! Proxying a request to the instance a [`Lease`] names is the data
//! plane's job (the gateway's container executor).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod archive;
mod docker;
pub mod driver;
pub mod isolation;
mod pool;
mod shared;
pub mod spec;

pub use docker::{DockerDriver, network_name};
pub use driver::{
    ContainerDriver, ContainerState, DriverError, Labels, Listed, RunRequest, TenantNetwork,
};
pub use isolation::Firewall;
pub use pool::{
    AcquireError, COLD_START_BUCKETS, ColdStarts, Instance, Lease, Lifecycle, Notices, Pool, QUEUE,
    VersionId, short_id,
};
pub use shared::{Images, SharedArchives};
pub use spec::{ContainerSpec, Maxima, SpecError};

/// How often the reaper looks at every pool.
const TICK: Duration = Duration::from_millis(500);

/// The node's container versions.
pub struct Backend {
    node: Arc<pool::Node>,
    pools: Mutex<HashMap<VersionId, Arc<Pool>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Backend {
    /// A backend running containers through `driver`, labelled for `node`;
    /// lifecycle events go to `notices`; `images` is where image archives
    /// are kept, to load an image the engine lacks (lost, or uploaded
    /// through another node); `firewall`, when given, isolates tenant
    /// networks (see [`Backend::isolate`]).
    pub fn new(
        driver: Arc<dyn ContainerDriver>,
        node: &str,
        notices: Notices,
        images: Option<Images>,
        firewall: Option<Firewall>,
    ) -> Arc<Backend> {
        Arc::new(Backend {
            node: Arc::new(pool::Node {
                name: node.to_string(),
                driver,
                notices,
                images,
                cold_starts: ColdStarts::default(),
                firewall: firewall.map(Arc::new),
            }),
            pools: Mutex::default(),
        })
    }

    /// The engine.
    pub fn driver(&self) -> &Arc<dyn ContainerDriver> {
        &self.node.driver
    }

    /// The archives shared with the other nodes (cluster mode).
    pub fn shared_archives(&self) -> Option<&Arc<dyn SharedArchives>> {
        self.node.images.as_ref()?.shared.as_ref()
    }

    /// The pool of a version, created on first use. A version is
    /// immutable (settings make new versions), so its pool is too.
    pub fn pool(&self, id: VersionId, spec: &ContainerSpec, env: &[(String, String)]) -> Arc<Pool> {
        let pool = lock(&self.pools)
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(Pool::new(id, spec.clone(), env.to_vec(), self.node.clone()))
            })
            .clone();
        // Deployed (again, after a rollback): it starts instances.
        pool.revive();
        pool
    }

    /// The pools of a function's versions not in `deployed` are retired:
    /// their instances stop after their idle timeout, or at once for
    /// versions that no longer exist (`exists` says false).
    pub fn retire_function(
        &self,
        tenant: &str,
        function: &str,
        deployed: &[u32],
        exists: impl Fn(u32) -> bool,
    ) {
        for (id, pool) in lock(&self.pools).iter() {
            if id.tenant == tenant && id.function == function && !deployed.contains(&id.version) {
                pool.retire(!exists(id.version));
            }
        }
    }

    /// Every pool (metrics).
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        lock(&self.pools).values().cloned().collect()
    }

    /// Start-to-ready times of every instance this node started.
    pub fn cold_starts(&self) -> &ColdStarts {
        &self.node.cold_starts
    }

    /// Stops idle instances and keeps warm ones, every half second, for
    /// as long as the backend lives.
    pub fn spawn_reaper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(backend) = weak.upgrade() else {
                    return;
                };
                let pools: Vec<(VersionId, Arc<Pool>)> = lock(&backend.pools)
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (id, pool) in pools {
                    if !pool.tick() {
                        let mut all = lock(&backend.pools);
                        if all.get(&id).is_some_and(|p| Arc::ptr_eq(p, &pool)) {
                            all.remove(&id);
                        }
                    }
                }
            }
        })
    }

    /// Follows the engine's exits of this node's containers: an instance
    /// whose container exits is taken out of service (and replaced) at
    /// once, not only when a request fails on it. Reconnects after the
    /// engine's stream ends, for as long as the backend lives.
    pub fn spawn_exit_watcher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(backend) = weak.upgrade() else {
                    return;
                };
                let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(64);
                let driver = backend.node.driver.clone();
                let node = backend.node.name.clone();
                drop(backend);
                let watch = tokio::spawn(async move { driver.watch_exits(&node, tx).await });
                while let Some(container) = rx.recv().await {
                    let Some(backend) = weak.upgrade() else {
                        return;
                    };
                    let found = backend
                        .pools()
                        .into_iter()
                        .find_map(|p| p.instance_of(&container).map(|i| (p, i)));
                    if let Some((pool, instance)) = found {
                        tokio::spawn(async move { pool.check(&instance).await });
                    }
                }
                if let Ok(Err(e)) = watch.await {
                    tracing::warn!(error = %e, "the engine's event stream failed; following it again");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    /// At start, before [`Backend::reconcile`]: writes the isolation table
    /// with the bridges of the tenants whose containers this node left
    /// running (so they stay isolated when adopted). An engine that cannot
    /// be listed leaves the table empty until containers start; a table
    /// that cannot be written is an error (the node must not run
    /// containers it cannot isolate).
    pub async fn isolate(&self) -> Result<(), DriverError> {
        let Some(firewall) = &self.node.firewall else {
            return Ok(());
        };
        let mut bridges = Vec::new();
        match self.node.driver.list(&self.node.name).await {
            Ok(found) => {
                let tenants: std::collections::BTreeSet<String> =
                    found.into_iter().map(|c| c.labels.tenant).collect();
                for tenant in tenants {
                    match self
                        .node
                        .driver
                        .tenant_network(&self.node.name, &tenant)
                        .await
                    {
                        Ok(TenantNetwork {
                            bridge: Some(b), ..
                        }) => bridges.push(b),
                        Ok(n) => {
                            tracing::warn!(network = %n.name, "the engine does not name this network's bridge")
                        }
                        Err(e) => {
                            tracing::warn!(%tenant, error = %e, "could not inspect a tenant network at start")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not list the engine's containers to isolate them")
            }
        }
        firewall.install(&bridges).await
    }

    /// At start: every container labelled for this node is adopted by its
    /// version's pool when that version is deployed and the container
    /// answers, and removed otherwise.
    pub async fn reconcile(&self) -> Result<(), DriverError> {
        let found = self.node.driver.list(&self.node.name).await?;
        for c in found {
            let id = VersionId {
                tenant: c.labels.tenant.clone(),
                function: c.labels.function.clone(),
                version: c.labels.version,
            };
            let pool = lock(&self.pools).get(&id).cloned();
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], c.host_port));
            let adopted = match pool {
                Some(pool) if c.running => pool.adopt(c.id.clone(), addr).await,
                _ => false,
            };
            if adopted {
                tracing::info!(version = %id, container = %c.id, "adopted a running container");
            } else {
                tracing::info!(version = %id, container = %c.id, "removing a container no current version runs");
                if let Err(e) = self.node.driver.stop(&c.id, Duration::ZERO).await {
                    tracing::warn!(container = %c.id, error = %e, "removing a stale container");
                }
            }
        }
        Ok(())
    }

    /// Stops every instance (the node shuts down).
    pub async fn shutdown(&self) {
        let pools = self.pools();
        let mut stops = Vec::new();
        for pool in pools {
            for instance in pool.instances() {
                let driver = self.node.driver.clone();
                stops.push(tokio::spawn(async move {
                    driver
                        .stop(&instance.container, Duration::from_secs(2))
                        .await
                }));
            }
        }
        let mut stopped = true;
        for s in stops {
            stopped &= matches!(s.await, Ok(Ok(())));
        }
        // The table goes only when nothing it guards may still run.
        if let Some(firewall) = &self.node.firewall
            && stopped
            && let Err(e) = firewall.remove().await
        {
            tracing::warn!(error = %e, "could not remove the isolation table");
        }
    }
}
