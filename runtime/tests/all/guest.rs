//! The test guest (`runtime/tests/guest`), built for wasm32-wasip2 once per
//! test process, the way `tests/build.rs` builds the end-to-end guests.
//! `PERCH_RUNTIME_TEST_GUEST` names a prebuilt component instead.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

static BYTES: OnceLock<Vec<u8>> = OnceLock::new();

/// The guest component's bytes.
pub fn bytes() -> &'static [u8] {
    BYTES.get_or_init(|| {
        let path = match std::env::var_os("PERCH_RUNTIME_TEST_GUEST") {
            Some(path) => PathBuf::from(path),
            None => build(),
        };
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    })
}

fn build() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target_dir = manifest_dir.parent().unwrap().join("target").join("guests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--target",
        "wasm32-wasip2",
        "--manifest-path",
    ])
    .arg(manifest_dir.join("tests").join("guest").join("Cargo.toml"))
    .arg("--target-dir")
    .arg(&target_dir);
    // Settings of the cargo running these tests are not the guest's.
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_") && k != "CARGO_HOME" || k == "RUSTFLAGS" || k == "RUSTC_WRAPPER"
        {
            cmd.env_remove(k);
        }
    }
    let status = cmd.status().expect("run cargo to build the test guest");
    assert!(status.success(), "building the test guest failed");
    target_dir
        .join("wasm32-wasip2")
        .join("release")
        .join("runtime_test_guest.wasm")
}
