//! Builds the guest components the tests deploy — every example in
//! `examples/` and the test-only guests in `tests/guests/` — for
//! wasm32-wasip2, and writes their paths as constants. Fails the build when
//! an example has no end-to-end test (`tests/all/examples.rs` must contain a
//! `fn example_<name>` test for each).
use std::path::{Path, PathBuf};
use std::process::Command;

fn members(workspace: &Path) -> Vec<String> {
    let manifest =
        std::fs::read_to_string(workspace.join("Cargo.toml")).expect("read workspace manifest");
    let start = manifest.find("members").expect("members list");
    let list = &manifest[start..];
    let list = &list[list.find('[').unwrap() + 1..list.find(']').unwrap()];
    list.split(',')
        .map(|s| s.trim().trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn build(workspace: &Path, target_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(target_dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_") && k != "CARGO_HOME" || k == "RUSTFLAGS" || k == "RUSTC_WRAPPER"
        {
            cmd.env_remove(k);
        }
    }
    let status = cmd.status().expect("run cargo for guests");
    assert!(
        status.success(),
        "building guests in {} failed",
        workspace.display()
    );
}

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let target_dir = root.join("target").join("guests");
    let examples = root.join("examples");
    let guests = manifest_dir.join("guests");

    let tests_src =
        std::fs::read_to_string(manifest_dir.join("all").join("examples.rs")).unwrap_or_default();
    let mut out = String::new();
    for (ws, names) in [(&examples, members(&examples)), (&guests, members(&guests))] {
        build(ws, &target_dir);
        for name in names {
            let crate_name = name.rsplit('/').next().unwrap().replace('-', "_");
            if ws == &examples {
                let test_fn = format!("fn example_{crate_name}(");
                assert!(
                    tests_src.contains(&test_fn),
                    "example `{name}` has no end-to-end test: add `{test_fn}` to tests/all/examples.rs"
                );
            }
            let path = target_dir
                .join("wasm32-wasip2")
                .join("release")
                .join(format!("{crate_name}.wasm"));
            assert!(path.exists(), "missing {}", path.display());
            out.push_str(&format!(
                "/// `{name}` built for wasm32-wasip2.\npub const {}: &str = {:?};\n",
                crate_name.to_uppercase(),
                path.display().to_string()
            ));
        }
        println!("cargo:rerun-if-changed={}", ws.display());
    }
    println!("cargo:rerun-if-changed=all/examples.rs");
    // Guests depend on the SDK and on the WIT it binds.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("sdk").join("src").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join("sdk").join("wit").display()
    );
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("guests.rs");
    std::fs::write(dest, out).unwrap();
}
