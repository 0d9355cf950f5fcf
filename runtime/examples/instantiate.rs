//! Per-request instantiation cost: a fresh `Store` (with every context and
//! limit a request gets) plus instantiating the component, as Perch does it,
//! next to a plain wasmtime host with the default pooling allocator (the
//! reference), measured alternately in one process.
//!
//! ```sh
//! cargo run --release -p perch-runtime --example instantiate -- path/to/hello.wasm
//! ```

// The allocator the `perch` binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "common/plain.rs"]
mod plain;
use plain::Plain;

use std::sync::Arc;
use std::time::{Duration, Instant};

use perch_runtime::{Invocation, Limits, Runtime, RuntimeConfig};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

const ROUNDS: usize = 5;
const PER_ROUND: usize = 2000;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: instantiate <component.wasm>"))?;
    let bytes = std::fs::read(&path)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    // Perch, as configured for serving.
    let dir = tempfile::tempdir()?;
    let runtime = Arc::new(Runtime::new(RuntimeConfig::new(dir.path()))?);
    let digest = runtime.store_component(&bytes)?;
    let inv = Invocation::new(digest, Limits::default(), "bench/hello@1");

    // The reference: wasmtime's default pooling allocator, a store with
    // only WASI and wasi-http contexts.
    let mut config = Config::new();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(
        PoolingAllocationConfig::default(),
    ));
    let engine = Engine::new(&config)?;
    let mut linker = Linker::<Plain>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    let component = Component::new(&engine, &bytes)?;
    let pre = ProxyPre::new(linker.instantiate_pre(&component)?)?;

    let mut perch_rounds = Vec::new();
    let mut plain_rounds = Vec::new();
    let mut perch_all = Vec::new();
    rt.block_on(async {
        for round in 0..=ROUNDS {
            let mut perch = Vec::with_capacity(PER_ROUND);
            for _ in 0..PER_ROUND {
                let t = Instant::now();
                runtime.instantiate_only(&inv).await?;
                perch.push(t.elapsed());
            }
            let mut plain = Vec::with_capacity(PER_ROUND);
            for _ in 0..PER_ROUND {
                let t = Instant::now();
                let mut store = Store::new(&engine, Plain::new());
                pre.instantiate_async(&mut store).await?;
                drop(store);
                plain.push(t.elapsed());
            }
            // Round 0 warms both pools up.
            if round > 0 {
                perch_all.extend_from_slice(&perch);
                perch_rounds.push(median(perch));
                plain_rounds.push(median(plain));
            }
        }
        anyhow::Ok(())
    })?;
    let perch = median(perch_rounds.clone());
    let plain = median(plain_rounds.clone());
    println!(
        "perch store+instantiate: median {:.1} µs (round medians {:?}), p99 {:.1} µs",
        perch.as_secs_f64() * 1e6,
        perch_rounds
            .iter()
            .map(|d| (d.as_secs_f64() * 1e7).round() / 10.0)
            .collect::<Vec<_>>(),
        percentile(perch_all, 0.99).as_secs_f64() * 1e6
    );
    println!(
        "plain pooling host:      median {:.1} µs (round medians {:?})",
        plain.as_secs_f64() * 1e6,
        plain_rounds
            .iter()
            .map(|d| (d.as_secs_f64() * 1e7).round() / 10.0)
            .collect::<Vec<_>>()
    );
    println!(
        "ratio perch/plain: {:.2}",
        perch.as_secs_f64() / plain.as_secs_f64()
    );
    Ok(())
}
