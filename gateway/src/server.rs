//! `perch serve`: open the data directory, load the registry, bind both
//! listeners, serve until SIGTERM/SIGINT, then drain.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use perch_runtime::{Runtime, RuntimeConfig};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::app::App;
use crate::auth::{Throttle, new_token, token_hash};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::registry::Registry;

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
    let write = || crate::auth::write_private_file(&path, format!("{token}\n").as_bytes());
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
        args: vec![crate::cli::COMPILE_SUBCOMMAND.into()],
        cpu_time: Duration::from_secs(budget.cpu_seconds),
        address_space: budget.memory_mb.saturating_mul(1 << 20),
        wall_time: Duration::from_secs(budget.wall_seconds),
    })
}

/// Open admin API connections; more wait in the listen backlog. Operators
/// and CI are few; this only keeps an outside flood from using up the
/// process's file descriptors.
const ADMIN_CONNECTIONS: usize = 512;

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

/// Runs the server until a shutdown signal; calls `started` once listening.
pub async fn serve(
    config: Config,
    admin_token_env: Option<String>,
    started: impl FnOnce(&Started),
) -> Result<(), ServeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        ServeError::Data(format!("cannot create {}: {e}", config.data_dir.display()))
    })?;
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
    let runtime = Arc::new(Runtime::new(rc)?);

    let secrets = Arc::new(
        crate::secrets::SecretBox::load(&config.data_dir, std::env::var("PERCH_SECRET_KEY").ok())
            .map_err(ServeError::Data)?,
    );
    let db_path = config.data_dir.join("perch.redb");
    let defaults = config.limits;
    let registry = tokio::task::spawn_blocking(move || Registry::open(&db_path, defaults, secrets))
        .await
        .map_err(|e| ServeError::Data(format!("registry load failed: {e}")))??;
    for digest in registry.all_digests() {
        match digest.parse() {
            Ok(d) if runtime.has_component(&d) => {}
            _ => {
                tracing::warn!(%digest, "a registered version's component is missing from artifacts/")
            }
        }
    }

    let redb = perch_kv::RedbKv::open(registry.database().clone())
        .map_err(|e| ServeError::Data(format!("KV store: {e}")))?;
    let kv: Arc<dyn perch_kv::KvStore> = Arc::new(perch_kv::CheckedKv::new(
        Arc::new(redb),
        perch_kv::KvLimits::default(),
    ));
    registry.attach_kv(kv.clone());
    let app = Arc::new(App {
        kv,
        registry: Arc::new(registry),
        runtime,
        metrics: Metrics::default(),
        admin_token_hash: token_hash(&token),
        throttle: Throttle::new(20, Duration::from_secs(60)),
        compile_slots: Semaphore::new(2),
        ready: AtomicBool::new(true),
        config: config.clone(),
    });
    drop(token);

    let bind = |addr: SocketAddr| async move {
        listen(addr).map_err(|source| ServeError::Bind { addr, source })
    };
    let data_listener = bind(config.listen).await?;
    let admin_listener = bind(config.admin_listen).await?;
    let local = |l: &TcpListener, addr| {
        l.local_addr()
            .map_err(|source| ServeError::Bind { addr, source })
    };
    let info = Started {
        data: local(&data_listener, config.listen)?,
        admin: local(&admin_listener, config.admin_listen)?,
        admin_token: token_source,
    };
    started(&info);
    tokio::spawn(warm_up(app.clone()));

    raise_fd_limit(
        libc::rlim_t::from(config.max_connections) + ADMIN_CONNECTIONS as libc::rlim_t + 1024,
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let data_graceful = GracefulShutdown::new();
    let admin_graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(config.max_connections as usize));

    let data_loop = {
        let app = app.clone();
        let mut stop = stop_rx.clone();
        let graceful = &data_graceful;
        async move {
            loop {
                let permit = tokio::select! {
                    p = connections.clone().acquire_owned() => p.expect("semaphore open"),
                    _ = stop.changed() => break,
                };
                let (stream, _) = tokio::select! {
                    r = data_listener.accept() => match r {
                        Ok(s) => s,
                        Err(e) => { tracing::warn!(error = %e, "accept failed"); tokio::time::sleep(Duration::from_millis(10)).await; continue }
                    },
                    _ = stop.changed() => break,
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(app.config.header_read_timeout)
                    .max_buf_size((app.config.max_header_bytes + app.config.max_uri_bytes) * 4)
                    .serve_connection(
                        TokioIo::new(stream),
                        service_fn(move |req| {
                            let app = app.clone();
                            async move {
                                Ok::<_, std::convert::Infallible>(
                                    crate::dataplane::handle(app, req).await,
                                )
                            }
                        }),
                    );
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(permit);
                });
            }
        }
    };

    let admin_loop = {
        let app = app.clone();
        let mut stop = stop_rx.clone();
        let graceful = &admin_graceful;
        let connections = Arc::new(Semaphore::new(ADMIN_CONNECTIONS));
        async move {
            loop {
                let permit = tokio::select! {
                    p = connections.clone().acquire_owned() => p.expect("semaphore open"),
                    _ = stop.changed() => break,
                };
                let (stream, peer) = tokio::select! {
                    r = admin_listener.accept() => match r {
                        Ok(s) => s,
                        Err(e) => { tracing::warn!(error = %e, "accept failed"); tokio::time::sleep(Duration::from_millis(10)).await; continue }
                    },
                    _ = stop.changed() => break,
                };
                let app = app.clone();
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(
                        TokioIo::new(stream),
                        service_fn(move |req| {
                            let app = app.clone();
                            async move {
                                Ok::<_, std::convert::Infallible>(
                                    crate::admin::handle(app, peer, req).await,
                                )
                            }
                        }),
                    );
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(permit);
                });
            }
        }
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

    tokio::join!(data_loop, admin_loop, signals);
    let drain = async {
        tokio::join!(data_graceful.shutdown(), admin_graceful.shutdown());
    };
    if tokio::time::timeout(config.drain, drain).await.is_err() {
        tracing::warn!("drain period over; closing remaining connections");
    }
    Ok(())
}

/// Loads the components of routed functions into the component cache after
/// a start (newest versions first, up to the cache's capacity), one at a time
/// on a blocking thread, so that their first requests find them ready. An
/// artifact compiled by another engine version is recompiled here rather
/// than on a request. Uploads are not held up: it takes one of the two
/// compile slots only while loading.
async fn warm_up(app: Arc<App>) {
    let started = std::time::Instant::now();
    let registry = app.registry.clone();
    let Ok(digests) = tokio::task::spawn_blocking(move || registry.routed_digests()).await else {
        return;
    };
    let capacity = usize::try_from(app.runtime.cache_capacity()).unwrap_or(usize::MAX);
    let (mut loaded, mut failed) = (0usize, 0usize);
    for digest in digests.into_iter().take(capacity) {
        let Ok(digest) = digest.parse::<perch_runtime::Digest>() else {
            continue;
        };
        let Ok(_slot) = app.compile_slots.acquire().await else {
            return;
        };
        let runtime = app.runtime.clone();
        match tokio::task::spawn_blocking(move || runtime.preload(&digest)).await {
            Ok(Ok(true)) => loaded += 1,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                failed += 1;
                tracing::warn!(%digest, error = %e, "warm-up could not load a component")
            }
            Err(_) => return,
        }
    }
    tracing::info!(
        loaded,
        failed,
        ms = started.elapsed().as_millis() as u64,
        "component cache warmed up"
    );
}
