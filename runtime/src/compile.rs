//! Compiling components to the engine's precompiled form, either in this
//! process or in a child process under CPU-time and address-space rlimits
//! and a wall-clock deadline.
//!
//! Cranelift cannot be interrupted, so a pathological component compiled in
//! process could hold a thread (and memory) for as long as it likes. The
//! server therefore runs the compiler as a child — its own executable with a
//! hidden subcommand that calls [`compile_child`] — and kills it when a
//! budget runs out. Both sides build their engine with [`engine_config`]
//! from the same [`EngineSettings`]; the child also checks that its engine's
//! compatibility tag equals the parent's before writing anything, so the
//! only bytes ever deserialized are this engine's own output.
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use wasmtime::{Config, Engine};

use crate::files::{remove_temporaries_of, write_atomic};
use crate::report::{ChildReport, reason_line};
use crate::rlimit::limit_child;

/// Engine settings that shape compiled code. The server's engine and a
/// compiler child's are built from the same values by [`engine_config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineSettings {
    /// Wasm stack limit for every instance, bytes.
    pub max_wasm_stack: usize,
}

/// The engine configuration shared by the server and the compiler. The
/// server adds the pooling allocator on top, which does not affect compiled
/// code (the compatibility hash ignores it).
pub fn engine_config(settings: &EngineSettings) -> Config {
    let mut wasm = Config::new();
    wasm.wasm_component_model(true)
        .epoch_interruption(true)
        .max_wasm_stack(settings.max_wasm_stack);
    wasm
}

/// Hex of a hash of the engine's compatibility hash: two engines with the
/// same tag read each other's precompiled files.
pub(crate) fn engine_tag(engine: &Engine) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// An external compiler: a program run once per compilation, under rlimits.
///
/// It is run as `program args… --max-wasm-stack N --engine-tag HEX INPUT
/// OUTPUT` and must call [`compile_child`] with those values, then, on
/// failure, write [`CompileChildError::report_line`] as a line to stderr
/// and exit with [`CompileChildError::exit_code`]. Only that line can reach
/// the uploader; anything else on stderr goes to the server log.
#[derive(Debug, Clone)]
pub struct CompilerCommand {
    /// The executable (the server passes its own).
    pub program: PathBuf,
    /// Arguments before Perch's own (e.g. the hidden subcommand's name).
    pub args: Vec<OsString>,
    /// `RLIMIT_CPU`: CPU time the compilation may use, all threads together
    /// (whole seconds, at least one).
    pub cpu_time: Duration,
    /// `RLIMIT_AS`: address space the compiler process may map, bytes.
    pub address_space: u64,
    /// Wall-clock time after which the parent kills the child.
    pub wall_time: Duration,
}

/// Why a compilation did not produce an artifact.
#[derive(Debug)]
pub(crate) enum CompileError {
    /// The component is invalid (the message describes the uploaded bytes).
    Invalid(String),
    /// The compiler ran out of a budget or died; the upload is refused.
    Failed(String),
    /// A server-side problem (spawning, I/O, engine mismatch).
    Internal(String),
}

/// How the node compiles: the engine settings, and the external compiler
/// (in process when `None`).
#[derive(Debug, Clone)]
pub(crate) struct Compiler {
    pub(crate) settings: EngineSettings,
    pub(crate) command: Option<CompilerCommand>,
}

impl Compiler {
    /// Compiles the component in `input` and writes the precompiled form to
    /// `output` (through a temporary file and an atomic rename).
    pub(crate) fn precompile(
        &self,
        engine: &Engine,
        input: &Path,
        output: &Path,
    ) -> Result<(), CompileError> {
        match &self.command {
            None => {
                let bytes = std::fs::read(input).map_err(|e| {
                    CompileError::Internal(format!("read {}: {e}", input.display()))
                })?;
                let compiled = engine
                    .precompile_component(&bytes)
                    .map_err(|e| CompileError::Invalid(format!("{e:#}")))?;
                write_atomic(output, &compiled).map_err(|e| CompileError::Internal(e.to_string()))
            }
            Some(command) => run_child(command, &self.settings, &engine_tag(engine), input, output),
        }
    }
}

/// Exit code of a compiler child whose input is not a valid component.
const EXIT_INVALID: u8 = 2;
/// Exit code of a compiler child that could not do its job (I/O, engine).
const EXIT_SETUP: u8 = 3;
/// What the uploader is told when a child refused a component without a
/// reason line.
const NO_REASON: &str = "the component could not be compiled";

fn run_child(
    command: &CompilerCommand,
    settings: &EngineSettings,
    tag: &str,
    input: &Path,
    output: &Path,
) -> Result<(), CompileError> {
    let cpu = command.cpu_time.as_secs().max(1);
    let mut cmd = Command::new(&command.program);
    cmd.args(&command.args)
        .arg("--max-wasm-stack")
        .arg(settings.max_wasm_stack.to_string())
        .arg("--engine-tag")
        .arg(tag)
        .arg(input)
        .arg(output)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    limit_child(&mut cmd, cpu, command.address_space);
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| {
        CompileError::Internal(format!(
            "cannot start compiler {}: {e}",
            command.program.display()
        ))
    })?;
    let pid = child.id();
    let stderr = child
        .stderr
        .take()
        .map(|pipe| std::thread::spawn(move || ChildReport::read(pipe)));

    // Poll for exit; kill the child once its wall-clock budget is spent.
    let mut pause = Duration::from_millis(2);
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CompileError::Internal(format!("waiting for compiler: {e}")));
            }
        }
        if started.elapsed() >= command.wall_time {
            timed_out = true;
            let _ = child.kill();
            match child.wait() {
                Ok(status) => break status,
                Err(e) => {
                    return Err(CompileError::Internal(format!("reaping compiler: {e}")));
                }
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    let report = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    if !status.success() {
        // A child that was stopped leaves its temporary file behind.
        remove_temporaries_of(output, pid);
    }
    if !report.other.is_empty() {
        // Debug formatting escapes line breaks and control characters.
        tracing::warn!(
            compiler_output = ?report.other,
            dropped_bytes = report.dropped,
            status = %status,
            "the compiler wrote to stderr"
        );
    }
    classify(status, timed_out, &report, command, started.elapsed())
}

fn classify(
    status: ExitStatus,
    timed_out: bool,
    report: &ChildReport,
    command: &CompilerCommand,
    elapsed: Duration,
) -> Result<(), CompileError> {
    use std::os::unix::process::ExitStatusExt;

    if timed_out {
        return Err(CompileError::Failed(format!(
            "compilation did not finish within its time budget ({} s) and was stopped",
            command.wall_time.as_secs_f64()
        )));
    }
    if status.success() {
        return Ok(());
    }
    let cpu = command.cpu_time.as_secs().max(1);
    let mib = command.address_space >> 20;
    if let Some(code) = status.code() {
        return match u8::try_from(code) {
            Ok(EXIT_INVALID) => Err(CompileError::Invalid(
                report.reason.clone().unwrap_or_else(|| NO_REASON.into()),
            )),
            Ok(EXIT_SETUP) => Err(CompileError::Internal(format!(
                "compiler: {}",
                report.reason.as_deref().unwrap_or("set-up failed")
            ))),
            // Rust's abort message when an allocation fails.
            _ if report.other.contains("memory allocation") => Err(CompileError::Failed(format!(
                "compilation ran out of its memory budget ({mib} MiB)"
            ))),
            _ => Err(CompileError::Failed(format!(
                "the compiler failed (exit status {code}) after {:.1} s",
                elapsed.as_secs_f64()
            ))),
        };
    }
    let message = match status.signal() {
        Some(libc::SIGXCPU) => format!("compilation exceeded its CPU-time budget ({cpu} s)"),
        // The hard CPU limit (one second past the soft one) sends SIGKILL.
        Some(libc::SIGKILL) => {
            format!("compilation exceeded its CPU-time budget ({cpu} s) and was killed")
        }
        Some(libc::SIGABRT | libc::SIGSEGV | libc::SIGBUS) => {
            format!("compilation ran out of its memory budget ({mib} MiB) or crashed")
        }
        Some(sig) => format!("the compiler was stopped by signal {sig}"),
        None => "the compiler stopped unexpectedly".to_string(),
    };
    Err(CompileError::Failed(message))
}

/// Why [`compile_child`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompileChildError {
    /// The input is not a valid component; the message is for the uploader.
    #[error("{0}")]
    Invalid(String),
    /// The compiler could not run (I/O, or an engine that differs from the
    /// server's).
    #[error("{0}")]
    Setup(String),
}

impl CompileChildError {
    /// The process exit code the parent expects for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CompileChildError::Invalid(_) => EXIT_INVALID,
            CompileChildError::Setup(_) => EXIT_SETUP,
        }
    }

    /// The line the child writes to stderr (followed by a line break) for
    /// the parent: a marker, then the message as one line of printable
    /// ASCII, at most 1 KiB. The parent reads only this line as the reason.
    pub fn report_line(&self) -> String {
        reason_line(&self.to_string())
    }
}

/// The compiler child's work: builds the engine from `settings`, checks its
/// compatibility tag against the server's, compiles the component in
/// `input` and writes the precompiled form to `output` (temporary file,
/// fsync, atomic rename). Runs under the rlimits the parent set.
pub fn compile_child(
    settings: &EngineSettings,
    expected_tag: &str,
    input: &Path,
    output: &Path,
) -> Result<(), CompileChildError> {
    let engine = Engine::new(&engine_config(settings))
        .map_err(|e| CompileChildError::Setup(format!("engine: {e:#}")))?;
    let tag = engine_tag(&engine);
    if tag != expected_tag {
        return Err(CompileChildError::Setup(format!(
            "engine tag {tag} differs from the server's {expected_tag} (a different perch binary?)"
        )));
    }
    let bytes = std::fs::read(input)
        .map_err(|e| CompileChildError::Setup(format!("read {}: {e}", input.display())))?;
    let compiled = engine
        .precompile_component(&bytes)
        .map_err(|e| CompileChildError::Invalid(format!("{e:#}")))?;
    write_atomic(output, &compiled).map_err(|e| CompileChildError::Setup(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{InstanceAllocationStrategy, PoolingAllocationConfig};

    fn shell(script: &str, cpu_seconds: u64, wall_ms: u64) -> CompilerCommand {
        CompilerCommand {
            program: "/bin/sh".into(),
            // Perch's own arguments follow as $0, $1, …, unused.
            args: vec!["-c".into(), script.into()],
            cpu_time: Duration::from_secs(cpu_seconds),
            address_space: 1 << 30,
            wall_time: Duration::from_millis(wall_ms),
        }
    }

    fn run(command: &CompilerCommand) -> Result<(), CompileError> {
        let dir = tempfile::tempdir().unwrap();
        let settings = EngineSettings {
            max_wasm_stack: 512 * 1024,
        };
        run_child(
            command,
            &settings,
            "tag",
            &dir.path().join("in.wasm"),
            &dir.path().join("out.cwasm"),
        )
    }

    #[test]
    fn child_outcomes_are_classified() {
        assert!(run(&shell("exit 0", 5, 5_000)).is_ok());
        match run(&shell(
            "echo 'perch-compile-reason: bad magic' >&2; exit 2",
            5,
            5_000,
        )) {
            Err(CompileError::Invalid(m)) => assert_eq!(m, "bad magic"),
            other => panic!("{other:?}"),
        }
        match run(&shell(
            "echo 'perch-compile-reason: tag mismatch' >&2; exit 3",
            5,
            5_000,
        )) {
            Err(CompileError::Internal(m)) => assert!(m.contains("tag mismatch"), "{m}"),
            other => panic!("{other:?}"),
        }
        match run(&shell("kill -ABRT $$", 5, 5_000)) {
            Err(CompileError::Failed(m)) => assert!(m.contains("memory budget"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refusing_child_s_raw_output_never_becomes_the_reason() {
        // Junk on stdout, 200 KiB of junk on stderr, no reason line.
        let junk = "echo junk-on-stdout; i=0; while [ $i -lt 3200 ]; do \
                    echo 'junk-on-stderr 0123456789012345678901234567890123456789012345678901234' >&2; \
                    i=$((i+1)); done";
        match run(&shell(&format!("{junk}; exit 2"), 5, 20_000)) {
            Err(CompileError::Invalid(m)) => assert_eq!(m, NO_REASON),
            other => panic!("{other:?}"),
        }
        // The same junk around a reason line: only the reason, bounded to
        // one printable line of at most 1 KiB.
        let long = "w".repeat(3000);
        let script = format!(
            "{junk}; printf 'perch-compile-reason: import `acme:x/y`\t{long}\n' >&2; \
             echo 'more junk' >&2; exit 2"
        );
        match run(&shell(&script, 5, 20_000)) {
            Err(CompileError::Invalid(m)) => {
                assert!(m.starts_with("import `acme:x/y` www"), "{m}");
                assert!(m.len() <= 1024 && !m.contains("junk"), "{m}");
                assert!(m.chars().all(|c| (' '..='~').contains(&c)), "{m}");
            }
            other => panic!("{other:?}"),
        }
        // A real refusal: the child's own report of a truncated component.
        let settings = EngineSettings {
            max_wasm_stack: 512 * 1024,
        };
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("bad.wasm");
        std::fs::write(&input, b"\0asm\x0d\0\x01\0\x07").unwrap();
        let tag = engine_tag(&Engine::new(&engine_config(&settings)).unwrap());
        let err = compile_child(&settings, &tag, &input, &dir.path().join("out")).unwrap_err();
        let line = dir.path().join("line");
        std::fs::write(&line, format!("{}\n", err.report_line())).unwrap();
        let script = format!(
            "echo 'thread main panicked' >&2; cat '{}' >&2; exit 2",
            line.display()
        );
        match run(&shell(&script, 5, 5_000)) {
            Err(CompileError::Invalid(m)) => {
                assert_eq!(m, crate::report::bounded(&err.to_string()));
                assert!(m.contains("unexpected end-of-file"), "{m}");
                assert!(!m.contains("panicked"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_child_over_its_cpu_budget_is_stopped() {
        let started = Instant::now();
        match run(&shell("while :; do :; done", 1, 30_000)) {
            Err(CompileError::Failed(m)) => assert!(m.contains("CPU-time budget"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn a_child_over_its_wall_clock_budget_is_killed() {
        let started = Instant::now();
        match run(&shell("exec sleep 30", 5, 300)) {
            Err(CompileError::Failed(m)) => assert!(m.contains("time budget"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn pooling_does_not_change_the_engine_tag() {
        let settings = EngineSettings {
            max_wasm_stack: 512 * 1024,
        };
        let plain = Engine::new(&engine_config(&settings)).unwrap();
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(4)
            .total_core_instances(8)
            .total_memories(8)
            .total_tables(8)
            .total_stacks(4)
            .max_memory_size(1 << 20);
        let mut config = engine_config(&settings);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let pooled = Engine::new(&config).unwrap();
        assert_eq!(engine_tag(&plain), engine_tag(&pooled));
    }
}
