//! The binary's own command-line surface. (End-to-end behaviour lives in the
//! `perch-tests` package; having an integration test here also makes
//! `cargo test` build the `perch` binary those tests run.)
use std::process::Command;

#[test]
fn help_lists_the_subcommands() {
    let out = Command::new(env!("CARGO_BIN_EXE_perch"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for cmd in [
        "serve",
        "deploy",
        "tenants",
        "routes",
        "tokens",
        "functions",
    ] {
        assert!(text.contains(cmd), "missing {cmd} in:\n{text}");
    }
}

#[test]
fn invalid_listen_address_is_a_config_error() {
    let dir = std::env::temp_dir().join(format!("perch-cli-test-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_perch"))
        .args(["serve", "--listen", "not-an-address", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen"));
    assert!(
        !dir.exists(),
        "nothing should be created before the config is valid"
    );
}
