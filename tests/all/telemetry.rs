//! Telemetry and tenancy: `/metrics` read by a real Prometheus text parser
//! (prometheus-client from PyPI), tenants' usage counters across a
//! restart, and the `functions` quota under concurrent uploads.
use std::collections::BTreeMap;

use perch_tests::{Perch, guests, require_python, run_python};
use serde_json::{Value, json};

/// Parses Prometheus text on stdin with prometheus-client; prints
/// `{"families": {name: type}, "samples": [[name, labels, value]]}`.
const PARSE_METRICS: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families, samples = {}, []
for f in text_string_to_metric_families(sys.stdin.read()):
    families[f.name] = f.type
    for s in f.samples:
        samples.append([s.name, s.labels, s.value])
print(json.dumps({"families": families, "samples": samples}))
"#;

/// Every family design.md lists (as the parser names them: counters
/// without `_total`).
const FAMILIES: [(&str, &str); 15] = [
    ("perch_requests", "counter"),
    ("perch_request_duration_seconds", "histogram"),
    ("perch_cpu_seconds", "histogram"),
    ("perch_instances_in_use", "gauge"),
    ("perch_component_cache_hits", "counter"),
    ("perch_component_cache_misses", "counter"),
    ("perch_component_cache_evictions", "counter"),
    ("perch_compilations", "counter"),
    ("perch_kv_operations", "counter"),
    ("perch_egress_refused", "counter"),
    ("perch_container_instances", "gauge"),
    ("perch_container_starts", "counter"),
    ("perch_container_cold_start_seconds", "histogram"),
    ("perch_log_followers", "gauge"),
    ("perch_cron_runs", "counter"),
];

/// The value of the sample `name` whose labels include `labels`.
fn sample(parsed: &Value, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    parsed["samples"].as_array()?.iter().find_map(|s| {
        let matches = s[0] == name && labels.iter().all(|(k, v)| s[1][*k].as_str() == Some(*v));
        matches.then(|| s[2].as_f64()).flatten()
    })
}

#[test]
fn metrics_expose_every_family_and_parse_as_prometheus_text() {
    let Some(python) = require_python() else {
        return;
    };
    let perch = Perch::start();
    perch.deploy("acme", "hello", guests::HELLO, "hello.acme.test");
    perch.deploy("acme", "kv", guests::KVEXT, "kv.acme.test");
    for _ in 0..3 {
        assert_eq!(perch.get("hello.acme.test", "/").status(), 200);
    }
    let set = perch
        .request(reqwest::Method::PUT, "kv.acme.test", "/set/k")
        .body("v")
        .send()
        .unwrap();
    assert_eq!(set.status(), 204);
    assert_eq!(perch.get("kv.acme.test", "/entry/k").status(), 200);
    assert_eq!(perch.get("nobody.test", "/").status(), 404);

    let text = perch
        .client
        .get(format!("{}/metrics", perch.admin_url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let parsed: Value =
        serde_json::from_str(&run_python(&python, PARSE_METRICS, text.as_bytes())).unwrap();
    for (family, kind) in FAMILIES {
        assert_eq!(
            parsed["families"][family], kind,
            "family {family} ({kind}) in\n{text}"
        );
    }
    assert_eq!(parsed["families"]["perch_otel_spans_dropped"], "counter");
    let hello = [
        ("tenant", "acme"),
        ("function", "hello"),
        ("status", "200"),
        ("outcome", "ok"),
    ];
    assert_eq!(sample(&parsed, "perch_requests_total", &hello), Some(3.0));
    assert_eq!(
        sample(
            &parsed,
            "perch_kv_operations_total",
            &[("op", "set_with_options"), ("result", "ok")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &parsed,
            "perch_kv_operations_total",
            &[("op", "get_entry"), ("result", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(sample(&parsed, "perch_no_route_total", &[]), Some(1.0));
    // Five wasm runs (each of the two components was compiled at upload and
    // in memory since) and their CPU time.
    assert_eq!(sample(&parsed, "perch_cpu_seconds_count", &[]), Some(5.0));
    assert_eq!(
        sample(&parsed, "perch_request_duration_seconds_count", &[]),
        Some(5.0)
    );
    assert_eq!(
        sample(&parsed, "perch_component_cache_hits_total", &[]),
        Some(5.0)
    );
}

#[test]
fn usage_counts_what_tenants_used_and_survives_a_restart() {
    let mut perch = Perch::start();
    let token = perch.deploy("acme", "hello", guests::HELLO, "hello.acme.test");
    perch.deploy("beta", "hello", guests::HELLO, "hello.beta.test");
    let mut bytes = 0;
    for _ in 0..5 {
        let resp = perch.get("hello.acme.test", "/");
        assert_eq!(resp.status(), 200);
        bytes += resp.bytes().unwrap().len() as u64;
    }
    assert!(bytes > 0);
    // Any scope of the tenant reads its usage; another tenant's does not.
    let admin = perch.admin();
    let own = admin
        .post_json("/v1/tenants/acme/tokens", json!({"scopes": ["logs"]}))
        .expect_status(201)["token"]
        .as_str()
        .unwrap()
        .to_string();
    let usage = perch.api(&own).get("/v1/tenants/acme/usage").ok();
    let u = &usage["usage"];
    assert_eq!(u["requests"], 5, "{usage}");
    assert_eq!(u["egress_bytes"], bytes);
    assert_eq!(u["functions"], 1);
    assert_eq!(u["routes"], 1);
    assert!(u["cpu_ms"].is_u64() && u["container_seconds"].is_number());
    assert_eq!(usage["quotas"], json!({}));
    perch
        .api(&token)
        .get("/v1/tenants/beta/usage")
        .expect_error(403, "forbidden");
    admin
        .get("/v1/tenants/nobody/usage")
        .expect_error(404, "not_found");

    // Totals are written at shutdown and counted on from after a restart.
    assert!(perch.sigterm().success());
    perch.restart();
    assert_eq!(perch.get("hello.acme.test", "/").status(), 200);
    let usage = perch.admin().get("/v1/tenants/acme/usage").ok();
    assert_eq!(usage["usage"]["requests"], 6, "{usage}");
    let beta = perch.admin().get("/v1/tenants/beta/usage").ok();
    assert_eq!(beta["usage"]["requests"], 0);

    // A deleted tenant's usage goes with it.
    perch.admin().delete("/v1/tenants/acme").expect_status(204);
    perch.admin().put_json("/v1/tenants/acme", None).ok();
    let usage = perch.admin().get("/v1/tenants/acme/usage").ok();
    assert_eq!(usage["usage"]["requests"], 0, "{usage}");
}

#[test]
fn concurrent_uploads_never_take_a_tenant_past_its_functions_quota() {
    let perch = Perch::start_with("[quotas]\nfunctions = 10\n");
    let admin = perch.admin();
    admin.put_json("/v1/tenants/q", None).ok();
    let wasm = std::fs::read(guests::HELLO).unwrap();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let uploads: Vec<_> = (0..50)
            .map(|i| {
                let (admin, wasm) = (&admin, &wasm);
                s.spawn(move || admin.upload("q", &format!("f{i}"), wasm).status)
            })
            .collect();
        uploads.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut counts = BTreeMap::new();
    for s in statuses {
        *counts.entry(s).or_insert(0) += 1;
    }
    assert_eq!(counts, BTreeMap::from([(201, 10), (403, 40)]));
    let usage = admin.get("/v1/tenants/q/usage").ok();
    assert_eq!(usage["usage"]["functions"], 10);
    assert_eq!(usage["quotas"]["functions"], 10);
    // Every refusal named the quota; a new version of a kept function is
    // no new function and still goes in.
    let kept = admin.get("/v1/tenants/q/functions").ok()["functions"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    admin.upload("q", &kept, &wasm).expect_status(201);
    let body = admin
        .upload("q", "one-more", &wasm)
        .expect_error(403, "quota_exceeded");
    assert!(body.contains("functions"), "{body}");
}
