//! Backups: `GET /v1/backup` / `perch backup` under concurrent writes, and
//! `perch restore` into a new data directory, refusing what it cannot trust.
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use perch_tests::{ADMIN_TOKEN, Perch, guests, perch_bin};
use serde_json::json;

fn perch_cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(perch_bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run perch")
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Restores `backup` into `dir` with the key in `key_file`.
fn restore(backup: &std::path::Path, dir: &std::path::Path, key_file: &std::path::Path) -> Output {
    perch_cli(
        &[
            "restore",
            "--from",
            backup.to_str().unwrap(),
            "--data-dir",
            dir.to_str().unwrap(),
            "--secret-key-file",
            key_file.to_str().unwrap(),
        ],
        &[],
    )
}

fn is_empty(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}

#[test]
fn backup_under_writes_restores_everything_acknowledged_and_refuses_corruption() {
    // Few versions kept: uploads during the backup drop old versions and
    // collect their components.
    let mut perch = Perch::start_with("[max]\nversions_per_function = 2\n");
    let token = perch.deploy("a", "echo", guests::ECHO, "echo.a.test");
    let api = perch.api(&token);
    api.put_json("/v1/tenants/a/kv/data", None).ok();

    // Writers: KV keys one after another, and new versions of a function.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let kv = {
        let (api, stop, acked) = (api.clone(), stop.clone(), acked.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let answer = api.call(
                    reqwest::Method::PUT,
                    &format!("/v1/tenants/a/kv/data/values/k{i}"),
                    Some((
                        format!("value {i}").into_bytes(),
                        "application/octet-stream",
                    )),
                );
                assert!(answer.status < 300, "{}", answer.body);
                i += 1;
                acked.store(i, Ordering::SeqCst);
            }
        })
    };
    let deployed = Arc::new(AtomicUsize::new(0));
    let deploys = {
        let (api, stop, deployed) = (api.clone(), stop.clone(), deployed.clone());
        std::thread::spawn(move || {
            let wasm = [guests::HELLO, guests::ECHO].map(|p| std::fs::read(p).unwrap());
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 40 {
                api.upload("a", "web", &wasm[n % 2]).expect_status(201);
                n += 1;
                deployed.store(n, Ordering::SeqCst);
            }
        })
    };
    // Past the retention of 2: components have been collected already.
    perch_tests::eventually("writes are under way", || {
        acked.load(Ordering::SeqCst) >= 50 && deployed.load(Ordering::SeqCst) >= 3
    });

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.tar");
    let before = acked.load(Ordering::SeqCst);
    let out = perch_cli(
        &["backup", "--to", file.to_str().unwrap()],
        &[
            ("PERCH_URL", &perch.admin_url),
            ("PERCH_TOKEN", ADMIN_TOKEN),
        ],
    );
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("backup written to"), "{}", said(&out));
    stop.store(true, Ordering::Relaxed);
    kv.join().unwrap();
    deploys.join().unwrap();
    assert!(
        acked.load(Ordering::SeqCst) > before,
        "writes went on during the backup"
    );
    // A tenant may not take one.
    api.get("/v1/backup").expect_error(403, "forbidden");

    let key = perch.dir.join("data").join("secret.key");
    let mut restored = Perch::start();
    restored.sigterm();
    let target = restored.dir.join("data");
    std::fs::remove_dir_all(&target).unwrap();

    // A corrupted or truncated copy, a wrong key, a directory in use:
    // refused, and nothing is left.
    let bytes = std::fs::read(&file).unwrap();
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 3] ^= 0x55;
    let corrupt = dir.path().join("corrupt.tar");
    std::fs::write(&corrupt, &flipped).unwrap();
    let truncated = dir.path().join("truncated.tar");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, "ab".repeat(32)).unwrap();
    for (backup, key_file, says) in [
        (&corrupt, &key, "not a usable backup"),
        (&truncated, &key, "not a usable backup"),
        (&file, &other_key, "not the key of the node"),
    ] {
        let out = restore(backup, &target, key_file);
        assert!(!out.status.success(), "restored {}", backup.display());
        assert!(
            said(&out).contains(says),
            "{}: {}",
            backup.display(),
            said(&out)
        );
        assert!(is_empty(&target), "{} left files", backup.display());
    }
    let busy = dir.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("x"), "x").unwrap();
    let out = restore(&file, &busy, &key);
    assert!(said(&out).contains("not empty"), "{}", said(&out));

    let out = restore(&file, &target, &key);
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("restored"), "{}", said(&out));
    restored.restart();

    // Every acknowledged write from before the backup is there.
    let admin = restored.admin();
    for i in 0..before {
        let answer = admin.get(&format!("/v1/tenants/a/kv/data/values/k{i}"));
        assert_eq!(answer.status, 200, "k{i} is missing");
        assert_eq!(answer.body, json!(format!("value {i}")), "k{i}");
    }
    // The registry is consistent: every kept version's component is there,
    // and the routed function answers.
    assert!(
        !restored.logs().contains("component is missing"),
        "{}",
        restored.logs()
    );
    for name in ["echo", "web"] {
        let versions = admin
            .get(&format!("/v1/tenants/a/functions/{name}/versions"))
            .ok();
        for v in versions["versions"].as_array().unwrap() {
            let digest = v["digest"].as_str().unwrap();
            assert!(
                target
                    .join("artifacts")
                    .join(format!("{digest}.wasm"))
                    .exists(),
                "{name} v{} has no component",
                v["version"]
            );
        }
    }
    let resp = restored.get("echo.a.test", "/hello");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-echo-uri"], "/hello");
    // The tokens and secrets came along (the same key opens them).
    restored.api(&token).get("/v1/tenants/a/functions").ok();
    assert!(perch.sigterm().success());
}
