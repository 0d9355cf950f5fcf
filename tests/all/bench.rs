//! Throughput benchmarks through the real server. Ignored by default (timing
//! belongs here, not in tests); run them against a release build:
//!
//! ```sh
//! cargo build --release --bin perch && cargo test --release -p perch-tests --test all bench_ -- --ignored --nocapture
//! ```
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use perch_tests::{Perch, guests};

const RUN: Duration = Duration::from_secs(5);

/// Drives `path_for(i)` on `host` from `clients` keep-alive clients for RUN;
/// returns requests per second (every answer must be `want`).
fn drive(
    perch: &Perch,
    host: &str,
    clients: usize,
    method: reqwest::Method,
    want: u16,
    path_for: &(dyn Fn(usize, u64) -> String + Sync),
) -> f64 {
    let done = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for c in 0..clients {
            let (done, method) = (&done, method.clone());
            s.spawn(move || {
                let client = perch_tests::http();
                let mut i = 0u64;
                while start.elapsed() < RUN {
                    let resp = client
                        .request(
                            method.clone(),
                            format!("{}{}", perch.data_url, path_for(c, i)),
                        )
                        .header("host", host)
                        .body("v")
                        .send()
                        .unwrap();
                    assert_eq!(resp.status().as_u16(), want);
                    resp.bytes().unwrap();
                    i += 1;
                }
                done.fetch_add(i, Ordering::Relaxed);
            });
        }
    });
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

#[test]
#[ignore = "benchmark: run with --release --ignored"]
fn bench_guest_kv() {
    let perch = Perch::start();
    perch.deploy("bench", "kv", guests::KVEXT, "kv.bench.test");
    perch.deploy("bench", "hello", guests::HELLO, "hello.bench.test");
    let put = perch
        .request(reqwest::Method::PUT, "kv.bench.test", "/set/probe")
        .body("hot value")
        .send()
        .unwrap();
    assert_eq!(put.status(), 204);
    for clients in [1, 16] {
        let hello = drive(
            &perch,
            "hello.bench.test",
            clients,
            reqwest::Method::GET,
            200,
            &|_, _| "/".into(),
        );
        let gets = drive(
            &perch,
            "kv.bench.test",
            clients,
            reqwest::Method::GET,
            200,
            &|_, _| "/get/probe".into(),
        );
        let puts = drive(
            &perch,
            "kv.bench.test",
            clients,
            reqwest::Method::PUT,
            204,
            &|c, i| format!("/set/c{c}-{i}"),
        );
        println!(
            "clients={clients:>2}  hello {hello:>8.0} req/s  guest KV get {gets:>8.0} req/s  guest KV durable put {puts:>8.0} req/s"
        );
    }
}
