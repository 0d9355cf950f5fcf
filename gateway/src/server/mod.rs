//! `perch serve`: open the data directory, load the registry, bind both
//! listeners, serve until SIGTERM/SIGINT, then drain.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use perch_runtime::{Runtime, RuntimeConfig};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::app::App;
use crate::artifacts::Artifacts;
use crate::config::Config;
use crate::config::Storage;
use crate::cron::{LocalLease, Scheduler, TickLease};
use crate::dataplane::{DataPlane, Executor, NodeExecutor};
use crate::logs::LogHub;
use crate::registry::{RedbStore, Registry, RegistryStore};
use crate::secrets::{new_token, token_hash, write_private_file};
use crate::telemetry::Metrics;
use crate::telemetry::trace::Tracing;
use crate::telemetry::usage::{RedbUsage, UsageStore};
use crate::throttle::Throttle;

mod listener;
mod warmup;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The data directory or a file in it is unusable.
    #[error("{0}")]
    Data(String),
    /// The runtime could not start.
    #[error(transparent)]
    Runtime(#[from] perch_runtime::RuntimeError),
    /// The registry could not be opened.
    #[error("registry: {0}")]
    Registry(#[from] crate::registry::RegistryError),
    /// The registry's store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::registry::StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Where the admin token came from, for the start-up summary.
pub enum AdminToken {
    /// `PERCH_ADMIN_TOKEN`.
    FromEnv,
    /// Read from (or generated into) this file.
    File(PathBuf),
}

/// What `serve` reports once both listeners are bound.
pub struct Started {
    /// Bound data-plane address.
    pub data: SocketAddr,
    /// Bound admin address.
    pub admin: SocketAddr,
    /// Bound TLS address, when the TLS listener is on.
    pub tls: Option<SocketAddr>,
    /// Admin token source.
    pub admin_token: AdminToken,
}

fn admin_token(
    data_dir: &Path,
    from_env: Option<String>,
) -> Result<(String, AdminToken), ServeError> {
    if let Some(t) = from_env.filter(|t| !t.is_empty()) {
        return Ok((t, AdminToken::FromEnv));
    }
    let path = data_dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok((t.trim().to_string(), AdminToken::File(path))),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(ServeError::Data(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    }
    let token = new_token("perch_admin_");
    let write = || write_private_file(&path, format!("{token}\n").as_bytes());
    write().map_err(|e| ServeError::Data(format!("cannot write {}: {e}", path.display())))?;
    Ok((token, AdminToken::File(path)))
}

/// Uploads are compiled by this executable's hidden `__compile` subcommand
/// under the configured budgets.
fn compiler_command(config: &Config) -> Result<perch_runtime::CompilerCommand, ServeError> {
    // /proc/self/exe still names this binary after a package upgrade has
    // replaced the file on disk; elsewhere, the path we were started from.
    let proc_exe = std::path::Path::new("/proc/self/exe");
    let program = if proc_exe.exists() {
        proc_exe.to_path_buf()
    } else {
        std::env::current_exe()
            .map_err(|e| ServeError::Data(format!("cannot locate the perch executable: {e}")))?
    };
    let budget = config.compile;
    Ok(perch_runtime::CompilerCommand {
        program,
        args: vec![COMPILE_SUBCOMMAND.into()],
        cpu_time: Duration::from_secs(budget.cpu_seconds),
        address_space: budget.memory_mb.saturating_mul(1 << 20),
        wall_time: Duration::from_secs(budget.wall_seconds),
    })
}

/// Open admin API connections; more wait in the listen backlog. Operators
/// and CI are few; this only keeps an outside flood from using up the
/// process's file descriptors.
const ADMIN_CONNECTIONS: usize = 512;

/// Time an admin client has to send a request head.
const ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The hidden subcommand the server runs (as a child process) to compile
/// an upload.
pub const COMPILE_SUBCOMMAND: &str = "__compile";

/// Raises the soft limit on open files towards `wanted` (within the hard
/// limit): every connection is a descriptor, and distributions start
/// services with a soft limit of 1024, below the default connection cap.
fn raise_fd_limit(wanted: libc::rlim_t) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur >= wanted {
        return;
    }
    let target = wanted.min(lim.rlim_max);
    let raised = libc::rlimit {
        rlim_cur: target,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above.
    if target > lim.rlim_cur && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        lim.rlim_cur = target;
    }
    if lim.rlim_cur < wanted {
        tracing::warn!(
            open_files = lim.rlim_cur,
            wanted,
            "the open-files limit is below the connection cap; raise LimitNOFILE / ulimit -n"
        );
    }
}

/// Pending connections the kernel queues for `accept` (it caps this at
/// `net.core.somaxconn`). Tokio's `TcpListener::bind` asks for 128, which
/// overflows in a burst of connections and makes clients wait for SYN
/// retransmits; connections over the cap also wait here.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The stores of one kind of storage.
struct Stores {
    registry: Arc<dyn RegistryStore>,
    audit: Arc<dyn crate::audit::AuditStore>,
    usage: Arc<dyn UsageStore>,
    lease: Arc<dyn TickLease>,
    nodes: Arc<dyn crate::nodes::NodeStore>,
    /// The node's redb file (for KV and backups); `None` in cluster mode.
    db: Option<Arc<redb::Database>>,
    /// Image archives every node fetches (cluster mode).
    images: Option<Arc<dyn perch_containers::SharedArchives>>,
}

/// Opens the registry, audit, usage and lease stores: in the redb file at
/// `db_path`, or (cluster mode) in PostgreSQL, migrating its schema.
/// Blocking.
fn open_stores(storage: &Storage, db_path: &Path, node: &str) -> Result<Stores, ServeError> {
    match storage {
        Storage::Redb => {
            let db = redb::Database::create(db_path)
                .map_err(|e| ServeError::Data(format!("cannot open {}: {e}", db_path.display())))?;
            let db = Arc::new(db);
            Ok(Stores {
                registry: Arc::new(RedbStore::open(db.clone())?),
                audit: Arc::new(crate::audit::RedbAudit::new(db.clone())),
                usage: Arc::new(RedbUsage::new(db.clone())),
                lease: Arc::new(LocalLease::default()),
                nodes: Arc::new(crate::nodes::LocalNodes::default()),
                db: Some(db),
                images: None,
            })
        }
        Storage::Postgres(pg) => {
            let registry = crate::registry::PgStore::open(pg)?;
            crate::pg::migrate(pg).map_err(|e| ServeError::Data(format!("storage: {e}")))?;
            let pool = perch_pg::Pool::new(pg.clone(), "perch-gateway");
            tracing::info!(node, "storage: PostgreSQL (cluster mode)");
            Ok(Stores {
                registry: Arc::new(registry),
                audit: Arc::new(crate::pg::PgAudit::new(pool.clone())),
                usage: Arc::new(crate::pg::PgUsage::new(pool.clone(), node)),
                lease: Arc::new(crate::pg::PgLease::new(pool.clone(), node)),
                nodes: Arc::new(crate::pg::PgNodes::new(pool)),
                db: None,
                images: Some(Arc::new(crate::pg::PgImages::new(pg))),
            })
        }
    }
}

/// Runs the server until a shutdown signal; calls `started` once listening.
pub async fn serve(
    config: Config,
    admin_token_env: Option<String>,
    started: impl FnOnce(&Started),
) -> Result<(), ServeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        ServeError::Data(format!("cannot create {}: {e}", config.data_dir.display()))
    })?;
    let cluster = match &config.storage {
        Storage::Redb => None,
        Storage::Postgres(pg) => Some(pg.clone()),
    };
    if cluster.is_some() {
        // Every node must open the others' secrets and accept the same
        // admin token: neither may be made up per node.
        let set = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
        if !set(&admin_token_env) || !set(&std::env::var("PERCH_SECRET_KEY").ok()) {
            return Err(ServeError::Data(
                "storage.type = \"postgres\" needs PERCH_ADMIN_TOKEN and PERCH_SECRET_KEY, the same on every node".into(),
            ));
        }
    }
    let (token, token_source) = admin_token(&config.data_dir, admin_token_env)?;

    let mut rc = RuntimeConfig::new(config.data_dir.join("artifacts"));
    rc.max_instance_memory = (config.max.memory_mb as usize) << 20;
    rc.max_instances = config.max_instances;
    rc.warm_slots = config.warm_slots;
    rc.cache_capacity = config.component_cache;
    let exempt = config
        .egress_allow
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    rc.egress = perch_runtime::EgressConfig::new(exempt);
    rc.egress.ca_file = config.egress_ca_file.clone();
    rc.compiler = Some(compiler_command(&config)?);
    let mut shared_artifacts = None;
    if let Some(pg) = &cluster {
        let pg = pg.clone();
        let store = tokio::task::spawn_blocking(move || perch_runtime::PgArtifactStore::open(&pg))
            .await
            .map_err(|e| ServeError::Data(format!("artifact store: {e}")))?
            .map_err(|e| ServeError::Data(format!("artifact store: {e}")))?;
        let store = Arc::new(store);
        rc.artifact_store = store.clone();
        shared_artifacts = Some(store);
    }
    let runtime = Arc::new(Runtime::new(rc)?);

    let secrets = Arc::new(
        crate::secrets::SecretBox::load(&config.data_dir, std::env::var("PERCH_SECRET_KEY").ok())
            .map_err(ServeError::Data)?,
    );
    let db_path = config.data_dir.join("perch.redb");
    let defaults = config.limits;
    let max_versions = config.max_versions;
    let verify_hosts = config.verify_hosts;
    let quota_defaults = config.quotas;
    let storage = config.storage.clone();
    let node_name = config.node_name.clone();
    let opened = tokio::task::spawn_blocking(move || {
        let stores = open_stores(&storage, &db_path, &node_name)?;
        let registry = Registry::open(stores.registry.clone(), defaults, secrets)?
            .with_max_versions(max_versions)
            .with_verify_hosts(verify_hosts)
            .with_quota_defaults(quota_defaults);
        Ok::<_, ServeError>((stores, registry))
    });
    let (stores, registry) = opened
        .await
        .map_err(|e| ServeError::Data(format!("registry load failed: {e}")))??;
    {
        // Looking a component up may ask the database (cluster mode):
        // blocking, so not on this thread.
        let (digests, runtime) = (registry.all_digests(), runtime.clone());
        let _ = tokio::task::spawn_blocking(move || {
            for digest in digests {
                match digest.parse() {
                    Ok(d) if runtime.has_component(&d) => {}
                    _ => {
                        tracing::warn!(%digest, "a registered version's component is missing from the artifact store")
                    }
                }
            }
        })
        .await;
    }

    let Stores {
        audit,
        usage: usage_store,
        lease,
        nodes,
        db: backup_db,
        images: shared_images,
        ..
    } = stores;
    {
        let (usage, store) = (registry.usage().clone(), usage_store.clone());
        tokio::task::spawn_blocking(move || usage.load(&*store))
            .await
            .map_err(|e| ServeError::Data(format!("usage totals: {e}")))?
            .map_err(|e| ServeError::Data(format!("usage totals: {e}")))?;
    }
    let backend: Arc<dyn perch_kv::KvStore> = match (&backup_db, &cluster) {
        (_, Some(pg)) => {
            let (pg, quotas) = (pg.clone(), registry.kv_quotas().clone());
            let opened = tokio::task::spawn_blocking(move || {
                perch_kv::PgKv::open(&pg, quotas, Duration::from_secs(1), 64 << 20)
            });
            Arc::new(
                opened
                    .await
                    .map_err(|e| ServeError::Data(format!("KV store: {e}")))?
                    .map_err(|e| ServeError::Data(format!("KV store: {e}")))?,
            )
        }
        (Some(db), None) => Arc::new(
            perch_kv::RedbKv::open_with_quotas(db.clone(), registry.kv_quotas().clone())
                .map_err(|e| ServeError::Data(format!("KV store: {e}")))?,
        ),
        (None, None) => unreachable!("a node without PostgreSQL has its redb file"),
    };
    let kv: Arc<dyn perch_kv::KvStore> = Arc::new(perch_kv::CheckedKv::new(
        backend,
        perch_kv::KvLimits::default(),
    ));
    registry.attach_kv(kv.clone());
    let logs = Arc::new(LogHub::default());
    if let Some(pg) = &cluster {
        crate::logs::cluster::ClusterLogs::start(pg, &config.node_name, &logs)
            .map_err(|e| ServeError::Data(format!("log relay: {e}")))?;
    }
    let node: Arc<str> = config.node_name.as_str().into();
    let containers = match &config.containers {
        None => None,
        Some(cc) => Some(
            start_containers(
                cc,
                &config.node_name,
                &registry,
                &logs,
                &node,
                perch_containers::Images {
                    dir: crate::api::images_dir(&config.data_dir),
                    shared: shared_images,
                },
            )
            .await?,
        ),
    };
    let registry = Arc::new(registry);
    let artifacts = if cluster.is_some() {
        Artifacts::new_shared(runtime.clone(), registry.clone())
    } else {
        Artifacts::new(runtime.clone(), registry.clone())
    };
    let swept = {
        let artifacts = artifacts.clone();
        tokio::task::spawn_blocking(move || artifacts.sweep())
            .await
            .unwrap_or(0)
    };
    if swept > 0 {
        tracing::info!(components = swept, "deleted components no version uses");
    }
    let metrics = Arc::new(Metrics::default());
    let tracing = match &config.telemetry {
        None => None,
        Some(tc) => {
            let (tc, node) = (tc.clone(), config.node_name.clone());
            let dropped = metrics.spans_dropped.clone();
            let endpoint = tc.otlp_endpoint.clone();
            let started = tokio::task::spawn_blocking(move || Tracing::start(&tc, &node, dropped))
                .await
                .map_err(|e| ServeError::Data(format!("trace exporter: {e}")))?
                .map_err(ServeError::Data)?;
            tracing::info!(%endpoint, "trace export on");
            Some(Arc::new(started))
        }
    };
    let executor: Arc<dyn Executor> = Arc::new(NodeExecutor::new(runtime.clone()));
    let acme_challenges = config
        .tls
        .as_ref()
        .and_then(|t| t.acme.as_ref())
        .map(|_| Arc::new(crate::tls::acme::Challenges::default()));
    let dataplane = Arc::new(DataPlane {
        config: config.clone(),
        registry: registry.clone(),
        metrics: metrics.clone(),
        logs: logs.clone(),
        node: node.clone(),
        executor: executor.clone(),
        tracing: tracing.clone(),
        acme: acme_challenges.clone(),
    });
    let scheduler = Arc::new(Scheduler {
        registry: registry.clone(),
        executor,
        logs: logs.clone(),
        node,
        lease,
        tenant_concurrency: config.tenant_concurrency,
        metrics: metrics.clone(),
        tracing: tracing.clone(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let app = Arc::new(App {
        stopping: stop_rx.clone(),
        containers,
        audit,
        db: backup_db,
        usage_store: usage_store.clone(),
        kv,
        registry,
        runtime,
        artifacts,
        logs,
        scheduler: scheduler.clone(),
        metrics: metrics.clone(),
        admin_token_hash: token_hash(&token),
        throttle: Throttle::new(20, Duration::from_secs(60)),
        compile_slots: Semaphore::new(2),
        nodes,
        storage_ok: AtomicBool::new(true),
        ready: AtomicBool::new(true),
        config: config.clone(),
    });
    drop(token);

    let tls_acceptor = match &config.tls {
        None => None,
        Some(tls) => {
            let resolver = Arc::new(crate::tls::Resolver::default());
            let files = crate::tls::FileCerts::load(
                tls.certificates.clone(),
                tls.default_cert.clone(),
                resolver.clone(),
            )
            .map_err(|e| ServeError::Data(format!("tls: {e}")))?;
            tokio::spawn(files.watch(stop_rx.clone()));
            if let (Some(acme), Some(challenges)) = (&tls.acme, &acme_challenges) {
                let client = crate::tls::acme::Acme::new(
                    acme.clone(),
                    app.registry.clone(),
                    resolver.clone(),
                    challenges.clone(),
                    metrics.acme.clone(),
                    &config.data_dir,
                );
                tokio::spawn(client.run(stop_rx.clone()));
                tracing::info!(directory = %acme.directory, "ACME on");
            }
            let changes = app.registry.certificate_changes();
            crate::tls::stored::load(&app.registry, &resolver);
            tokio::spawn(crate::tls::stored::follow(
                app.registry.clone(),
                resolver.clone(),
                changes,
                stop_rx.clone(),
            ));
            let acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::server_config(resolver));
            Some((acceptor, tls.handshake_timeout))
        }
    };
    let bind = |addr: SocketAddr| async move {
        listen(addr).map_err(|source| ServeError::Bind { addr, source })
    };
    let data_listener = bind(config.listen).await?;
    let admin_listener = bind(config.admin_listen).await?;
    let tls_listener = match &config.tls {
        Some(tls) => Some(bind(tls.listen).await?),
        None => None,
    };
    let local = |l: &TcpListener, addr| {
        l.local_addr()
            .map_err(|source| ServeError::Bind { addr, source })
    };
    let info = Started {
        data: local(&data_listener, config.listen)?,
        admin: local(&admin_listener, config.admin_listen)?,
        tls: match (&tls_listener, &config.tls) {
            (Some(l), Some(tls)) => Some(local(l, tls.listen)?),
            _ => None,
        },
        admin_token: token_source,
    };
    started(&info);
    tokio::spawn(warmup::warm_up(app.clone()));
    tokio::spawn(app.registry.clone().follow());
    tokio::spawn(scheduler.run());
    if let Some(store) = shared_artifacts {
        tokio::spawn(crate::artifacts::collect_shared_every(
            app.artifacts.clone(),
            store,
            config.artifact_grace,
            stop_rx.clone(),
        ));
    }
    let heartbeat = tokio::spawn(crate::nodes::beat_every(
        app.clone(),
        info.data.to_string(),
        stop_rx.clone(),
    ));
    // Usage totals are written every few seconds, and once more after the
    // last connection drained.
    let (flush_stop, flush_stopped) = watch::channel(false);
    let flusher = tokio::spawn(crate::telemetry::usage::flush_every(
        app.registry.usage().clone(),
        usage_store,
        app.containers.clone(),
        USAGE_FLUSH,
        flush_stopped,
    ));

    raise_fd_limit(
        libc::rlim_t::from(config.max_connections) + ADMIN_CONNECTIONS as libc::rlim_t + 1024,
    );
    let data_drain = listener::Drain::new(config.max_connections as usize);
    let admin_drain = listener::Drain::new(ADMIN_CONNECTIONS);
    // Perch answers oversized heads itself (431/414 with its JSON), so
    // hyper's buffer (and h2's header list limit) sits above those limits.
    let head_room = (config.max_header_bytes + config.max_uri_bytes) * 4;
    let data_settings = listener::Settings {
        header_read_timeout: config.header_read_timeout,
        max_buf_size: Some(head_room),
        nodelay: true,
        tls: None,
    };
    let data_loop = {
        let dataplane = dataplane.clone();
        listener::accept_loop(
            data_listener,
            data_settings.clone(),
            stop_rx.clone(),
            &data_drain,
            move |peer, req| crate::dataplane::handle(dataplane.clone(), peer, false, req),
        )
    };
    // The TLS listener's connections count towards the same cap as the
    // plaintext ones.
    let tls_loop = async {
        let (Some(l), Some((acceptor, handshake_timeout))) = (tls_listener, tls_acceptor) else {
            return;
        };
        let dataplane = dataplane.clone();
        let settings = listener::Settings {
            tls: Some(listener::TlsSettings {
                acceptor,
                handshake_timeout,
                max_header_list_size: u32::try_from(head_room).unwrap_or(u32::MAX),
            }),
            ..data_settings
        };
        listener::accept_loop(
            l,
            settings,
            stop_rx.clone(),
            &data_drain,
            move |peer, req| crate::dataplane::handle(dataplane.clone(), peer, true, req),
        )
        .await
    };
    let admin_loop = {
        let app = app.clone();
        listener::accept_loop(
            admin_listener,
            listener::Settings {
                header_read_timeout: ADMIN_HEADER_READ_TIMEOUT,
                max_buf_size: None,
                nodelay: false,
                tls: None,
            },
            stop_rx.clone(),
            &admin_drain,
            move |peer, req| crate::api::handle(app.clone(), peer, req),
        )
    };

    let signals = async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
        app.ready.store(false, Ordering::Relaxed);
        let _ = stop_tx.send(true);
    };

    tokio::join!(data_loop, tls_loop, admin_loop, signals);
    let drain = async {
        tokio::join!(data_drain.wait(), admin_drain.wait());
    };
    if tokio::time::timeout(config.drain, drain).await.is_err() {
        tracing::warn!("drain period over; closing remaining connections");
    }
    if let Some(backend) = &app.containers {
        backend.shutdown().await;
    }
    let _ = flush_stop.send(true);
    let _ = flusher.await;
    let _ = heartbeat.await;
    if let Some(t) = tracing {
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    }
    Ok(())
}

/// How often usage totals are written to the database.
const USAGE_FLUSH: Duration = Duration::from_secs(5);

/// Connects the container engine, gives the registry its backend (so
/// container versions get pools), adopts or removes what a previous run
/// left, and starts the reaper.
async fn start_containers(
    cc: &crate::config::ContainersConfig,
    node_name: &str,
    registry: &Registry,
    logs: &Arc<LogHub>,
    node: &Arc<str>,
    images: perch_containers::Images,
) -> Result<Arc<perch_containers::Backend>, ServeError> {
    let driver = perch_containers::DockerDriver::connect(&cc.engine)
        .await
        .map_err(|e| ServeError::Data(format!("containers.engine `{}`: {e}", cc.engine)))?;
    tracing::info!(engine = %cc.engine, podman = driver.is_podman(), "container backend on");
    let notices = crate::logs::container_notices(logs.clone(), node.clone());
    let firewall = (cc.isolation == crate::config::Isolation::Nftables)
        .then(|| perch_containers::Firewall::new(node_name));
    let backend = perch_containers::Backend::new(
        Arc::new(driver),
        node_name,
        notices,
        Some(images),
        firewall,
    );
    backend.isolate().await.map_err(|e| {
        ServeError::Data(format!(
            "containers.isolation = \"nftables\": cannot write the table that keeps tenant \
             networks apart ({e}); run Perch where it may write nftables (root or \
             CAP_NET_ADMIN, with `nft` installed), or set containers.isolation = \"engine\" \
             if the engine's own isolation is trusted"
        ))
    })?;
    registry.attach_containers(backend.clone());
    if let Err(e) = backend.reconcile().await {
        tracing::warn!(error = %e, "could not list the engine's containers at start");
    }
    backend.spawn_reaper();
    backend.spawn_exit_watcher();
    Ok(backend)
}
