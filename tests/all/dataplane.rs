//! Requests through the data plane: routing, fidelity, streaming, failures.
use std::io::Read;
use std::time::{Duration, Instant};

use perch_tests::{NO_HANG, Perch, echoed_headers, eventually, guests};
use reqwest::Method;
use serde_json::Value;

fn error_code(resp: reqwest::blocking::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().expect("JSON error body");
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[test]
fn routes_by_host_case_and_port_insensitively() {
    let perch = Perch::start();
    perch.deploy("a", "hello", guests::HELLO, "hello.a.test");
    let resp = perch.get("hello.a.test", "/");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().unwrap(), "Hello, world!\n");
    let resp = perch.get("HELLO.a.test:8080", "/");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().unwrap(), "Hello, world!\n");
    assert_eq!(
        error_code(perch.get("unknown.test", "/")),
        (404, "no_route".into())
    );
    assert!(
        perch.metric(
            "perch_requests_total",
            "tenant=\"a\",function=\"hello\",status=\"200\""
        ) >= 2.0
    );
}

#[test]
fn request_reaches_guest_unchanged_and_big_bodies_stream() {
    let perch = Perch::start();
    perch.deploy("a", "echo", guests::ECHO, "echo.a.test");

    // A 1 MiB body sent chunked (streamed, no Content-Length).
    let payload: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 256) as u8).collect();
    let body = reqwest::blocking::Body::new(std::io::Cursor::new(payload.clone()));
    let resp = perch
        .request(Method::PATCH, "echo.a.test", "/some/path?x=1&y=%20z")
        .header("x-custom", "Value With Spaces")
        .header("x-multi", "one")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-echo-method"], "PATCH");
    assert_eq!(resp.headers()["x-echo-uri"], "/some/path?x=1&y=%20z");
    let headers = echoed_headers(&resp);
    assert!(
        headers.contains(&"x-custom: Value With Spaces".to_string()),
        "{headers:?}"
    );
    assert!(headers.contains(&"x-multi: one".to_string()), "{headers:?}");
    let echoed = resp.bytes().unwrap();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed[..] == payload[..], "echoed body differs");

    // A 5 MiB response streamed back intact.
    let mut resp = perch.get("echo.a.test", "/big?mib=5");
    assert_eq!(resp.status(), 200);
    let mut got = Vec::new();
    resp.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 5 * 1024 * 1024);
    for (i, chunk) in got.chunks(64 * 1024).enumerate() {
        assert!(
            chunk.iter().all(|b| *b == (i % 251) as u8),
            "chunk {i} corrupted"
        );
    }
}

#[test]
fn two_hundred_concurrent_requests_all_succeed() {
    let perch = Perch::start();
    perch.deploy("a", "hello", guests::HELLO, "hello.a.test");
    let perch = &perch;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..200)
            .map(|i| {
                s.spawn(move || {
                    let resp = perch.get("hello.a.test", &format!("/?name=n{i}"));
                    (resp.status().as_u16(), resp.text().unwrap())
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let (status, text) = h.join().unwrap();
            assert_eq!(status, 200);
            assert_eq!(text, format!("Hello, n{i}!\n"));
        }
    });
}

#[test]
fn guest_failures_map_to_errors_and_others_keep_working() {
    let wall = Duration::from_millis(3000);
    let perch = Perch::start_with(&format!(
        "[limits]\ncpu_ms = 5000\nwall_ms = {}\n",
        wall.as_millis()
    ));
    perch.deploy("a", "faulty", guests::FAULTY, "faulty.a.test");
    perch.deploy("b", "hello", guests::HELLO, "hello.b.test");

    assert_eq!(perch.get("faulty.a.test", "/").status(), 200);
    assert_eq!(
        error_code(perch.get("faulty.a.test", "/trap")),
        (500, "function_error".into())
    );
    assert_eq!(
        error_code(perch.get("faulty.a.test", "/noresp")),
        (500, "function_error".into())
    );

    let started = Instant::now();
    let (hang, took) = std::thread::scope(|s| {
        let hang = s.spawn(|| {
            let answer = error_code(perch.get("faulty.a.test", "/hang"));
            (answer, started.elapsed())
        });
        eventually("the hanging request holds an instance", || {
            perch.metric("perch_instances_in_use", "") >= 1.0
        });
        // Other tenants are served while the guest hangs: the first of
        // these is answered before the hanging request ends.
        for i in 0..5 {
            let t = Instant::now();
            assert_eq!(perch.get("hello.b.test", "/").status(), 200);
            assert!(t.elapsed() < NO_HANG, "hello hung: {:?}", t.elapsed());
            if i == 0 {
                assert!(
                    !hang.is_finished(),
                    "another tenant was answered only after the hanging request ended"
                );
            }
        }
        hang.join().unwrap()
    });
    assert_eq!(hang, (504, "function_timeout".into()));
    // The wall-time limit ended it, not before it was due (less a tick of
    // the epoch timer).
    perch.wait_for_log_line(&["wall-time limit hit", "tenant=a", "function=faulty"]);
    assert!(
        took >= wall - Duration::from_millis(100) && took < wall + NO_HANG,
        "took {took:?}"
    );
    assert_eq!(
        perch.metric(
            "perch_requests_total",
            "tenant=\"a\",function=\"faulty\",status=\"504\""
        ),
        1.0
    );

    // Guest detail never reaches the client.
    let body = perch.get("faulty.a.test", "/trap").text().unwrap();
    assert!(!body.contains("deliberate"), "{body}");
    assert!(
        perch.logs().contains("deliberate trap"),
        "trap detail should be in the server log"
    );
    assert_eq!(perch.get("faulty.a.test", "/").status(), 200);
    assert_eq!(perch.get("hello.b.test", "/").status(), 200);
}

#[test]
fn cpu_bound_guest_is_stopped_by_the_cpu_limit() {
    let perch = Perch::start_with("[limits]\ncpu_ms = 200\nwall_ms = 20000\n");
    perch.deploy("a", "faulty", guests::FAULTY, "faulty.a.test");
    let t = Instant::now();
    assert_eq!(
        error_code(perch.get("faulty.a.test", "/spin")),
        (504, "function_timeout".into())
    );
    assert!(t.elapsed() < NO_HANG, "took {:?}", t.elapsed());
    // The CPU-time limit stopped it, long before the 20 s wall limit could.
    perch.wait_for_log_line(&["CPU-time limit hit", "tenant=a", "function=faulty"]);
    assert!(
        perch.log_lines(&["wall-time limit hit"]).is_empty(),
        "{}",
        perch.logs()
    );
    // Waiting on a timer is not CPU time: /hang runs into the wall limit instead,
    // which is far above the CPU limit.
    assert_eq!(perch.get("faulty.a.test", "/").status(), 200);
}

#[test]
fn oversized_body_is_refused() {
    let perch = Perch::start_with("[node]\nmax_body_bytes = 1048576\n");
    perch.deploy("a", "echo", guests::ECHO, "echo.a.test");
    let resp = perch
        .request(Method::POST, "echo.a.test", "/")
        .body(vec![0u8; 2 << 20])
        .send();
    if let Ok(resp) = resp {
        assert_eq!(error_code(resp), (413, "body_too_large".into()));
    }
    // Chunked, crossing the limit while the guest reads it.
    let body = reqwest::blocking::Body::new(std::io::Cursor::new(vec![1u8; 2 << 20]));
    // Echo answers before reading, so the head is out when the limit is
    // crossed: the response must then be cut off, never completed cleanly.
    if let Ok(resp) = perch
        .request(Method::POST, "echo.a.test", "/")
        .body(body)
        .send()
    {
        if resp.status() == 200 {
            assert!(
                resp.bytes().is_err(),
                "body past the limit was echoed in full"
            );
        } else {
            assert_eq!(error_code(resp), (413, "body_too_large".into()));
        }
    }
    assert_eq!(
        perch
            .request(Method::POST, "echo.a.test", "/")
            .body(vec![0u8; 1000])
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn memory_and_stack_limits_kill_only_the_instance() {
    let perch = Perch::start_with("[limits]\ncpu_ms = 10000\nmemory_mb = 64\n");
    perch.deploy("a", "faulty", guests::FAULTY, "faulty.a.test");
    perch.deploy("b", "hello", guests::HELLO, "hello.b.test");
    // Within the limit.
    assert_eq!(
        perch.get("faulty.a.test", "/alloc?16").text().unwrap(),
        "allocated 16 MiB"
    );
    // Growing towards 2 GiB stops at the instance limit.
    assert_eq!(
        error_code(perch.get("faulty.a.test", "/alloc?2048")),
        (500, "memory_limit".into())
    );
    // The log line is read from the server's stderr by another thread:
    // wait for it rather than race it.
    perch.wait_for_log("memory limit", 1);
    // Unbounded recursion exhausts the wasm stack: a trap, not a crash.
    assert_eq!(
        error_code(perch.get("faulty.a.test", "/recurse")),
        (500, "function_error".into())
    );
    assert_eq!(perch.get("hello.b.test", "/").status(), 200);
    assert_eq!(perch.get("faulty.a.test", "/").status(), 200);
}

#[test]
fn oversized_urls_and_headers_get_perchs_json_errors() {
    let perch = Perch::start();
    perch.deploy("a", "hello", guests::HELLO, "hello.a.test");
    let long = format!("/?q={}", "x".repeat(17 * 1024));
    assert_eq!(
        error_code(perch.get("hello.a.test", &long)),
        (414, "uri_too_long".into())
    );
    let resp = perch
        .request(Method::GET, "hello.a.test", "/")
        .header("x-big", "y".repeat(40 * 1024))
        .send()
        .unwrap();
    assert_eq!(error_code(resp), (431, "headers_too_large".into()));
    assert_eq!(perch.get("hello.a.test", "/").status(), 200);
}

#[test]
fn tenant_concurrency_cap_answers_429_for_that_tenant_only() {
    let perch = Perch::start_with(
        "[limits]\ncpu_ms = 5000\nwall_ms = 6000\n[node]\ntenant_concurrency = 2\n",
    );
    perch.deploy("a", "faulty", guests::FAULTY, "faulty.a.test");
    perch.deploy("b", "hello", guests::HELLO, "hello.b.test");
    std::thread::scope(|s| {
        let hangs: Vec<_> = (0..2)
            .map(|_| s.spawn(|| perch.get("faulty.a.test", "/hang").status()))
            .collect();
        // Once both hanging requests hold their slots, the tenant is busy.
        crate::hostile::wait_for_instances(&perch, 2);
        let busy = perch.get("faulty.a.test", "/");
        assert_eq!(busy.headers()["retry-after"], "1");
        assert_eq!(error_code(busy), (429, "tenant_busy".into()));
        assert_eq!(perch.get("hello.b.test", "/").status(), 200);
        for h in hangs {
            assert_eq!(h.join().unwrap(), 504);
        }
    });
    // Slots are released when the requests end.
    assert_eq!(perch.get("faulty.a.test", "/").status(), 200);
}

/// `count` failed admin logins that claim to come from `forwarded`; the
/// status of the last.
fn failed_logins(perch: &Perch, forwarded: &str, count: usize) -> u16 {
    let mut last = 0;
    for _ in 0..count {
        last = perch
            .client
            .get(format!("{}/v1/tenants", perch.admin_url))
            .bearer_auth("perch_wrong")
            .header("x-forwarded-for", forwarded)
            .send()
            .unwrap()
            .status()
            .as_u16();
    }
    last
}

#[test]
fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    // The test client (127.0.0.1) is not a trusted proxy: what it claims
    // is replaced, never appended to, and throttling keys on its address.
    let perch = Perch::start_with("[node]\ntrusted_proxies = [\"10.0.0.0/8\"]\n");
    perch.deploy("a", "echo", guests::ECHO, "echo.a.test");
    let seen = echoed_headers(
        &perch
            .request(Method::GET, "echo.a.test", "/")
            .header("x-forwarded-for", "6.6.6.6")
            .header("forwarded", "for=6.6.6.6;proto=https")
            .header("x-forwarded-proto", "https")
            .send()
            .unwrap(),
    );
    let forwarded: Vec<&String> = seen
        .iter()
        .filter(|h| h.starts_with("x-forwarded-for:"))
        .collect();
    assert_eq!(forwarded, ["x-forwarded-for: 127.0.0.1"], "{seen:?}");
    assert!(
        seen.contains(&"x-forwarded-proto: http".to_string()),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|h| h.starts_with("forwarded:")),
        "{seen:?}"
    );
    // Twenty-five failed logins, each claiming another address, are one
    // client to the throttle.
    let statuses: Vec<u16> = (0..25)
        .map(|i| failed_logins(&perch, &format!("203.0.113.{i}"), 1))
        .collect();
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    drop(perch);

    // Behind a trusted proxy (loopback here), the right-most address that
    // is not a trusted proxy is the client.
    let perch = Perch::start_with("[node]\ntrusted_proxies = [\"127.0.0.1/32\"]\n");
    perch.deploy("a", "echo", guests::ECHO, "echo.a.test");
    let seen = echoed_headers(
        &perch
            .request(Method::GET, "echo.a.test", "/")
            .header("x-forwarded-for", "6.6.6.6, 198.51.100.7, 127.0.0.1")
            .header("x-forwarded-proto", "https")
            .send()
            .unwrap(),
    );
    let mut forwarded: Vec<&String> = seen
        .iter()
        .filter(|h| h.starts_with("x-forwarded-"))
        .collect();
    forwarded.sort();
    assert_eq!(
        forwarded,
        ["x-forwarded-for: 198.51.100.7", "x-forwarded-proto: https"],
        "{seen:?}"
    );
    // Throttling keys on the forwarded client: one is throttled, another
    // behind the same proxy is not.
    assert_eq!(failed_logins(&perch, "198.51.100.7", 25), 429);
    assert_eq!(failed_logins(&perch, "198.51.100.8", 1), 401);
}
