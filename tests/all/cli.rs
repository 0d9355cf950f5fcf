//! The `perch` client subcommands against a real server.
use std::process::{Command, Output};

use perch_tests::{ADMIN_TOKEN, Perch, guests, perch_bin};

fn perch_cli(perch: &Perch, token: &str, args: &[&str]) -> Output {
    Command::new(perch_bin())
        .args(args)
        .env("PERCH_URL", &perch.admin_url)
        .env("PERCH_TOKEN", token)
        .output()
        .expect("run perch")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn deploy_and_manage_with_the_cli() {
    let perch = Perch::start();
    let out = ok(perch_cli(
        &perch,
        ADMIN_TOKEN,
        &["tenants", "create", "acme", "--domain", "*.acme.test"],
    ));
    assert!(out.contains("\"acme\""), "{out}");
    let out = ok(perch_cli(
        &perch,
        ADMIN_TOKEN,
        &[
            "tokens",
            "--tenant",
            "acme",
            "create",
            "--scope",
            "functions",
            "--scope",
            "routes",
        ],
    ));
    let token: serde_json::Value = serde_json::from_str(&out).unwrap();
    let token = token["token"].as_str().unwrap().to_string();

    let out = ok(perch_cli(
        &perch,
        &token,
        &[
            "deploy",
            guests::HELLO,
            "--tenant",
            "acme",
            "--name",
            "hello",
            "--route",
            "hello.acme.test",
        ],
    ));
    assert!(out.contains("deployed acme/hello version 1"), "{out}");
    assert_eq!(
        perch.get("hello.acme.test", "/").text().unwrap(),
        "Hello, world!\n"
    );

    let out = ok(perch_cli(
        &perch,
        &token,
        &["routes", "--tenant", "acme", "list"],
    ));
    assert!(out.contains("hello.acme.test"), "{out}");
    let out = ok(perch_cli(
        &perch,
        &token,
        &["functions", "--tenant", "acme", "show", "hello"],
    ));
    assert!(out.contains("\"active_version\": 1"), "{out}");
    let out = ok(perch_cli(
        &perch,
        ADMIN_TOKEN,
        &["tokens", "--tenant", "acme", "list"],
    ));
    assert!(!out.contains(&token), "token secret listed");
    assert!(ok(perch_cli(&perch, ADMIN_TOKEN, &["tenants", "list"])).contains("*.acme.test"));
    ok(perch_cli(
        &perch,
        &token,
        &["routes", "--tenant", "acme", "delete", "hello.acme.test"],
    ));
    assert_eq!(perch.get("hello.acme.test", "/").status(), 404);

    // Failures: non-zero exit and a one-line reason.
    let out = perch_cli(
        &perch,
        &token,
        &["routes", "--tenant", "acme", "set", "x.other.test", "hello"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("403 host_not_allowed"), "{err}");
    let out = perch_cli(&perch, "wrong", &["tenants", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401 unauthorized"));
    let out = perch_cli(
        &perch,
        &token,
        &[
            "deploy",
            "/nonexistent.wasm",
            "--tenant",
            "acme",
            "--name",
            "x",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent.wasm"));
    let out = Command::new(perch_bin())
        .args(["tenants", "list"])
        .env("PERCH_URL", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}

#[test]
fn generated_admin_token_is_private_and_never_logged() {
    use std::io::{BufRead, Read};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut child = perch_tests::serve_command(dir.path())
        .env_remove("PERCH_ADMIN_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Up once it prints where it listens and its admin API answers (so its
    // SIGTERM handler is in place); the token was written before either.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    while !printed.contains("perch listening") {
        if stdout.read_line(&mut printed).unwrap() == 0 {
            panic!("perch exited before listening: {printed}");
        }
    }
    let admin = printed
        .split_whitespace()
        .find_map(|w| w.strip_prefix("admin="))
        .unwrap()
        .to_string();
    let health = perch_tests::http()
        .get(format!("{admin}/healthz"))
        .send()
        .unwrap();
    assert_eq!(health.status(), 200);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    stdout.read_to_string(&mut printed).unwrap();
    let out = child.wait_with_output().unwrap();
    let path = dir.path().join("admin.token");
    let token = std::fs::read_to_string(&path).unwrap();
    let token = token.trim();
    assert!(token.len() > 40);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let stdout = printed;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("perch listening data=http://127.0.0.1:"),
        "{stdout}"
    );
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(
        !stdout.contains(token) && !stderr.contains(token),
        "admin token printed"
    );
}

#[test]
fn bad_config_exits_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("perch.toml");
    std::fs::write(&cfg, "no_such_setting = 1\n").unwrap();
    let out = Command::new(perch_bin())
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no_such_setting"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
}

#[test]
fn kv_and_settings_with_the_cli() {
    let perch = Perch::start();
    ok(perch_cli(
        &perch,
        ADMIN_TOKEN,
        &["tenants", "create", "acme"],
    ));
    let t = ADMIN_TOKEN;
    ok(perch_cli(
        &perch,
        t,
        &["kv", "--tenant", "acme", "create", "cache"],
    ));
    assert!(
        ok(perch_cli(
            &perch,
            t,
            &["kv", "--tenant", "acme", "namespaces"]
        ))
        .contains("cache")
    );
    ok(perch_cli(
        &perch,
        t,
        &[
            "kv",
            "--tenant",
            "acme",
            "put",
            "cache",
            "users/a b",
            "hello",
            "--metadata",
            "{\"v\":1}",
            "--ttl",
            "60",
        ],
    ));
    let out = perch_cli(
        &perch,
        t,
        &["kv", "--tenant", "acme", "get", "cache", "users/a b"],
    );
    assert_eq!(
        ok(Output {
            stderr: Vec::new(),
            ..out.clone()
        }),
        "hello"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("metadata: {\"v\":1}"));
    let listed = ok(perch_cli(
        &perch,
        t,
        &[
            "kv", "--tenant", "acme", "list", "cache", "--prefix", "users/",
        ],
    ));
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["keys"][0]["name"], "users/a b");
    assert!(listed["keys"][0]["expires_at"].is_u64());
    ok(perch_cli(
        &perch,
        t,
        &["kv", "--tenant", "acme", "delete", "cache", "users/a b"],
    ));
    let out = perch_cli(
        &perch,
        t,
        &["kv", "--tenant", "acme", "get", "cache", "users/a b"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404 not_found"));

    ok(perch_cli(
        &perch,
        t,
        &[
            "deploy",
            guests::FAULTY,
            "--tenant",
            "acme",
            "--name",
            "env",
            "--route",
            "env.acme.test",
        ],
    ));
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("settings.json");
    std::fs::write(&settings, r#"{"vars":{"COLOR":"green"}}"#).unwrap();
    let out = ok(perch_cli(
        &perch,
        t,
        &[
            "functions",
            "--tenant",
            "acme",
            "settings",
            "env",
            settings.to_str().unwrap(),
        ],
    ));
    assert!(out.contains("version 2"), "{out}");
    assert_eq!(
        perch.get("env.acme.test", "/env?COLOR").text().unwrap(),
        "green"
    );
}

#[test]
fn quotas_usage_and_expiring_tokens_with_the_cli() {
    let perch = Perch::start();
    ok(perch_cli(
        &perch,
        ADMIN_TOKEN,
        &["tenants", "create", "acme"],
    ));
    let out = ok(perch_cli(
        &perch,
        ADMIN_TOKEN,
        &[
            "tenants",
            "set-quota",
            "acme",
            "--functions",
            "3",
            "--image-bytes",
            "1GiB",
            "--kv-bytes",
            "1GiB",
            "--kv-keys",
            "1000",
            "--requests-per-second",
            "100",
        ],
    ));
    let t: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        t["quotas"],
        serde_json::json!({"functions": 3, "image_bytes": 1u64 << 30, "kv_bytes": 1u64 << 30,
            "kv_keys": 1000, "requests_per_second": 100})
    );
    let out = ok(perch_cli(
        &perch,
        ADMIN_TOKEN,
        &[
            "tenants",
            "set-quota",
            "acme",
            "--reset",
            "requests_per_second",
        ],
    ));
    let t: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(t["quotas"]["requests_per_second"], serde_json::Value::Null);
    let bad = perch_cli(
        &perch,
        ADMIN_TOKEN,
        &["tenants", "set-quota", "acme", "--image-bytes", "1XB"],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown unit `XB`"));

    // `--expires 30d`: thirty days from now, named.
    let out = ok(perch_cli(
        &perch,
        ADMIN_TOKEN,
        &[
            "tokens",
            "--tenant",
            "acme",
            "create",
            "--scope",
            "functions",
            "--scope",
            "routes",
            "--expires",
            "30d",
            "--name",
            "ci",
        ],
    ));
    let token: serde_json::Value = serde_json::from_str(&out).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expires = token["expires_at"].as_u64().unwrap();
    assert!(
        (now + 30 * 86_400 - 5..=now + 30 * 86_400 + 5).contains(&expires),
        "{token}"
    );
    assert_eq!(token["name"], "ci");

    let out = ok(perch_cli(
        &perch,
        token["token"].as_str().unwrap(),
        &[
            "deploy",
            guests::HELLO,
            "--tenant",
            "acme",
            "--name",
            "hello",
            "--route",
            "hello.acme.test",
        ],
    ));
    assert!(out.contains("version 1"), "{out}");
    assert_eq!(perch.get("hello.acme.test", "/").status(), 200);
    let out = ok(perch_cli(
        &perch,
        ADMIN_TOKEN,
        &["usage", "--tenant", "acme"],
    ));
    let usage: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(usage["usage"]["requests"], 1, "{usage}");
    assert_eq!(usage["usage"]["functions"], 1);
    assert_eq!(usage["quotas"]["functions"], 3);
}
