//! `perch new NAME`: a function project that builds with one command.
//!
//! The SDK is not on a registry, so the project depends on it by path: the
//! `sdk/` folder of the Perch source tree this binary was built from
//! (recorded at build time), or `--sdk-path` / `PERCH_SDK_PATH`. Cargo then
//! needs nothing but crates.io and its local cache.
use std::path::{Path, PathBuf};

/// Where the SDK was when this binary was built.
pub const BUILT_SDK_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk");

/// Why a project could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScaffoldError {
    /// The name is not usable as a crate and function name.
    #[error("invalid name `{0}`: use 1 to 63 characters a-z, 0-9 and '-', starting with a letter")]
    InvalidName(String),
    /// The target folder exists and is not empty.
    #[error("{0} already exists and is not empty")]
    Exists(PathBuf),
    /// No SDK at the given or recorded path.
    #[error(
        "no perch-sdk at {0} (a Cargo.toml naming perch-sdk); pass --sdk-path to the sdk/ folder of a Perch checkout"
    )]
    NoSdk(PathBuf),
    /// Writing the files failed.
    #[error("writing {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// Creates the project `name` in `dir` (default `./name`), depending on
/// the SDK at `sdk` (default [`BUILT_SDK_PATH`]). Returns the project folder.
pub fn create(
    name: &str,
    dir: Option<&Path>,
    sdk: Option<&Path>,
) -> Result<PathBuf, ScaffoldError> {
    let valid = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !valid {
        return Err(ScaffoldError::InvalidName(name.to_string()));
    }
    let sdk = sdk.map_or_else(|| PathBuf::from(BUILT_SDK_PATH), Path::to_path_buf);
    let is_sdk = std::fs::read_to_string(sdk.join("Cargo.toml"))
        .is_ok_and(|m| m.contains("name = \"perch-sdk\""));
    let sdk = match sdk.canonicalize() {
        Ok(p) if is_sdk => p,
        _ => return Err(ScaffoldError::NoSdk(sdk)),
    };
    let root = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if std::fs::read_dir(&root).is_ok_and(|mut d| d.next().is_some()) {
        return Err(ScaffoldError::Exists(root));
    }
    let wasm = format!("{}.wasm", name.replace('-', "_"));
    let files = [
        ("Cargo.toml", cargo_toml(name, &sdk)),
        (".cargo/config.toml", CARGO_CONFIG.to_string()),
        (".gitignore", "/target\n".to_string()),
        ("src/lib.rs", LIB_RS.to_string()),
        ("README.md", readme(name, &wasm)),
    ];
    for (rel, content) in files {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| ScaffoldError::Io(parent.to_path_buf(), e))?;
        }
        std::fs::write(&path, content).map_err(|e| ScaffoldError::Io(path.clone(), e))?;
    }
    Ok(root)
}

fn cargo_toml(name: &str, sdk: &Path) -> String {
    // TOML basic strings need `\` and `"` escaped.
    let sdk = sdk
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
perch-sdk = {{ path = "{sdk}" }}
serde_json = "1"

# A project of its own, even inside another Cargo workspace.
[workspace]

# Small, fast components.
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
panic = "abort"
"#
    )
}

const CARGO_CONFIG: &str =
    "# Perch functions are wasm32-wasip2 components.\n[build]\ntarget = \"wasm32-wasip2\"\n";

const LIB_RS: &str = r#"//! A Perch function. Build: `cargo build --release`.
use perch_sdk::prelude::*;
use perch_sdk::router::Router;

perch_sdk::export!(handle);

async fn handle(req: Request) -> Response {
    Router::new()
        .get("/", |_| async { "Hello from Perch!\n" })
        .get("/hello/:name", hello)
        .handle(req)
        .await
}

async fn hello(req: Request) -> Response {
    let name = req.param("name").unwrap_or("world");
    perch_sdk::info!("greeting {name}");
    Response::from_json(&serde_json::json!({ "message": format!("Hello, {name}!") }))
}
"#;

fn readme(name: &str, wasm: &str) -> String {
    format!(
        r#"# {name}

A Perch function (a `wasi:http/proxy` component) written with `perch-sdk`.

```sh
rustup target add wasm32-wasip2          # once
cargo build --release                    # → target/wasm32-wasip2/release/{wasm}
perch deploy target/wasm32-wasip2/release/{wasm} \
    --tenant TENANT --name {name} --route {name}.example.test
curl -H 'Host: {name}.example.test' http://127.0.0.1:8080/hello/you
```

`perch deploy` reads `PERCH_URL` and `PERCH_TOKEN` (a token of the tenant
with the `functions` and `routes` scopes, or the admin token).
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_names_and_busy_folders() {
        let tmp = tempfile::tempdir().unwrap();
        let sdk = Path::new(BUILT_SDK_PATH);
        for bad in ["", "Demo", "1demo", "de_mo", "demo-", &"d".repeat(64)] {
            assert!(matches!(
                create(bad, Some(&tmp.path().join("x")), Some(sdk)),
                Err(ScaffoldError::InvalidName(_))
            ));
        }
        let dir = tmp.path().join("demo");
        create("demo", Some(&dir), Some(sdk)).unwrap();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(manifest.contains(&sdk.canonicalize().unwrap().display().to_string()));
        assert!(matches!(
            create("demo", Some(&dir), Some(sdk)),
            Err(ScaffoldError::Exists(_))
        ));
        assert!(matches!(
            create("demo", Some(&tmp.path().join("y")), Some(tmp.path())),
            Err(ScaffoldError::NoSdk(_))
        ));
    }
}
