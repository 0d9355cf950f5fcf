//! Upload validation: bad components are refused with a clear message and
//! the server keeps serving.
use perch_tests::{Perch, guests};

#[test]
fn invalid_components_are_refused_with_reasons() {
    let perch = Perch::start();
    perch.deploy("a", "hello", guests::HELLO, "hello.a.test");
    let admin = perch.admin();

    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let msg = admin
        .upload("a", "bad", &random)
        .expect_error(400, "invalid_component");
    assert!(msg.contains("not a WebAssembly"), "{msg}");

    let core_module = b"\0asm\x01\0\0\0";
    let msg = admin
        .upload("a", "bad", core_module)
        .expect_error(400, "invalid_component");
    assert!(msg.contains("core WebAssembly module"), "{msg}");

    let msg = admin
        .upload("a", "bad", &std::fs::read(guests::COMMAND).unwrap())
        .expect_error(400, "invalid_component");
    assert!(
        msg.contains("WASI command") && msg.contains("wasi:http/incoming-handler"),
        "{msg}"
    );

    let msg = admin
        .upload("a", "bad", &std::fs::read(guests::BADIMPORT).unwrap())
        .expect_error(400, "invalid_component");
    assert!(msg.contains("acme:unknown/telemetry"), "{msg}");

    let mut truncated = std::fs::read(guests::HELLO).unwrap();
    truncated.truncate(truncated.len() / 2);
    let msg = admin
        .upload("a", "bad", &truncated)
        .expect_error(400, "invalid_component");
    assert!(msg.contains("invalid component"), "{msg}");

    // Over 50 MiB: refused from the declared length, before the body is read.
    let (status, body) = admin.put_declared("/v1/tenants/a/functions/bad", 50 * 1024 * 1024 + 1);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("\"body_too_large\""), "{body}");
    // The CLI refuses such a file itself, with a one-line reason.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.wasm");
    std::fs::write(&big, vec![0u8; 50 * 1024 * 1024 + 1]).unwrap();
    let out = std::process::Command::new(perch_tests::perch_bin())
        .arg("deploy")
        .arg(&big)
        .args(["--tenant", "a", "--name", "bad"])
        .env("PERCH_URL", &perch.admin_url)
        .env("PERCH_TOKEN", perch_tests::ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("50 MiB"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Nothing was created, and the server still serves.
    admin
        .get("/v1/tenants/a/functions/bad")
        .expect_error(404, "not_found");
    assert_eq!(perch.get("hello.a.test", "/").status(), 200);
}

#[test]
fn identical_bytes_still_create_a_new_version() {
    let perch = Perch::start();
    perch.deploy("a", "hello", guests::HELLO, "hello.a.test");
    let admin = perch.admin();
    let bytes = std::fs::read(guests::HELLO).unwrap();
    let v2 = admin.upload("a", "hello", &bytes).expect_status(201);
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["function"], "hello");
    let expected = ring_digest(&bytes);
    assert_eq!(v2["digest"], expected);
    let detail = admin.get("/v1/tenants/a/functions/hello").ok();
    assert_eq!(detail["active_version"], 2);
    assert_eq!(detail["versions"].as_array().unwrap().len(), 2);
}

fn ring_digest(bytes: &[u8]) -> String {
    // sha256sum agrees with the API's digest.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    std::fs::write(&p, bytes).unwrap();
    let out = std::process::Command::new("sha256sum")
        .arg(&p)
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
