//! What a component-cache miss costs, phase by phase: loading the
//! precompiled artifact (`Component::deserialize_file`), linking
//! (`instantiate_pre`), the first instantiation into a pool slot that held
//! another module, and dropping the component again (its eviction).
//!
//! ```sh
//! cargo run --release -p perch-runtime --example miss -- path/to/hello.wasm [variants]
//! ```
//! The component must contain the marker `perch-bench-variant:000000`
//! (`bench/guests/hello` does): each variant patches it, so every variant is a
//! distinct component with its own artifact, as in the many-functions
//! scenario of `bench/run.sh`.

// The allocator the `perch` binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "common/plain.rs"]
mod plain;
use plain::Plain;

use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e6
}

fn run(name: &str, mut config: Config, variants: &[Vec<u8>]) -> anyhow::Result<()> {
    let mut pool = PoolingAllocationConfig::new();
    pool.max_unused_warm_slots(4);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config)?;
    let dir = tempfile::tempdir()?;
    let mut paths = Vec::new();
    for (i, bytes) in variants.iter().enumerate() {
        let path = dir.path().join(format!("v{i}.cwasm"));
        std::fs::write(&path, engine.precompile_component(bytes)?)?;
        paths.push(path);
    }
    let size = std::fs::metadata(&paths[0])?.len();
    let mut linker = Linker::<Plain>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let (mut de, mut link, mut inst, mut drop_t) = (vec![], vec![], vec![], vec![]);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(4);
    for round in 0..rounds {
        for path in &paths {
            let t0 = Instant::now();
            // SAFETY: written just above by this engine.
            let c = unsafe { Component::deserialize_file(&engine, path)? };
            let t1 = Instant::now();
            let pre = ProxyPre::new(linker.instantiate_pre(&c)?)?;
            let t2 = Instant::now();
            rt.block_on(async {
                let mut store = Store::new(&engine, Plain::new());
                store.set_epoch_deadline(u64::MAX / 2);
                pre.instantiate_async(&mut store).await.map(drop)
            })?;
            let t3 = Instant::now();
            drop(pre);
            drop(c);
            let t4 = Instant::now();
            if round > 0 {
                de.push(t1 - t0);
                link.push(t2 - t1);
                inst.push(t3 - t2);
                drop_t.push(t4 - t3);
            }
        }
    }
    let (a, b, c, d) = (median(de), median(link), median(inst), median(drop_t));
    println!(
        "{name:<28} artifact {:>4} KiB | deserialize {a:>6.1} µs | link {b:>5.1} µs | first instantiate {c:>5.1} µs | drop {d:>5.1} µs | total {:>6.1} µs",
        size / 1024,
        a + b + c + d
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: miss <component.wasm> [variants]"))?;
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(16);
    let bytes = std::fs::read(&path)?;
    let marker = b"perch-bench-variant:000000";
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .ok_or_else(|| anyhow::anyhow!("marker not found"))?;
    let variants: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut b = bytes.clone();
            b[at..at + marker.len()]
                .copy_from_slice(format!("perch-bench-variant:{i:06}").as_bytes());
            b
        })
        .collect();
    let settings = perch_runtime::EngineSettings {
        max_wasm_stack: 512 * 1024,
    };
    run(
        "perch engine",
        perch_runtime::engine_config(&settings),
        &variants,
    )?;
    Ok(())
}
