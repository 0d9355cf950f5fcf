//! Uploads through a real compiler child (this test binary, re-run as its
//! own `compiler_child` test): the uploader gets the child's reason line,
//! never the rest of what it printed.
use std::time::Duration;

use perch_runtime::{CompilerCommand, EngineSettings, RuntimeConfig, ValidationError};

use crate::guest;

/// The compiler child: runs only when this binary was started with
/// Perch's compiler arguments (`--max-wasm-stack N --engine-tag HEX INPUT
/// OUTPUT`, after libtest's `--`); as an ordinary test it does nothing.
#[test]
fn compiler_child() {
    let args: Vec<String> = std::env::args().collect();
    let Some(at) = args.iter().position(|a| a == "--max-wasm-stack") else {
        return;
    };
    let [_, stack, _, tag, input, output] = &args[at..at + 6] else {
        unreachable!()
    };
    let settings = EngineSettings {
        max_wasm_stack: stack.parse().unwrap(),
    };
    match perch_runtime::compile_child(&settings, tag, input.as_ref(), output.as_ref()) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("noise the uploader must not see\nthread 'main' panicked somewhere");
            eprintln!("{}", e.report_line());
            std::process::exit(e.exit_code().into());
        }
    }
}

#[test]
fn uploads_refused_by_the_compiler_child_get_its_reason_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RuntimeConfig::new(dir.path());
    config.max_instances = 4;
    config.warm_slots = 1;
    config.compiler = Some(CompilerCommand {
        program: std::env::current_exe().unwrap(),
        args: vec![
            "compile::compiler_child".into(),
            "--exact".into(),
            "--nocapture".into(),
            "--".into(),
        ],
        cpu_time: Duration::from_secs(60),
        address_space: 16 << 30,
        wall_time: Duration::from_secs(120),
    });
    let runtime = perch_runtime::Runtime::new(config).unwrap();

    let good = guest::bytes();
    runtime.store_component(good).unwrap();

    let truncated = &good[..good.len() / 2];
    match runtime.store_component(truncated) {
        Err(ValidationError::Invalid(reason)) => {
            assert!(
                !reason.contains("noise") && !reason.contains("panicked"),
                "{reason}"
            );
            assert!(!reason.is_empty() && reason.len() <= 1024, "{reason}");
            assert!(!reason.contains('\n'), "{reason}");
            // The child's own report of the problem, not the fallback.
            assert!(
                reason.starts_with("failed to parse WebAssembly"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
}
