//! Container versions against a real Podman API: images, start on the
//! first request, scale to zero, cold starts under load, crashes, restarts
//! of Perch, and bad input. Each test's Perch has its own node name, so
//! the tests share the process's Podman service without seeing each
//! other's containers.
use std::time::Duration;

use perch_tests::{Perch, Podman, busybox_image, eventually, image_id};
use reqwest::Method;
use serde_json::{Value, json};

pub(crate) const PAGE: &[u8] = b"<h1>hello from container</h1>\n";

/// An httpd image of its own for each tag (tests share one engine: one
/// test deleting its image must not take another's).
pub(crate) fn httpd_image(tag: &str) -> Vec<u8> {
    busybox_image(
        tag,
        &[
            ("www/index.html", PAGE),
            ("etc/perch-test-tag", tag.as_bytes()),
        ],
        &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
    )
}

/// A Perch with the container backend on `podman`, its own node name.
fn perch(podman: &Podman, extra: &str) -> (Perch, String) {
    // The process id in the name: Podman's watcher removes the isolation
    // tables of this process's nodes (`perch node test-<pid>-…`).
    let node = format!("test-{}-{:08x}", std::process::id(), fastrand_u32());
    let p = Perch::start_with(&format!(
        "[node]\nname = \"{node}\"\n[containers]\nengine = \"{}\"\nmax_image_mb = 8\n{extra}",
        podman.url
    ));
    (p, node)
}

pub(crate) fn fastrand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (t.subsec_nanos() ^ std::process::id().rotate_left(16)) ^ (t.as_secs() as u32)
}

pub(crate) fn upload_image(p: &Perch, tenant: &str, archive: &[u8]) -> perch_tests::Answer {
    p.admin().call(
        Method::PUT,
        &format!("/v1/tenants/{tenant}/images"),
        Some((archive.to_vec(), "application/x-tar")),
    )
}

pub(crate) fn put_container(
    p: &Perch,
    tenant: &str,
    name: &str,
    spec: Value,
) -> perch_tests::Answer {
    p.admin().call(
        Method::PUT,
        &format!("/v1/tenants/{tenant}/functions/{name}"),
        Some((
            json!({ "container": spec }).to_string().into_bytes(),
            "application/json",
        )),
    )
}

/// Routes `FUNCTION.TENANT.test` to the tenant's function.
pub(crate) fn route(p: &Perch, tenant: &str, function: &str) {
    p.admin()
        .put_json(
            &format!("/v1/tenants/{tenant}/routes/{function}.{tenant}.test"),
            Some(json!({ "function": function })),
        )
        .ok();
}

fn events(p: &Perch, tenant: &str, function: &str) -> Vec<Value> {
    p.admin()
        .get(&format!(
            "/v1/tenants/{tenant}/logs?function={function}&limit=1000"
        ))
        .ok()["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn container_events(p: &Perch, tenant: &str, function: &str, event: &str) -> usize {
    events(p, tenant, function)
        .iter()
        .filter(|e| e["type"] == "container" && e["event"] == event)
        .count()
}

#[test]
fn a_container_version_starts_on_the_first_request_and_scales_to_zero() {
    let Some(podman) = Podman::get() else { return };
    let (p, node) = perch(podman, "");
    let api = p.admin();
    api.put_json("/v1/tenants/acme", None).ok();
    let archive = httpd_image("localhost/acme-web:1");
    let id = image_id(&archive);
    let first = upload_image(&p, "acme", &archive).expect_status(201);
    assert_eq!(first["image"], id);
    assert_eq!(first["tags"], json!(["localhost/acme-web:1"]));
    // The same image again: 200, the same record.
    assert_eq!(
        upload_image(&p, "acme", &archive).expect_status(200)["image"],
        id
    );
    let listed = api.get("/v1/tenants/acme/images").ok();
    assert_eq!(listed["images"][0]["image"], id);

    // By the tenant's own tag, resolved to the id.
    let v = put_container(
        &p,
        "acme",
        "web",
        json!({"image": "localhost/acme-web:1", "port": 8080, "idle_timeout_s": 1}),
    )
    .expect_status(201);
    assert_eq!(
        (&v["kind"], &v["image"], &v["version"], &v["active"]),
        (&json!("container"), &json!(id), &json!(1), &json!(true))
    );
    route(&p, "acme", "web");
    let mine = format!("perch.node={node}");
    assert!(
        podman.containers(&[&mine]).is_empty(),
        "nothing runs before a request"
    );

    let resp = p.get("web.acme.test", "/");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("perch-request-id"));
    assert_eq!(resp.bytes().unwrap().as_ref(), PAGE);
    assert_eq!(
        podman
            .containers(&[&mine, "perch.function=web", "perch.version=1"])
            .len(),
        1
    );
    let evs = events(&p, "acme", "web");
    assert!(
        evs.iter()
            .any(|e| e["type"] == "container" && e["event"] == "started"),
        "{evs:?}"
    );
    assert!(
        evs.iter()
            .any(|e| e["type"] == "request" && e["status"] == 200 && e["outcome"] == "ok"),
        "{evs:?}"
    );
    // Metrics: one instance of web, one start, one cold start timed.
    let web = "function=\"web\"";
    assert_eq!(p.metric("perch_container_instances", web), 1.0);
    assert_eq!(p.metric("perch_container_starts_total", web), 1.0);
    assert_eq!(
        p.metric("perch_container_cold_start_seconds_count", ""),
        1.0
    );
    assert_eq!(p.metric("perch_container_proxy_errors_total", web), 0.0);
    let shown = api.get("/v1/tenants/acme/functions/web/versions/1").ok();
    assert_eq!(shown["kind"], "container");
    assert_eq!(shown["container"]["port"], 8080);

    // Idle for idle_timeout_s: the engine lists none for the version.
    eventually("the idle container is stopped", || {
        podman.containers(&[&mine]).is_empty()
    });
    eventually("a stopped event", || {
        container_events(&p, "acme", "web", "stopped") == 1
    });
    // The next request starts it again.
    let again = p.get("web.acme.test", "/index.html");
    assert_eq!(again.status(), 200);
    assert_eq!(container_events(&p, "acme", "web", "started"), 2);

    // Settings make a new version; vars reach the environment; wasm-only
    // settings are refused.
    let refused = api.put_json(
        "/v1/tenants/acme/functions/web/settings",
        Some(json!({"kv": {"cache": "c"}})),
    );
    refused.expect_error(400, "invalid_settings");

    // The image is in use: it cannot be deleted; the function can, and its
    // container goes with it.
    api.delete(&format!("/v1/tenants/acme/images/{id}"))
        .expect_error(409, "image_in_use");
    api.delete("/v1/tenants/acme/functions/web")
        .expect_status(204);
    eventually("the deleted function's container is gone", || {
        podman.containers(&[&mine]).is_empty()
    });
    api.delete(&format!("/v1/tenants/acme/images/{id}"))
        .expect_status(204);
    let left = api.get("/v1/tenants/acme/images").ok();
    assert_eq!(left["images"], json!([]));
}

#[test]
fn min_instances_keeps_one_warm_and_a_cold_start_under_load_starts_at_most_max_instances() {
    let Some(podman) = Podman::get() else { return };
    let (p, node) = perch(podman, "");
    let api = p.admin();
    api.put_json("/v1/tenants/load", None).ok();
    let archive = httpd_image("localhost/load:1");
    let id = upload_image(&p, "load", &archive).expect_status(201)["image"]
        .as_str()
        .unwrap()
        .to_string();
    put_container(
        &p,
        "load",
        "burst",
        json!({"image": id, "port": 8080, "max_instances": 2, "concurrency": 4}),
    )
    .expect_status(201);
    route(&p, "load", "burst");
    let url = p.data_url.clone();
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                perch_tests::http()
                    .get(format!("{url}/"))
                    .header("host", "burst.load.test")
                    .send()
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let mine = format!("perch.node={node}");
    assert!(podman.containers(&[&mine]).len() <= 2);
    assert!(container_events(&p, "load", "burst", "started") <= 2);

    // min_instances: 1 starts one without a request and keeps it.
    put_container(
        &p,
        "load",
        "warm",
        json!({"image": id, "port": 8080, "min_instances": 1, "idle_timeout_s": 1}),
    )
    .expect_status(201);
    let warm = [mine.as_str(), "perch.function=warm"];
    eventually("min_instances starts one", || {
        podman.containers(&warm).len() == 1
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        podman.containers(&warm).len(),
        1,
        "kept past its idle timeout"
    );
}

#[test]
fn a_killed_container_is_replaced_and_a_restarted_perch_adopts_what_runs() {
    let Some(podman) = Podman::get() else { return };
    let (mut p, node) = perch(podman, "");
    let api = p.admin();
    api.put_json("/v1/tenants/crash", None).ok();
    let archive = httpd_image("localhost/crash:1");
    let id = upload_image(&p, "crash", &archive).expect_status(201)["image"]
        .as_str()
        .unwrap()
        .to_string();
    put_container(&p, "crash", "svc", json!({"image": id, "port": 8080})).expect_status(201);
    route(&p, "crash", "svc");
    assert_eq!(p.get("svc.crash.test", "/").status(), 200);
    let mine = format!("perch.node={node}");
    let first = podman.containers(&[&mine]);
    assert_eq!(first.len(), 1);
    // Traffic runs while the container is killed: each answer is a 200, or
    // a 502 container_error for a request the dying instance failed, or
    // (while the replacement starts) still a 200 after waiting.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (stop, url) = (stop.clone(), p.data_url.clone());
            std::thread::spawn(move || {
                // A connection per request: a kept-alive one that Perch
                // closed after the dying instance broke a response body
                // would fail the next request on the client's side, before
                // Perch sees it.
                let client = reqwest::blocking::Client::builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap();
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && seen.len() < 5000 {
                    let r = client
                        .get(format!("{url}/"))
                        .header("host", "svc.crash.test")
                        .send();
                    seen.push(match r {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body = r.text().unwrap_or_default();
                            (status, body)
                        }
                        Err(e) => (0, e.to_string()),
                    });
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    podman.cli(&["kill", &first[0]]).unwrap();
    // The supervisor notices and a replacement serves the next ones.
    eventually("a replacement serves", || {
        let r = p.get("svc.crash.test", "/");
        let status = r.status();
        if status == 502 {
            assert_eq!(
                r.json::<Value>().unwrap()["error"]["code"],
                "container_error"
            );
        }
        status == 200 && podman.containers(&[&mine]).iter().any(|c| c != &first[0])
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen: Vec<(u16, String)> = load.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let odd: Vec<&(u16, String)> = seen
        .iter()
        .filter(|(s, b)| !(*s == 200 || (*s == 502 && b.contains("container_error"))))
        .collect();
    assert!(
        odd.is_empty(),
        "{} of {}: {:?}",
        odd.len(),
        seen.len(),
        &odd[..odd.len().min(5)]
    );
    assert_eq!(
        seen.last().map(|(s, _)| *s),
        Some(200),
        "served again at the end"
    );
    // A kill is exit 137, which under a memory limit reads as `oom` where the
    // engine does not say (cgroup v1): either event names the end.
    let ended = container_events(&p, "crash", "svc", "crashed")
        + container_events(&p, "crash", "svc", "oom");
    assert!(ended >= 1, "{:?}", events(&p, "crash", "svc"));

    // SIGKILL Perch while its container runs; the next Perch adopts it
    // (no second container, no orphan) and the host answers.
    let running = podman.containers(&[&mine]);
    p.sigkill();
    p.restart();
    let resp = p.get("svc.crash.test", "/");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        podman.containers(&[&mine]),
        running,
        "adopted, not replaced: {}",
        p.log_lines(&["container"]).join("\n")
    );
}

#[test]
fn bad_container_input_is_refused_precisely_and_leaves_nothing() {
    let Some(podman) = Podman::get() else { return };
    let (p, node) = perch(podman, "[max]\ncontainer_memory_mb = 512\n");
    let api = p.admin();
    api.put_json("/v1/tenants/bad", None).ok();
    api.put_json("/v1/tenants/other", None).ok();

    let refuse = |body: &[u8]| upload_image(&p, "bad", body).expect_error(400, "invalid_image");
    assert!(
        refuse(b"GIF89a this is not a tar archive at all, not even close......")
            .contains("not a tar")
    );
    let mut no_manifest = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_cksum();
    no_manifest
        .append_data(&mut h, "config.json", &b"{}"[..])
        .unwrap();
    assert!(refuse(&no_manifest.into_inner().unwrap()).contains("manifest.json"));
    let (status, body) = api.put_declared("/v1/tenants/bad/images", 9 << 20);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("body_too_large"), "{body}");
    let wrong = httpd_image("localhost/wrong-type:1");
    let wrong_type = api.call(
        Method::PUT,
        "/v1/tenants/bad/images",
        Some((wrong.clone(), "application/octet-stream")),
    );
    wrong_type.expect_error(400, "invalid_image");
    assert!(
        podman.cli(&["image", "exists", &image_id(&wrong)]).is_err(),
        "a refused archive never reaches the engine"
    );

    let theirs =
        upload_image(&p, "other", &httpd_image("localhost/theirs:1")).expect_status(201)["image"]
            .as_str()
            .unwrap()
            .to_string();
    let invalid =
        |spec: Value| put_container(&p, "bad", "f", spec).expect_error(400, "invalid_container");
    assert!(invalid(json!({"image": theirs, "port": 8080, "colour": "red"})).contains("colour"));
    assert!(invalid(json!({"image": theirs, "port": 0})).contains("port"));
    assert!(
        invalid(json!({"image": theirs, "port": 8080, "memory_mb": 1024})).contains("memory_mb")
    );
    assert!(invalid(json!({"port": 8080})).contains("image"));
    // Another tenant's image (by id or by its tag) is not this tenant's to run.
    put_container(&p, "bad", "f", json!({"image": theirs, "port": 8080}))
        .expect_error(403, "image_not_allowed");
    put_container(
        &p,
        "bad",
        "f",
        json!({"image": "localhost/theirs:1", "port": 8080}),
    )
    .expect_error(403, "image_not_allowed");
    api.get("/v1/tenants/bad/functions/f")
        .expect_error(404, "not_found");
    assert!(
        podman
            .containers(&[&format!("perch.node={node}")])
            .is_empty()
    );

    // A node without [containers] refuses both kinds of upload.
    let plain = Perch::start();
    plain.admin().put_json("/v1/tenants/bad", None).ok();
    upload_image(&plain, "bad", &httpd_image("x:1")).expect_error(400, "containers_disabled");
    put_container(&plain, "bad", "f", json!({"image": theirs, "port": 8080}))
        .expect_error(400, "containers_disabled");
}

#[test]
fn a_container_over_its_memory_or_never_ready_fails_alone() {
    let Some(podman) = Podman::get() else { return };
    let (p, _node) = perch(podman, "");
    let api = p.admin();
    p.deploy(
        "calm",
        "hello",
        perch_tests::guests::HELLO,
        "hello.calm.test",
    );
    api.put_json("/v1/tenants/oom", None).ok();
    // The main process waits for the CGI to ask, then grows until the
    // kernel kills it; the CGI keeps the request open meanwhile.
    let serve = b"#!/bin/sh\nhttpd -p 8080 -h /www\necho serving\nwhile [ ! -e /tmp/eat ]; do sleep 0.1; done\necho 'eating memory' >&2\nx=a\nwhile :; do x=\"$x$x\"; done\n";
    let eat = b"#!/bin/sh\ntouch /tmp/eat\nsleep 30\necho 'Content-Type: text/plain'\necho\necho survived\n";
    let archive = busybox_image(
        "localhost/oom:1",
        &[
            ("serve.sh", serve),
            ("www/index.html", PAGE),
            ("www/cgi-bin/eat", eat),
        ],
        &["/bin/sh", "/serve.sh"],
    );
    let id = image_id(&archive);
    upload_image(&p, "oom", &archive).expect_status(201);
    put_container(
        &p,
        "oom",
        "hog",
        json!({"image": id, "port": 8080, "memory_mb": 32}),
    )
    .expect_status(201);
    route(&p, "oom", "hog");
    assert_eq!(p.get("hog.oom.test", "/").status(), 200);
    let resp = p.get("hog.oom.test", "/cgi-bin/eat");
    assert_eq!(resp.status(), 502);
    assert_eq!(
        resp.json::<Value>().unwrap()["error"]["code"],
        "container_error"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while container_events(&p, "oom", "hog", "oom") != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "no oom event: {:?}\n{:?}\n{}",
            events(&p, "oom", "hog"),
            podman.cli(&["ps", "-a", "--format", "{{.ID}} {{.Status}} {{.Labels}}"]),
            p.log_lines(&["container"]).join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let evs = events(&p, "oom", "hog");
    assert!(
        evs.iter().any(|e| e["type"] == "request"
            && e["outcome"] == "container_error"
            && e["status"] == 502),
        "{evs:?}"
    );
    assert_eq!(
        p.metric("perch_container_proxy_errors_total", "function=\"hog\""),
        1.0
    );
    // What the container printed is in the function's log, by stream.
    eventually("the container's output", || {
        let out: Vec<(String, String)> = events(&p, "oom", "hog")
            .iter()
            .filter(|e| e["type"] == "output")
            .map(|e| {
                (
                    e["stream"].as_str().unwrap().to_string(),
                    e["message"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        out.contains(&("stdout".into(), "serving".into()))
            && out.contains(&("stderr".into(), "eating memory".into()))
    });
    // Perch and the other tenant carry on.
    assert_eq!(p.get("hello.calm.test", "/").status(), 200);
    assert_eq!(
        p.get("hog.oom.test", "/").status(),
        200,
        "a replacement serves"
    );

    // A container that never listens: 503 container_unavailable, no earlier
    // than start_timeout_s and well before start_timeout_s + 10 s.
    put_container(
        &p,
        "oom",
        "mute",
        json!({"image": id, "port": 8080, "command": ["/bin/sleep", "600"], "start_timeout_s": 2}),
    )
    .expect_status(201);
    route(&p, "oom", "mute");
    let asked = std::time::Instant::now();
    let resp = p.get("mute.oom.test", "/");
    let waited = asked.elapsed();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(
        resp.json::<Value>().unwrap()["error"]["code"],
        "container_unavailable"
    );
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    assert!(waited < Duration::from_secs(12), "{waited:?}");
    eventually("an unhealthy event", || {
        container_events(&p, "oom", "mute", "unhealthy") >= 1
    });
    assert_eq!(p.get("hello.calm.test", "/").status(), 200);
}

#[test]
fn rolling_a_container_function_to_a_new_version_fails_no_request() {
    let Some(podman) = Podman::get() else { return };
    let (p, node) = perch(podman, "");
    let api = p.admin();
    api.put_json("/v1/tenants/roll", None).ok();
    let one = httpd_image("localhost/roll:1");
    let two = busybox_image(
        "localhost/roll:2",
        &[("www/index.html", b"version two\n")],
        &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
    );
    let (id1, id2) = (image_id(&one), image_id(&two));
    upload_image(&p, "roll", &one).expect_status(201);
    upload_image(&p, "roll", &two).expect_status(201);
    put_container(
        &p,
        "roll",
        "site",
        json!({"image": id1, "port": 8080, "idle_timeout_s": 1}),
    )
    .expect_status(201);
    route(&p, "roll", "site");
    assert_eq!(p.get("site.roll.test", "/").status(), 200);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = p.data_url.clone();
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, url) = (stop.clone(), url.clone());
            std::thread::spawn(move || {
                let client = perch_tests::http();
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && seen.len() < 2000 {
                    let r = client
                        .get(format!("{url}/"))
                        .header("host", "site.roll.test")
                        .send();
                    seen.push(match r {
                        Ok(r) => (r.status().as_u16(), r.text().unwrap_or_default()),
                        Err(e) => (0, e.to_string()),
                    });
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    put_container(
        &p,
        "roll",
        "site",
        json!({"image": id2, "port": 8080, "idle_timeout_s": 1}),
    )
    .expect_status(201);
    eventually("version two serves", || {
        p.get("site.roll.test", "/").text().unwrap() == "version two\n"
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen: Vec<(u16, String)> = load.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let failed: Vec<&(u16, String)> = seen.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        seen.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(seen.iter().any(|(_, b)| b.as_bytes() == PAGE));
    assert!(seen.iter().any(|(_, b)| b == "version two\n"));
    // The old version's container stops after its idle timeout.
    let v1 = [format!("perch.node={node}"), "perch.version=1".to_string()];
    let v1: Vec<&str> = v1.iter().map(String::as_str).collect();
    eventually("version one's container stops", || {
        podman.containers(&v1).is_empty()
    });
    assert_eq!(
        podman
            .containers(&[&format!("perch.node={node}"), "perch.version=2"])
            .len(),
        1
    );
}

#[test]
fn a_tenants_container_reaches_neither_another_tenants_container_nor_the_admin_api() {
    let Some(podman) = Podman::get() else { return };
    let (p, node) = perch(podman, "");
    let api = p.admin();
    // A CGI that connects where its query string says and reports what
    // came back (busybox nc, 2 s at most).
    let probe = b"#!/bin/sh\necho 'Content-Type: text/plain'\necho\nhost=${QUERY_STRING%:*}\nport=${QUERY_STRING#*:}\nout=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 \"$host\" \"$port\" 2>/dev/null)\nif [ -n \"$out\" ]; then echo \"reached: $out\"; else echo unreachable; fi\n";
    for tenant in ["iso-a", "iso-b", "iso-c"] {
        api.put_json(&format!("/v1/tenants/{tenant}"), None).ok();
        let archive = busybox_image(
            &format!("localhost/{tenant}:1"),
            &[("www/index.html", PAGE), ("www/cgi-bin/probe", probe)],
            &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
        );
        upload_image(&p, tenant, &archive).expect_status(201);
        put_container(
            &p,
            tenant,
            "svc",
            json!({"image": image_id(&archive), "port": 8080}),
        )
        .expect_status(201);
        route(&p, tenant, "svc");
        assert_eq!(p.get(&format!("svc.{tenant}.test"), "/").status(), 200);
    }
    let inspect = |tenant: &str, format: &str| {
        let ids = podman.containers(&[
            &format!("perch.node={node}"),
            &format!("perch.tenant={tenant}"),
        ]);
        podman
            .cli(&["inspect", &ids[0], "--format", format])
            .unwrap()
            .trim()
            .to_string()
    };
    let ip_of = |tenant: &str| {
        inspect(
            tenant,
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        )
    };
    let gateway_of = |tenant: &str| {
        inspect(
            tenant,
            "{{range .NetworkSettings.Networks}}{{.Gateway}}{{end}}",
        )
    };
    let (a_ip, b_ip) = (ip_of("iso-a"), ip_of("iso-b"));
    assert!(
        !a_ip.is_empty() && !b_ip.is_empty() && a_ip != b_ip,
        "{a_ip} {b_ip}"
    );
    let probe_from = |tenant: &str, target: &str| {
        p.get(
            &format!("svc.{tenant}.test"),
            &format!("/cgi-bin/probe?{target}"),
        )
        .text()
        .unwrap()
    };
    // The probe works: a container reaches itself on its own network.
    assert!(
        probe_from("iso-a", &format!("{a_ip}:8080")).starts_with("reached"),
        "self"
    );
    // Tenant b's container reaches neither a's container nor the admin API
    // (on the host's side of its network, or on its own loopback).
    assert_eq!(
        probe_from("iso-b", &format!("{a_ip}:8080")).trim(),
        "unreachable"
    );
    let admin_port = p
        .admin_url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let gateway = gateway_of("iso-b");
    assert_eq!(
        probe_from("iso-b", &format!("{gateway}:{admin_port}")).trim(),
        "unreachable"
    );
    assert_eq!(
        probe_from("iso-b", &format!("127.0.0.1:{admin_port}")).trim(),
        "unreachable"
    );
    // The last container of a third tenant's network stops. netavark's
    // iptables driver then drops the FORWARD jump every isolated network
    // shares; Perch's own table still keeps a and b apart.
    api.delete("/v1/tenants/iso-c/functions/svc")
        .expect_status(204);
    eventually("tenant c's container is gone", || {
        podman
            .containers(&[&format!("perch.node={node}"), "perch.tenant=iso-c"])
            .is_empty()
    });
    assert_eq!(
        probe_from("iso-b", &format!("{a_ip}:8080")).trim(),
        "unreachable"
    );
    assert_eq!(
        probe_from("iso-a", &format!("{b_ip}:8080")).trim(),
        "unreachable"
    );
    assert!(
        probe_from("iso-a", &format!("{a_ip}:8080")).starts_with("reached"),
        "self, after"
    );
}

/// Tenant `tenant` with container function `function` (an httpd of its
/// own image) routed at `FUNCTION.TENANT.test`, answering.
fn httpd_function(p: &Perch, tenant: &str, function: &str) {
    p.admin()
        .put_json(&format!("/v1/tenants/{tenant}"), None)
        .ok();
    let archive = httpd_image(&format!("localhost/{tenant}:1"));
    upload_image(p, tenant, &archive).expect_status(201);
    put_container(
        p,
        tenant,
        function,
        json!({"image": image_id(&archive), "port": 8080}),
    )
    .expect_status(201);
    route(p, tenant, function);
    assert_eq!(
        p.get(&format!("{function}.{tenant}.test"), "/").status(),
        200
    );
}

/// The node's isolation table, as `nft` lists it (`None`: there is none).
fn isolation_table(node: &str) -> Option<String> {
    let table = perch_containers::isolation::table_name(node);
    let out = std::process::Command::new("nft")
        .args(["list", "table", "inet", &table])
        .output()
        .expect("nft runs");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_isolation_table_names_each_tenant_bridge_and_goes_when_the_node_stops() {
    let Some(podman) = Podman::get() else { return };
    let (mut p, node) = perch(podman, "");
    httpd_function(&p, "fw", "web");
    let bridge = perch_containers::isolation::bridge_name(&perch_containers::network_name("fw"));
    let table = isolation_table(&node).expect("the node's table");
    assert!(
        table.contains(&format!("iifname \"{bridge}\" oifname != \"{bridge}\"")),
        "{table}"
    );
    assert!(table.contains(&format!("perch node {node}")), "{table}");
    // The network's bridge is the one the rule names.
    let inspected = podman
        .cli(&[
            "network",
            "inspect",
            "perch-net-fw",
            "--format",
            "{{.NetworkInterface}}",
        ])
        .unwrap();
    assert_eq!(inspected.trim(), bridge);
    // A node killed and started again keeps the table for the container
    // it adopts.
    p.sigkill();
    p.restart();
    p.wait_for_log("adopted a running container", 1);
    assert!(isolation_table(&node).is_some_and(|t| t.contains(&bridge)));
    // A node that shuts down stops its containers, then removes its table.
    assert!(p.sigterm().success());
    assert!(isolation_table(&node).is_none());
}

#[test]
fn isolation_left_to_the_engine_writes_no_table() {
    let Some(podman) = Podman::get() else { return };
    let (p, node) = perch(podman, "isolation = \"engine\"\n");
    httpd_function(&p, "fw-engine", "web");
    assert!(isolation_table(&node).is_none());
}

#[test]
fn a_node_that_cannot_write_its_isolation_table_does_not_start() {
    let Some(podman) = Podman::get() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("perch.toml"),
        format!("[containers]\nengine = \"{}\"\n", podman.url),
    )
    .unwrap();
    // No `nft` on this PATH.
    let out = perch_tests::serve_command(dir.path())
        .arg("--config")
        .arg(dir.path().join("perch.toml"))
        .env("PATH", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("containers.isolation") && stderr.contains("nft"),
        "{stderr}"
    );
}

#[test]
fn an_http_upgrade_passes_through_to_the_container_both_ways() {
    use std::io::{Read, Write};
    let Some(podman) = Podman::get() else { return };
    let (p, _node) = perch(podman, "");
    let api = p.admin();
    api.put_json("/v1/tenants/ws", None).ok();
    // Reads the request head, switches to the `echo` protocol, then echoes.
    let upgrade = b"#!/bin/sh\nwhile read -r line; do\n  case \"$line\" in \"\"|\"$(printf '\\r')\") break;; esac\ndone\nprintf 'HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: echo\\r\\nConnection: Upgrade\\r\\n\\r\\n'\nexec cat\n";
    let archive = busybox_image(
        "localhost/ws:1",
        &[("upgrade.sh", upgrade)],
        &["/bin/nc", "-ll", "-p", "8080", "-e", "/upgrade.sh"],
    );
    upload_image(&p, "ws", &archive).expect_status(201);
    put_container(
        &p,
        "ws",
        "echo",
        json!({"image": image_id(&archive), "port": 8080}),
    )
    .expect_status(201);
    route(&p, "ws", "echo");
    let addr = p
        .data_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(perch_tests::NO_HANG)).unwrap();
    conn.write_all(
        b"GET /chat HTTP/1.1\r\nHost: echo.ws.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(conn.read(&mut byte).unwrap(), 1, "head so far: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    assert!(head.contains("perch-request-id"), "{head}");
    for message in [&b"ping\n"[..], b"a second message\n"] {
        conn.write_all(message).unwrap();
        let mut back = vec![0u8; message.len()];
        conn.read_exact(&mut back).unwrap();
        assert_eq!(back, message);
    }
}

#[test]
fn perch_deploy_image_uploads_the_archive_and_creates_a_container_version() {
    let Some(podman) = Podman::get() else { return };
    let (p, node) = perch(podman, "");
    p.admin().put_json("/v1/tenants/cli", None).ok();
    let archive = httpd_image("localhost/cli:1");
    let path = p.dir.join("app.tar");
    std::fs::write(&path, &archive).unwrap();
    let out = std::process::Command::new(perch_tests::perch_bin())
        .args(["deploy", "--image"])
        .arg(&path)
        .args([
            "--port",
            "8080",
            "--tenant",
            "cli",
            "--name",
            "web",
            "--route",
            "web.cli.test",
        ])
        .args(["--idle-timeout", "60", "--max-instances", "2"])
        .env("PERCH_URL", &p.admin_url)
        .env("PERCH_TOKEN", perch_tests::ADMIN_TOKEN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = image_id(&archive);
    assert!(stdout.contains(&format!("image {id}")), "{stdout}");
    assert!(
        stdout.contains("deployed cli/web version 1 (container"),
        "{stdout}"
    );
    assert!(stdout.contains("route web.cli.test -> web"), "{stdout}");
    let v = p
        .admin()
        .get("/v1/tenants/cli/functions/web/versions/1")
        .ok();
    assert_eq!(v["container"]["idle_timeout_s"], 60);
    assert_eq!(v["container"]["max_instances"], 2);
    assert_eq!(
        v["container"]["memory_mb"], 256,
        "unset fields keep the defaults"
    );
    let resp = p.get("web.cli.test", "/");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().unwrap().as_ref(), PAGE);
    assert_eq!(podman.containers(&[&format!("perch.node={node}")]).len(), 1);
    // --image without --port is refused by the CLI itself.
    let out = std::process::Command::new(perch_tests::perch_bin())
        .args(["deploy", "--image"])
        .arg(&path)
        .args(["--tenant", "cli", "--name", "web"])
        .env("PERCH_URL", &p.admin_url)
        .env("PERCH_TOKEN", perch_tests::ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--port"));
}

#[test]
fn requests_beyond_every_instance_and_the_queue_get_503_overloaded() {
    let Some(podman) = Podman::get() else { return };
    let (p, _node) = perch(podman, "");
    let api = p.admin();
    api.put_json("/v1/tenants/busy", None).ok();
    let slow = b"#!/bin/sh\nsleep 2\necho 'Content-Type: text/plain'\necho\necho done\n";
    let archive = busybox_image(
        "localhost/busy:1",
        &[("www/index.html", PAGE), ("www/cgi-bin/slow", slow)],
        &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
    );
    upload_image(&p, "busy", &archive).expect_status(201);
    put_container(
        &p,
        "busy",
        "one",
        json!({"image": image_id(&archive), "port": 8080, "concurrency": 1, "start_timeout_s": 3}),
    )
    .expect_status(201);
    route(&p, "busy", "one");
    assert_eq!(p.get("one.busy.test", "/").status(), 200, "started");
    // One instance, one request at a time: 1 in flight, 100 waiting, and
    // the rest refused at once.
    let url = p.data_url.clone();
    let threads: Vec<_> = (0..104)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let r = perch_tests::http()
                    .get(format!("{url}/cgi-bin/slow"))
                    .header("host", "one.busy.test")
                    .send()
                    .unwrap();
                let status = r.status().as_u16();
                let code = r
                    .json::<Value>()
                    .ok()
                    .map(|v| v["error"]["code"].to_string());
                (status, code.unwrap_or_default())
            })
        })
        .collect();
    let answers: Vec<(u16, String)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let count = |status: u16, code: &str| {
        answers
            .iter()
            .filter(|(s, c)| *s == status && (code.is_empty() || c.contains(code)))
            .count()
    };
    let (ok, overloaded) = (count(200, ""), count(503, "\"overloaded\""));
    let waited_out = count(503, "container_unavailable");
    assert!(ok >= 1, "{answers:?}");
    assert!(overloaded >= 1, "{answers:?}");
    assert_eq!(ok + overloaded + waited_out, answers.len(), "{answers:?}");
}

#[test]
fn image_bytes_and_container_memory_quotas_refuse_what_does_not_fit() {
    let Some(podman) = Podman::get() else { return };
    let (p, _node) = perch(podman, "[quotas]\ncontainer_memory_mb = 512\n");
    let api = p.admin();
    api.put_json("/v1/tenants/quota", None).ok();
    let archive = httpd_image("localhost/quota:1");
    let id = image_id(&archive);
    // Too small for the archive: refused before the engine sees it.
    api.put_json(
        "/v1/tenants/quota",
        Some(json!({"quotas": {"image_bytes": 1000}})),
    )
    .ok();
    let body = upload_image(&p, "quota", &archive).expect_status(403);
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert_eq!(body["error"]["quota"], "image_bytes");
    assert!(
        podman.cli(&["image", "exists", &id]).is_err(),
        "not in the engine"
    );
    api.put_json(
        "/v1/tenants/quota",
        Some(json!({"quotas": {"image_bytes": null}})),
    )
    .ok();
    upload_image(&p, "quota", &archive).expect_status(201);
    // 256 MiB × 2 fits the default 512; × 3 does not.
    put_container(
        &p,
        "quota",
        "a",
        json!({"image": id, "port": 8080, "max_instances": 2}),
    )
    .expect_status(201);
    let body = put_container(
        &p,
        "quota",
        "b",
        json!({"image": id, "port": 8080, "memory_mb": 64}),
    )
    .expect_status(403);
    assert_eq!(body["error"]["quota"], "container_memory_mb");
    assert_eq!(body["error"]["limit"], 512);
    // Staged, it takes no memory; deploying it would.
    put_container(
        &p,
        "quota",
        "b",
        json!({"image": id, "port": 8080, "memory_mb": 64}),
    )
    .expect_status(403);
    let staged = p.admin().call(
        Method::PUT,
        "/v1/tenants/quota/functions/b?activate=false",
        Some((
            json!({"container": {"image": id, "port": 8080, "memory_mb": 64}})
                .to_string()
                .into_bytes(),
            "application/json",
        )),
    );
    staged.expect_status(201);
    api.put_json(
        "/v1/tenants/quota/functions/b/deployment",
        Some(json!({"versions": [{"version": 1, "percent": 100}]})),
    )
    .expect_error(403, "quota_exceeded");
}
