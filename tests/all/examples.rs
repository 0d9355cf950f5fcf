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
    api.put_settings(
        "a",
        "counter",
        serde_json::json!({"vars": {"GREETING": "Welcome"}, "kv": {"cache": "sessions"}}),
    );
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

/// Sends `method path` with an optional JSON body; status, headers, JSON.
fn call_json(
    perch: &Perch,
    method: reqwest::Method,
    host: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let mut req = perch.request(method, host, path);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().unwrap();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, headers, json)
}

#[test]
fn example_json_api() {
    use reqwest::Method;
    let perch = Perch::start();
    let token = perch.deploy("a", "todos", guests::JSON_API, "todos.a.test");
    let host = "todos.a.test";

    let (status, headers, todo) = call_json(
        &perch,
        Method::POST,
        host,
        "/todos",
        Some(r#"{"title":"  buy milk  "}"#),
    );
    assert_eq!(status, 201, "{todo}");
    assert_eq!(headers["location"], "/todos/1");
    assert_eq!(
        todo,
        serde_json::json!({"id": 1, "title": "buy milk", "done": false})
    );

    // Validation errors name the problem; nothing is stored.
    for (body, code) in [
        ("{not json", "invalid_json"),
        (r#"{"title": 5}"#, "invalid_json"),
        (r#"{"title":"x","colour":"red"}"#, "invalid_json"),
        (r#"{"title":"   "}"#, "validation_failed"),
    ] {
        let (status, _, err) = call_json(&perch, Method::POST, host, "/todos", Some(body));
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["error"]["code"], code, "{body}: {err}");
    }
    let long = format!(r#"{{"title":"{}"}}"#, "x".repeat(201));
    let (status, _, err) = call_json(&perch, Method::POST, host, "/todos", Some(&long));
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("validation_failed"))
    );

    let (status, _, got) = call_json(&perch, Method::GET, host, "/todos/1", None);
    assert_eq!((status, got["title"].as_str()), (200, Some("buy milk")));
    let (status, _, err) = call_json(&perch, Method::GET, host, "/todos/99", None);
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _, err) = call_json(&perch, Method::GET, host, "/todos/abc", None);
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("invalid_id"))
    );

    let (status, _, patched) = call_json(
        &perch,
        Method::PATCH,
        host,
        "/todos/1",
        Some(r#"{"done":true}"#),
    );
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["done"], true);
    assert_eq!(patched["title"], "buy milk");
    assert_eq!(
        call_json(&perch, Method::GET, host, "/todos/1", None).2["done"],
        true
    );

    // Method mismatch on a known path: 405 with Allow; unknown path: 404.
    let (status, headers, err) = call_json(&perch, Method::PUT, host, "/todos/1", None);
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let allow = headers["allow"].to_str().unwrap();
    for m in ["GET", "PATCH", "DELETE"] {
        assert!(allow.contains(m), "{allow}");
    }
    assert_eq!(call_json(&perch, Method::GET, host, "/nope", None).0, 404);

    // Paging walks every to-do once, in id order.
    for i in 2..=25 {
        let body = format!(r#"{{"title":"task {i}"}}"#);
        assert_eq!(
            call_json(&perch, Method::POST, host, "/todos", Some(&body)).0,
            201
        );
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, _, page) = call_json(
            &perch,
            Method::GET,
            host,
            &format!("/todos?limit=10&cursor={cursor}"),
            None,
        );
        assert_eq!(status, 200, "{page}");
        let todos = page["todos"].as_array().unwrap();
        assert!(todos.len() <= 10);
        seen.extend(todos.iter().map(|t| t["id"].as_u64().unwrap()));
        match page["cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, (1..=25).collect::<Vec<u64>>());
    let (status, _, err) = call_json(&perch, Method::GET, host, "/todos?limit=0", None);
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("invalid_limit"))
    );

    let (status, _, _) = call_json(&perch, Method::DELETE, host, "/todos/1", None);
    assert_eq!(status, 204);
    assert_eq!(
        call_json(&perch, Method::DELETE, host, "/todos/1", None).0,
        404
    );
    assert_eq!(
        call_json(&perch, Method::GET, host, "/todos/1", None).0,
        404
    );

    // The data is the tenant's KV, visible through the admin API.
    let api = perch.api(&token);
    let seq = api
        .client
        .get(format!(
            "{}/v1/tenants/a/kv/default/values/todo-seq",
            api.base
        ))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(seq, "25");

    // `perch_sdk::info!` lines reach the server log, labelled.
    let logs = perch.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("[info] created to-do 25"))
        .unwrap_or_else(|| panic!("no guest log line in:\n{logs}"));
    assert!(
        line.contains("perch_guest") && line.contains("todos"),
        "{line}"
    );
}

#[test]
fn example_ab_test() {
    let perch = Perch::start();
    let token = perch.deploy("a", "ab", guests::AB_TEST, "ab.a.test");
    let host = "ab.a.test";
    let visit = |cookie: Option<&str>, path: &str| {
        let mut req = perch.request(reqwest::Method::GET, host, path);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let resp = req.send().unwrap();
        assert_eq!(resp.status(), 200);
        let variant = resp.headers()["x-variant"].to_str().unwrap().to_string();
        let set = resp
            .headers()
            .get("set-cookie")
            .map(|v| v.to_str().unwrap().to_string());
        let body = resp.text().unwrap();
        assert!(body.contains(&format!("variant {variant}")), "{body}");
        (variant, set)
    };

    // A first visit draws a variant and makes it sticky.
    let (first, set) = visit(None, "/");
    let set = set.expect("a first visit sets the cookie");
    assert!(set.starts_with(&format!("perch_ab={first};")), "{set}");
    assert!(
        set.contains("HttpOnly") && set.contains("Max-Age=2592000"),
        "{set}"
    );
    let cookie = format!("theme=dark; perch_ab={first}");
    for _ in 0..5 {
        assert_eq!(visit(Some(&cookie), "/"), (first.clone(), None));
    }
    // A forged value is redrawn; `force` pins and resets.
    let (_, set) = visit(Some("perch_ab=zzz"), "/");
    assert!(set.is_some());
    let (v, set) = visit(Some("perch_ab=a"), "/?force=b");
    assert_eq!(v, "b");
    assert!(set.unwrap().starts_with("perch_ab=b;"));

    // The split follows B_PERCENT.
    let api = perch.api(&token);
    let settings = |percent: &str| {
        api.put_settings(
            "a",
            "ab",
            serde_json::json!({"vars": {"B_PERCENT": percent}}),
        );
    };
    settings("100");
    for _ in 0..10 {
        assert_eq!(visit(None, "/").0, "b");
    }
    settings("0");
    for _ in 0..10 {
        assert_eq!(visit(None, "/").0, "a");
    }
    settings("50");
    let drawn: std::collections::HashSet<String> = (0..40).map(|_| visit(None, "/").0).collect();
    assert_eq!(drawn.len(), 2, "40 fair draws gave only {drawn:?}");
    settings("150");
    assert_eq!(perch.get(host, "/").status(), 500);

    // Every assignment and view was counted.
    let stats: serde_json::Value = perch.get(host, "/stats").json().unwrap();
    let total =
        |field: &str| stats["a"][field].as_u64().unwrap() + stats["b"][field].as_u64().unwrap();
    assert_eq!(total("assigned"), 1 + 1 + 1 + 10 + 10 + 40, "{stats}");
    assert_eq!(total("views"), 1 + 5 + 1 + 1 + 10 + 10 + 40, "{stats}");
}

#[test]
fn example_streaming() {
    let perch = Perch::start();
    let token = perch.deploy("a", "stream", guests::STREAMING, "stream.a.test");
    let host = "stream.a.test";
    // 8 MiB of memory for the whole instance: the bodies below only pass if
    // they stream.
    perch.api(&token).put_settings(
        "a",
        "stream",
        serde_json::json!({"limits": {"memory_mb": 8}}),
    );

    let input: Vec<u8> = (0..15usize << 20)
        .map(|i| b"abcdefghij klmnop\n"[i % 18])
        .collect();
    let resp = perch
        .request(reqwest::Method::POST, host, "/upper")
        .header("content-type", "text/plain")
        .body(input.clone())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    let out = resp.bytes().unwrap();
    assert_eq!(out.len(), input.len());
    assert!(
        out == input.to_ascii_uppercase(),
        "upper-cased body differs"
    );

    let resp = perch
        .request(reqwest::Method::POST, host, "/digest")
        .body(input.clone())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let digest: serde_json::Value = resp.json().unwrap();
    let expected: String = ring::digest::digest(&ring::digest::SHA256, &input)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        digest,
        serde_json::json!({"bytes": input.len(), "sha256": expected})
    );

    let n = 64usize << 20;
    let resp = perch.get(host, &format!("/generate?bytes={n}"));
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], n.to_string().as_str());
    let out = resp.bytes().unwrap();
    assert_eq!(out.len(), n);
    assert!(out.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));

    let resp = perch.get(host, "/generate?bytes=lots");
    assert_eq!(resp.status(), 400);
    assert_eq!(perch.get(host, "/elsewhere").status(), 404);
}

/// base64url without padding.
fn b64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| acc << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn auth_token(secret: &[u8], sub: &str, exp: u64) -> String {
    let payload = b64url(
        serde_json::json!({"sub": sub, "exp": exp})
            .to_string()
            .as_bytes(),
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let sig = ring::hmac::sign(&key, payload.as_bytes());
    format!("{payload}.{}", b64url(sig.as_ref()))
}

/// An origin on 127.0.0.1 that answers each request with its own head and
/// body, and counts the requests it saw.
fn recording_origin() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut head = String::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let answer = format!("{head}\n{}", String::from_utf8_lossy(&body));
            let mut conn = conn;
            let _ = write!(
                conn,
                "HTTP/1.1 201 Created\r\nContent-Length: {}\r\nX-Origin: yes\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (port, hits)
}

#[test]
fn example_edge_auth() {
    use std::sync::atomic::Ordering;
    let (port, hits) = recording_origin();
    let perch = Perch::start_with(&format!("[egress]\nallow = [\"127.0.0.1:{port}\"]\n"));
    let token = perch.deploy("a", "auth", guests::EDGE_AUTH, "auth.a.test");
    perch.api(&token).put_settings(
        "a",
        "auth",
        serde_json::json!({
            "vars": {"ORIGIN": format!("http://127.0.0.1:{port}")},
            "secrets": {"AUTH_SECRET": "edge-secret"},
        }),
    );
    let host = "auth.a.test";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good = auth_token(b"edge-secret", "alice", now + 600);

    // Refusals never reach the origin.
    let refused = [
        None,
        Some("Bearer".to_string()),
        Some("Bearer not-a-token".to_string()),
        Some(format!(
            "Bearer {}",
            auth_token(b"wrong-secret", "alice", now + 600)
        )),
        Some(format!(
            "Bearer {}",
            auth_token(b"edge-secret", "alice", now - 1)
        )),
        Some(format!("Bearer {}x", good)),
    ];
    for auth in refused {
        let mut req = perch.request(reqwest::Method::GET, host, "/private");
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().unwrap();
        assert_eq!(resp.status(), 401, "{auth:?}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer realm=\"perch\"");
        let body: serde_json::Value = resp.json().unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);

    // A valid bearer token forwards method, path, query and body, with the
    // credentials swapped for the subject.
    let resp = perch
        .request(reqwest::Method::POST, host, "/orders?id=7")
        .header("authorization", format!("Bearer {good}"))
        .header("x-auth-subject", "mallory")
        .header("x-request-id", "r-1")
        .body("order body")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-origin"], "yes");
    let seen = resp.text().unwrap().to_ascii_lowercase();
    assert!(seen.starts_with("post /orders?id=7 http/1.1"), "{seen}");
    assert!(seen.contains("x-auth-subject: alice"), "{seen}");
    assert!(!seen.contains("mallory"), "{seen}");
    assert!(!seen.contains("authorization"), "{seen}");
    assert!(seen.contains("x-forwarded-host: auth.a.test"), "{seen}");
    assert!(seen.contains("x-request-id: r-1"), "{seen}");
    assert!(seen.ends_with("\norder body"), "{seen}");

    // The cookie form works too; other cookies pass, the token does not.
    let resp = perch
        .request(reqwest::Method::GET, host, "/")
        .header("cookie", format!("theme=dark; perch_auth={good}"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    let seen = resp.text().unwrap().to_ascii_lowercase();
    assert!(seen.contains("cookie: theme=dark\r\n"), "{seen}");
    assert!(!seen.contains("perch_auth"), "{seen}");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

fn test_image(w: u32, h: u32, format: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// CRC-32 (IEEE), for patching a PNG header.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                crc >> 1 ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn example_image_resize() {
    // The production CPU default (50 ms); the function raises its own.
    let perch = Perch::start_with("[limits]\ncpu_ms = 50\n");
    let token = perch.deploy("a", "resize", guests::IMAGE_RESIZE, "img.a.test");
    perch.api(&token).put_settings(
        "a",
        "resize",
        serde_json::json!({"limits": {"cpu_ms": 5000}}),
    );
    let host = "img.a.test";
    let post = |path: &str, body: Vec<u8>| {
        perch
            .request(reqwest::Method::POST, host, path)
            .body(body)
            .send()
            .unwrap()
    };
    let png = test_image(640, 480, image::ImageFormat::Png);
    let jpeg = test_image(640, 480, image::ImageFormat::Jpeg);

    for (input, path, format, size) in [
        (&png, "/?w=160", image::ImageFormat::Png, (160, 120)),
        (
            &png,
            "/?w=100&h=100&format=jpeg&quality=90",
            image::ImageFormat::Jpeg,
            (100, 75),
        ),
        (&jpeg, "/?h=48", image::ImageFormat::Jpeg, (64, 48)),
        (
            &jpeg,
            "/?w=100&h=100&fit=fill&format=png",
            image::ImageFormat::Png,
            (100, 100),
        ),
    ] {
        let resp = post(path, input.clone());
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["x-original-size"], "640x480");
        let mime = if format == image::ImageFormat::Png {
            "image/png"
        } else {
            "image/jpeg"
        };
        assert_eq!(resp.headers()["content-type"], mime, "{path}");
        let out = image::load_from_memory_with_format(&resp.bytes().unwrap(), format).unwrap();
        assert_eq!((out.width(), out.height()), size, "{path}");
    }

    let code = |resp: reqwest::blocking::Response| {
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().unwrap();
        (
            status,
            body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    assert_eq!(
        code(post("/?w=10", b"not an image".to_vec())),
        (415, "unsupported_image".into())
    );
    assert_eq!(code(post("/", png.clone())), (400, "bad_request".into()));
    assert_eq!(
        code(post("/?w=0", png.clone())),
        (400, "bad_request".into())
    );
    assert_eq!(
        code(post("/?w=5000", png.clone())),
        (400, "bad_request".into())
    );
    assert_eq!(
        code(post("/?w=10&format=gif", png.clone())),
        (400, "bad_request".into())
    );
    // A header claiming 8000x8000 pixels is refused before decoding.
    let mut bomb = png.clone();
    bomb[16..20].copy_from_slice(&8000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&8000u32.to_be_bytes());
    let crc = crc32(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(code(post("/?w=10", bomb)), (400, "image_too_large".into()));
    assert_eq!(perch.get(host, "/").status(), 200);
}

/// `perch new` → one build command → `perch deploy` → an answering function.
#[test]
fn scaffolded_project_builds_deploys_and_answers() {
    use std::process::Command;
    let tmp = tempfile::tempdir().unwrap();
    let perch_new = || {
        Command::new(perch_tests::perch_bin())
            .args(["new", "demo-fn"])
            .current_dir(tmp.path())
            .output()
            .unwrap()
    };
    let out = perch_new();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let project = tmp.path().join("demo-fn");
    // Refuses to overwrite.
    let again = perch_new();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    // The one build command from the project's README. The shared target
    // folder only saves recompiling the SDK's dependencies.
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guests");
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build.args(["build", "--release"]).current_dir(&project);
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_") && k != "CARGO_HOME" || k == "RUSTFLAGS" || k == "RUSTC_WRAPPER"
        {
            build.env_remove(k);
        }
    }
    build.env("CARGO_TARGET_DIR", &target);
    let status = build.status().unwrap();
    assert!(status.success(), "building the scaffolded project failed");
    let wasm = target.join("wasm32-wasip2/release/demo_fn.wasm");

    let perch = Perch::start();
    let admin = perch.admin();
    admin.put_json("/v1/tenants/acme", None).ok();
    let out = Command::new(perch_tests::perch_bin())
        .args(["deploy"])
        .arg(&wasm)
        .args([
            "--tenant",
            "acme",
            "--name",
            "demo-fn",
            "--route",
            "demo.acme.test",
        ])
        .env("PERCH_URL", &perch.admin_url)
        .env("PERCH_TOKEN", perch_tests::ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        perch.get("demo.acme.test", "/").text().unwrap(),
        "Hello from Perch!\n"
    );
    let resp = perch.get("demo.acme.test", "/hello/Ada");
    assert_eq!(resp.status(), 200);
    let json: serde_json::Value = resp.json().unwrap();
    assert_eq!(json["message"], "Hello, Ada!");
    assert_eq!(perch.get("demo.acme.test", "/nowhere").status(), 404);
}

/// A signed URL for `container-front`: `path?exp=…&sig=…`.
fn signed_url(secret: &[u8], path: &str, exp: u64) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let sig = ring::hmac::sign(&key, format!("{path}?exp={exp}").as_bytes());
    format!("{path}?exp={exp}&sig={}", b64url(sig.as_ref()))
}

#[test]
fn example_container_front() {
    let Some(podman) = perch_tests::Podman::get() else {
        return;
    };
    let node = format!("front-{}", std::process::id());
    let perch = Perch::start_with(&format!(
        "[node]\nname = \"{node}\"\n[containers]\nengine = \"{}\"\n",
        podman.url
    ));
    let admin = perch.admin();
    // Tenant a: a container `app` (busybox httpd, a CGI that shows what it
    // got) behind the front on a.test.
    let show = b"#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho \"uri=$REQUEST_URI verified=$HTTP_X_FRONT_VERIFIED cookie=[$HTTP_COOKIE] auth=[$HTTP_AUTHORIZATION]\"\n";
    let archive = perch_tests::busybox_image(
        "localhost/front-app:1",
        &[("www/cgi-bin/show", show)],
        &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
    );
    admin.put_json("/v1/tenants/a", None).ok();
    admin
        .call(
            reqwest::Method::PUT,
            "/v1/tenants/a/images",
            Some((archive.clone(), "application/x-tar")),
        )
        .expect_status(201);
    let image = perch_tests::image_id(&archive);
    admin
        .call(
            reqwest::Method::PUT,
            "/v1/tenants/a/functions/app",
            Some((
                serde_json::json!({"container": {"image": image, "port": 8080}})
                    .to_string()
                    .into_bytes(),
                "application/json",
            )),
        )
        .expect_status(201);
    let token = perch.deploy("a", "front", guests::CONTAINER_FRONT, "front.a.test");
    perch.api(&token).put_settings(
        "a",
        "front",
        serde_json::json!({"vars": {"SERVICE": "app"}, "secrets": {"URL_SECRET": "s3cret"}}),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Answered by the front alone: no container is started for it.
    assert_eq!(
        perch.get("front.a.test", "/healthz").text().unwrap(),
        "ok\n"
    );
    let mine = format!("perch.node={node}");
    assert!(podman.containers(&[&mine]).is_empty());
    // Unsigned, badly signed and expired URLs never reach the container.
    for path in [
        "/cgi-bin/show".to_string(),
        signed_url(b"wrong", "/cgi-bin/show", now + 60),
        signed_url(b"s3cret", "/cgi-bin/show", now - 1),
    ] {
        let resp = perch.get("front.a.test", &path);
        assert_eq!(resp.status(), 403, "{path}");
    }
    assert!(podman.containers(&[&mine]).is_empty());
    // A signed URL: the container starts and sees the rewritten request.
    let resp = perch
        .request(
            reqwest::Method::GET,
            "front.a.test",
            &signed_url(b"s3cret", "/cgi-bin/show", now + 60),
        )
        .header("cookie", "session=abc")
        .header("authorization", "Bearer xyz")
        .header("x-front-verified", "forged")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().unwrap().trim(),
        "uri=/cgi-bin/show verified=1 cookie=[] auth=[]"
    );
    assert_eq!(podman.containers(&[&mine, "perch.function=app"]).len(), 1);

    // Tenant b runs the same front: a's container is not b's to reach, by
    // name or by its port on 127.0.0.1.
    let token_b = perch.deploy("b", "front", guests::CONTAINER_FRONT, "front.b.test");
    let url = signed_url(b"b-secret", "/cgi-bin/show", now + 60);
    perch.api(&token_b).put_settings(
        "b",
        "front",
        serde_json::json!({"vars": {"SERVICE": "app"}, "secrets": {"URL_SECRET": "b-secret"}}),
    );
    assert_eq!(perch.get("front.b.test", &url).status(), 502);
    let port = podman
        .cli(&[
            "ps",
            "--filter",
            &format!("label={mine}"),
            "--format",
            "{{.Labels}}",
        ])
        .unwrap();
    let port: String = port
        .split("perch.port:")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    perch.api(&token_b).put_settings(
        "b",
        "front",
        serde_json::json!({
            "vars": {"ORIGIN": format!("http://127.0.0.1:{port}")},
            "secrets": {"URL_SECRET": "b-secret"},
        }),
    );
    assert_eq!(perch.get("front.b.test", &url).status(), 502);
    perch.wait_for_log("outbound request refused", 1);
    // Tenant a still gets through.
    let again = perch.get(
        "front.a.test",
        &signed_url(b"s3cret", "/cgi-bin/show", now + 60),
    );
    assert_eq!(again.status(), 200);
}
