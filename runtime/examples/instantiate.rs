//! Per-request instantiation cost: a fresh `Store` (with every context and
//! limit a request gets) plus instantiating the component, as Perch does it,
//! next to a plain wasmtime host with the default pooling allocator (the
//! reference), measured alternately in one process. Dropping the store
//! (which resets the instance's pooled memory and table slots) is timed
//! separately, and both are reported with their sum.
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

fn us(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e7).round() / 10.0
}

/// One side's measurements: per round, the median of Store::new plus
/// instantiation, of dropping the store (resetting the pooled slots), and of
/// both; and every instantiation for the p99.
#[derive(Default)]
struct Side {
    instantiate: Vec<Duration>,
    drop: Vec<Duration>,
    total: Vec<Duration>,
    all: Vec<Duration>,
}

impl Side {
    fn push(&mut self, inst: Vec<Duration>, drop: Vec<Duration>) {
        let total = inst.iter().zip(&drop).map(|(a, b)| *a + *b).collect();
        self.all.extend_from_slice(&inst);
        self.instantiate.push(median(inst));
        self.drop.push(median(drop));
        self.total.push(median(total));
    }

    fn median_instantiate(&self) -> f64 {
        median(self.instantiate.clone()).as_secs_f64()
    }

    fn median_total(&self) -> f64 {
        median(self.total.clone()).as_secs_f64()
    }

    fn print(&self, name: &str) {
        let rounds = |v: &[Duration]| v.iter().map(|d| us(*d)).collect::<Vec<_>>();
        println!(
            "{name:<19} store+instantiate: median {:.1} µs (rounds {:?}), p99 {:.1} µs | drop {:.1} µs | total {:.1} µs (rounds {:?})",
            us(median(self.instantiate.clone())),
            rounds(&self.instantiate),
            us(percentile(self.all.clone(), 0.99)),
            us(median(self.drop.clone())),
            us(median(self.total.clone())),
            rounds(&self.total),
        );
    }
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

    // Per round and side: (store + instantiate, drop) of every iteration.
    let mut perch = Side::default();
    let mut plain = Side::default();
    rt.block_on(async {
        for round in 0..=ROUNDS {
            let (mut pi, mut pd) = (Vec::new(), Vec::new());
            for _ in 0..PER_ROUND {
                let t0 = Instant::now();
                let store = runtime.instantiate_only(&inv).await?;
                let t1 = Instant::now();
                drop(store);
                pi.push(t1 - t0);
                pd.push(t1.elapsed());
            }
            let (mut qi, mut qd) = (Vec::new(), Vec::new());
            for _ in 0..PER_ROUND {
                let t0 = Instant::now();
                let mut store = Store::new(&engine, Plain::new());
                pre.instantiate_async(&mut store).await?;
                let t1 = Instant::now();
                drop(store);
                qi.push(t1 - t0);
                qd.push(t1.elapsed());
            }
            // Round 0 warms both pools up.
            if round > 0 {
                perch.push(pi, pd);
                plain.push(qi, qd);
            }
        }
        anyhow::Ok(())
    })?;
    perch.print("perch");
    plain.print("plain pooling host");
    println!(
        "ratio perch/plain: {:.2} (store + instantiate), {:.2} (with drop)",
        perch.median_instantiate() / plain.median_instantiate(),
        perch.median_total() / plain.median_total()
    );
    Ok(())
}
