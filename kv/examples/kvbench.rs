//! KV throughput on this machine's disk:
//!
//! ```sh
//! cargo run --release -p perch-kv --example kvbench
//! ```
//!
//! Prints, each as the median of 5 alternating runs:
//! - raw redb: 64 puts per durable commit, one writer (the best case a
//!   single redb file allows: the reference for group commit);
//! - `RedbKv` durable puts from 64 concurrent writers (group commit): OS
//!   threads each blocking on its `write`, and tokio tasks awaiting theirs
//!   (how guests' KV writes reach it in the server);
//! - `RedbKv` durable puts from one writer (one commit per put);
//! - `RedbKv` hot gets (read cache) and cold gets (redb).
//!
//! `RedbKv` is used as the server uses it: behind the checks, as
//! `Arc<dyn KvStore>`.
use std::sync::Arc;
use std::time::{Duration, Instant};

use perch_kv::{CheckedKv, KvLimits, KvStore, NamespaceId, PutOptions, RedbKv, WriteOp};
use redb::{Database, TableDefinition};

const RAW: TableDefinition<&[u8], &[u8]> = TableDefinition::new("raw");
const RUN: Duration = Duration::from_secs(2);

/// Raw redb, 64 puts per durable commit from one thread. `spread`: the
/// keys the 64 `RedbKv` writers below use (each commit touches 64 places of
/// the tree, one per writer, under the namespace prefix) instead of one
/// counter's keys (which land next to each other).
fn raw_batched(dir: &std::path::Path, spread: bool) -> f64 {
    let db = Database::create(dir.join(format!("raw{spread}.redb"))).unwrap();
    let value = vec![7u8; 100];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN {
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(RAW).unwrap();
            for w in 0..64 {
                let key = if spread {
                    format!("bench\0default\0w{w}-{}", n / 64)
                } else {
                    format!("key-{n}")
                };
                t.insert(key.as_bytes(), value.as_slice()).unwrap();
                n += 1;
            }
        }
        txn.commit().unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The store in `file` as the server opens it, and its redb backend (for
/// the counters).
fn open(file: std::path::PathBuf, cache_bytes: u64) -> (Arc<RedbKv>, Arc<dyn KvStore>) {
    let db = Arc::new(Database::create(file).unwrap());
    let redb = Arc::new(RedbKv::open_with(db, Duration::from_secs(1), cache_bytes).unwrap());
    let kv = Arc::new(CheckedKv::new(redb.clone(), KvLimits::default()));
    (redb, kv)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn kv_puts(dir: &std::path::Path, writers: usize) -> (f64, f64) {
    let (redb, kv) = open(dir.join(format!("kv{writers}.redb")), 64 << 20);
    let ns = NamespaceId::new("bench", "default");
    let rt = runtime();
    let start = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (kv, ns, rt) = (kv.clone(), ns.clone(), rt.handle().clone());
                s.spawn(move || {
                    let mut n = 0u64;
                    while start.elapsed() < RUN {
                        let key = format!("w{w}-{n}");
                        rt.block_on(kv.put(&ns, &key, vec![7u8; 100], PutOptions::default()))
                            .unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    rate_and_batching(&redb, total, start)
}

/// Puts per second since `start`, and write jobs per commit.
fn rate_and_batching(kv: &RedbKv, total: u64, start: Instant) -> (f64, f64) {
    let rate = total as f64 / start.elapsed().as_secs_f64();
    let stats = kv.stats();
    let jobs = stats.write_jobs.load(std::sync::atomic::Ordering::Relaxed) as f64;
    let commits = stats
        .commits
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(1) as f64;
    (rate, jobs / commits)
}

fn kv_puts_async(dir: &std::path::Path, writers: usize) -> (f64, f64) {
    let (redb, kv) = open(dir.join(format!("kva{writers}.redb")), 64 << 20);
    let ns = NamespaceId::new("bench", "default");
    let rt = runtime();
    let start = Instant::now();
    let total: u64 = rt.block_on(async {
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let (kv, ns) = (kv.clone(), ns.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while start.elapsed() < RUN {
                        let op = WriteOp::Put {
                            key: format!("w{w}-{n}"),
                            value: vec![7u8; 100],
                            options: PutOptions::default(),
                        };
                        kv.write(&ns, vec![op]).await.unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        total
    });
    rate_and_batching(&redb, total, start)
}

fn kv_gets(dir: &std::path::Path, hot: bool) -> f64 {
    let cache = if hot { 64 << 20 } else { 0 };
    let (_, kv) = open(dir.join(format!("get{hot}.redb")), cache);
    let ns = NamespaceId::new("bench", "default");
    runtime().block_on(async {
        for i in 0..1000 {
            kv.put(&ns, &format!("k{i}"), vec![7u8; 100], PutOptions::default())
                .await
                .unwrap();
        }
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < RUN {
            let key = format!("k{}", n % 1000);
            assert!(kv.get(&ns, &key).await.unwrap().is_some());
            n += 1;
        }
        n as f64 / start.elapsed().as_secs_f64()
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir_in(std::env::var("PERCH_BENCH_DIR").unwrap_or_else(|_| ".".into()))
        .unwrap();
    let (mut raw, mut spread, mut group, mut single, mut hot, mut cold) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut group_size, mut tasks, mut tasks_size) = (vec![], vec![], vec![]);
    for round in 0..5 {
        let d = dir.path().join(format!("r{round}"));
        std::fs::create_dir_all(&d).unwrap();
        raw.push(raw_batched(&d, false));
        spread.push(raw_batched(&d, true));
        let (rate, size) = kv_puts(&d, 64);
        group.push(rate);
        group_size.push(size);
        let (rate, size) = kv_puts_async(&d, 64);
        tasks.push(rate);
        tasks_size.push(size);
        single.push(kv_puts(&d, 1).0);
        hot.push(kv_gets(&d, true));
        cold.push(kv_gets(&d, false));
    }
    let (raw, spread, group) = (median(raw), median(spread), median(group));
    println!("raw redb, 64 puts per durable commit : {raw:>10.0} puts/s");
    println!("… with the 64 writers' keys (spread) : {spread:>10.0} puts/s");
    println!(
        "RedbKv durable puts, 64 writers      : {group:>10.0} puts/s  ({:.2}x raw batched, {:.2}x with the same keys; {:.1} puts per commit)",
        group / raw,
        group / spread,
        median(group_size)
    );
    let tasks = median(tasks);
    println!(
        "RedbKv durable puts, 64 async tasks  : {tasks:>10.0} puts/s  ({:.2}x raw batched, {:.2}x with the same keys; {:.1} puts per commit)",
        tasks / raw,
        tasks / spread,
        median(tasks_size)
    );
    println!(
        "RedbKv durable puts, 1 writer        : {:>10.0} puts/s",
        median(single)
    );
    println!(
        "RedbKv gets, hot (cache)             : {:>10.0} gets/s",
        median(hot)
    );
    println!(
        "RedbKv gets, cold (redb)             : {:>10.0} gets/s",
        median(cold)
    );
}
