//! Cluster mode: three `perch serve` processes on one PostgreSQL database
//! (`PERCH_TEST_POSTGRES_URL`; `./test.sh` starts one).
use std::time::{Duration, Instant};

use perch_tests::{ADMIN_TOKEN, Perch, guests, serve_command};
use serde_json::json;

const SECRET_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// Three nodes on a new database; `None` when PostgreSQL is skipped.
fn cluster() -> Option<(String, Vec<Perch>)> {
    cluster_with("")
}

/// [`cluster`] with `extra` TOML in each node's config.
fn cluster_with(extra: &str) -> Option<(String, Vec<Perch>)> {
    let url = perch_pg::test_database()?;
    let nodes = (1..=3)
        .map(|n| {
            Perch::start_with_env(
                &format!("[node]\nname = \"n{n}\"\n{extra}"),
                &[
                    ("PERCH_STORAGE_URL", &url),
                    ("PERCH_SECRET_KEY", SECRET_KEY),
                ],
            )
        })
        .collect();
    Some((url, nodes))
}

/// Polls `node` until `host` `path` answers 200 with a body for which
/// `ok` holds (up to 10 s); how long that took.
fn served(node: &Perch, host: &str, path: &str, ok: impl Fn(&str) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let resp = node.get(host, path);
        let status = resp.status().as_u16();
        let body = resp.text().unwrap_or_default();
        if status == 200 && ok(&body) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{host}{path} on {}: still {status} {body:?}",
            node.data_url
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn three_nodes_share_functions_routes_kv_and_secrets() {
    let Some((_url, nodes)) = cluster() else {
        return;
    };
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);

    // Deployed and routed on node 1: served by nodes 2 and 3 (their
    // component fetched from the shared store and compiled there).
    let token = n1.deploy("a", "counter", guests::KV_COUNTER, "count.a.test");
    for n in [n2, n3] {
        served(n, "count.a.test", "/", |b| b.contains("visitor"));
    }
    // 20 changes on node 1, each served by nodes 2 and 3.
    let api = n1.api(&token);
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        api.put_settings(
            "a",
            "counter",
            json!({"vars": {"GREETING": format!("G{i}")}}),
        );
        for n in [n3, n2] {
            slowest = slowest.max(served(n, "count.a.test", "/", |b| {
                b.starts_with(&format!("G{i}!"))
            }));
        }
    }
    eprintln!("20 changes: the slowest reached a node after {slowest:?}");

    // 100 concurrent increments over the three nodes give exactly 100.
    assert_eq!(
        n1.request(reqwest::Method::DELETE, "count.a.test", "/")
            .send()
            .unwrap()
            .status(),
        200
    );
    let answers: Vec<String> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..100)
            .map(|i| {
                let node = &nodes[i % 3];
                s.spawn(move || node.get("count.a.test", "/").text().unwrap())
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let mut numbers: Vec<u64> = answers
        .iter()
        .map(|a| {
            a.trim()
                .trim_end_matches('.')
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{a:?}"))
        })
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=100).collect::<Vec<u64>>());
    let admin2 = n2.api(&token);
    let stored = admin2.get("/v1/tenants/a/kv/default/values/hits");
    assert_eq!(stored.status, 200);
    assert_eq!(stored.body, json!(100), "the counter's text is 100");

    // A KV write through node 1's API is readable on node 2.
    let started = Instant::now();
    api.call(
        reqwest::Method::PUT,
        "/v1/tenants/a/kv/default/values/greeting",
        Some((b"hi".to_vec(), "application/octet-stream")),
    )
    .expect_status(204);
    loop {
        let got = admin2.get("/v1/tenants/a/kv/default/values/greeting");
        if got.status == 200 && got.body == json!("hi") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}",
            got.status
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // A secret set through node 1 reaches a guest on node 3.
    n1.api(&token)
        .upload("a", "env", &std::fs::read(guests::FAULTY).unwrap())
        .expect_status(201);
    api.put_json(
        "/v1/tenants/a/routes/env.a.test",
        Some(json!({"function": "env"})),
    )
    .ok();
    api.put_json(
        "/v1/tenants/a/functions/env/settings",
        Some(json!({"secrets": {"API_KEY": "s3cr3t-value"}})),
    )
    .expect_status(201);
    served(n3, "env.a.test", "/env?API_KEY", |b| b == "s3cr3t-value");

    // One audit log for the cluster, whichever node was asked.
    let audit = n3.admin().get("/v1/audit?limit=100").ok();
    assert!(audit["entries"].as_array().unwrap().len() >= 20, "{audit}");
    // Backups of a cluster are the database's (pg_dump).
    n2.admin()
        .get("/v1/backup")
        .expect_error(409, "cluster_mode");
}

#[test]
fn a_cluster_node_needs_the_shared_secret_key_and_admin_token() {
    let Some(url) = perch_pg::test_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = serve_command(dir.path())
        .env("PERCH_STORAGE_URL", &url)
        .env("PERCH_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("PERCH_SECRET_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PERCH_SECRET_KEY"), "{stderr}");
}

/// `/readyz` of `node`: its status and `status` field.
fn readiness(node: &Perch) -> (u16, String) {
    let resp = perch_tests::http()
        .get(format!("{}/readyz", node.admin_url))
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().unwrap_or_default();
    (status, body["status"].as_str().unwrap_or("").to_string())
}

/// Puts `key` = `key` through `api`; whether it was acknowledged (a
/// refusal must be 503 `storage_unavailable` with `Retry-After`).
fn put_key(api: &perch_tests::Api, key: &str) -> bool {
    let resp = api
        .client
        .put(format!("{}/v1/tenants/o/kv/default/values/{key}", api.base))
        .bearer_auth(api.token.as_deref().unwrap())
        .body(key.to_string())
        .send();
    let Ok(resp) = resp else { return false };
    match resp.status().as_u16() {
        204 => true,
        503 => {
            assert_eq!(
                resp.headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap()),
                Some("1")
            );
            let body: serde_json::Value = resp.json().unwrap();
            assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
            false
        }
        s => panic!("PUT {key}: {s} {}", resp.text().unwrap_or_default()),
    }
}

#[test]
fn a_postgres_restart_under_load_degrades_the_nodes_and_loses_nothing() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(pg) = perch_tests::PgServer::start() else {
        return;
    };
    let node = |n: u32| {
        Perch::start_with_env(
            &format!("[node]\nname = \"o{n}\"\n"),
            &[
                ("PERCH_STORAGE_URL", &pg.url),
                ("PERCH_SECRET_KEY", SECRET_KEY),
            ],
        )
    };
    let (mut n1, n2) = (node(1), node(2));
    // Both nodes are listed, with the revision they hold.
    perch_tests::eventually("both nodes list each other", || {
        let nodes = n2.admin().get("/v1/nodes").ok();
        let ids: Vec<&str> = nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap())
            .collect();
        ids == ["o1", "o2"]
    });
    n1.deploy("o", "hello", guests::HELLO, "hello.o.test");
    n1.deploy("o", "counter", guests::KV_COUNTER, "count.o.test");
    for n in [&n1, &n2] {
        served(n, "hello.o.test", "/", |_| true);
        served(n, "count.o.test", "/", |b| b.contains("visitor"));
    }
    // The next heartbeats carry the revision the deploys made.
    let mut nodes = n1.admin().get("/v1/nodes").ok();
    let started = Instant::now();
    while nodes["nodes"][0]["revision"].as_u64().unwrap() == 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "{nodes}");
        std::thread::sleep(Duration::from_millis(100));
        nodes = n1.admin().get("/v1/nodes").ok();
    }
    let listed = &nodes["nodes"][0];
    assert_eq!(
        listed["address"],
        n1.data_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
    );
    assert_eq!(readiness(&n1), (200, "ready".to_string()));

    // Load on both nodes, and a writer on node 1, all through the outage.
    let stop = AtomicBool::new(false);
    let acked = Mutex::new(Vec::<String>::new());
    std::thread::scope(|s| {
        let _stop = perch_tests::StopOnDrop(&stop);
        let load: Vec<_> = [&n1, &n2]
            .into_iter()
            .map(|n| {
                let stop = &stop;
                s.spawn(move || {
                    let mut statuses = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        statuses.push(n.get("hello.o.test", "/").status().as_u16());
                    }
                    statuses
                })
            })
            .collect();
        let writer = {
            let (stop, acked, api) = (&stop, &acked, n1.admin());
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("k{i}");
                    if put_key(&api, &key) {
                        acked.lock().unwrap().push(key);
                    }
                    i += 1;
                }
            })
        };
        perch_tests::eventually("writes are acknowledged", || {
            acked.lock().unwrap().len() >= 5
        });

        pg.stop();
        for n in [&n1, &n2] {
            perch_tests::eventually("the node says it is degraded", || {
                readiness(n) == (200, "degraded".to_string())
            });
        }
        // Routed functions answer; an admin write is refused, cleanly; a
        // guest's KV call fails where the guest sees it.
        assert_eq!(n2.get("hello.o.test", "/").status(), 200);
        assert!(!put_key(&n2.admin(), "during"));
        let counted = n2.get("count.o.test", "/");
        assert_eq!(counted.status(), 500);
        let body = counted.text().unwrap();
        assert!(body.contains("storage unavailable"), "{body}");
        let during = acked.lock().unwrap().len();

        pg.resume();
        for n in [&n1, &n2] {
            perch_tests::eventually("the node is ready again", || {
                readiness(n) == (200, "ready".to_string())
            });
        }
        perch_tests::eventually("writes are acknowledged again", || {
            acked.lock().unwrap().len() >= during + 5
        });
        assert!(put_key(&n2.admin(), "after"));
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        for l in load {
            let statuses = l.join().unwrap();
            let failed = statuses.iter().filter(|s| **s != 200).count();
            assert_eq!(
                failed,
                0,
                "{failed} of {} data-plane requests failed",
                statuses.len()
            );
        }
    });
    // Everything acknowledged is there, read through the other node.
    let read = n2.admin();
    let mut acked = acked.into_inner().unwrap();
    acked.push("after".into());
    for key in &acked {
        let got = read.get(&format!("/v1/tenants/o/kv/default/values/{key}"));
        assert_eq!((got.status, got.body.clone()), (200, json!(key)), "{key}");
    }
    served(&n2, "count.o.test", "/", |b| b.contains("visitor"));

    // A node killed in the middle of writes loses nothing it acknowledged.
    let acked = Mutex::new(Vec::<String>::new());
    std::thread::scope(|s| {
        let api = n1.admin();
        let acked = &acked;
        let writer = s.spawn(move || {
            for i in 0.. {
                let key = format!("kill{i}");
                match api
                    .client
                    .put(format!("{}/v1/tenants/o/kv/default/values/{key}", api.base))
                    .bearer_auth(api.token.as_deref().unwrap())
                    .body(key.clone())
                    .send()
                {
                    Ok(r) if r.status() == 204 => acked.lock().unwrap().push(key),
                    Ok(r) => panic!("{key}: {}", r.status()),
                    Err(_) => return, // the node is gone
                }
            }
        });
        perch_tests::eventually("writes are acknowledged", || {
            acked.lock().unwrap().len() >= 20
        });
        n1.sigkill();
        writer.join().unwrap();
    });
    let acked = acked.into_inner().unwrap();
    for key in &acked {
        let got = read.get(&format!("/v1/tenants/o/kv/default/values/{key}"));
        assert_eq!((got.status, got.body.clone()), (200, json!(key)), "{key}");
    }
    // The killed node drops off the list once its heartbeat is old.
    let started = Instant::now();
    loop {
        let nodes = n2.admin().get("/v1/nodes").ok();
        if nodes["nodes"].as_array().unwrap().len() == 1 {
            assert_eq!(nodes["nodes"][0]["id"], "o2");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{nodes}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_component_no_version_runs_is_collected_once_for_the_cluster() {
    let Some((url, nodes)) = cluster_with("[storage]\nartifact_grace_s = 1\n") else {
        return;
    };
    let (n1, n3) = (&nodes[0], &nodes[2]);
    n1.deploy("g", "hello", guests::HELLO, "hello.g.test");
    n1.deploy("g", "counter", guests::KV_COUNTER, "count.g.test");
    for n in &nodes {
        served(n, "hello.g.test", "/", |_| true);
    }
    let mut db = perch_pg::PgConfig::new(&url).connect("test").unwrap();
    let stored = |db: &mut perch_pg::postgres::Client| -> i64 {
        db.query_one("SELECT count(*) FROM perch_artifacts", &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(stored(&mut db), 2);
    // Past the grace, a component still run is kept.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(stored(&mut db), 2);
    n1.admin()
        .delete("/v1/tenants/g/functions/hello")
        .expect_status(204);
    let started = Instant::now();
    while stored(&mut db) != 1 {
        assert!(started.elapsed() < Duration::from_secs(30), "not collected");
        std::thread::sleep(Duration::from_millis(100));
    }
    // One node deleted it; the one left still serves everywhere.
    let deleted = || -> usize {
        nodes
            .iter()
            .map(|n| {
                n.log_lines(&["deleted a stored component no version uses"])
                    .len()
            })
            .sum()
    };
    perch_tests::eventually("a node logs the deletion", || deleted() > 0);
    assert_eq!(deleted(), 1);
    served(n3, "count.g.test", "/", |b| b.contains("visitor"));
}

#[test]
fn a_log_follower_on_one_node_sees_the_requests_every_node_served() {
    let Some((_url, nodes)) = cluster() else {
        return;
    };
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let token = n1.deploy("l", "hello", guests::HELLO, "hello.l.test");
    for n in [n1, n3] {
        served(n, "hello.l.test", "/", |_| true);
    }
    let events = n2.follow_logs(&token, "l", "function=hello");
    let mut seen = std::collections::BTreeSet::new();
    let started = Instant::now();
    while !(seen.contains("n1") && seen.contains("n3")) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the follower on n2 saw requests of {seen:?} only"
        );
        for (n, path) in [(n1, "/from-n1"), (n3, "/from-n3")] {
            assert_eq!(n.get("hello.l.test", path).status(), 200);
        }
        while let Ok(e) = events.recv_timeout(Duration::from_millis(200)) {
            if e["type"] == "request" {
                let node = e["node"].as_str().unwrap().to_string();
                assert_eq!(e["path"], format!("/from-{node}"), "{e}");
                assert_eq!(e["status"], 200);
                seen.insert(node);
            }
        }
    }
}

#[test]
fn perch_storage_migrate_moves_a_node_into_a_cluster_that_serves_it_the_same() {
    let Some(url) = perch_pg::test_database() else {
        return;
    };
    // A populated single node: functions with versions and settings (a
    // secret too), routes, a token, KV with TTLs and metadata.
    let mut single = Perch::start();
    let token = single.deploy("m", "counter", guests::KV_COUNTER, "count.m.test");
    single.deploy("m", "hello", guests::HELLO, "hello.m.test");
    let api = single.api(&token);
    api.put_settings(
        "m",
        "counter",
        json!({"vars": {"GREETING": "Hey"}, "secrets": {"S": "sealed"}}),
    );
    for _ in 0..3 {
        assert_eq!(single.get("count.m.test", "/").status(), 200);
    }
    api.put_json("/v1/tenants/m/kv/cache", None)
        .expect_status(201);
    api.put_json("/v1/tenants/m/kv/empty", None)
        .expect_status(201);
    for (key, query, meta) in [
        ("a", "?ttl=3600", Some("{\"n\":1}")),
        ("b%00nul", "", None),
        ("c/d", "?ttl=86400", None),
    ] {
        let mut req = api
            .client
            .put(format!(
                "{}/v1/tenants/m/kv/cache/values/{key}{query}",
                api.base
            ))
            .bearer_auth(&token)
            .body(format!("value of {key}"));
        if let Some(m) = meta {
            req = req.header("perch-kv-metadata", m);
        }
        assert_eq!(req.send().unwrap().status(), 204, "{key}");
    }
    let listing = |api: &perch_tests::Api| {
        (
            api.get("/v1/tenants/m/kv").ok(),
            api.get("/v1/tenants/m/kv/cache/keys").ok(),
            api.get("/v1/tenants/m/kv/cache/values/b%00nul").body,
            api.get("/v1/tenants/m/functions/counter/versions").ok(),
            api.get("/v1/tenants/m/routes").ok(),
        )
    };
    let before = listing(&api);
    let hello = single.get("hello.m.test", "/").text().unwrap();
    // The audit log and the usage totals go too.
    let audit = single.admin().get("/v1/audit?limit=1000").ok()["entries"].clone();
    assert!(audit.as_array().unwrap().len() >= 5, "{audit}");
    let requests = single.admin().get("/v1/tenants/m/usage").ok()["usage"]["requests"].clone();
    assert_eq!(requests, 4);
    assert!(single.sigterm().success());
    let data = single.dir.join("data");
    let key = std::fs::read_to_string(data.join("secret.key")).unwrap();
    let migrate = |secret: &str| {
        std::process::Command::new(perch_tests::perch_bin())
            .args(["storage", "migrate", "--from"])
            .arg(&data)
            .env("PERCH_STORAGE_URL", &url)
            .env("PERCH_SECRET_KEY", secret)
            .output()
            .unwrap()
    };
    // A cluster key that is not the node's is refused before anything.
    let wrong = migrate(&"ab".repeat(32));
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("PERCH_SECRET_KEY"),
        "{wrong:?}"
    );
    let done = migrate(key.trim());
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(done.status.success(), "{done:?}");
    assert!(
        stdout.contains("3 KV namespaces with 4 keys")
            && stdout.contains("2 components")
            && stdout.contains(&format!(
                "{} audit entries",
                audit.as_array().unwrap().len()
            ))
            && stdout.contains("usage of 1 tenants"),
        "{stdout}"
    );
    // Not twice into the same database.
    let again = migrate(key.trim());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a registry"));

    // The cluster serves it the same: the same answers, listings, token
    // and secret.
    let node = Perch::start_with_env(
        "[node]\nname = \"m1\"\n",
        &[
            ("PERCH_STORAGE_URL", &url),
            ("PERCH_SECRET_KEY", key.trim()),
        ],
    );
    assert_eq!(
        node.admin().get("/v1/audit?limit=1000").ok()["entries"],
        audit
    );
    assert_eq!(
        node.admin().get("/v1/tenants/m/usage").ok()["usage"]["requests"],
        requests
    );
    assert_eq!(node.get("hello.m.test", "/").text().unwrap(), hello);
    assert_eq!(
        node.get("count.m.test", "/").text().unwrap(),
        "Hey! You are visitor 4.\n"
    );
    let api = node.api(&token);
    assert_eq!(listing(&api), before);
    let settings = api.get("/v1/tenants/m/functions/counter").ok();
    assert!(settings.to_string().contains("\"S\""), "{settings}");
}

#[test]
fn nodes_reach_postgresql_over_tls_verified_by_a_ca_or_bound_to_its_certificate() {
    use crate::tls::TestCa;
    let ca = TestCa::new("Perch test PostgreSQL CA");
    let leaf = ca.issue(&["localhost", "127.0.0.1"]);
    let Some(pg) = perch_tests::PgServer::start_tls(&leaf.cert_pem, &leaf.key_pem) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let stranger = dir.path().join("stranger.pem");
    std::fs::write(&stranger, TestCa::new("Someone else").pem()).unwrap();
    let ca_config =
        |file: &std::path::Path| format!("[storage]\nca_file = \"{}\"\n", file.display());

    // Verified: the certificate chains to the CA and names the host.
    let url = pg.tcp_url("localhost", "");
    let verified = Perch::start_with_env(
        &format!("[node]\nname = \"tls1\"\n{}", ca_config(&ca_file)),
        &[
            ("PERCH_STORAGE_URL", &url),
            ("PERCH_SECRET_KEY", SECRET_KEY),
        ],
    );
    verified.deploy("t", "hello", guests::HELLO, "hello.tls.test");
    // Unverified, but SCRAM bound to the server's certificate: a node
    // that could not bind (or saw another certificate) fails to log in.
    let bound = pg.tcp_url("127.0.0.1", "sslmode=require channel_binding=require");
    let unverified = Perch::start_with_env(
        "[node]\nname = \"tls2\"\n",
        &[
            ("PERCH_STORAGE_URL", &bound),
            ("PERCH_SECRET_KEY", SECRET_KEY),
        ],
    );
    served(&unverified, "hello.tls.test", "/", |b| b.contains("Hello"));
    assert_eq!(verified.get("hello.tls.test", "/").status(), 200);

    // Every connection either node holds is encrypted.
    let mut db = perch_pg::PgConfig::new(&pg.url).connect("test").unwrap();
    let rows = db
        .query(
            "SELECT a.application_name, s.ssl FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.application_name LIKE 'perch-%'",
            &[],
        )
        .unwrap();
    assert!(rows.len() >= 4, "{} perch connections", rows.len());
    for row in &rows {
        let (name, ssl): (String, bool) = (row.get(0), row.get(1));
        assert!(ssl, "{name} is not encrypted");
    }
    drop(db);

    // A certificate from another CA, a name it does not hold, TLS turned
    // off (the server refuses TCP without it), and a CA with
    // sslmode=disable: each node refuses to start, saying why.
    let refused = |config: String, url: String, why: &[&str]| {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("perch.toml"), config).unwrap();
        let out = serve_command(d.path())
            .arg("--config")
            .arg(d.path().join("perch.toml"))
            .env("PERCH_STORAGE_URL", &url)
            .env("PERCH_SECRET_KEY", SECRET_KEY)
            .env("PERCH_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started: {stderr}");
        assert!(
            why.iter().any(|w| stderr.contains(w)),
            "{why:?} not in {stderr}"
        );
    };
    refused(ca_config(&stranger), url.clone(), &["UnknownIssuer"]);
    refused(
        ca_config(&ca_file),
        pg.tcp_url("pg.invalid", "hostaddr=127.0.0.1"),
        &["NotValidForName", "certificate"],
    );
    refused(
        String::new(),
        pg.tcp_url("127.0.0.1", "sslmode=disable"),
        &["no encryption", "pg_hba.conf"],
    );
    refused(
        ca_config(&ca_file),
        pg.tcp_url("localhost", "sslmode=disable"),
        &["sslmode=disable"],
    );
}

#[test]
fn an_image_uploaded_through_one_node_runs_on_another() {
    use crate::containers::{PAGE, fastrand_u32, httpd_image, put_container, route, upload_image};
    let Some(podman) = perch_tests::Podman::get() else {
        return;
    };
    let Some(url) = perch_pg::test_database() else {
        return;
    };
    // Node names Podman's watcher cleans up after (`test-<pid>-<hex>`).
    let node = |n: u32| {
        Perch::start_with_env(
            &format!(
                "[node]\nname = \"test-{}-{:08x}{n}\"\n[containers]\nengine = \"{}\"\nmax_image_mb = 8\n",
                std::process::id(),
                fastrand_u32(),
                podman.url
            ),
            &[
                ("PERCH_STORAGE_URL", &url),
                ("PERCH_SECRET_KEY", SECRET_KEY),
            ],
        )
    };
    let (n1, n2) = (node(1), node(2));
    n1.admin().put_json("/v1/tenants/shared", None).ok();
    let tag = format!("localhost/shared-{:08x}:1", fastrand_u32());
    let archive = httpd_image(&tag);
    let id = perch_tests::image_id(&archive);
    upload_image(&n1, "shared", &archive).expect_status(201);
    put_container(
        &n1,
        "shared",
        "web",
        json!({"image": id, "port": 8080, "idle_timeout_s": 1}),
    )
    .expect_status(201);
    route(&n1, "shared", "web");
    // The engine forgets the image, and node 2 never had its archive:
    // node 2 fetches it from the database, loads it and serves.
    podman.cli(&["rmi", "-f", &id]).unwrap();
    served(&n2, "web.shared.test", "/", |_| true);
    let resp = n2.get("web.shared.test", "/");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().unwrap().as_ref(), PAGE);

    // Deleting the image (its function first) deletes the shared archive.
    let mut db = perch_pg::PgConfig::new(&url).connect("test").unwrap();
    let stored = |db: &mut perch_pg::postgres::Client| -> i64 {
        db.query_one(
            "SELECT count(*) FROM perch_image_archives WHERE image = $1",
            &[&id],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(stored(&mut db), 1);
    n1.admin()
        .delete("/v1/tenants/shared/functions/web")
        .expect_status(204);
    n1.admin()
        .delete(&format!("/v1/tenants/shared/images/{id}"))
        .expect_status(204);
    assert_eq!(stored(&mut db), 0);
    let chunks: i64 = db
        .query_one(
            "SELECT count(*) FROM perch_image_chunks WHERE image = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(chunks, 0);
}
