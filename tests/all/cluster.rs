//! Cluster mode: three `perch serve` processes on one PostgreSQL database
//! (`PERCH_TEST_POSTGRES_URL`; `./test.sh` starts one).
use std::time::{Duration, Instant};

use perch_tests::{ADMIN_TOKEN, Perch, guests, serve_command};
use serde_json::json;

const SECRET_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// Three nodes on a new database; `None` when PostgreSQL is skipped.
fn cluster() -> Option<(String, Vec<Perch>)> {
    let url = perch_pg::test_database()?;
    let nodes = (1..=3)
        .map(|n| {
            Perch::start_with_env(
                &format!("[node]\nname = \"n{n}\"\n"),
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
