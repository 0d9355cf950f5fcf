//! Function settings: vars, secrets, KV bindings, limits; and the KV
//! extension interface from a guest.
use perch_tests::{NO_HANG, Perch, guests};
use serde_json::json;

#[test]
fn settings_create_versions_and_secrets_stay_secret() {
    let mut perch = Perch::start();
    let token = perch.deploy("a", "env", guests::FAULTY, "env.a.test");
    let api = perch.api(&token);
    let path = "/v1/tenants/a/functions/env/settings";
    let v = api
        .put_json(
            path,
            Some(json!({"vars": {"MODE": "blue"}, "secrets": {"API_KEY": "s3cr3t-value"}})),
        )
        .expect_status(201);
    assert_eq!(v, json!({"function": "env", "version": 2, "active": true}));
    assert_eq!(perch.get("env.a.test", "/env?MODE").text().unwrap(), "blue");
    assert_eq!(
        perch.get("env.a.test", "/env?API_KEY").text().unwrap(),
        "s3cr3t-value"
    );

    // Omitted secrets keep their values; vars are replaced wholesale.
    api.put_json(path, Some(json!({"vars": {"OTHER": "x"}})))
        .expect_status(201);
    assert_eq!(perch.get("env.a.test", "/env?MODE").status(), 404);
    assert_eq!(
        perch.get("env.a.test", "/env?API_KEY").text().unwrap(),
        "s3cr3t-value"
    );

    // No API returns a secret; the detail lists names only.
    let detail = api.get("/v1/tenants/a/functions/env").ok();
    assert_eq!(detail["active_version"], 3);
    assert_eq!(detail["settings"]["secrets"], json!(["API_KEY"]));
    assert_eq!(detail["settings"]["vars"], json!({"OTHER": "x"}));
    assert!(!detail.to_string().contains("s3cr3t"));
    // Versions share the artifact.
    let versions = detail["versions"].as_array().unwrap();
    assert!(
        versions
            .iter()
            .all(|v| v["digest"] == versions[0]["digest"])
    );
    // Encrypted at rest: not in the database file.
    let db = std::fs::read(perch.dir.join("data/perch.redb")).unwrap();
    assert!(
        !db.windows(12).any(|w| w == b"s3cr3t-value"),
        "secret stored in clear"
    );

    // New code keeps the settings.
    api.upload("a", "env", &std::fs::read(guests::FAULTY).unwrap())
        .expect_status(201);
    assert_eq!(perch.get("env.a.test", "/env?OTHER").text().unwrap(), "x");

    // A null secret deletes it; after a restart the sealed secrets still open.
    api.put_json(
        path,
        Some(json!({"secrets": {"TOKEN": "t0k", "API_KEY": null}})),
    )
    .expect_status(201);
    perch.sigterm();
    perch.restart();
    assert_eq!(perch.get("env.a.test", "/env?TOKEN").text().unwrap(), "t0k");
    assert_eq!(perch.get("env.a.test", "/env?API_KEY").status(), 404);
    assert!(
        !perch.logs().contains("t0k") && !perch.logs().contains("s3cr3t"),
        "secret in the log"
    );

    // Bad settings: 400 with a reason, nothing created.
    let api = perch.api(&token);
    for (body, needle) in [
        (json!({"vars": {"1BAD": "x"}}), "valid variable name"),
        (
            json!({"vars": {"X": "1"}, "secrets": {"X": "2"}}),
            "both a var and a secret",
        ),
        (
            json!({"limits": {"cpu_ms": 999_999_999}}),
            "operator maximum",
        ),
        (json!({"limits": {"memory_mb": 0}}), "positive"),
        (json!({"kv": {"cache": "Bad_NS"}}), "KV namespace"),
        (
            json!({"outbound": {"allow": ["not a host"]}}),
            "outbound.allow",
        ),
    ] {
        let msg = api
            .put_json(path, Some(body))
            .expect_error(400, "invalid_settings");
        assert!(msg.contains(needle), "{msg}");
    }
    api.put_json(path, Some(json!({"bogus": 1})))
        .expect_error(400, "invalid_json");
    api.put_json("/v1/tenants/a/functions/nope/settings", Some(json!({})))
        .expect_error(404, "not_found");
    assert_eq!(
        api.get("/v1/tenants/a/functions/env").ok()["active_version"],
        5
    );
}

#[test]
fn limits_from_settings_apply() {
    let perch = Perch::start_with("[limits]\ncpu_ms = 5000\nwall_ms = 20000\n");
    let token = perch.deploy("a", "f", guests::FAULTY, "f.a.test");
    perch
        .api(&token)
        .put_json(
            "/v1/tenants/a/functions/f/settings",
            Some(json!({"limits": {"wall_ms": 300}})),
        )
        .expect_status(201);
    let t = std::time::Instant::now();
    let resp = perch.get("f.a.test", "/hang");
    assert_eq!(resp.status(), 504);
    // The function's 300 ms stopped it, not the node's 20 s: the wall-time
    // limit was hit, well before the node's limit was due.
    perch.wait_for_log_line(&["wall-time limit hit", "tenant=a", "function=f", "version=2"]);
    assert!(t.elapsed() < NO_HANG, "{:?}", t.elapsed());
}

#[test]
fn kv_extension_from_a_guest() {
    let perch = Perch::start();
    perch.deploy("a", "kv", guests::KVEXT, "kv.a.test");
    let put = |path: &str, body: &str| {
        perch
            .request(reqwest::Method::PUT, "kv.a.test", path)
            .body(body.to_string())
            .send()
            .unwrap()
    };
    let get = |path: &str| {
        let r = perch.get("kv.a.test", path);
        (r.status().as_u16(), r.text().unwrap())
    };
    assert_eq!(
        put("/set/user/1?meta={\"role\":\"admin\"}", "alice").status(),
        204
    );
    assert_eq!(put("/set/user/2", "bob").status(), 204);
    assert_eq!(put("/set/other", "x").status(), 204);
    let (status, entry) = get("/entry/user/1");
    assert_eq!(status, 200);
    let entry: serde_json::Value = serde_json::from_str(&entry).unwrap();
    assert_eq!(
        entry,
        json!({"value": "alice", "metadata": {"role": "admin"}, "expires_at": null})
    );

    // Scan by prefix with a cursor.
    let (_, page) = get("/scan?prefix=user/&limit=1");
    let page: serde_json::Value = serde_json::from_str(&page).unwrap();
    assert_eq!(page["keys"], json!(["user/1"]));
    let cursor = page["cursor"].as_str().unwrap();
    let (_, page) = get(&format!("/scan?prefix=user/&limit=1&cursor={cursor}"));
    let page: serde_json::Value = serde_json::from_str(&page).unwrap();
    assert_eq!(page, json!({"keys": ["user/2"], "cursor": null}));

    // TTL with millisecond precision: `expires_at` is the put's time plus
    // the TTL (a long one, so that it cannot expire while this reads it)…
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let before = now_ms();
    assert_eq!(put("/set/later?ttl_ms=3600000", "later").status(), 204);
    let after = now_ms();
    let (_, entry) = get("/entry/later");
    let exp = serde_json::from_str::<serde_json::Value>(&entry).unwrap()["expires_at"]
        .as_u64()
        .unwrap();
    assert!(
        (before + 3_600_000..=after + 3_600_000).contains(&exp),
        "expires_at {exp}, put between {before} and {after}"
    );
    // …and a key is gone from the millisecond it expires.
    assert_eq!(put("/set/temp?ttl_ms=300", "soon gone").status(), 204);
    let put_done = now_ms();
    while now_ms() <= put_done + 300 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(get("/entry/temp").0, 404);

    // Compare-and-swap.
    assert_eq!(
        perch
            .request(reqwest::Method::POST, "kv.a.test", "/cas/lock?new=me")
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "true"
    );
    assert_eq!(
        perch
            .request(reqwest::Method::POST, "kv.a.test", "/cas/lock?new=you")
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "false"
    );
    assert_eq!(
        perch
            .request(
                reqwest::Method::POST,
                "kv.a.test",
                "/cas/lock?expected=me&new=you"
            )
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "true"
    );
    assert_eq!(get("/get/lock"), (200, "you".into()));

    // The draft's list-keys and batch interfaces.
    // (`later` is the long-TTL key from above.)
    assert_eq!(
        get("/keys"),
        (200, "later\nlock\nother\nuser/1\nuser/2".into())
    );
    assert_eq!(
        get("/batch"),
        (200, "b1=one,b2=two,- b1-exists=false".into())
    );

    // Guest-visible limits, never traps: the per-request operation budget and value sizes.
    let (status, body) = get("/ops?n=1500");
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("operation limit"), "{body}");
    assert_eq!(get("/ops?n=10"), (200, "did 10".into()));
    let (status, body) = get("/get/".to_string().add_long_key().as_str());
    assert_eq!(status, 500);
    assert!(body.contains("key is 600 bytes"), "{body}");
    assert_eq!(get("/store-check?store=unbound").0, 404);
    // Metadata must be JSON; the guest gets an error, not a trap.
    let bad = put("/set/m?meta=not-json", "x");
    assert_eq!(bad.status(), 500);
    assert!(bad.text().unwrap().contains("metadata must be valid JSON"));

    // Config through the SDK (wasi:config).
    assert_eq!(get("/config?name=GREETING").0, 404);
    let token = perch
        .admin()
        .post_json("/v1/tenants/a/tokens", json!({"scopes": ["functions"]}))
        .ok()["token"]
        .as_str()
        .unwrap()
        .to_string();
    perch
        .api(&token)
        .put_json(
            "/v1/tenants/a/functions/kv/settings",
            Some(json!({"vars": {"GREETING": "hi"}, "secrets": {"PASS": "pw"}})),
        )
        .expect_status(201);
    assert_eq!(get("/config?name=GREETING"), (200, "hi".into()));
    assert_eq!(get("/config?name=PASS"), (200, "pw".into()));
}

trait LongKey {
    fn add_long_key(self) -> String;
}

impl LongKey for String {
    fn add_long_key(mut self) -> String {
        self.push_str(&"k".repeat(600));
        self
    }
}

#[test]
fn instance_reuse_is_opt_in_capped_and_keeps_limits() {
    let perch = Perch::start_with("[limits]\ncpu_ms = 300\n[max]\ninstance_reuse = 50\n");
    let token = perch.deploy("a", "f", guests::FAULTY, "f.a.test");
    let api = perch.api(&token);
    let path = "/v1/tenants/a/functions/f/settings";
    let count = || {
        let resp = perch.get("f.a.test", "/count");
        assert_eq!(resp.status(), 200);
        resp.text().unwrap()
    };
    let counts = |n: usize| (0..n).map(|_| count()).collect::<Vec<_>>();

    // The default: every request gets a fresh instance.
    assert_eq!(counts(3), ["1", "1", "1"]);

    // Validated and capped by the operator maximum.
    for bad in [0, 51] {
        api.put_json(path, Some(json!({"limits": {"instance_reuse": bad}})))
            .expect_error(400, "invalid_settings");
    }

    // Opted in: sequential requests share an instance, at most 3 each.
    api.put_json(path, Some(json!({"limits": {"instance_reuse": 3}})))
        .expect_status(201);
    assert_eq!(counts(7), ["1", "2", "3", "1", "2", "3", "1"]);

    // Limits still apply per request, and a failed instance is never reused.
    assert_eq!(count(), "2");
    assert_eq!(perch.get("f.a.test", "/spin").status(), 504);
    assert_eq!(count(), "1");
    assert_eq!(perch.get("f.a.test", "/trap").status(), 500);
    assert_eq!(counts(2), ["1", "2"]);

    // Turning it off (new settings, new version) is fresh instances again.
    api.put_json(path, Some(json!({"limits": {}})))
        .expect_status(201);
    assert_eq!(counts(3), ["1", "1", "1"]);
}
