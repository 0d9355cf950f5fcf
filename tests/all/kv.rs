//! The KV store through the admin API: shapes, listing, TTL, durability.
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use perch_tests::{Api, Perch};
use reqwest::Method;
use serde_json::json;

fn put_value(api: &Api, path: &str, value: &[u8], metadata: Option<&str>) -> u16 {
    let mut req = api
        .client
        .put(format!("{}{path}", api.base))
        .bearer_auth(api.token.as_deref().unwrap())
        .body(value.to_vec());
    if let Some(m) = metadata {
        req = req.header("perch-kv-metadata", m);
    }
    req.send().unwrap().status().as_u16()
}

fn get_value(api: &Api, path: &str) -> (u16, Vec<u8>, Option<String>) {
    let resp = api
        .client
        .get(format!("{}{path}", api.base))
        .bearer_auth(api.token.as_deref().unwrap())
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let meta = resp
        .headers()
        .get("perch-kv-metadata")
        .map(|v| v.to_str().unwrap().to_string());
    (status, resp.bytes().unwrap().to_vec(), meta)
}

#[test]
fn kv_admin_api_shapes_and_limits() {
    let perch = Perch::start();
    let admin = perch.admin();
    admin.put_json("/v1/tenants/a", None).expect_status(201);
    let kv_token = admin
        .post_json("/v1/tenants/a/tokens", json!({"scopes": ["kv"]}))
        .ok()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let fn_token = admin
        .post_json("/v1/tenants/a/tokens", json!({"scopes": ["functions"]}))
        .ok()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let kv = perch.api(&kv_token);
    perch
        .api(&fn_token)
        .get("/v1/tenants/a/kv")
        .expect_error(403, "forbidden");

    kv.put_json("/v1/tenants/a/kv/cache", None)
        .expect_status(201);
    kv.put_json("/v1/tenants/a/kv/cache", None)
        .expect_status(200);
    kv.put_json("/v1/tenants/a/kv/Bad_Name", None)
        .expect_error(400, "invalid_name");
    assert_eq!(
        kv.get("/v1/tenants/a/kv").ok(),
        json!({"namespaces": ["cache"]})
    );
    kv.get("/v1/tenants/a/kv/missing/keys")
        .expect_error(404, "not_found");

    // Values are bytes; keys may contain slashes and escapes (decoded once).
    let bytes: Vec<u8> = (0..=255u8).collect();
    assert_eq!(
        put_value(
            &kv,
            "/v1/tenants/a/kv/cache/values/users/42/avatar",
            &bytes,
            Some("{\"type\":\"png\"}")
        ),
        204
    );
    let (status, got, meta) = get_value(&kv, "/v1/tenants/a/kv/cache/values/users/42/avatar");
    assert_eq!(
        (status, got, meta.as_deref()),
        (200, bytes.clone(), Some("{\"type\":\"png\"}"))
    );
    assert_eq!(
        put_value(&kv, "/v1/tenants/a/kv/cache/values/a%20b%252F", b"x", None),
        204
    );
    let keys = kv.get("/v1/tenants/a/kv/cache/keys").ok();
    assert_eq!(
        keys,
        json!({"keys": [
            {"name": "a b%2F", "expires_at": null, "metadata": null},
            {"name": "users/42/avatar", "expires_at": null, "metadata": {"type": "png"}},
        ], "cursor": null})
    );
    assert_eq!(get_value(&kv, "/v1/tenants/a/kv/cache/values/nope").0, 404);
    kv.delete("/v1/tenants/a/kv/cache/values/users/42/avatar")
        .expect_status(204);
    kv.delete("/v1/tenants/a/kv/cache/values/users/42/avatar")
        .expect_status(204);
    assert_eq!(
        get_value(&kv, "/v1/tenants/a/kv/cache/values/users/42/avatar").0,
        404
    );

    // Limits.
    let long_key = "k".repeat(513);
    kv.call(
        Method::PUT,
        &format!("/v1/tenants/a/kv/cache/values/{long_key}"),
        Some((b"x".to_vec(), "application/octet-stream")),
    )
    .expect_error(400, "key_too_long");
    let (status, body) = kv.put_declared("/v1/tenants/a/kv/cache/values/big", (25 << 20) + 1);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("value_too_large"), "{body}");
    let big_meta = format!("{{\"x\":\"{}\"}}", "m".repeat(1100));
    assert_eq!(
        put_value(
            &kv,
            "/v1/tenants/a/kv/cache/values/m",
            b"x",
            Some(&big_meta)
        ),
        413
    );
    assert_eq!(
        put_value(
            &kv,
            "/v1/tenants/a/kv/cache/values/m",
            b"x",
            Some("not json")
        ),
        400
    );
    kv.call(
        Method::PUT,
        "/v1/tenants/a/kv/cache/values/t?ttl=abc",
        Some((b"x".to_vec(), "text/plain")),
    )
    .expect_error(400, "invalid_ttl");
    kv.get("/v1/tenants/a/kv/cache/keys?limit=1001")
        .expect_error(400, "invalid_limit");
    kv.get("/v1/tenants/a/kv/cache/keys?cursor=zz")
        .expect_error(400, "invalid_cursor");

    // Deleting the tenant deletes its data.
    admin.delete("/v1/tenants/a").expect_status(204);
    admin.put_json("/v1/tenants/a", None).expect_status(201);
    assert_eq!(
        admin.get("/v1/tenants/a/kv").ok(),
        json!({"namespaces": []})
    );
}

#[test]
fn listing_pages_prefixes_and_ttl() {
    let perch = Perch::start();
    let admin = perch.admin();
    admin.put_json("/v1/tenants/a", None).expect_status(201);
    admin
        .put_json("/v1/tenants/a/kv/big", None)
        .expect_status(201);
    // 2,500 keys from 8 writers (their commits are grouped).
    let keys: Vec<String> = (0..2500)
        .map(|i| format!("{}/{i:05}", if i % 5 == 0 { "five" } else { "other" }))
        .collect();
    let admin_ref = &admin;
    std::thread::scope(|s| {
        for chunk in keys.chunks(313) {
            s.spawn(move || {
                for k in chunk {
                    assert_eq!(
                        put_value(
                            admin_ref,
                            &format!("/v1/tenants/a/kv/big/values/{k}"),
                            k.as_bytes(),
                            None
                        ),
                        204
                    );
                }
            });
        }
    });
    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let page = admin
            .get(&format!(
                "/v1/tenants/a/kv/big/keys?limit=1000&cursor={cursor}"
            ))
            .ok();
        pages += 1;
        let names = page["keys"].as_array().unwrap();
        assert!(names.len() <= 1000);
        seen.extend(
            names
                .iter()
                .map(|k| k["name"].as_str().unwrap().to_string()),
        );
        match page["cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(pages, 3);
    assert_eq!(seen, expected, "every key once, sorted");
    let five = admin.get("/v1/tenants/a/kv/big/keys?prefix=five/").ok();
    assert_eq!(five["keys"].as_array().unwrap().len(), 500);
    assert!(
        five["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["name"].as_str().unwrap().starts_with("five/"))
    );

    // TTL: `expires_at` is the put's time plus the TTL, in seconds rounded
    // up (a long TTL, so that it cannot expire while this reads it)…
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let before = now_ms();
    let put_ttl = |key: &str, ttl: u64| {
        admin
            .call(
                Method::PUT,
                &format!("/v1/tenants/a/kv/big/values/{key}?ttl={ttl}"),
                Some((b"x".to_vec(), "text/plain")),
            )
            .status
    };
    assert_eq!(put_ttl("zy-ttl-long", 3600), 204);
    let after = now_ms();
    let listed = admin.get("/v1/tenants/a/kv/big/keys?prefix=zy-").ok();
    let exp = listed["keys"][0]["expires_at"].as_u64().unwrap();
    let (low, high) = (
        (before + 3_600_000).div_ceil(1000),
        (after + 3_600_000).div_ceil(1000),
    );
    assert!(
        (low..=high).contains(&exp),
        "expires_at {exp}, put between {before} and {after} ms"
    );
    // …and from the moment a key expires, neither get nor list returns it.
    assert_eq!(put_ttl("zz-ttl", 1), 204);
    let put_done = now_ms();
    while now_ms() <= put_done + 1000 {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        get_value(&admin, "/v1/tenants/a/kv/big/values/zz-ttl").0,
        404
    );
    assert_eq!(
        admin.get("/v1/tenants/a/kv/big/keys?prefix=zz-").ok()["keys"],
        json!([])
    );
}

#[test]
fn acknowledged_kv_writes_survive_sigkill() {
    let mut perch = Perch::start();
    let admin = perch.admin();
    admin.put_json("/v1/tenants/a", None).expect_status(201);
    admin
        .put_json("/v1/tenants/a/kv/durable", None)
        .expect_status(201);
    let acked = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for w in 0..8 {
            let (admin, acked, stop) = (&admin, &acked, &stop);
            s.spawn(move || {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("w{w}-{i}");
                    let resp = admin
                        .client
                        .put(format!(
                            "{}/v1/tenants/a/kv/durable/values/{key}",
                            admin.base
                        ))
                        .bearer_auth(admin.token.as_deref().unwrap())
                        .body(format!("value-{w}-{i}"))
                        .send();
                    match resp {
                        Ok(r) if r.status().as_u16() == 204 => acked.lock().unwrap().push(key),
                        _ => break, // the server died mid-request: not acknowledged
                    }
                }
            });
        }
        // Kill it mid-write once plenty of writes were acknowledged (the
        // writers keep going until the server dies).
        perch_tests::eventually("200 acknowledged writes", || {
            acked.lock().unwrap().len() >= 200
        });
        perch.sigkill();
        stop.store(true, Ordering::Relaxed);
    });
    let acked = acked.into_inner().unwrap();
    assert!(
        acked.len() >= 200,
        "only {} writes acknowledged",
        acked.len()
    );
    perch.restart();
    let admin = perch.admin();
    for key in &acked {
        let (status, body, _) =
            get_value(&admin, &format!("/v1/tenants/a/kv/durable/values/{key}"));
        let (w, i) = key[1..].split_once('-').unwrap();
        assert_eq!(
            (status, String::from_utf8(body).unwrap()),
            (200, format!("value-{w}-{i}")),
            "lost {key}"
        );
    }
    eprintln!(
        "{} acknowledged writes all present after SIGKILL",
        acked.len()
    );
}
