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

/// A valid component whose one core function is ~7 MiB of straight-line
/// loads and stores: cranelift needs several seconds of CPU and well over
/// 256 MiB to compile it (hello needs under a second and 128 MiB).
fn expensive_component() -> Vec<u8> {
    fn leb(mut n: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn section(id: u8, payload: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }
    let locals = 1000u64;
    let mut body = Vec::new();
    leb(1, &mut body);
    leb(locals, &mut body);
    body.push(0x7f); // i32 locals
    for k in 0..280_000u64 {
        let (a, b, c) = (k * 7 % locals + 1, k * 13 % locals + 1, k * 31 % locals + 1);
        // mem[k*8] = p0 + mem[a + k*4]; c = b * p0
        body.extend([0x20, 0x00, 0x20]);
        leb(a, &mut body);
        body.extend([0x20, 0x00, 0x28, 0x02]);
        leb(k * 4 % 60_000, &mut body);
        body.extend([0x6a, 0x36, 0x02]);
        leb(k * 8 % 60_000, &mut body);
        body.push(0x20);
        leb(b, &mut body);
        body.extend([0x20, 0x00, 0x6c, 0x21]);
        leb(c, &mut body);
    }
    body.extend([0x20, 0x01, 0x0b]);

    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 1, 0x7f, 1, 0x7f], &mut module); // (i32) -> i32
    section(3, &[1, 0], &mut module);
    section(5, &[1, 0, 1], &mut module); // one page of memory
    section(7, &[1, 1, b'f', 0, 0], &mut module); // export "f"
    let mut code = vec![1];
    leb(body.len() as u64, &mut code);
    code.extend_from_slice(&body);
    section(10, &code, &mut module);

    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    section(1, &module, &mut component); // the core module
    section(2, &[1, 0, 0, 0], &mut component); // instantiated, so compiled
    component
}

#[test]
fn compilation_over_budget_is_refused_and_the_server_carries_on() {
    // Budgets hello fits in with room to spare; the expensive component
    // exceeds both (whichever the compiler hits first stops it).
    let perch = Perch::start_with("[compile]\ncpu_seconds = 3\nmemory_mb = 256\n");
    perch.deploy("a", "hello", guests::HELLO, "hello.a.test");
    let admin = perch.admin();

    let big = expensive_component();
    let started = std::time::Instant::now();
    let expensive = {
        let admin = perch.admin();
        std::thread::spawn(move || admin.upload("a", "heavy", &big))
    };
    // Another upload meanwhile is not held up behind it.
    let hello = std::fs::read(guests::HELLO).unwrap();
    let v2 = admin.upload("a", "hello", &hello).expect_status(201);
    assert_eq!(v2["version"], 2);
    assert_eq!(perch.get("hello.a.test", "/").status(), 200);

    let msg = expensive
        .join()
        .unwrap()
        .expect_error(422, "compile_failed");
    assert!(msg.contains("budget"), "{msg}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    admin
        .get("/v1/tenants/a/functions/heavy")
        .expect_error(404, "not_found");
    // Nothing of it was kept in the artifacts directory.
    let leftovers: Vec<_> = std::fs::read_dir(perch.dir.join("data/artifacts"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The server keeps serving and deploying.
    assert_eq!(perch.get("hello.a.test", "/").status(), 200);
    perch.deploy("a", "hello2", guests::HELLO, "hello2.a.test");
    assert_eq!(perch.get("hello2.a.test", "/").status(), 200);
}
