//! One end-to-end test per example in `examples/` (the build fails when an
//! example has none).
use perch_tests::{Perch, guests};

#[test]
fn example_hello() {
    let perch = Perch::start();
    perch.deploy("acme", "hello", guests::HELLO, "hello.acme.test");
    let resp = perch.get("hello.acme.test", "/");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().unwrap(), "Hello, world!\n");
    let resp = perch.get("hello.acme.test", "/?name=Perch");
    assert_eq!(resp.text().unwrap(), "Hello, Perch!\n");
}

#[test]
fn example_kv_counter() {
    // Uses only wasi:keyvalue + wasi:config (what `wasmtime serve -S keyvalue
    // -S config` offers), so this also shows such components run unchanged.
    let perch = Perch::start();
    let token_a = perch.deploy("a", "counter", guests::KV_COUNTER, "count.a.test");
    perch.deploy("b", "counter", guests::KV_COUNTER, "count.b.test");
    for n in 1..=3 {
        assert_eq!(
            perch.get("count.a.test", "/").text().unwrap(),
            format!("Hello! You are visitor {n}.\n")
        );
    }
    // Tenant B's `default` is its own.
    assert_eq!(
        perch.get("count.b.test", "/").text().unwrap(),
        "Hello! You are visitor 1.\n"
    );
    // Stored as decimal text, visible through the admin API.
    let api = perch.api(&token_a);
    let v = api
        .client
        .get(format!("{}/v1/tenants/a/kv/default/values/hits", api.base))
        .bearer_auth(&token_a)
        .send()
        .unwrap();
    assert_eq!(v.text().unwrap(), "3");

    // Unbound identifiers are refused; binding one in settings opens it.
    let resp = perch.get("count.a.test", "/?store=cache");
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.text().unwrap(), "no-such-store: cache\n");
    api.put_json(
        "/v1/tenants/a/functions/counter/settings",
        Some(serde_json::json!({"vars": {"GREETING": "Welcome"}, "kv": {"cache": "sessions"}})),
    )
    .expect_status(201);
    assert_eq!(
        perch.get("count.a.test", "/?store=cache").text().unwrap(),
        "Welcome! You are visitor 1.\n"
    );
    assert_eq!(
        perch.get("count.a.test", "/").text().unwrap(),
        "Welcome! You are visitor 4.\n"
    );
    let ns = api.get("/v1/tenants/a/kv").ok();
    assert_eq!(
        ns,
        serde_json::json!({"namespaces": ["default", "sessions"]})
    );
    // B cannot reach A's namespace by naming it.
    assert_eq!(perch.get("count.b.test", "/?store=sessions").status(), 404);
    let reset = perch
        .request(reqwest::Method::DELETE, "count.a.test", "/")
        .send()
        .unwrap();
    assert_eq!(reset.text().unwrap(), "reset\n");
    assert_eq!(
        perch.get("count.a.test", "/").text().unwrap(),
        "Welcome! You are visitor 1.\n"
    );
}
