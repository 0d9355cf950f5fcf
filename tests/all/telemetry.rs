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
    // A request is counted once it is done, which may be just after its
    // client has read the whole answer.
    perch_tests::eventually("the five requests are counted", || {
        perch.metric("perch_requests_total", "tenant=\"acme\"") == 5.0
    });

    let text = perch.metrics_text();
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

/// An OTLP/HTTP receiver (Python, opentelemetry-proto): prints its port,
/// then one JSON line per span it decoded; `DELAY` seconds before each
/// answer (argv[1]) make it a slow collector.
const RECEIVER: &str = r#"
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
delay = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        time.sleep(delay)
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        for rs in req.resource_spans:
            resource = {a.key: value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    print(json.dumps({
                        "path": self.path, "name": s.name, "kind": s.kind,
                        "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "status": s.status.code, "resource": resource,
                        "attributes": {a.key: value(a.value) for a in s.attributes},
                    }), flush=True)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
server = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// A running [`RECEIVER`] and the spans it got.
struct Receiver {
    port: u16,
    spans: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    child: std::process::Child,
}

impl Receiver {
    fn start(python: &std::path::Path, delay_s: f64) -> Receiver {
        use std::io::BufRead;
        let mut child = std::process::Command::new(python)
            .args(["-c", RECEIVER, &delay_s.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let port = lines.next().unwrap().unwrap().trim().parse().unwrap();
        let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = spans.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).unwrap());
            }
        });
        Receiver { port, spans, child }
    }

    /// Waits (up to 20 s) for a span that `pick` accepts.
    fn span(&self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Some(s) = self.spans.lock().unwrap().iter().find(|s| pick(s)) {
                return s.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no span {what} among {:#?}",
                self.spans.lock().unwrap()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An origin that answers 200 and keeps every request head it got.
fn recording_origin() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 8192];
            let n = conn.read(&mut buf).unwrap_or(0);
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).to_lowercase());
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    (port, heads)
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

const SERVER: i64 = 2;
const CLIENT: i64 = 3;

#[test]
fn traces_reach_an_otlp_receiver_with_kv_and_fetch_child_spans() {
    let Some(python) = require_python() else {
        return;
    };
    let receiver = Receiver::start(&python, 0.0);
    let (origin, heads) = recording_origin();
    let perch = Perch::start_with(&format!(
        "[egress]\nallow = [\"127.0.0.1:{origin}\"]\n\
         [telemetry]\notlp_endpoint = \"http://127.0.0.1:{}\"\nbatch_delay_ms = 50\n\
         resource = {{ \"deployment.environment\" = \"test\" }}\n",
        receiver.port
    ));
    perch.deploy("a", "hello", guests::HELLO, "hello.a.test");
    perch.deploy("a", "kv", guests::KVEXT, "kv.a.test");
    let token = perch.deploy("a", "echo", guests::ECHO, "echo.a.test");

    // A caller's trace is continued; nothing private becomes an attribute.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let resp = perch
        .request(reqwest::Method::GET, "hello.a.test", "/?key=hunter2")
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .header("x-secret", "hunter2")
        .header("authorization", format!("Bearer {token}"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["perch-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let hello = receiver.span("hello's server span", |s| s["trace_id"] == caller_trace);
    assert_eq!(hello["path"], "/v1/traces");
    assert_eq!(hello["kind"], SERVER);
    assert_eq!(hello["parent_span_id"], caller_span);
    assert_eq!(hello["name"], "GET /*");
    for (key, want) in [
        ("http.request.method", json!("GET")),
        ("url.path", json!("/")),
        ("http.route", json!("/*")),
        ("http.response.status_code", json!(200)),
        ("server.address", json!("hello.a.test")),
        ("client.address", json!("127.0.0.1")),
        ("faas.trigger", json!("http")),
        ("faas.name", json!("hello")),
        ("faas.version", json!("1")),
        ("faas.invocation_id", json!(request_id)),
        ("faas.coldstart", json!(false)),
        ("perch.tenant", json!("a")),
        ("perch.outcome", json!("ok")),
    ] {
        assert_eq!(attr(&hello, key), &want, "{key} in {hello:#}");
    }
    assert!(attr(&hello, "perch.cpu_ms").is_f64(), "{hello:#}");
    assert_eq!(hello["resource"]["service.name"], "perch");
    assert_eq!(hello["resource"]["deployment.environment"], "test");

    // A KV guest's call is a child span of its request's.
    let set = perch
        .request(reqwest::Method::PUT, "kv.a.test", "/set/k")
        .body("v")
        .send()
        .unwrap();
    assert_eq!(set.status(), 204);
    let kv = receiver.span("kv.set_with_options", |s| {
        s["name"] == "kv.set_with_options"
    });
    let kv_request = receiver.span("the KV request's span", |s| {
        s["span_id"] == kv["parent_span_id"] && s["kind"] == SERVER
    });
    assert_eq!(kv_request["trace_id"], kv["trace_id"]);
    assert_eq!(attr(&kv_request, "faas.name"), "kv");
    assert_eq!(attr(&kv, "db.operation.name"), "set_with_options");

    // An outbound fetch is a client span, and the origin got its trace.
    let fetched = perch.get(
        "echo.a.test",
        &format!("/fetch?url=http://127.0.0.1:{origin}/path?secret=hunter2"),
    );
    assert_eq!(fetched.status(), 200);
    let client = receiver.span("the fetch's client span", |s| s["kind"] == CLIENT);
    assert_eq!(client["name"], "GET");
    assert_eq!(attr(&client, "http.response.status_code"), 200);
    assert_eq!(attr(&client, "server.port"), i64::from(origin));
    assert_eq!(
        attr(&client, "url.full"),
        &json!(format!("http://127.0.0.1:{origin}/path"))
    );
    let echo = receiver.span("echo's server span", |s| {
        s["span_id"] == client["parent_span_id"]
    });
    assert_eq!(attr(&echo, "faas.name"), "echo");
    let head = heads.lock().unwrap().last().cloned().unwrap();
    let sent = format!(
        "traceparent: 00-{}-{}-01",
        client["trace_id"].as_str().unwrap(),
        client["span_id"].as_str().unwrap()
    );
    assert!(head.contains(&sent), "{sent} not in\n{head}");

    // A cron run is a `timer` span.
    perch
        .admin()
        .put_settings("a", "hello", json!({"cron": ["* * * * *"]}));
    perch
        .admin()
        .call(
            reqwest::Method::POST,
            "/v1/tenants/a/functions/hello/scheduled?cron=*%20*%20*%20*%20*",
            None,
        )
        .expect_status(202);
    let tick = receiver.span("the cron run", |s| s["name"] == "scheduled hello");
    assert_eq!(attr(&tick, "faas.trigger"), "timer");
    assert_eq!(attr(&tick, "faas.name"), "hello");

    // Nothing a client sent in a header or query, and no token, is in a span.
    let everything = serde_json::to_string(&*receiver.spans.lock().unwrap()).unwrap();
    assert!(!everything.contains("hunter2"), "{everything}");
    assert!(!everything.contains(&token));
    assert_eq!(perch.metric("perch_otel_spans_dropped_total", ""), 0.0);
}

#[test]
fn a_collector_that_is_down_or_slow_costs_requests_nothing_and_drops_are_counted() {
    let Some(python) = require_python() else {
        return;
    };
    // Down: nothing listens where the spans go.
    let closed = perch_tests::free_port();
    let slow = Receiver::start(&python, 5.0);
    for port in [closed, slow.port] {
        let perch = Perch::start_with(&format!(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:{port}\"\nbatch_delay_ms = 20\nqueue_size = 4\n"
        ));
        perch.deploy("a", "hello", guests::HELLO, "hello.a.test");
        let started = std::time::Instant::now();
        for _ in 0..50 {
            assert_eq!(perch.get("hello.a.test", "/").status(), 200);
        }
        assert!(
            started.elapsed() < perch_tests::NO_HANG,
            "requests waited on the exporter"
        );
        perch_tests::eventually("spans dropped are counted", || {
            perch.metric("perch_otel_spans_dropped_total", "") >= 40.0
        });
    }
}

#[test]
fn artifact_and_kv_quotas_refuse_the_write_that_would_cross_them() {
    let perch = Perch::start();
    let admin = perch.admin();
    let hello = std::fs::read(guests::HELLO).unwrap();
    let kvext = std::fs::read(guests::KVEXT).unwrap();
    let room = hello.len() + kvext.len() - 1;
    admin
        .put_json(
            "/v1/tenants/q",
            Some(json!({"quotas": {"artifact_bytes": room, "kv_bytes": 40, "kv_keys": 3}})),
        )
        .ok();
    // artifact_bytes: the second component does not fit; the same bytes
    // under another name take no more room.
    admin.upload("q", "hello", &hello).expect_status(201);
    let refused = admin.call(
        reqwest::Method::PUT,
        "/v1/tenants/q/functions/kv",
        Some((kvext.clone(), "application/wasm")),
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.body["error"]["quota"], "artifact_bytes");
    assert_eq!(refused.body["error"]["limit"], room);
    admin.upload("q", "hello2", &hello).expect_status(201);
    // Room for the KV guest once hello's versions are gone.
    admin
        .delete("/v1/tenants/q/functions/hello")
        .expect_status(204);
    admin
        .delete("/v1/tenants/q/functions/hello2")
        .expect_status(204);
    admin.upload("q", "kv", &kvext).expect_status(201);
    admin
        .put_json(
            "/v1/tenants/q/routes/kv.q.test",
            Some(json!({"function": "kv"})),
        )
        .ok();

    // kv_bytes over the admin API: the write that would cross is refused,
    // the earlier one stays.
    admin.put_json("/v1/tenants/q/kv/default", None).ok();
    let put = |key: &str, value: &str| {
        admin.call(
            reqwest::Method::PUT,
            &format!("/v1/tenants/q/kv/default/values/{key}"),
            Some((value.as_bytes().to_vec(), "application/octet-stream")),
        )
    };
    assert_eq!(put("a", "0123456789").status, 204); // 11 bytes
    let over = put("b", &"x".repeat(40));
    assert_eq!(over.status, 403, "{}", over.body);
    assert_eq!(over.body["error"]["code"], "quota_exceeded");
    assert_eq!(over.body["error"]["quota"], "kv_bytes");
    assert_eq!(over.body["error"]["limit"], 40);
    // … and a guest's write gets an error it sees.
    let guest = perch
        .request(reqwest::Method::PUT, "kv.q.test", "/set/big")
        .body("y".repeat(40))
        .send()
        .unwrap();
    assert_eq!(guest.status(), 500);
    let text = guest.text().unwrap();
    assert!(text.contains("quota_exceeded: kv_bytes"), "{text}");
    let small = perch
        .request(reqwest::Method::PUT, "kv.q.test", "/set/s")
        .body("1")
        .send()
        .unwrap();
    assert_eq!(small.status(), 204);
    assert_eq!(
        perch.get("kv.q.test", "/entry/a").status(),
        200,
        "the earlier write is intact"
    );
    // kv_keys: a third key fits, a fourth does not.
    assert_eq!(put("c", "1").status, 204);
    let keys = put("d", "1");
    assert_eq!(keys.status, 403);
    assert_eq!(keys.body["error"]["quota"], "kv_keys");

    let usage = admin.get("/v1/tenants/q/usage").ok();
    let u = &usage["usage"];
    assert_eq!(u["kv_keys"], 3, "{usage}");
    assert_eq!(u["kv_bytes"], 11 + 2 + 2);
    assert_eq!(u["artifact_bytes"], kvext.len());
    assert_eq!(usage["quotas"]["kv_bytes"], 40);
}
