//! Redeploys, restarts and crashes: what was acknowledged stays.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use perch_tests::{NO_HANG, Perch, eventually, guests};
use serde_json::json;

#[test]
fn redeploy_under_load_fails_no_request() {
    let perch = Perch::start();
    let token = perch.deploy("a", "svc", guests::HELLO, "svc.a.test");
    let api = perch.api(&token);
    let stop = AtomicBool::new(false);
    let ok = AtomicUsize::new(0);
    let perch_ref = &perch;
    std::thread::scope(|s| {
        let _stop = perch_tests::StopOnDrop(&stop);
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut failures = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let resp = perch_ref.get("svc.a.test", "/");
                        let status = resp.status().as_u16();
                        let text = resp.text().unwrap_or_default();
                        if status != 200 {
                            failures.push(format!("{status} {text}"));
                        } else {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    failures
                })
            })
            .collect();
        // Requests are answered before, between and after the redeploys.
        let answered_since = |from: usize| {
            eventually("5 more requests answered", || {
                ok.load(Ordering::Relaxed) >= from + 5
            })
        };
        answered_since(0);
        for wasm in [guests::ECHO, guests::HELLO, guests::ECHO] {
            api.upload("a", "svc", &std::fs::read(wasm).unwrap())
                .expect_status(201);
            answered_since(ok.load(Ordering::Relaxed));
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            let failures = w.join().unwrap();
            assert!(failures.is_empty(), "failed requests: {failures:?}");
        }
    });
    assert!(ok.load(Ordering::Relaxed) >= 20);
    // The newest version (echo) answers.
    let resp = perch.get("svc.a.test", "/probe");
    assert_eq!(resp.headers()["x-echo-uri"], "/probe");
    assert_eq!(
        api.get("/v1/tenants/a/functions/svc").ok()["active_version"],
        4
    );
}

fn populate(perch: &Perch) -> String {
    let admin = perch.admin();
    admin
        .put_json("/v1/tenants/a", Some(json!({"domains": ["*.a.test"]})))
        .expect_status(201);
    let token = admin
        .post_json(
            "/v1/tenants/a/tokens",
            json!({"scopes": ["functions", "routes"]}),
        )
        .ok()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let api = perch.api(&token);
    api.upload("a", "hello", &std::fs::read(guests::HELLO).unwrap())
        .expect_status(201);
    api.upload("a", "echo", &std::fs::read(guests::ECHO).unwrap())
        .expect_status(201);
    api.put_json(
        "/v1/tenants/a/routes/hello.a.test",
        Some(json!({"function": "hello"})),
    )
    .expect_status(201);
    api.put_json(
        "/v1/tenants/a/routes/*.echo.a.test",
        Some(json!({"function": "echo"})),
    )
    .expect_status(201);
    token
}

fn check_after_restart(perch: &Perch, token: &str) {
    assert_eq!(perch.metric("perch_compilations_total", ""), 0.0);
    let api = perch.api(token);
    assert_eq!(
        api.get("/v1/tenants/a/routes").ok()["routes"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        perch.admin().get("/v1/tenants").ok()["tenants"][0]["domains"],
        json!(["*.a.test"])
    );
    assert_eq!(
        perch.get("hello.a.test", "/").text().unwrap(),
        "Hello, world!\n"
    );
    assert_eq!(
        perch.get("x.echo.a.test", "/q").headers()["x-echo-uri"],
        "/q"
    );
    // Served from the stored precompiled artifacts (loaded by the warm-up
    // or by the requests themselves): nothing recompiled.
    assert_eq!(perch.metric("perch_compilations_total", ""), 0.0);
    assert!(
        perch.metric("perch_component_cache_misses_total", "")
            + perch.metric("perch_component_cache_hits_total", "")
            >= 2.0
    );
}

const WARMED: &str = "component cache warmed up";

#[test]
fn restart_warms_the_component_cache_before_requests() {
    let mut perch = Perch::start();
    populate(&perch);
    perch.wait_for_log(WARMED, 1);
    perch.sigterm();
    perch.restart();
    perch.wait_for_log(WARMED, 2);
    assert_eq!(perch.metric("perch_compilations_total", ""), 0.0);
    assert_eq!(
        perch.get("hello.a.test", "/").text().unwrap(),
        "Hello, world!\n"
    );
    assert_eq!(perch.get("x.echo.a.test", "/").status(), 200);
    // Both requests found their component loaded already.
    assert_eq!(perch.metric("perch_component_cache_misses_total", ""), 0.0);
    assert_eq!(perch.metric("perch_component_cache_hits_total", ""), 2.0);
}

#[test]
fn warm_up_rebuilds_missing_precompiled_artifacts_before_requests() {
    let mut perch = Perch::start();
    populate(&perch);
    perch.sigterm();
    // As after an upgrade that changes the engine: the stored components
    // are there, their precompiled forms for this engine are not.
    let artifacts = perch.dir.join("data").join("artifacts");
    let mut removed = 0;
    for entry in std::fs::read_dir(&artifacts).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "cwasm") {
            std::fs::remove_file(path).unwrap();
            removed += 1;
        }
    }
    assert_eq!(removed, 2);
    perch.restart();
    perch.wait_for_log(WARMED, 2);
    assert_eq!(perch.metric("perch_compilations_total", ""), 2.0);
    assert_eq!(
        perch.get("hello.a.test", "/").text().unwrap(),
        "Hello, world!\n"
    );
    assert_eq!(perch.metric("perch_component_cache_misses_total", ""), 0.0);
    assert_eq!(perch.metric("perch_compilations_total", ""), 2.0);
}

#[test]
fn state_survives_sigterm_and_sigkill() {
    let mut perch = Perch::start();
    let token = populate(&perch);
    assert_eq!(perch.metric("perch_compilations_total", ""), 2.0);

    let status = perch.sigterm();
    assert!(status.success(), "SIGTERM exit: {status:?}");
    perch.restart();
    check_after_restart(&perch, &token);

    // Acknowledged writes survive a crash straight after them.
    perch
        .api(&token)
        .put_json(
            "/v1/tenants/a/routes/late.a.test",
            Some(json!({"function": "hello"})),
        )
        .expect_status(201);
    perch.sigkill();
    perch.restart();
    check_after_restart_with_late(&perch, &token);
}

fn check_after_restart_with_late(perch: &Perch, token: &str) {
    assert_eq!(perch.get("late.a.test", "/").status(), 200);
    let api = perch.api(token);
    assert_eq!(
        api.get("/v1/tenants/a/routes").ok()["routes"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(perch.get("hello.a.test", "/").status(), 200);
    assert_eq!(perch.metric("perch_compilations_total", ""), 0.0);
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let mut perch = Perch::start();
    perch.deploy("a", "echo", guests::ECHO, "echo.a.test");
    let url = perch.data_url.clone();
    let client = perch.client.clone();
    // A request whose body is still arriving when SIGTERM lands.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
    let reader = ChannelReader {
        rx,
        buf: Vec::new(),
    };
    let inflight = std::thread::spawn(move || {
        client
            .post(format!("{url}/"))
            .header("host", "echo.a.test")
            .body(reqwest::blocking::Body::new(reader))
            .send()
            .and_then(|r| r.bytes())
    });
    tx.send(b"first ".to_vec()).unwrap();
    eventually("the request is inside an instance", || {
        perch.metric("perch_instances_in_use", "") >= 1.0
    });
    let pid = perch.pid();
    unsafe { libc::kill(pid, libc::SIGTERM) };
    // The rest of the body arrives once the server is draining.
    perch.wait_for_log("SIGTERM: draining", 1);
    tx.send(b"second".to_vec()).unwrap();
    drop(tx);
    let body = inflight
        .join()
        .unwrap()
        .expect("in-flight request completed");
    assert_eq!(&body[..], b"first second");
    let status = perch.wait();
    assert!(status.success());
}

struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.buf.is_empty() {
            match self.rx.recv() {
                Ok(b) => self.buf = b,
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf.drain(..n);
        Ok(n)
    }
}

#[test]
fn startup_with_a_thousand_functions_compiles_nothing() {
    let mut perch = Perch::start();
    let admin = perch.admin();
    admin.put_json("/v1/tenants/many", None).expect_status(201);
    let bytes = std::fs::read(guests::HELLO).unwrap();
    admin.upload("many", "f0", &bytes).expect_status(201);
    for i in 1..1000 {
        admin
            .upload("many", &format!("f{i}"), &bytes)
            .expect_status(201);
        admin
            .put_json(
                &format!("/v1/tenants/many/routes/f{i}.many.test"),
                Some(json!({"function": format!("f{i}")})),
            )
            .expect_status(201);
    }
    perch.sigterm();
    let t = Instant::now();
    perch.restart();
    let startup = t.elapsed();
    // What start-up does is the event: it compiles nothing. How long it
    // takes is measured by `bench/run.sh many` (10,000 functions, release).
    assert_eq!(perch.metric("perch_compilations_total", ""), 0.0);
    assert!(startup < NO_HANG, "start-up took {startup:?}");
    assert_eq!(perch.get("f999.many.test", "/").status(), 200);
    assert_eq!(perch.metric("perch_compilations_total", ""), 0.0);
    eprintln!("start-up with 1000 functions: {startup:?}");
}
