//! Perch's wasmtime host.
//!
//! `perch-runtime` owns the wasmtime [`Engine`](wasmtime::Engine) (pooling
//! allocator, epoch interruption driven by a ticker thread), validates and
//! compiles uploaded components into on-disk precompiled artifacts, caches
//! pre-instantiated components, and runs one `wasi:http` request per fresh
//! instance under memory, CPU-time and wall-time limits. It knows nothing of
//! hostnames, tenants or the admin API: the gateway tells it which artifact to
//! run and with which settings.
//!
//! Three seams let the gateway plug in what it knows:
//! - [`ArtifactStore`] (`RuntimeConfig::artifact_store`): where uploaded
//!   components are kept for good; the local artifacts directory is a
//!   cache in front of it (default: a [`LocalArtifactStore`] over that
//!   same directory).
//! - [`LogSink`] (`Invocation::log_sink`): receives one
//!   [`InvocationRecord`] per request: the guest's stdout/stderr lines, the
//!   [`Outcome`], status, CPU and duration (default: [`TracingLogSink`],
//!   the server log).
//! - [`InternalDestinations`] (`Invocation::internal`): asked about each
//!   outbound request before the egress policy, it may answer it itself.
//!
//! ```no_run
//! use perch_runtime::{Invocation, Limits, Runtime, RuntimeConfig};
//! # async fn demo(bytes: Vec<u8>, req: hyper::Request<http_body_util::Empty<bytes::Bytes>>) -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = std::sync::Arc::new(Runtime::new(RuntimeConfig::new("./perch-data/artifacts"))?);
//! let digest = runtime.store_component(&bytes)?;
//! let invocation = Invocation::new(digest, Limits::default(), "tenant/function@1");
//! let response = runtime.handle(&invocation, req).await?;
//! # let _ = response; Ok(()) }
//! ```
#![deny(missing_docs)]

// Modules depend on each other one way, roughly in this order (leaves
// first): digest, error, files, meter, logs, internal, limits, egress, store,
// report, rlimit, compile, cache, host, validate, pool, record, invoke.
mod cache;
mod compile;
mod digest;
mod egress;
mod error;
mod files;
mod host;
mod internal;
mod invoke;
mod limits;
mod logs;
mod meter;
mod pg_artifacts;
mod pool;
mod record;
mod report;
mod rlimit;
mod store;
mod trace;
mod validate;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

pub use compile::{
    CompileChildError, CompilerCommand, EngineSettings, compile_child, engine_config,
};
pub use digest::Digest;
pub use egress::{DEFAULT_MAX_TIMEOUTS, EgressConfig, OutboundPolicy, refused_ip, send_direct};
pub use error::{InvokeError, RuntimeError, ValidationError};
pub use host::Host;
pub use internal::{InternalDestinations, OutboundFuture, OutboundResponse, Route};
pub use invoke::{Invocation, ResponseBody};
pub use limits::Limits;
pub use logs::{InvocationRecord, LogLine, LogSink, LogStream, Outcome, TracingLogSink};
pub use perch_kv::guest::KvAccess;
pub use pg_artifacts::PgArtifactStore;
pub use store::{ArtifactStore, LocalArtifactStore};
pub use trace::{CallSpan, CallTracer, KvOp, OutboundSpan, RequestTrace};
pub use wasmtime_wasi_config::WasiConfigVariables;
pub use wasmtime_wasi_http::{RequestOptions, WasiBody};

/// Bytes of each pooled linear memory kept resident between instances.
const KEEP_RESIDENT: usize = 1 << 20;

/// Engine-wide settings, fixed for the life of the process.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The node's cache of components (fetched from `artifact_store`) and
    /// of their precompiled forms.
    pub artifacts_dir: PathBuf,
    /// Where uploaded components are kept for good. [`RuntimeConfig::new`]
    /// sets a [`LocalArtifactStore`] over `artifacts_dir`: the store and the
    /// cache are then the same `<sha256>.wasm` files.
    pub artifact_store: Arc<dyn ArtifactStore>,
    /// How often the epoch advances; the granularity of CPU-time accounting.
    pub epoch_tick: Duration,
    /// Largest memory any single instance may have (the operator maximum).
    pub max_instance_memory: usize,
    /// Instances that may exist at once on the node (pool size).
    pub max_instances: u32,
    /// Idle pool slots that stay affine to (keep the memory image of) the
    /// module last instantiated in them; each keeps at most 1 MiB of the
    /// pages its last instance dirtied resident.
    pub warm_slots: u32,
    /// Wasm stack limit for every instance.
    pub max_wasm_stack: usize,
    /// Pre-instantiated components kept in memory.
    pub cache_capacity: u64,
    /// Outbound HTTP rules.
    pub egress: EgressConfig,
    /// Compile in a child process under rlimits (the server's setting);
    /// `None` compiles in this process.
    pub compiler: Option<CompilerCommand>,
}

impl RuntimeConfig {
    /// Defaults from the design: 1 GiB maximum instance memory, 512 KiB
    /// stack, 1000 pooled instances (512 of them kept warm when idle), a
    /// 5 ms epoch tick; components kept in `artifacts_dir` itself.
    pub fn new(artifacts_dir: impl Into<PathBuf>) -> Self {
        let artifacts_dir = artifacts_dir.into();
        RuntimeConfig {
            artifact_store: Arc::new(LocalArtifactStore::new(&artifacts_dir)),
            artifacts_dir,
            epoch_tick: Duration::from_millis(5),
            max_instance_memory: 1 << 30,
            max_instances: 1000,
            warm_slots: 512,
            max_wasm_stack: 512 * 1024,
            cache_capacity: 1000,
            egress: EgressConfig::new(Vec::new()),
            compiler: None,
        }
    }

    /// The settings that shape compiled code (shared with a compiler child).
    pub fn engine_settings(&self) -> EngineSettings {
        EngineSettings {
            max_wasm_stack: self.max_wasm_stack,
        }
    }
}

/// Counters the gateway exports as metrics.
#[derive(Debug, Default)]
pub struct RuntimeStats {
    /// Components compiled by cranelift (uploads and artifact rebuilds).
    pub compilations: AtomicU64,
    /// Requests whose pre-instantiated component was already in memory.
    pub cache_hits: AtomicU64,
    /// Requests that had to load (or rebuild) the component first.
    pub cache_misses: AtomicU64,
    /// Instances alive right now.
    pub instances_in_use: AtomicU64,
    /// Components the in-memory cache dropped to make room.
    pub cache_evictions: AtomicU64,
    /// Outbound requests refused: a host outside `outbound.allow`, a
    /// refused address, or past the per-invocation limit.
    pub egress_refused: AtomicU64,
}

/// The wasmtime host shared by every request on the node.
pub struct Runtime {
    engine: Engine,
    linker: Linker<Host>,
    artifacts: cache::ArtifactCache,
    cache: moka::sync::Cache<Digest, ProxyPre<Host>>,
    stats: Arc<RuntimeStats>,
    egress: Arc<EgressConfig>,
    ticker_stop: Arc<AtomicBool>,
}

impl Runtime {
    /// Builds the engine, the linker with Perch's guest interfaces, and starts
    /// the epoch ticker thread.
    pub fn new(config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * 4)
            .total_memories(config.max_instances * 2)
            .total_tables(config.max_instances * 4)
            .total_stacks(config.max_instances)
            .max_memory_size(config.max_instance_memory)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .max_core_instances_per_component(32)
            // Idle slots stay affine to the module last instantiated in
            // them: its next instance finds its memory image mapped and its
            // pages resident. With hundreds of functions in turn, a small
            // budget made most instantiations map an image (mmap) again.
            .max_unused_warm_slots(config.warm_slots.min(config.max_instances))
            // Reset a finished instance's memories and tables by rewriting
            // the pages it dirtied (found with PAGEMAP_SCAN where the kernel
            // has it) instead of unmapping them: the next instance in the
            // slot then takes no page faults on the pages a small function
            // touches. Bounded per slot; larger memories are still unmapped.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT / 16)
            .pagemap_scan(Enabled::Auto);

        let settings = config.engine_settings();
        let mut wasm = engine_config(&settings);
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(RuntimeError::engine)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(RuntimeError::engine)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(RuntimeError::engine)?;
        perch_kv::guest::add_to_linker(&mut linker).map_err(RuntimeError::engine)?;
        wasmtime_wasi_config::add_to_linker(&mut linker, |h: &mut Host| {
            wasmtime_wasi_config::WasiConfig::from(&*h.config)
        })
        .map_err(RuntimeError::engine)?;

        let mut egress = config.egress;
        egress.tls =
            Some(egress::tls_client(egress.ca_file.as_deref()).map_err(RuntimeError::Config)?);

        let compiler = compile::Compiler {
            settings,
            command: config.compiler,
        };
        let artifacts = cache::ArtifactCache::open(
            &config.artifacts_dir,
            &engine,
            compiler,
            config.artifact_store,
        )?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.clone(), config.epoch_tick, ticker_stop.clone());

        let stats = Arc::new(RuntimeStats::default());
        let evicted = stats.clone();
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.cache_capacity)
            .eviction_listener(move |_, _, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evicted.cache_evictions.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        Ok(Runtime {
            engine,
            linker,
            artifacts,
            cache,
            stats,
            egress: Arc::new(egress),
            ticker_stop,
        })
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &Arc<RuntimeStats> {
        &self.stats
    }

    /// The engine (shared by every store).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Validates an uploaded component, compiles it (through the configured
    /// compiler child, if any), puts it into the artifact store (durably)
    /// and keeps it with its precompiled form in the local cache, under
    /// its SHA-256 digest.
    ///
    /// Blocking (cranelift, or waiting for the child; the store's I/O):
    /// call it from a blocking thread.
    pub fn store_component(&self, bytes: &[u8]) -> Result<Digest, ValidationError> {
        let digest = Digest::of(bytes);
        let stored = || {
            self.artifacts
                .ensure_stored(&digest, bytes)
                .map_err(ValidationError::Storage)
        };
        // Identical bytes were validated and compiled when first stored.
        if self.cache.contains_key(&digest) {
            stored()?;
            return Ok(digest);
        }
        if self.artifacts.has_local(&digest)
            && let Ok((component, compiled)) = self.artifacts.load(&self.engine, &digest)
        {
            if compiled {
                self.stats.compilations.fetch_add(1, Ordering::Relaxed);
            }
            let pre = validate::pre_instantiate(&self.linker, &component)?;
            stored()?;
            self.cache.insert(digest, pre);
            return Ok(digest);
        }
        validate::precheck(bytes)?;
        let pre = self
            .artifacts
            .compile_and_store(&self.engine, &digest, bytes, |component| {
                validate::check_interface(&self.engine, &self.linker, component)
            })?;
        self.stats.compilations.fetch_add(1, Ordering::Relaxed);
        self.cache.insert(digest, pre);
        Ok(digest)
    }

    /// True when the component for `digest` is kept: in the local cache, or
    /// in the artifact store. Blocking (the store's I/O).
    pub fn has_component(&self, digest: &Digest) -> bool {
        self.artifacts.has_component(digest)
    }

    /// The bytes of the component for `digest` (`None`: not kept).
    /// Blocking (I/O).
    pub fn component_bytes(&self, digest: &Digest) -> Result<Option<Vec<u8>>, RuntimeError> {
        self.artifacts.bytes(digest)
    }

    /// Forgets a component no version uses any more: out of memory, its
    /// local files, its bytes in the artifact store. Blocking (I/O).
    /// Callers make sure no upload of the same bytes is under way.
    pub fn remove_component(&self, digest: &Digest) -> Result<(), RuntimeError> {
        self.cache.invalidate(digest);
        self.artifacts.remove(digest)
    }

    /// Forgets a component on this node only (memory and local files),
    /// leaving it in the artifact store: in cluster mode, where other
    /// nodes may still run it. Blocking (I/O).
    pub fn forget_local(&self, digest: &Digest) -> Result<(), RuntimeError> {
        self.cache.invalidate(digest);
        self.artifacts.remove_local(digest)
    }

    /// Digests of the components in the local artifacts directory.
    /// Blocking (I/O).
    pub fn local_components(&self) -> Result<Vec<Digest>, RuntimeError> {
        self.artifacts.local_digests()
    }

    /// The pre-instantiated component for `digest`, from memory, else from
    /// its precompiled artifact, else compiled from the component's bytes
    /// (in the local cache, else fetched from the artifact store into it).
    /// Blocking on a miss.
    pub fn load(&self, digest: &Digest) -> Result<ProxyPre<Host>, RuntimeError> {
        if let Some(pre) = self.cache.get(digest) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(pre);
        }
        self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
        self.cache
            .try_get_with(*digest, || self.load_stored(digest))
            .map_err(|e| (*e).clone())
    }

    /// Deserializes (or recompiles) a stored component and links it.
    fn load_stored(&self, digest: &Digest) -> Result<ProxyPre<Host>, RuntimeError> {
        let (component, compiled) = self.artifacts.load(&self.engine, digest)?;
        if compiled {
            self.stats.compilations.fetch_add(1, Ordering::Relaxed);
        }
        validate::pre_instantiate(&self.linker, &component)
            .map_err(|e| RuntimeError::Artifact(e.to_string()))
    }

    /// Loads a component into the cache ahead of its first request, without
    /// counting a hit or miss; `Ok(false)` when it was there already.
    /// Blocking (it may even recompile a stale artifact).
    pub fn preload(&self, digest: &Digest) -> Result<bool, RuntimeError> {
        if self.cache.contains_key(digest) {
            return Ok(false);
        }
        let pre = self.load_stored(digest)?;
        self.cache.insert(*digest, pre);
        Ok(true)
    }

    /// Components the cache holds at most.
    pub fn cache_capacity(&self) -> u64 {
        self.cache.policy().max_capacity().unwrap_or(u64::MAX)
    }

    /// Loads a component without blocking the async threads.
    pub async fn load_async(
        self: &Arc<Self>,
        digest: &Digest,
    ) -> Result<ProxyPre<Host>, RuntimeError> {
        self.load_cold(digest).await.map(|(pre, _)| pre)
    }

    /// [`Runtime::load_async`], and whether the component was not in
    /// memory (a cold start: loaded or compiled for this request).
    pub(crate) async fn load_cold(
        self: &Arc<Self>,
        digest: &Digest,
    ) -> Result<(ProxyPre<Host>, bool), RuntimeError> {
        if let Some(pre) = self.cache.get(digest) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok((pre, false));
        }
        let this = self.clone();
        let digest = *digest;
        tokio::task::spawn_blocking(move || this.load(&digest))
            .await
            .map_err(|e| RuntimeError::Artifact(format!("loader panicked: {e}")))?
            .map(|pre| (pre, true))
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

fn spawn_epoch_ticker(engine: Engine, tick: Duration, stop: Arc<AtomicBool>) {
    std::thread::Builder::new()
        .name("perch-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                engine.increment_epoch();
            }
        })
        .expect("spawn epoch ticker thread");
}

/// The error type of request and response bodies exchanged with guests.
pub use wasmtime_wasi_http::Error as HttpError;
