//! The supervisor of one container version on this node: its instances,
//! started on demand (or kept warm, `min_instances`), each taking up to
//! `concurrency` requests, the least loaded first; another started when
//! every one is full (up to `max_instances`); requests beyond that wait in
//! a bounded queue; an instance idle for `idle_timeout_s` is stopped; a
//! failed start or a crash backs off before the next start.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::driver::{ContainerDriver, ContainerState, DriverError, Labels, RunRequest};
use crate::spec::ContainerSpec;

/// Requests that may wait for an instance, per version.
pub const QUEUE: u32 = 100;
/// How long a stopped instance gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// The longest back-off between failed starts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A container version: who owns it and which one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionId {
    /// Owner.
    pub tenant: String,
    /// Function name.
    pub function: String,
    /// Version number.
    pub version: u32,
}

impl std::fmt::Display for VersionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.tenant, self.function, self.version)
    }
}

/// What happened to an instance, for the function's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lifecycle {
    /// It became ready, this many milliseconds after the start began.
    Started {
        /// Start to ready.
        ms: u64,
    },
    /// It was stopped (idle, or the version went away).
    Stopped,
    /// It exited by itself.
    Crashed {
        /// Exit code.
        code: i64,
    },
    /// The kernel killed it for memory.
    Oom,
    /// It did not become ready in time, or could not be started.
    Unhealthy {
        /// Why (for the operator; engine text never reaches clients).
        reason: String,
    },
    /// A line it printed.
    Output {
        /// Printed on stderr (else stdout).
        stderr: bool,
        /// The line, without its break.
        line: String,
    },
}

impl Lifecycle {
    /// `started`, `stopped`, `crashed`, `oom` or `unhealthy`.
    pub fn name(&self) -> &'static str {
        match self {
            Lifecycle::Started { .. } => "started",
            Lifecycle::Stopped => "stopped",
            Lifecycle::Crashed { .. } => "crashed",
            Lifecycle::Oom => "oom",
            Lifecycle::Unhealthy { .. } => "unhealthy",
            Lifecycle::Output { .. } => "output",
        }
    }
}

/// Where lifecycle events and output go: the version, the instance (its
/// container id, short; empty before one exists), what happened.
pub type Notices = Arc<dyn Fn(&VersionId, &str, Lifecycle) + Send + Sync>;

/// The short form of a container id (12 hex digits), as engines print it.
pub fn short_id(container: &str) -> &str {
    &container[..container.len().min(12)]
}

/// Why no instance could take a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcquireError {
    /// Every instance is full and the queue too.
    #[error("every instance is busy and {QUEUE} requests already wait")]
    Overloaded,
    /// No instance became ready within `start_timeout_s`.
    #[error("no instance became ready within {0} s")]
    Unavailable(u32),
}

/// One running instance.
#[derive(Debug)]
pub struct Instance {
    /// Engine id.
    pub container: String,
    /// Where it is published.
    pub addr: SocketAddr,
    in_flight: AtomicU32,
    idle_since: Mutex<Instant>,
    /// Taken out of service (stopping, or found dead).
    gone: AtomicBool,
    /// When it entered service.
    since: Instant,
}

impl Instance {
    /// A new instance, in service and idle from now.
    fn new(container: String, addr: SocketAddr) -> Arc<Instance> {
        Arc::new(Instance {
            container,
            addr,
            in_flight: AtomicU32::new(0),
            idle_since: Mutex::new(Instant::now()),
            gone: AtomicBool::new(false),
            since: Instant::now(),
        })
    }

    /// Requests it is serving.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[derive(Default)]
struct PoolState {
    instances: Vec<Arc<Instance>>,
    starting: u32,
    waiting: u32,
    failures: u32,
    backoff_until: Option<Instant>,
}

const LIVE: u8 = 0;
const DRAIN: u8 = 1;
const STOP: u8 = 2;

/// The supervisor of one container version.
pub struct Pool {
    /// Which version.
    pub id: VersionId,
    /// Its spec (the image is an id).
    pub spec: ContainerSpec,
    env: Vec<(String, String)>,
    node: Arc<Node>,
    state: Mutex<PoolState>,
    /// Bumped whenever a waiting request may now get an instance.
    changed: watch::Sender<u64>,
    retired: AtomicU8,
    /// Instances that became ready.
    pub starts: AtomicU32,
    /// Requests an instance failed (refused, cut, crashed).
    pub proxy_errors: AtomicU32,
}

/// What every pool of a node shares.
pub(crate) struct Node {
    /// The node's name (the `perch.node` label).
    pub(crate) name: String,
    /// The engine.
    pub(crate) driver: Arc<dyn ContainerDriver>,
    /// Where lifecycle events and output go.
    pub(crate) notices: Notices,
    /// Where image archives are kept.
    pub(crate) images: Option<crate::Images>,
    /// Start-to-ready times of the node's instances.
    pub(crate) cold_starts: ColdStarts,
    /// Perch's own isolation of tenant networks, unless the operator
    /// leaves it to the engine.
    pub(crate) firewall: Option<Arc<crate::isolation::Firewall>>,
}

impl Node {
    /// The tenant's network, its bridge admitted to the node's isolation
    /// table first (a bridge that cannot be isolated runs nothing).
    pub(crate) async fn tenant_network(&self, tenant: &str) -> Result<String, DriverError> {
        let network = self.driver.tenant_network(&self.name, tenant).await?;
        if let Some(firewall) = &self.firewall {
            let bridge = network.bridge.as_deref().ok_or_else(|| {
                DriverError::Unavailable(format!(
                    "the engine does not say which bridge network {} is; Perch cannot isolate it",
                    network.name
                ))
            })?;
            firewall.admit(bridge).await?;
        }
        Ok(network.name)
    }
}

/// Upper bounds (seconds) of the cold-start histogram's buckets.
pub const COLD_START_BUCKETS: [f64; 9] = [0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 30.0];

/// Start-to-ready times of instances, a histogram for metrics.
#[derive(Debug, Default)]
pub struct ColdStarts {
    /// Per bucket (not cumulative); the last counts those above every bound.
    buckets: [std::sync::atomic::AtomicU64; COLD_START_BUCKETS.len() + 1],
    sum_ms: std::sync::atomic::AtomicU64,
}

impl ColdStarts {
    fn record(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = COLD_START_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(COLD_START_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ms
            .fetch_add(took.as_millis() as u64, Ordering::Relaxed);
    }

    /// Cumulative counts per bound of [`COLD_START_BUCKETS`], then the
    /// total count and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<u64>, u64, f64) {
        let mut cumulative = 0;
        let mut out = Vec::with_capacity(COLD_START_BUCKETS.len());
        for b in &self.buckets[..COLD_START_BUCKETS.len()] {
            cumulative += b.load(Ordering::Relaxed);
            out.push(cumulative);
        }
        let count = cumulative + self.buckets[COLD_START_BUCKETS.len()].load(Ordering::Relaxed);
        (
            out,
            count,
            self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        )
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A request's hold on an instance; gives the slot back on drop.
pub struct Lease {
    pool: Arc<Pool>,
    instance: Arc<Instance>,
    cold: bool,
}

impl Lease {
    /// Whether the request waited for an instance that entered service
    /// while it waited (a cold start, as far as this request is concerned).
    pub fn cold_start(&self) -> bool {
        self.cold
    }

    /// Where to send the request.
    pub fn addr(&self) -> SocketAddr {
        self.instance.addr
    }

    /// Tells the supervisor the instance failed a request (connection
    /// refused or cut): it checks whether the container still runs, and
    /// replaces it when not.
    pub fn failed(&self) {
        self.pool.proxy_errors.fetch_add(1, Ordering::Relaxed);
        let pool = self.pool.clone();
        let instance = self.instance.clone();
        tokio::spawn(async move { pool.check(&instance).await });
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.instance.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *lock(&self.instance.idle_since) = Instant::now();
        }
        self.pool.wake_if_waiting();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Unsubscribes a queued request from the queue count, however it ends.
struct Queued<'a>(&'a Pool);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).waiting -= 1;
    }
}

/// Ports instances are published on: below Linux's ephemeral range
/// (32768–60999), so a port the kernel hands out to some other socket later
/// never collides with one an instance still holds (an engine forwards a
/// published port with address translation, not a socket the kernel sees).
const PUBLISH_PORTS: std::ops::Range<u16> = 20000..32768;

/// A port in [`PUBLISH_PORTS`] that nothing on 127.0.0.1 listens on now.
fn free_port() -> std::io::Result<u16> {
    let span = u32::from(PUBLISH_PORTS.end - PUBLISH_PORTS.start);
    for _ in 0..64 {
        let port = PUBLISH_PORTS.start + (fastrand::u32(..span)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::other("no free port to publish on"))
}

impl Pool {
    pub(crate) fn new(
        id: VersionId,
        spec: ContainerSpec,
        env: Vec<(String, String)>,
        node: Arc<Node>,
    ) -> Pool {
        Pool {
            id,
            spec,
            env,
            node,
            state: Mutex::default(),
            changed: watch::channel(0).0,
            retired: AtomicU8::new(LIVE),
            starts: AtomicU32::new(0),
            proxy_errors: AtomicU32::new(0),
        }
    }

    /// Instances in service.
    pub fn instances(&self) -> Vec<Arc<Instance>> {
        lock(&self.state).instances.clone()
    }

    /// Requests waiting for an instance.
    pub fn queued(&self) -> u32 {
        lock(&self.state).waiting
    }

    fn wake(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    fn wake_if_waiting(&self) {
        if lock(&self.state).waiting > 0 {
            self.wake();
        }
    }

    /// An instance for one request: a free one, the least loaded first;
    /// else one started for it (waiting up to `start_timeout_s`); else a
    /// place in the queue.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, AcquireError> {
        let timeout = Duration::from_secs(u64::from(self.spec.start_timeout_s));
        let asked = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.changed.subscribe();
        let mut queued: Option<Queued<'_>> = None;
        loop {
            {
                let mut st = lock(&self.state);
                let free = st
                    .instances
                    .iter()
                    .filter(|i| !i.gone.load(Ordering::Acquire))
                    .filter(|i| i.in_flight() < self.spec.concurrency)
                    .min_by_key(|i| i.in_flight())
                    .cloned();
                if let Some(instance) = free {
                    instance.in_flight.fetch_add(1, Ordering::AcqRel);
                    drop(st);
                    let cold = queued.is_some() && instance.since >= asked;
                    drop(queued);
                    return Ok(Lease {
                        pool: self.clone(),
                        instance,
                        cold,
                    });
                }
                if queued.is_none() {
                    if st.waiting >= QUEUE {
                        return Err(AcquireError::Overloaded);
                    }
                    st.waiting += 1;
                    queued = Some(Queued(self));
                }
                self.maybe_start(&mut st);
                rx.borrow_and_update();
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Err(AcquireError::Unavailable(self.spec.start_timeout_s)),
            }
        }
    }

    /// Starts an instance when the waiting requests need more room than
    /// the instances being started will give, within `max_instances` and
    /// outside a back-off.
    fn maybe_start(self: &Arc<Self>, st: &mut PoolState) {
        if self.retired.load(Ordering::Acquire) != LIVE {
            return;
        }
        let live = st.instances.len() as u32;
        if live + st.starting >= self.spec.max_instances {
            return;
        }
        if st.backoff_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let room = st.starting * self.spec.concurrency;
        if st.waiting <= room && live + st.starting >= self.spec.min_instances {
            return;
        }
        st.starting += 1;
        let pool = self.clone();
        tokio::spawn(async move { pool.start_one().await });
    }

    async fn start_one(self: Arc<Self>) {
        let began = Instant::now();
        let result = self.launch(began).await;
        let mut st = lock(&self.state);
        st.starting -= 1;
        match result {
            Ok(instance) => {
                st.failures = 0;
                st.backoff_until = None;
                st.instances.push(instance.clone());
                drop(st);
                self.starts.fetch_add(1, Ordering::Relaxed);
                self.node.cold_starts.record(began.elapsed());
                (self.node.notices)(
                    &self.id,
                    short_id(&instance.container),
                    Lifecycle::Started {
                        ms: began.elapsed().as_millis() as u64,
                    },
                );
                self.follow_output(&instance, 0);
            }
            Err(reason) => {
                self.back_off(&mut st);
                drop(st);
                tracing::warn!(version = %self.id, %reason, "container did not start");
                (self.node.notices)(&self.id, "", Lifecycle::Unhealthy { reason });
            }
        }
        self.wake();
    }

    fn back_off(&self, st: &mut PoolState) {
        st.failures = st.failures.saturating_add(1);
        let wait = Duration::from_millis(250) * 2u32.saturating_pow(st.failures.min(8));
        st.backoff_until = Some(Instant::now() + wait.min(MAX_BACKOFF));
    }

    async fn launch(&self, began: Instant) -> Result<Arc<Instance>, String> {
        let timeout = Duration::from_secs(u64::from(self.spec.start_timeout_s));
        let network = self
            .node
            .tenant_network(&self.id.tenant)
            .await
            .map_err(|e| e.to_string())?;
        let host_port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let req = RunRequest {
            name: format!(
                "perch-{}-{}-v{}-{:08x}",
                self.id.tenant,
                self.id.function,
                self.id.version,
                fastrand::u32(..)
            ),
            image: self.spec.image.clone(),
            command: self.spec.command.clone(),
            env: self.env.clone(),
            port: self.spec.port,
            host_port,
            memory_bytes: u64::from(self.spec.memory_mb) << 20,
            nano_cpus: (self.spec.cpus * 1e9) as i64,
            pids: 512,
            network,
            labels: Labels {
                node: self.node.name.clone(),
                tenant: self.id.tenant.clone(),
                function: self.id.function.clone(),
                version: self.id.version,
            },
        };
        self.ensure_image().await?;
        let container = self
            .node
            .driver
            .run(&req)
            .await
            .map_err(|e| e.to_string())?;
        let addr = SocketAddr::from(([127, 0, 0, 1], host_port));
        match self.wait_ready(&container, addr, began + timeout).await {
            Ok(()) => Ok(Instance::new(container, addr)),
            Err(reason) => {
                if let Err(e) = self.node.driver.stop(&container, Duration::ZERO).await {
                    tracing::warn!(version = %self.id, error = %e, "removing a failed container");
                }
                Err(reason)
            }
        }
    }

    /// Loads the image from its kept archive when the engine lacks it
    /// (pruned, a new engine, or uploaded through another node: then the
    /// archive is fetched from the shared store first).
    async fn ensure_image(&self) -> Result<(), String> {
        let image = &self.spec.image;
        if self
            .node
            .driver
            .has_image(image)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(());
        }
        let Some(images) = &self.node.images else {
            return Err(format!("the engine has no image {image}"));
        };
        let archive = crate::archive::archive_path(&images.dir, image);
        if !archive.exists() && !self.fetch_archive(images, &archive).await? {
            return Err(format!(
                "the engine has no image {image} and no archive of it is kept"
            ));
        }
        tracing::info!(version = %self.id, %image, "loading the image from its kept archive");
        self.node
            .driver
            .load_image(&archive)
            .await
            .map_err(|e| format!("reloading image {image}: {e}"))
    }

    /// Fetches the image's archive from the shared store to `dest`;
    /// false when there is no shared store or it has none.
    async fn fetch_archive(
        &self,
        images: &crate::Images,
        dest: &std::path::Path,
    ) -> Result<bool, String> {
        let Some(shared) = images.shared.clone() else {
            return Ok(false);
        };
        tracing::info!(version = %self.id, image = %self.spec.image, "fetching the image archive from the shared store");
        let (dir, image, dest) = (
            images.dir.clone(),
            self.spec.image.clone(),
            dest.to_path_buf(),
        );
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            if !shared.fetch(&image, &dest)? {
                return Ok(false);
            }
            // Checked as an upload is, before the engine sees it: what the
            // database hands back must be an archive of this very image.
            match crate::archive::inspect(&dest) {
                Ok(found) if found.id == image => Ok(true),
                found => {
                    let _ = std::fs::remove_file(&dest);
                    Err(match found {
                        Ok(other) => format!("the stored archive is of image {}", other.id),
                        Err(e) => format!("the stored archive is refused: {}", e.0),
                    })
                }
            }
        })
        .await
        .map_err(|e| format!("fetching the image archive: {e}"))?
        .map_err(|e| format!("fetching the image archive: {e}"))
    }

    /// Waits until the instance answers (its port, or `health_path` with
    /// 200), it exits, or `deadline` passes.
    async fn wait_ready(
        &self,
        container: &str,
        addr: SocketAddr,
        deadline: Instant,
    ) -> Result<(), String> {
        let mut pause = Duration::from_millis(5);
        let mut next_state_check = Instant::now() + Duration::from_millis(500);
        loop {
            if probe(addr, self.spec.health_path.as_deref()).await {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("not ready within {} s", self.spec.start_timeout_s));
            }
            if now >= next_state_check {
                next_state_check = now + Duration::from_millis(500);
                match self.node.driver.state(container).await {
                    Ok(ContainerState::Running) | Err(_) => {}
                    Ok(ContainerState::Exited { code, oom }) => {
                        return Err(match oom {
                            true => "killed for memory while starting".into(),
                            false => format!("exited with {code} while starting"),
                        });
                    }
                    Ok(ContainerState::Gone) => return Err("vanished while starting".into()),
                }
            }
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(now))).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// The instance running `container`, if this pool has it.
    pub(crate) fn instance_of(&self, container: &str) -> Option<Arc<Instance>> {
        lock(&self.state)
            .instances
            .iter()
            .find(|i| i.container == container)
            .cloned()
    }

    /// Checks an instance that failed a request (or that the engine says
    /// exited); takes it out of service and reports why when its container
    /// no longer runs.
    pub(crate) async fn check(&self, instance: &Arc<Instance>) {
        if instance.gone.load(Ordering::Acquire) {
            return;
        }
        // A connection fails a moment before its container is seen to exit,
        // and an engine may report a dead container as running for a while:
        // it is alive only while the engine says so and its port answers.
        let mut looks = [100u64, 200, 400, 800, 1500].into_iter();
        let state = loop {
            let seen = tokio::time::timeout(
                Duration::from_secs(10),
                self.node.driver.state(&instance.container),
            )
            .await;
            match seen {
                Ok(Ok(ContainerState::Running)) => {
                    if probe(instance.addr, self.spec.health_path.as_deref()).await {
                        return;
                    }
                    match looks.next() {
                        Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                        None => break ContainerState::Running,
                    }
                }
                Ok(Ok(s)) => break s,
                Ok(Err(e)) => {
                    tracing::warn!(version = %self.id, error = %e, "checking a container");
                    return;
                }
                Err(_) => {
                    tracing::warn!(version = %self.id, "the engine did not answer an inspect within 10 s");
                    if looks.next().is_none() {
                        break ContainerState::Running;
                    }
                }
            }
        };
        if instance.gone.swap(true, Ordering::AcqRel) {
            return;
        }
        {
            let mut st = lock(&self.state);
            st.instances.retain(|i| !Arc::ptr_eq(i, instance));
            self.back_off(&mut st);
        }
        self.wake();
        // Out of service now; one more look names the end better than
        // "stopped answering" when the engine has caught up.
        let state = match state {
            ContainerState::Running => match self.node.driver.state(&instance.container).await {
                Ok(later @ ContainerState::Exited { .. }) => later,
                _ => state,
            },
            other => other,
        };
        let stopped = self
            .node
            .driver
            .stop(&instance.container, Duration::ZERO)
            .await;
        if let Err(e) = &stopped {
            tracing::warn!(version = %self.id, error = %e, "removing an ended container");
        }
        let event = match state {
            ContainerState::Exited { oom: true, .. } => Lifecycle::Oom,
            ContainerState::Exited { code, .. } => Lifecycle::Crashed { code },
            ContainerState::Gone => Lifecycle::Crashed { code: -1 },
            ContainerState::Running => Lifecycle::Unhealthy {
                reason: "stopped answering on its port; replaced".into(),
            },
        };
        tracing::warn!(version = %self.id, container = %instance.container, event = event.name(), "container ended");
        (self.node.notices)(&self.id, short_id(&instance.container), event);
    }

    /// Adopts a container found running at start, when the pool has room
    /// and it answers its readiness probe; returns whether it did.
    pub(crate) async fn adopt(self: &Arc<Self>, container: String, addr: SocketAddr) -> bool {
        if self.instances().len() >= self.spec.max_instances as usize
            || !probe(addr, self.spec.health_path.as_deref()).await
        {
            return false;
        }
        let instance = Instance::new(container, addr);
        lock(&self.state).instances.push(instance.clone());
        self.follow_output(&instance, unix_seconds());
        true
    }

    /// Passes what the instance prints on as output notices, from `since`
    /// (unix seconds; 0: from its start), for as long as it is in service.
    fn follow_output(self: &Arc<Self>, instance: &Arc<Instance>, since: i64) {
        let (pool, instance) = (self.clone(), instance.clone());
        tokio::spawn(async move {
            let mut since = since;
            while !instance.gone.load(Ordering::Acquire) {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<(bool, String)>(256);
                let driver = pool.node.driver.clone();
                let container = instance.container.clone();
                let follow =
                    tokio::spawn(async move { driver.follow_output(&container, since, tx).await });
                let short = short_id(&instance.container).to_string();
                while let Some((stderr, line)) = rx.recv().await {
                    (pool.node.notices)(&pool.id, &short, Lifecycle::Output { stderr, line });
                }
                if let Ok(Err(e)) = follow.await {
                    tracing::debug!(version = %pool.id, error = %e, "following a container's output");
                }
                // The stream ended (the engine's time-out, or the container
                // stopped): pick up from now if it still serves.
                since = unix_seconds();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Stops instances idle too long (down to `min_instances`, or all once
    /// retired), starts one when fewer than `min_instances` run, and lets
    /// waiting requests try again after a back-off. Returns false once the
    /// pool is retired and has nothing left.
    pub(crate) fn tick(self: &Arc<Self>) -> bool {
        let retired = self.retired.load(Ordering::Acquire);
        let idle = Duration::from_secs(u64::from(self.spec.idle_timeout_s));
        let keep = match retired {
            LIVE => self.spec.min_instances as usize,
            _ => 0,
        };
        let mut stopping = Vec::new();
        let mut st = lock(&self.state);
        let mut kept = st.instances.len();
        for i in st.instances.iter() {
            if kept <= keep {
                break;
            }
            let unused =
                i.in_flight() == 0 && (retired == STOP || lock(&i.idle_since).elapsed() >= idle);
            if unused && !i.gone.swap(true, Ordering::AcqRel) {
                stopping.push(i.clone());
                kept -= 1;
            }
        }
        st.instances.retain(|i| !i.gone.load(Ordering::Acquire));
        if retired == LIVE {
            self.maybe_start(&mut st);
        }
        let waiting = st.waiting > 0;
        let empty = st.instances.is_empty() && st.starting == 0;
        drop(st);
        if waiting {
            self.wake();
        }
        for instance in stopping {
            let pool = self.clone();
            tokio::spawn(async move {
                if let Err(e) = pool.node.driver.stop(&instance.container, STOP_GRACE).await {
                    tracing::warn!(version = %pool.id, error = %e, "stopping a container");
                }
                (pool.node.notices)(&pool.id, short_id(&instance.container), Lifecycle::Stopped);
            });
        }
        !(retired != LIVE && empty)
    }

    /// Deployed again (a rollback): it starts instances as before.
    pub(crate) fn revive(&self) {
        self.retired.store(LIVE, Ordering::Release);
    }

    /// No longer deployed: instances stop once idle for `idle_timeout_s`
    /// (`now`: as soon as they serve nothing), and none is started.
    pub(crate) fn retire(&self, now: bool) {
        let level = if now { STOP } else { DRAIN };
        self.retired.fetch_max(level, Ordering::AcqRel);
        self.wake();
    }
}

fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// One readiness probe: a TCP connect, or `GET path` answering 200.
async fn probe(addr: SocketAddr, path: Option<&str>) -> bool {
    let connect = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(addr),
    );
    let Ok(Ok(stream)) = connect.await else {
        return false;
    };
    let Some(path) = path else {
        return true;
    };
    let ask = async {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .ok()?;
        let resp = sender.send_request(req).await.ok()?;
        Some(resp.status() == http::StatusCode::OK)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), ask).await,
        Ok(Some(true))
    )
}
