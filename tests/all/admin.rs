//! The admin API contract: auth rules, shapes and status codes.
use perch_tests::{Perch, guests};
use serde_json::{Value, json};

#[test]
fn auth_scopes_and_host_claims() {
    let perch = Perch::start();
    let admin = perch.admin();
    admin
        .put_json(
            "/v1/tenants/a",
            Some(json!({"domains": ["a.test", "*.a.test", "*.w.test", "w.test"]})),
        )
        .expect_status(201);
    admin.put_json("/v1/tenants/b", None).expect_status(201);
    // Idempotent re-put.
    let body = admin.put_json("/v1/tenants/b", None).expect_status(200);
    assert_eq!(body, json!({"name": "b", "domains": []}));

    let a_all = admin
        .post_json("/v1/tenants/a/tokens", json!({"scopes": ["*"]}))
        .expect_status(201);
    assert_eq!(a_all["scopes"], json!(["*"]));
    let a_token = a_all["token"].as_str().unwrap().to_string();
    let a_fn_only = admin
        .post_json("/v1/tenants/a/tokens", json!({"scopes": ["functions"]}))
        .ok();
    let b_token = admin
        .post_json("/v1/tenants/b/tokens", json!({"scopes": ["*"]}))
        .ok()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let a = perch.api(&a_token);
    let b = perch.api(&b_token);
    let a_fn = perch.api(a_fn_only["token"].as_str().unwrap());

    // No token / unknown token → 401 with WWW-Authenticate.
    let anon = admin.anonymous().get("/v1/tenants");
    assert_eq!(anon.headers.get("www-authenticate").unwrap(), "Bearer");
    anon.expect_error(401, "unauthorized");
    perch
        .api("perch_nope")
        .get("/v1/tenants/a/functions")
        .expect_error(401, "unauthorized");

    // Tenant tokens: own tenant only, scope by path; admin-only endpoints refused.
    b.get("/v1/tenants/a/functions")
        .expect_error(403, "forbidden");
    b.get("/v1/tenants/nonexistent/functions")
        .expect_error(403, "forbidden");
    a.get("/v1/tenants").expect_error(403, "forbidden");
    a.post_json("/v1/tenants/a/tokens", json!({"scopes": ["*"]}))
        .expect_error(403, "forbidden");

    a.upload("a", "hello", &std::fs::read(guests::HELLO).unwrap())
        .expect_status(201);
    a_fn.upload("a", "hello2", &std::fs::read(guests::HELLO).unwrap())
        .expect_status(201);
    a_fn.put_json(
        "/v1/tenants/a/routes/hello.a.test",
        Some(json!({"function": "hello"})),
    )
    .expect_error(403, "forbidden");
    let r = a
        .put_json(
            "/v1/tenants/a/routes/hello.a.test",
            Some(json!({"function": "hello"})),
        )
        .expect_status(201);
    assert_eq!(
        r,
        json!({"pattern": "hello.a.test", "host": "hello.a.test", "path": null, "function": "hello"})
    );
    a.put_json(
        "/v1/tenants/a/routes/hello.a.test",
        Some(json!({"function": "hello2"})),
    )
    .expect_status(200);
    a.put_json(
        "/v1/tenants/a/routes/hello.a.test",
        Some(json!({"function": "hello"})),
    )
    .expect_status(200);
    a.put_json(
        "/v1/tenants/a/routes/x.a.test",
        Some(json!({"function": "missing"})),
    )
    .expect_error(404, "not_found");

    // Host claims.
    b.upload("b", "hello", &std::fs::read(guests::HELLO).unwrap())
        .expect_status(201);
    b.put_json(
        "/v1/tenants/b/routes/hello.a.test",
        Some(json!({"function": "hello"})),
    )
    .expect_error(409, "host_taken");
    a.put_json(
        "/v1/tenants/a/routes/*.w.test",
        Some(json!({"function": "hello"})),
    )
    .expect_status(201);
    // An exact host under another tenant's wildcard.
    b.put_json(
        "/v1/tenants/b/routes/deep.x.w.test",
        Some(json!({"function": "hello"})),
    )
    .expect_error(409, "host_taken");
    a.put_json(
        "/v1/tenants/a/routes/elsewhere.test",
        Some(json!({"function": "hello"})),
    )
    .expect_error(403, "host_not_allowed");
    a.put_json(
        "/v1/tenants/a/routes/*.com",
        Some(json!({"function": "hello"})),
    )
    .expect_error(400, "invalid_request");

    // Wildcard serves any depth below, not the apex.
    assert_eq!(perch.get("x.w.test", "/").status(), 200);
    assert_eq!(perch.get("a.b.w.test", "/").status(), 200);
    let apex = perch.get("w.test", "/");
    assert_eq!(apex.status(), 404);
    assert_eq!(
        apex.json::<serde_json::Value>().unwrap()["error"]["code"],
        "no_route"
    );

    // Listing shapes.
    let routes = a.get("/v1/tenants/a/routes").ok();
    assert_eq!(
        routes,
        json!({"routes": [
            {"pattern": "*.w.test", "host": "*.w.test", "path": null, "function": "hello"},
            {"pattern": "hello.a.test", "host": "hello.a.test", "path": null, "function": "hello"}
        ], "cursor": null})
    );
    let fns = a.get("/v1/tenants/a/functions").ok();
    assert_eq!(
        fns,
        json!({"functions": [{"name": "hello", "active_version": 1}, {"name": "hello2", "active_version": 1}], "cursor": null})
    );
    let detail = a.get("/v1/tenants/a/functions/hello").ok();
    assert_eq!(detail["versions"][0]["version"], 1);
    assert_eq!(detail["versions"][0]["digest"].as_str().unwrap().len(), 64);
    a.get("/v1/tenants/a/functions/nope")
        .expect_error(404, "not_found");
    let tenants = admin.get("/v1/tenants").ok();
    assert_eq!(tenants["tenants"].as_array().unwrap().len(), 2);

    // Tokens: listed without secrets, revocation is immediate.
    let tokens = admin.get("/v1/tenants/a/tokens").ok();
    let listed = tokens["tokens"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|t| t.get("token").is_none() && t["created_at"].is_u64())
    );
    assert!(!tokens.to_string().contains(&a_token));
    let id = a_all["id"].as_str().unwrap();
    admin
        .delete(&format!("/v1/tenants/a/tokens/{id}"))
        .expect_status(204);
    admin
        .delete(&format!("/v1/tenants/a/tokens/{id}"))
        .expect_status(204);
    a.get("/v1/tenants/a/functions")
        .expect_error(401, "unauthorized");

    // Deleting a function removes its routes; deleting twice is fine.
    a_fn.delete("/v1/tenants/a/functions/hello2")
        .expect_status(204);
    a_fn.delete("/v1/tenants/a/functions/hello2")
        .expect_status(204);
    admin.delete("/v1/tenants/b").expect_status(204);
    admin.delete("/v1/tenants/b").expect_status(204);
    b.get("/v1/tenants/b/functions")
        .expect_error(401, "unauthorized");
}

#[test]
fn bad_requests_get_precise_errors() {
    let perch = Perch::start();
    let admin = perch.admin();
    admin
        .put_json("/v1/tenants/Bad_Name", None)
        .expect_error(400, "invalid_name");
    admin
        .put_json("/v1/tenants/ok", Some(json!({"domains": "x"})))
        .expect_error(400, "invalid_json");
    admin
        .put_json("/v1/tenants/ok", Some(json!({"bogus": 1})))
        .expect_error(400, "invalid_json");
    admin
        .put_json("/v1/tenants/ok", Some(json!({"domains": ["not a host"]})))
        .expect_error(400, "invalid_request");
    admin.put_json("/v1/tenants/ok", None).expect_status(201);
    admin
        .post_json("/v1/tenants/ok/tokens", json!({"scopes": []}))
        .expect_error(400, "invalid_scopes");
    admin
        .post_json("/v1/tenants/ok/tokens", json!({"scopes": ["root"]}))
        .expect_error(400, "invalid_scopes");
    admin
        .post_json("/v1/tenants/missing/tokens", json!({"scopes": ["*"]}))
        .expect_error(404, "not_found");
    admin
        .get("/v1/tenants/missing/functions")
        .expect_error(404, "not_found");
    admin
        .upload("missing", "f", b"\0asm")
        .expect_error(404, "not_found");
    admin
        .upload("ok", "Bad", b"\0asm")
        .expect_error(400, "invalid_name");
    admin.get("/v1/nothing").expect_error(404, "not_found");
    admin
        .call(reqwest::Method::POST, "/v1/tenants/ok", None)
        .expect_error(405, "method_not_allowed");
    assert_eq!(
        perch
            .client
            .get(format!("{}/healthz", perch.admin_url))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        perch
            .client
            .get(format!("{}/readyz", perch.admin_url))
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn failed_auth_is_throttled_but_valid_tokens_are_not() {
    let perch = Perch::start();
    let bad = perch.api("perch_wrong");
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(bad.get("/v1/tenants").status);
    }
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    let last = bad.get("/v1/tenants");
    assert!(last.headers.contains_key("retry-after"));
    last.expect_error(429, "too_many_attempts");
    // Same client address, valid token: never throttled.
    perch.admin().get("/v1/tenants").expect_status(200);
    assert!(
        !perch.logs().contains("perch_wrong"),
        "a presented token reached the log"
    );
}

#[test]
fn tokens_can_be_named_and_expire() {
    let perch = Perch::start();
    let admin = perch.admin();
    admin.put_json("/v1/tenants/x", None).ok();
    // Bad lifetimes and names are refused precisely.
    for bad in [
        json!(0),
        json!(315_360_001u64),
        json!(-5),
        json!(1.5),
        json!("60"),
    ] {
        admin
            .post_json(
                "/v1/tenants/x/tokens",
                json!({"scopes": ["*"], "expires_in_s": bad}),
            )
            .expect_error(400, "invalid_expiry");
    }
    for bad in ["", "has space", &"n".repeat(65), "semi;colon"] {
        admin
            .post_json(
                "/v1/tenants/x/tokens",
                json!({"scopes": ["*"], "name": bad}),
            )
            .expect_error(400, "invalid_name");
    }
    // A named token that never expires, and one that expires in 1 s.
    let lasting = admin
        .post_json(
            "/v1/tenants/x/tokens",
            json!({"scopes": ["*"], "name": "ci-deploy"}),
        )
        .expect_status(201);
    assert_eq!(lasting["name"], "ci-deploy");
    assert_eq!(lasting["expires_at"], Value::Null);
    let brief = admin
        .post_json(
            "/v1/tenants/x/tokens",
            json!({"scopes": ["*"], "expires_in_s": 1}),
        )
        .expect_status(201);
    let created = brief["created_at"].as_u64().unwrap();
    assert_eq!(brief["expires_at"].as_u64(), Some(created + 1));
    let listed = admin.get("/v1/tenants/x/tokens").ok();
    let names: Vec<&Value> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["name"])
        .collect();
    assert!(names.contains(&&json!("ci-deploy")), "{listed}");
    // Once past expires_at the token is refused like an unknown one; the
    // lasting token still works.
    let brief_api = perch.api(brief["token"].as_str().unwrap());
    perch_tests::eventually("the short token expires", || {
        brief_api.get("/v1/tenants/x/functions").status == 401
    });
    perch
        .api(lasting["token"].as_str().unwrap())
        .get("/v1/tenants/x/functions")
        .ok();
}

#[test]
fn quotas_bound_functions_and_routes_with_config_defaults_and_tenant_overrides() {
    let perch = Perch::start_with("[quotas]\nfunctions = 2\n");
    let admin = perch.admin();
    admin.put_json("/v1/tenants/q", None).ok();
    let wasm = std::fs::read(guests::HELLO).unwrap();
    for f in ["f1", "f2"] {
        admin.upload("q", f, &wasm).expect_status(201);
    }
    let body = admin.upload("q", "f3", &wasm).expect_status(403);
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert_eq!(body["error"]["quota"], "functions");
    assert_eq!(body["error"]["limit"], 2);
    admin
        .get("/v1/tenants/q/functions/f3")
        .expect_error(404, "not_found");
    // A new version of an existing function is not a new function.
    admin.upload("q", "f1", &wasm).expect_status(201);

    // The tenant's own quota replaces the default; null resets it; keys
    // left out are kept.
    let t = admin
        .put_json(
            "/v1/tenants/q",
            Some(json!({"quotas": {"functions": 3, "routes": 1}})),
        )
        .ok();
    assert_eq!(t["quotas"], json!({"functions": 3, "routes": 1}));
    admin.upload("q", "f3", &wasm).expect_status(201);
    admin
        .put_json(
            "/v1/tenants/q/routes/one.q.test",
            Some(json!({"function": "f1"})),
        )
        .ok();
    // Re-binding the same pattern is not a new route.
    admin
        .put_json(
            "/v1/tenants/q/routes/one.q.test",
            Some(json!({"function": "f2"})),
        )
        .ok();
    let body = admin
        .put_json(
            "/v1/tenants/q/routes/two.q.test",
            Some(json!({"function": "f1"})),
        )
        .expect_status(403);
    assert_eq!(body["error"]["quota"], "routes");
    let t = admin
        .put_json(
            "/v1/tenants/q",
            Some(json!({"quotas": {"functions": null}})),
        )
        .ok();
    assert_eq!(t["quotas"], json!({"routes": 1}));
    // Over the default again (3 held, 2 allowed): nothing is taken away,
    // nothing new is added.
    admin.upload("q", "f4", &wasm).expect_status(403);
    assert_eq!(perch.get("one.q.test", "/").status(), 200);
    // Bad quota bodies.
    for bad in [
        json!({"kv_gigabytes": 10}),
        json!({"functions": -1}),
        json!({"routes": "5"}),
    ] {
        admin
            .put_json("/v1/tenants/q", Some(json!({"quotas": bad})))
            .expect_error(400, "invalid_quota");
    }
    // The tenants listing shows them too.
    let list = admin.get("/v1/tenants").ok();
    assert_eq!(list["tenants"][0]["quotas"], json!({"routes": 1}));
}

#[test]
fn admin_changes_are_audited_and_readable_by_admin_and_tenant() {
    let perch = Perch::start();
    let admin = perch.admin();
    admin.put_json("/v1/tenants/au", None).expect_status(201);
    admin.put_json("/v1/tenants/other", None).expect_status(201);
    let token = admin
        .post_json("/v1/tenants/au/tokens", json!({"scopes": ["functions"]}))
        .expect_status(201);
    let tenant = perch.api(token["token"].as_str().unwrap());
    let wasm = std::fs::read(guests::HELLO).unwrap();
    tenant.upload("au", "web", &wasm).expect_status(201);
    // A refused change is audited with its status; reads and KV data are not.
    tenant
        .put_json(
            "/v1/tenants/au/functions/web/deployment",
            Some(json!({"versions": []})),
        )
        .expect_error(400, "invalid_deployment");
    tenant.get("/v1/tenants/au/functions").ok();
    admin.delete("/v1/tenants/other").expect_status(204);

    let all = admin.get("/v1/audit").ok();
    let rows: Vec<(String, String, String, u64)> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["tenant"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
                e["token_id"].as_str().unwrap().to_string(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let tid = token["id"].as_str().unwrap().to_string();
    assert_eq!(
        rows,
        [
            ("other".into(), "tenant.delete".into(), "admin".into(), 204),
            ("au".into(), "deployment.put".into(), tid.clone(), 400),
            ("au".into(), "function.upload".into(), tid.clone(), 201),
            ("au".into(), "token.create".into(), "admin".into(), 201),
            ("other".into(), "tenant.put".into(), "admin".into(), 201),
            ("au".into(), "tenant.put".into(), "admin".into(), 201),
        ]
    );
    // The tenant reads its own (any scope), newest first, paged.
    let own = tenant.get("/v1/tenants/au/audit?limit=2").ok();
    let actions: Vec<&str> = own["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["deployment.put", "function.upload"]);
    let cursor = own["cursor"].as_str().unwrap();
    let next = tenant
        .get(&format!("/v1/tenants/au/audit?limit=2&cursor={cursor}"))
        .ok();
    assert_eq!(next["entries"][0]["action"], "token.create");
    // Only the admin reads everyone's; a tenant never reads another's.
    tenant.get("/v1/audit").expect_error(403, "forbidden");
    tenant
        .get("/v1/tenants/other/audit")
        .expect_error(403, "forbidden");
    let filtered = admin.get("/v1/audit?tenant=other").ok();
    assert_eq!(filtered["entries"].as_array().unwrap().len(), 2);
    // Kept across a restart.
    let mut perch = perch;
    perch.sigterm();
    perch.restart();
    let again = perch.admin().get("/v1/audit").ok();
    assert_eq!(again["entries"].as_array().unwrap().len(), 6);
}

#[test]
fn a_request_rate_quota_answers_429_rate_limited_past_it() {
    let perch = Perch::start();
    let admin = perch.admin();
    perch.deploy("slow", "hello", guests::HELLO, "hello.slow.test");
    perch.deploy("free", "hello", guests::HELLO, "hello.free.test");
    admin
        .put_json(
            "/v1/tenants/slow",
            Some(json!({"quotas": {"requests_per_second": 50}})),
        )
        .ok();
    // 50 a second (a bucket of 50): of a burst of 500 from 10 clients, at
    // most 50 + 50 a second they took get through; the others are refused.
    let started = std::time::Instant::now();
    let answers: Vec<(u16, bool, String)> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..10)
            .map(|_| {
                s.spawn(|| {
                    (0..50)
                        .map(|_| {
                            let r = perch.get("hello.slow.test", "/");
                            let retry = r.headers().contains_key("retry-after");
                            let status = r.status().as_u16();
                            (status, retry, r.text().unwrap_or_default())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    let took = started.elapsed().as_secs_f64();
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    assert!(
        ok >= 50 && ok as f64 <= 50.0 + 50.0 * took.ceil(),
        "{ok} in {took} s"
    );
    let refused: Vec<&(u16, bool, String)> = answers.iter().filter(|a| a.0 != 200).collect();
    assert!(!refused.is_empty(), "none of 500 refused in {took} s");
    for (status, retry, body) in refused {
        assert_eq!(*status, 429);
        assert!(*retry);
        assert!(body.contains("rate_limited"), "{body}");
    }
    // Another tenant is not limited; the bucket refills.
    for _ in 0..10 {
        assert_eq!(perch.get("hello.free.test", "/").status(), 200);
    }
    perch_tests::eventually("the bucket refills", || {
        perch.get("hello.slow.test", "/").status() == 200
    });
    // Reset to the default (none): no limit.
    admin
        .put_json(
            "/v1/tenants/slow",
            Some(json!({"quotas": {"requests_per_second": null}})),
        )
        .ok();
    for _ in 0..10 {
        assert_eq!(perch.get("hello.slow.test", "/").status(), 200);
    }
}
