//! Day-2 operations against the real binary: staging, weighted and sticky
//! deployments, the version override, rollback under load, retention with
//! artifact collection (and SIGKILL), request ids, reserved headers, logs
//! (listing, following, lag, isolation, what they never contain), paging.
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use perch_tests::{NO_HANG, Perch, eventually, guests};
use reqwest::Method;
use serde_json::{Value, json};

/// Creates tenant `t`, uploads the faulty guest as `f` (version 1), binds
/// `f.test`; returns a `*` token.
fn faulty(perch: &Perch) -> String {
    perch.deploy("t", "f", guests::FAULTY, "f.test")
}

/// What `/env?V` answers on `f.test` (the version's var `V`).
fn v_of(perch: &Perch, headers: &[(&str, &str)]) -> String {
    let mut req = perch.request(Method::GET, "f.test", "/env?V");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().unwrap();
    assert!(
        resp.status().is_success() || resp.status() == 404,
        "{}",
        resp.status()
    );
    resp.text().unwrap()
}

fn settings_version(perch: &Perch, token: &str, v: &str, activate: bool) -> u64 {
    let query = if activate { "" } else { "?activate=false" };
    let body = perch
        .api(token)
        .put_json(
            &format!("/v1/tenants/t/functions/f/settings{query}"),
            Some(json!({"vars": {"V": v}})),
        )
        .expect_status(201);
    assert_eq!(body["active"], activate);
    body["version"].as_u64().unwrap()
}

fn deploy(perch: &Perch, token: &str, body: Value) -> perch_tests::Answer {
    perch
        .api(token)
        .put_json("/v1/tenants/t/functions/f/deployment", Some(body))
}

#[test]
fn staged_versions_split_traffic_stick_and_can_be_pinned() {
    let mut perch = Perch::start();
    let token = faulty(&perch);
    let v2 = settings_version(&perch, &token, "a", true);
    let v3 = settings_version(&perch, &token, "b", false);
    assert_eq!((v2, v3), (2, 3));
    // Staged: every request still gets v2.
    for _ in 0..50 {
        assert_eq!(v_of(&perch, &[]), "a");
    }
    let api = perch.api(&token);
    let f = api.get("/v1/tenants/t/functions/f").ok();
    assert_eq!(f["active_version"], 2);
    let v = api.get("/v1/tenants/t/functions/f/versions/3").ok();
    assert_eq!(
        (v["kind"].as_str(), v["world"].as_str()),
        (Some("wasm"), Some("wasi:http/proxy@0.2"))
    );
    assert_eq!(v["settings"]["vars"]["V"], "b");
    let list = api.get("/v1/tenants/t/functions/f/versions").ok();
    let numbers: Vec<u64> = list["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [3, 2, 1], "newest first");

    // 90/10 over 2,000 requests: v3 within 10 ± 3 %.
    let d = deploy(
        &perch,
        &token,
        json!({"versions": [{"version": 2, "percent": 90}, {"version": 3, "percent": 10}]}),
    )
    .ok();
    assert_eq!(
        d["previous"]["versions"],
        json!([{"version": 2, "percent": 100}])
    );
    let b = Arc::new(AtomicU32::new(0));
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (b, perch) = (b.clone(), &perch);
            s.spawn(move || {
                for _ in 0..500 {
                    if v_of(perch, &[]) == "b" {
                        b.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let b = b.load(Ordering::Relaxed);
    assert!((140..=260).contains(&b), "{b} of 2000 requests reached v3");

    // The override pins a deployed version, and is ignored otherwise.
    for _ in 0..30 {
        assert_eq!(v_of(&perch, &[("perch-version-override", "3")]), "b");
        assert_ne!(
            v_of(&perch, &[("perch-version-override", "1")]),
            "",
            "v1 (no V) is not deployed"
        );
    }

    // Sticky: each client keeps its version for 100 requests, and after a restart.
    deploy(&perch, &token, json!({"versions": [{"version": 2, "percent": 50}, {"version": 3, "percent": 50}], "sticky": "cookie:uid"})).ok();
    let mut seen: HashMap<String, String> = HashMap::new();
    for user in 0..10 {
        let cookie = format!("theme=x; uid=user-{user}");
        let first = v_of(&perch, &[("cookie", &cookie)]);
        for _ in 0..99 {
            assert_eq!(v_of(&perch, &[("cookie", &cookie)]), first, "user-{user}");
        }
        seen.insert(cookie, first);
    }
    let versions: std::collections::HashSet<&String> = seen.values().collect();
    assert_eq!(
        versions.len(),
        2,
        "10 users over a 50/50 split reach both: {seen:?}"
    );
    perch.sigkill();
    perch.restart();
    for (cookie, version) in &seen {
        for _ in 0..5 {
            assert_eq!(
                &v_of(&perch, &[("cookie", cookie)]),
                version,
                "{cookie} after restart"
            );
        }
    }
}

#[test]
fn invalid_deployments_change_nothing() {
    let perch = Perch::start();
    let token = faulty(&perch);
    settings_version(&perch, &token, "a", false);
    let before = perch
        .api(&token)
        .get("/v1/tenants/t/functions/f/deployment")
        .ok();
    let split = |pairs: &[(Value, Value)]| json!({"versions": pairs.iter().map(|(v, p)| json!({"version": v, "percent": p})).collect::<Vec<_>>()});
    let cases = [
        split(&[(json!(1), json!(50)), (json!(2), json!(40))]),
        split(&[(json!(1), json!(0)), (json!(2), json!(100))]),
        split(&[(json!(1), json!(50)), (json!(1), json!(50))]),
        json!({"versions": (1..=5).map(|v| json!({"version": v, "percent": 20})).collect::<Vec<_>>()}),
        split(&[(json!(1), json!(99.5)), (json!(2), json!(0.5))]),
        split(&[(json!("1"), json!(100))]),
        json!({"versions": []}),
        json!({"versions": [{"version": 1, "percent": 100}], "sticky": "query:x"}),
    ];
    for body in cases {
        deploy(&perch, &token, body.clone()).expect_error(400, "invalid_deployment");
    }
    deploy(&perch, &token, split(&[(json!(9), json!(100))])).expect_error(404, "not_found");
    let after = perch
        .api(&token)
        .get("/v1/tenants/t/functions/f/deployment")
        .ok();
    assert_eq!(before, after);
    assert_eq!(after["versions"], json!([{"version": 1, "percent": 100}]));
}

#[test]
fn rollback_under_load_fails_nothing_and_lets_in_flight_requests_finish() {
    let perch = Perch::start();
    let token = faulty(&perch);
    // v2: the echo guest, deployed; v1 (faulty) becomes `previous`.
    perch
        .api(&token)
        .upload("t", "f", &std::fs::read(guests::ECHO).unwrap())
        .expect_status(201);

    // An in-flight request on v2: its body is still being sent.
    let addr = perch.data_url.trim_start_matches("http://").to_string();
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        slow,
        "POST /count HTTP/1.1\r\nHost: f.test\r\nContent-Length: 10\r\n\r\n12345"
    )
    .unwrap();
    slow.flush().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU32::new(0));
    let served = Arc::new(AtomicU32::new(0));
    std::thread::scope(|s| {
        for _ in 0..3 {
            let (stop, failures, served, perch) =
                (stop.clone(), failures.clone(), served.clone(), &perch);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let resp = perch.get("f.test", "/");
                    if resp.status() != 200 {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    served.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        eventually("load is running", || served.load(Ordering::Relaxed) > 20);
        let (ok, text, err) = cli(&perch, &token, &["rollback", "--tenant", "t", "f"]);
        assert!(ok, "{err}");
        assert!(text.contains("\"version\": 1"), "{text}");
        let at = served.load(Ordering::Relaxed);
        eventually("load continues after the rollback", || {
            served.load(Ordering::Relaxed) > at + 20
        });
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    // New requests reach v1 (faulty answers `ok`)…
    assert_eq!(perch.get("f.test", "/").text().unwrap(), "ok");
    // …and the request that started on v2 finishes there.
    slow.write_all(b"67890").unwrap();
    slow.set_read_timeout(Some(NO_HANG)).unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert!(
        body == "10" || body.contains("\r\n10\r\n"),
        "the echo (v2) counted 10 bytes: {answer}"
    );
    // No previous-of-previous: rolling back twice returns to v2.
    let d = perch
        .api(&token)
        .get("/v1/tenants/t/functions/f/deployment")
        .ok();
    assert_eq!(
        d["previous"]["versions"],
        json!([{"version": 2, "percent": 100}])
    );
}

fn artifact_files(perch: &Perch, digest: &str) -> usize {
    std::fs::read_dir(perch.dir.join("data/artifacts"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(digest)
        })
        .count()
}

#[test]
fn retention_drops_old_versions_and_their_artifacts() {
    let perch = Perch::start_with("[max]\nversions_per_function = 3\n");
    let token = perch.deploy("t", "f", guests::KVEXT, "f.test");
    let api = perch.api(&token);
    let kvext = api.get("/v1/tenants/t/functions/f").ok()["versions"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        artifact_files(&perch, &kvext) >= 2,
        "component and precompiled form"
    );
    settings_version(&perch, &token, "x", true); // v2: kvext again
    api.upload("t", "f", &std::fs::read(guests::ECHO).unwrap())
        .expect_status(201); // v3
    // v4 drops v1; v2 still runs kvext, so its files stay.
    api.upload("t", "f", &std::fs::read(guests::FAULTY).unwrap())
        .expect_status(201);
    let kept = |api: &perch_tests::Api| -> Vec<u64> {
        let f = api.get("/v1/tenants/t/functions/f").ok();
        f["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(kept(&api), [2, 3, 4]);
    assert!(artifact_files(&perch, &kvext) >= 2);
    // v5 drops v2 (v3 is `previous`, v4 deployed): kvext is unused now.
    settings_version(&perch, &token, "y", true);
    assert_eq!(kept(&api), [3, 4, 5]);
    assert_eq!(
        artifact_files(&perch, &kvext),
        0,
        "kvext's files are deleted"
    );
    assert_eq!(perch.get("f.test", "/").status(), 200);
    // Every kept version deployed: 409, nothing dropped.
    deploy(&perch, &token, json!({"versions": [{"version": 3, "percent": 34}, {"version": 4, "percent": 33}, {"version": 5, "percent": 33}]})).ok();
    api.upload("t", "f", &std::fs::read(guests::KVEXT).unwrap())
        .expect_error(409, "too_many_versions");
    assert_eq!(kept(&api), [3, 4, 5]);
}

#[test]
fn sigkill_during_uploads_leaves_no_version_without_its_artifact() {
    let mut perch = Perch::start_with("[max]\nversions_per_function = 2\n");
    let token = faulty(&perch);
    let components =
        [guests::ECHO, guests::KVEXT, guests::FAULTY].map(|p| std::fs::read(p).unwrap());
    for round in 0..4u64 {
        let api = perch.api(&token);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    // Connection errors once the server is killed end the loop.
                    let ok = api
                        .client
                        .put(format!("{}/v1/tenants/t/functions/f", api.base))
                        .bearer_auth(&token)
                        .body(components[i % 3].clone())
                        .send()
                        .is_ok();
                    if !ok {
                        break;
                    }
                    i += 1;
                }
            });
            std::thread::sleep(Duration::from_millis(150 + 170 * round));
            perch.sigkill();
            stop.store(true, Ordering::Relaxed);
        });
        perch.restart();
        let f = perch.api(&token).get("/v1/tenants/t/functions/f").ok();
        for v in f["versions"].as_array().unwrap() {
            let digest = v["digest"].as_str().unwrap();
            assert!(
                perch
                    .dir
                    .join(format!("data/artifacts/{digest}.wasm"))
                    .exists(),
                "round {round}: version {} names a missing component",
                v["version"]
            );
        }
        // Whichever version is deployed answers (kvext has no `/`: its
        // 404 `unknown route` is an answer too); never a missing component.
        let resp = perch.get("f.test", "/");
        let status = resp.status().as_u16();
        let body = resp.text().unwrap_or_default();
        assert!(
            status == 200 || (status == 404 && body.contains("unknown route")),
            "round {round}: {status} {body}"
        );
    }
}

/// Follows tenant `t`'s log as NDJSON; lines go to the returned channel.
fn follow(perch: &Perch, token: &str, query: &str) -> std::sync::mpsc::Receiver<Value> {
    perch.follow_logs(token, "t", query)
}

fn events(perch: &Perch, token: &str, query: &str) -> Vec<Value> {
    perch
        .api(token)
        .get(&format!("/v1/tenants/t/logs?{query}"))
        .ok()["events"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn logs_show_output_and_outcomes_live_and_nothing_private() {
    let perch = Perch::start_with("[max]\nmemory_mb = 1024\n");
    let token = faulty(&perch);
    perch.api(&token).put_json(
        "/v1/tenants/t/functions/f/settings",
        Some(json!({"secrets": {"API_KEY": "SECRETVALUE-1"}, "limits": {"cpu_ms": 200, "memory_mb": 64}})),
    ).expect_status(201);
    let live = follow(&perch, &token, "function=f");

    let resp = perch
        .request(Method::POST, "f.test", "/print?0")
        .header("x-private", "HEADERVALUE-2")
        .header("authorization", format!("Bearer {token}"))
        .body("BODYVALUE-3")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["perch-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 32);
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );

    let event = live
        .recv_timeout(NO_HANG)
        .expect("the follower receives the event");
    assert_eq!(event["type"], "request");
    assert_eq!(event["request_id"], id.as_str());
    assert_eq!(
        (event["method"].as_str(), event["path"].as_str()),
        (Some("POST"), Some("/print"))
    );
    assert_eq!(
        (event["status"].as_u64(), event["outcome"].as_str()),
        (Some(200), Some("ok"))
    );
    assert_eq!(event["version"], 2);
    let logs: Vec<(&str, &str)> = event["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["stream"].as_str().unwrap(),
                l["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(logs, [("stdout", "to stdout"), ("stderr", "to stderr")]);
    assert_eq!(event["truncated"], false);
    for field in ["time", "duration_ms", "cpu_ms", "node"] {
        assert!(!event[field].is_null(), "{field}");
    }

    // Outcomes.
    for (path, status, outcome) in [
        ("/trap", 500, "exception"),
        ("/spin", 504, "exceeded_cpu"),
        ("/alloc?200", 500, "exceeded_memory"),
        ("/print?100", 200, "ok"),
    ] {
        let resp = perch.get("f.test", path);
        assert_eq!(resp.status(), status, "{path}");
        let id = resp.headers()["perch-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let e = live.recv_timeout(NO_HANG).unwrap();
        assert_eq!(
            (
                e["request_id"].as_str(),
                e["outcome"].as_str(),
                e["status"].as_u64()
            ),
            (Some(id.as_str()), Some(outcome), Some(u64::from(status))),
            "{path}"
        );
        if path == "/trap" {
            // The same id in the server log's line about the failure.
            perch.wait_for_log(&format!("request_id={id}"), 1);
        }
        if path == "/print?100" {
            assert_eq!(
                e["truncated"], true,
                "100 KiB of output is over the 64 KiB cap"
            );
        }
    }

    // Listing: filters, limit, errors.
    let all = events(&perch, &token, "function=f");
    assert_eq!(all.len(), 5);
    assert_eq!(all[0]["request_id"], id.as_str(), "oldest first");
    let five = events(&perch, &token, "status=5xx");
    assert_eq!(five.len(), 3);
    assert_eq!(events(&perch, &token, "status=504").len(), 1);
    assert_eq!(events(&perch, &token, "limit=2").len(), 2);
    let api = perch.api(&token);
    api.get("/v1/tenants/t/logs?limit=1001")
        .expect_error(400, "invalid_limit");
    api.get("/v1/tenants/t/logs?function=nope")
        .expect_error(404, "not_found");

    // Never a header, a body, a secret or a token.
    let text = serde_json::to_string(&all).unwrap();
    for private in [
        "HEADERVALUE-2",
        "BODYVALUE-3",
        "SECRETVALUE-1",
        token.as_str(),
        "x-private",
    ] {
        assert!(!text.contains(private), "the log holds {private}");
    }

    // Another tenant cannot read them; a token without `logs` cannot either.
    let other = perch.deploy("u", "g", guests::FAULTY, "g.test");
    perch
        .api(&other)
        .get("/v1/tenants/t/logs")
        .expect_error(403, "forbidden");
    let fn_only = perch
        .admin()
        .post_json("/v1/tenants/t/tokens", json!({"scopes": ["functions"]}))
        .ok();
    perch
        .api(fn_only["token"].as_str().unwrap())
        .get("/v1/tenants/t/logs")
        .expect_error(403, "forbidden");
    let own = perch.api(&other).get("/v1/tenants/u/logs").ok();
    assert_eq!(own["events"], json!([]), "u's log has none of t's events");
}

/// Opens a live stream of `f`'s log (not read).
fn open_follow(perch: &Perch, token: &str) -> reqwest::blocking::Response {
    perch
        .client
        .get(format!(
            "{}/v1/tenants/t/logs?follow=1&function=f",
            perch.admin_url
        ))
        .bearer_auth(token)
        .send()
        .unwrap()
}

#[test]
fn a_stalled_follower_is_told_what_it_lost() {
    let perch = Perch::start();
    let token = faulty(&perch);
    // A follower that reads nothing for now.
    let mut stalled =
        std::net::TcpStream::connect(perch.admin_url.trim_start_matches("http://")).unwrap();
    write!(stalled, "GET /v1/tenants/t/logs?follow=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n").unwrap();
    // Followers are counted per function: 8, then 429.
    let mut streams = Vec::new();
    for _ in 0..8 {
        let r = open_follow(&perch, &token);
        assert_eq!(r.status(), 200);
        streams.push(r);
    }
    perch
        .api(&token)
        .get("/v1/tenants/t/logs?follow=1&function=f")
        .expect_error(429, "too_many_followers");
    drop(streams);
    eventually("follower slots are given back", || {
        let r = open_follow(&perch, &token);
        r.status() == 200
    });

    // ~60 KiB events, far more than the stream and socket buffers hold.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..400 {
                    assert_eq!(perch.get("f.test", "/print?60").status(), 200);
                }
            });
        }
    });
    stalled.set_read_timeout(Some(NO_HANG)).unwrap();
    let mut reader = BufReader::new(stalled);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut line = String::new();
    loop {
        assert!(Instant::now() < deadline, "no lagged event");
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "stream ended");
        if line.contains("\"type\":\"lagged\"") {
            let v: Value = serde_json::from_str(line.trim()).unwrap();
            assert!(v["dropped"].as_u64().unwrap() > 0);
            break;
        }
    }
}

#[test]
fn every_answer_carries_its_request_id_and_reserved_headers_stay_out() {
    let perch = Perch::start_with("[node]\ntenant_concurrency = 1\nmax_body_bytes = 1000\n");
    let token = perch.deploy("t", "e", guests::ECHO, "e.test");
    let api = perch.api(&token);
    let id_of = |r: &reqwest::blocking::Response| {
        r.headers()["perch-request-id"]
            .to_str()
            .unwrap()
            .to_string()
    };

    // The guest never sees a client's `perch-` headers.
    let resp = perch
        .request(Method::GET, "e.test", "/")
        .header("perch-cron", "* * * * *")
        .header("Perch-Scheduled-Time", "1")
        .header("x-kept", "1")
        .send()
        .unwrap();
    let seen = resp.headers()["x-echo-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(!seen.contains("perch-"), "{seen}");
    assert!(seen.contains("x-kept"), "{seen}");
    let ok_id = id_of(&resp);

    // 404 no_route: an id, no event (no function).
    let r = perch.get("nobody.test", "/");
    assert_eq!(r.status(), 404);
    assert_eq!(id_of(&r).len(), 32);

    // 413 before the guest runs: rejected.
    let r = perch
        .request(Method::POST, "e.test", "/count")
        .body(vec![0u8; 5000])
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    let too_large = id_of(&r);

    // 429 while the tenant's one slot is taken by a request still sending.
    // A probe in flight when the slow request arrives gets the slot first
    // and the slow request is answered 429 at once: then send it again.
    let addr = perch.data_url.trim_start_matches("http://").to_string();
    let open_slow = || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "POST /count HTTP/1.1\r\nHost: e.test\r\nContent-Length: 10\r\n\r\n1"
        )
        .unwrap();
        s
    };
    let mut slow = open_slow();
    let mut busy = None;
    eventually("the slot is taken", || {
        let r = perch.get("e.test", "/");
        if r.status() == 429 {
            busy = Some(id_of(&r));
            return true;
        }
        slow.set_nonblocking(true).unwrap();
        let answered = slow.read(&mut [0u8; 1]).is_ok();
        slow.set_nonblocking(false).unwrap();
        if answered {
            slow = open_slow();
        }
        false
    });
    slow.write_all(b"234567890").unwrap();
    let mut rest = Vec::new();
    slow.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let _ = slow.read_to_end(&mut rest);

    let events = events(&perch, &token, "function=e");
    let find = |id: &str| {
        events
            .iter()
            .find(|e| e["request_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no event {id}: {events:?}"))
    };
    assert_eq!(find(&ok_id)["outcome"], "ok");
    let e = find(&too_large);
    assert_eq!(
        (e["status"].as_u64(), e["outcome"].as_str()),
        (Some(413), Some("rejected"))
    );
    let e = find(busy.as_deref().unwrap());
    assert_eq!(
        (e["status"].as_u64(), e["outcome"].as_str()),
        (Some(429), Some("rejected"))
    );
    let _ = api;
}

#[test]
fn listings_page_through_thousands_of_functions() {
    let perch = Perch::start();
    let token = faulty(&perch);
    let bytes = std::fs::read(guests::FAULTY).unwrap();
    std::thread::scope(|s| {
        for part in 0..4 {
            let (perch, bytes, token) = (&perch, &bytes, &token);
            s.spawn(move || {
                let api = perch.api(token);
                for i in (part..2499).step_by(4) {
                    api.upload("t", &format!("fn-{i:05}"), bytes)
                        .expect_status(201);
                }
            });
        }
    });
    let api = perch.api(&token);
    let mut names = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = api
            .get(&format!(
                "/v1/tenants/t/functions?limit=1000&cursor={cursor}"
            ))
            .ok();
        let items = page["functions"].as_array().unwrap();
        assert!(items.len() <= 1000);
        names.extend(
            items
                .iter()
                .map(|f| f["name"].as_str().unwrap().to_string()),
        );
        match page["cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(names.len(), 2500);
    let unique: std::collections::BTreeSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), 2500, "no duplicates");
    assert_eq!(
        api.get("/v1/tenants/t/functions").ok()["functions"]
            .as_array()
            .unwrap()
            .len(),
        100
    );
    for path in [
        "/v1/tenants/t/functions?limit=1001",
        "/v1/tenants/t/functions?limit=0",
        "/v1/tenants/t/routes?limit=x",
    ] {
        api.get(path).expect_error(400, "invalid_limit");
    }
    perch
        .admin()
        .get("/v1/tenants?limit=1001")
        .expect_error(400, "invalid_limit");
    // The CLI follows cursors.
    let (ok, out, err) = cli(&perch, &token, &["functions", "--tenant", "t", "list"]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["functions"].as_array().unwrap().len(), 2500);
}

#[test]
fn routes_with_paths_pick_the_most_specific_and_belong_to_the_host() {
    let perch = Perch::start();
    let a = perch.deploy("a", "f1", guests::FAULTY, "other.test");
    let api = perch.api(&a);
    for f in ["f2", "f3"] {
        api.upload("a", f, &std::fs::read(guests::FAULTY).unwrap())
            .expect_status(201);
        api.put_settings("a", f, json!({"vars": {"V": f}}));
    }
    api.put_settings("a", "f1", json!({"vars": {"V": "f1"}}));
    let bind = |pattern: &str, f: &str| {
        api.put_json(
            &format!("/v1/tenants/a/routes/{pattern}"),
            Some(json!({"function": f})),
        )
    };
    let r = bind("a.test/api/*", "f1").expect_status(201);
    assert_eq!(
        r,
        json!({"pattern": "a.test/api/*", "host": "a.test", "path": "/api/*", "function": "f1"})
    );
    bind("a.test", "f2").expect_status(201);
    bind("a.test%2Fapi%2Fhealth", "f3").expect_status(201);
    bind("a.test/api/*", "f1").expect_status(200);
    let served = |path: &str| perch.get("a.test", path).status();
    assert_eq!(served("/api/anything"), 200);
    assert_eq!(served("/api"), 200);
    // Which function answered: the log says.
    // (The event is written once the response is done, which may be just
    // after the client has it: wait for this request's.)
    let latest = |path: &str| {
        let id = perch.get("a.test", path).headers()["perch-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let mut function = String::new();
        perch_tests::eventually("the request's event", || {
            let e = perch.api(&a).get("/v1/tenants/a/logs?limit=5").ok();
            let ours = e["events"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["request_id"] == id.as_str());
            if let Some(ours) = ours {
                function = ours["function"].as_str().unwrap_or("").to_string();
            }
            ours.is_some()
        });
        function
    };
    assert_eq!(latest("/api/users"), "f1");
    assert_eq!(latest("/api/health"), "f3");
    assert_eq!(latest("/api"), "f2");
    assert_eq!(latest("/apix"), "f2");
    assert_eq!(latest("/"), "f2");

    let routes = api.get("/v1/tenants/a/routes").ok();
    let patterns: Vec<&str> = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["pattern"].as_str().unwrap())
        .collect();
    assert_eq!(
        patterns,
        ["a.test", "a.test/api/*", "a.test/api/health", "other.test"]
    );
    // Bad patterns.
    bind("a.test/a*b", "f1").expect_error(400, "invalid_request");
    // Another tenant cannot bind a path on a's host, nor a wildcard over it.
    let b = perch.deploy("b", "g", guests::FAULTY, "b.test");
    let b_api = perch.api(&b);
    for pattern in ["a.test/other/*", "a.test", "a.test/api/health"] {
        b_api
            .put_json(
                &format!("/v1/tenants/b/routes/{pattern}"),
                Some(json!({"function": "g"})),
            )
            .expect_error(409, "host_taken");
    }
    // Deleting the host-only route leaves the path routes.
    api.delete("/v1/tenants/a/routes/a.test").expect_status(204);
    assert_eq!(latest("/api/users"), "f1");
    assert_eq!(perch.get("a.test", "/").status(), 404);
    api.delete("/v1/tenants/a/routes/a.test/api/*")
        .expect_status(204);
    assert_eq!(perch.get("a.test", "/api/users").status(), 404);
}

#[test]
fn cron_ticks_run_on_demand_with_their_headers_limits_and_event() {
    let perch = Perch::start();
    let token = faulty(&perch);
    let api = perch.api(&token);
    let settings = |cron: Value| {
        api.put_json(
            "/v1/tenants/t/functions/f/settings",
            Some(json!({"cron": cron, "limits": {"cpu_ms": 100}})),
        )
    };
    for bad in [
        json!(["* * * *"]),
        json!(["61 * * * *"]),
        json!(["@hourly"]),
        json!(vec!["* * * * *"; 6]),
    ] {
        settings(bad.clone()).expect_error(400, "invalid_cron");
    }
    settings(json!(["*/5  * * * *", "59 23 * * *"])).expect_status(201);
    let v = api.get("/v1/tenants/t/functions/f/versions/2").ok();
    assert_eq!(v["settings"]["cron"], json!(["*/5 * * * *", "59 23 * * *"]));

    let live = follow(&perch, &token, "function=f");
    let run = |cron: &str| {
        api.call(
            Method::POST,
            &format!(
                "/v1/tenants/t/functions/f/scheduled?cron={}",
                cron.replace(' ', "%20")
            ),
            None,
        )
    };
    let accepted = run("*/5 * * * *").expect_status(202);
    let time = accepted["scheduled_time"].as_u64().unwrap();
    let e = live.recv_timeout(NO_HANG).expect("the scheduled event");
    assert_eq!(e["type"], "scheduled");
    assert_eq!(
        (
            e["cron"].as_str(),
            e["status"].as_u64(),
            e["outcome"].as_str()
        ),
        (Some("*/5 * * * *"), Some(200), Some("ok"))
    );
    assert_eq!(e["version"], 2);
    assert_eq!(
        e["logs"][0]["message"],
        format!("cron=*/5 * * * * time={time}")
    );
    // The function's CPU limit holds for ticks too.
    run("59 23 * * *").expect_status(202);
    let e = live.recv_timeout(NO_HANG).expect("the second event");
    assert_eq!(
        (e["outcome"].as_str(), e["status"].as_u64()),
        (Some("exceeded_cpu"), Some(504))
    );
    // Not one of its schedules, or not an expression.
    run("0 * * * *").expect_error(400, "invalid_cron");
    run("nope").expect_error(400, "invalid_cron");
    api.call(
        Method::POST,
        "/v1/tenants/t/functions/nope/scheduled?cron=*/5%20*%20*%20*%20*",
        None,
    )
    .expect_error(404, "not_found");
}

/// Runs the CLI against `perch` with `token`; returns (success, stdout, stderr).
fn cli(perch: &Perch, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(perch_tests::perch_bin())
        .args(args)
        .args(["--url", &perch.admin_url, "--token", token])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_stages_splits_lists_versions_and_reads_logs() {
    let perch = Perch::start();
    let token = faulty(&perch);
    let (ok, out, err) = cli(
        &perch,
        &token,
        &[
            "deploy",
            guests::FAULTY,
            "--tenant",
            "t",
            "--name",
            "f",
            "--stage",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("staged t/f version 2"), "{out}");
    let (ok, out, err) = cli(
        &perch,
        &token,
        &[
            "deployments",
            "--tenant",
            "t",
            "set",
            "f",
            "1=90",
            "2=10",
            "--sticky",
            "cookie:uid",
        ],
    );
    assert!(ok, "{err}");
    let d: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        d["versions"],
        json!([{"version": 1, "percent": 90}, {"version": 2, "percent": 10}])
    );
    assert_eq!(d["sticky"], "cookie:uid");
    let (ok, out, _) = cli(&perch, &token, &["versions", "--tenant", "t", "f"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["versions"][0]["version"], 2);
    assert_eq!(v["versions"][0]["deployed"], "10%");
    assert_eq!(v["versions"][1]["deployed"], "90%");
    // Bad input: one line naming the problem, a failing exit.
    for (args, says) in [
        (
            vec!["deployments", "--tenant", "t", "set", "f", "1=x"],
            "VERSION=PERCENT",
        ),
        (
            vec!["deployments", "--tenant", "t", "set", "f", "1=60", "2=60"],
            "invalid_deployment",
        ),
        (
            vec!["rollback", "--tenant", "t", "f", "--to", "9"],
            "404 not_found",
        ),
        (
            vec!["logs", "--tenant", "t", "--status", "9xx"],
            "invalid_request",
        ),
    ] {
        let (ok, _, err) = cli(&perch, &token, &args);
        assert!(!ok, "{args:?}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // Logs: the JSON events, and a follower that prints new ones.
    perch.get("f.test", "/print?0");
    let (ok, out, err) = cli(&perch, &token, &["logs", "--tenant", "t", "f", "--json"]);
    assert!(ok, "{err}");
    let events: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(events["events"][0]["path"], "/print");
    let mut follower = std::process::Command::new(perch_tests::perch_bin())
        .args([
            "logs",
            "--tenant",
            "t",
            "f",
            "--follow",
            "--url",
            &perch.admin_url,
            "--token",
            &token,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut got = None;
    eventually("the follower prints the event", || {
        perch.get("f.test", "/trap");
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            got = Some(line);
        }
        got.is_some()
    });
    let _ = follower.kill();
    let _ = follower.wait();
    let e: Value = serde_json::from_str(got.as_deref().unwrap()).unwrap();
    assert_eq!(
        (e["path"].as_str(), e["outcome"].as_str()),
        (Some("/trap"), Some("exception"))
    );
}

#[test]
fn a_live_log_stream_ends_when_its_token_is_revoked() {
    let perch = Perch::start();
    faulty(&perch);
    let created = perch
        .admin()
        .post_json("/v1/tenants/t/tokens", json!({"scopes": ["logs"]}))
        .ok();
    let (id, token) = (
        created["id"].as_str().unwrap(),
        created["token"].as_str().unwrap(),
    );
    let live = follow(&perch, token, "function=f");
    perch.get("f.test", "/");
    live.recv_timeout(NO_HANG)
        .expect("an event while the token is valid");
    perch
        .admin()
        .delete(&format!("/v1/tenants/t/tokens/{id}"))
        .expect_status(204);
    // The stream ends (the reader thread drops its sender).
    let start = Instant::now();
    loop {
        match live.recv_timeout(NO_HANG) {
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("the stream did not end: {e:?}"),
            Ok(_) => assert!(start.elapsed() < NO_HANG, "events keep coming"),
        }
        perch.get("f.test", "/");
    }
}
