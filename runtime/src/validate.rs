//! Upload validation: the bytes must be a component that exports
//! `wasi:http/incoming-handler@0.2.x` and imports only what Perch links.
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::{Host, ValidationError};

/// Interfaces Perch provides (WASI 0.2), by `package/interface` without version.
const PROVIDED: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/ip-name-lookup",
    "wasi:http/types",
    "wasi:http/outgoing-handler",
    "wasi:keyvalue/store",
    "wasi:keyvalue/atomics",
    "wasi:keyvalue/batch",
    "wasi:config/store",
    "perch:kv/ext",
];

const HANDLER: &str = "wasi:http/incoming-handler@0.2";

fn unversioned(name: &str) -> &str {
    name.split('@').next().unwrap_or(name)
}

/// Cheap checks before compiling: a component, not a module or precompiled code.
pub(crate) fn precheck(bytes: &[u8]) -> Result<(), ValidationError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(ValidationError::NotWasm);
    }
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Err(ValidationError::CoreModule);
    }
    if !wasmparser::Parser::is_component(bytes) {
        return Err(ValidationError::Invalid(
            "unsupported WebAssembly binary version".into(),
        ));
    }
    if wasmtime::Engine::detect_precompiled(bytes).is_some() {
        return Err(ValidationError::Invalid(
            "precompiled code is never accepted; upload the component itself".into(),
        ));
    }
    Ok(())
}

/// Checks a compiled component's interface: it exports the HTTP handler and
/// imports only what Perch links.
pub(crate) fn check_interface(
    engine: &Engine,
    linker: &Linker<Host>,
    component: &Component,
) -> Result<ProxyPre<Host>, ValidationError> {
    let ty = component.component_type();

    let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    if !exports.iter().any(|e| e.starts_with(HANDLER)) {
        let what = if exports.iter().any(|e| e.starts_with("wasi:cli/run@")) {
            "this is a WASI command (it exports wasi:cli/run), not an HTTP function"
        } else {
            "the component is not an HTTP function"
        };
        return Err(ValidationError::MissingExport(format!(
            "{what}: it must export wasi:http/incoming-handler@0.2.x (exports found: {})",
            if exports.is_empty() {
                "none".to_string()
            } else {
                exports.join(", ")
            }
        )));
    }

    for (name, _) in ty.imports(engine) {
        if !PROVIDED.contains(&unversioned(name)) {
            return Err(ValidationError::UnsupportedImport {
                name: name.to_string(),
                detail: "; functions may import WASI 0.2 (wasi:http, wasi:cli, wasi:clocks, wasi:io, wasi:random, wasi:filesystem, wasi:sockets), wasi:keyvalue@0.2.0-draft, wasi:config@0.2.0-rc.1 and perch:kv/ext".into(),
            });
        }
    }
    // Catches version mismatches (e.g. a newer WASI than the host links).
    pre_instantiate(linker, component)
}

pub(crate) fn pre_instantiate(
    linker: &Linker<Host>,
    component: &Component,
) -> Result<ProxyPre<Host>, ValidationError> {
    let pre = linker.instantiate_pre(component).map_err(|e| {
        let msg = format!("{e:#}");
        let name = msg
            .split('`')
            .nth(1)
            .map(str::to_string)
            .unwrap_or_else(|| msg.clone());
        ValidationError::UnsupportedImport {
            name,
            detail: format!(" ({msg})"),
        }
    })?;
    ProxyPre::new(pre).map_err(|e| ValidationError::MissingExport(format!("{e:#}")))
}
