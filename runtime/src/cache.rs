//! The node's local store of uploaded components and their precompiled
//! forms. Precompiled files are only ever written by this engine, through a
//! temporary file renamed into place, and their name carries the engine's
//! compatibility hash: after a wasmtime upgrade the old files are simply not
//! found, and the component is recompiled from its stored bytes.
use std::fs;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::compile::{CompileError, Compiler, engine_tag};
use crate::files::{remove_temporaries, sync_dir, temporary_path, write_file};
use crate::{Digest, RuntimeError, ValidationError};

pub(crate) struct ArtifactCache {
    dir: PathBuf,
    /// Hex of the engine's compatibility hash, part of every precompiled file name.
    engine_tag: String,
    compiler: Compiler,
}

impl ArtifactCache {
    pub(crate) fn open(
        dir: &Path,
        engine: &Engine,
        compiler: Compiler,
    ) -> Result<ArtifactCache, RuntimeError> {
        fs::create_dir_all(dir).map_err(|e| RuntimeError::artifact("create artifacts dir", e))?;
        // Temporary files left by a crash (ours or a killed compiler's).
        remove_temporaries(dir);
        Ok(ArtifactCache {
            dir: dir.to_path_buf(),
            engine_tag: engine_tag(engine),
            compiler,
        })
    }

    fn component_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{digest}.wasm"))
    }

    fn precompiled_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{digest}.{}.cwasm", self.engine_tag))
    }

    pub(crate) fn has_component(&self, digest: &Digest) -> bool {
        self.component_path(digest).exists()
    }

    /// Compiles uploaded bytes and stores them with their precompiled form
    /// (both durable) once `check` accepts the compiled component. Nothing
    /// is left behind when compilation or the check fails.
    pub(crate) fn compile_and_store<T>(
        &self,
        engine: &Engine,
        digest: &Digest,
        bytes: &[u8],
        check: impl FnOnce(&Component) -> Result<T, ValidationError>,
    ) -> Result<T, ValidationError> {
        let storage = ValidationError::Storage;
        let final_path = self.component_path(digest);
        // The compiler reads the component from a file; it becomes the
        // stored component by a rename once everything passed.
        let input = temporary_path(&final_path, std::process::id());
        write_file(&input, bytes)
            .map_err(|e| storage(RuntimeError::artifact("write upload", e)))?;
        let output = self.precompiled_path(digest);
        let result = (|| {
            self.compiler
                .precompile(engine, &input, &output)
                .map_err(|e| match e {
                    CompileError::Invalid(m) => ValidationError::Invalid(m),
                    CompileError::Failed(m) => ValidationError::CompileFailed(m),
                    CompileError::Internal(m) => storage(RuntimeError::Artifact(m)),
                })?;
            let component = deserialize(engine, &output).map_err(storage)?;
            let checked = check(&component).inspect_err(|_| {
                let _ = fs::remove_file(&output);
            })?;
            fs::rename(&input, &final_path)
                .map_err(|e| storage(RuntimeError::artifact("store component", e)))?;
            sync_dir(&self.dir).map_err(storage)?;
            Ok(checked)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&input);
        }
        result
    }

    /// Loads the compiled component; returns whether it had to be compiled
    /// (no precompiled file for this engine, e.g. after an upgrade).
    pub(crate) fn load(
        &self,
        engine: &Engine,
        digest: &Digest,
    ) -> Result<(Component, bool), RuntimeError> {
        let pre = self.precompiled_path(digest);
        if pre.exists() {
            match deserialize(engine, &pre) {
                Ok(c) => return Ok((c, false)),
                Err(e) => {
                    tracing::warn!(%digest, error = %e, "precompiled artifact unusable; recompiling")
                }
            }
        }
        let input = self.component_path(digest);
        if !input.exists() {
            return Err(RuntimeError::Artifact(format!(
                "component {digest} is missing"
            )));
        }
        self.compiler
            .precompile(engine, &input, &pre)
            .map_err(|e| match e {
                CompileError::Invalid(m) | CompileError::Failed(m) | CompileError::Internal(m) => {
                    RuntimeError::Artifact(format!("recompile {digest}: {m}"))
                }
            })?;
        Ok((deserialize(engine, &pre)?, true))
    }
}

fn deserialize(engine: &Engine, path: &Path) -> Result<Component, RuntimeError> {
    // SAFETY: files named `*.<engine_tag>.cwasm` are only ever written by
    // this engine's compiler (in process, or the compiler child, which
    // checks that its engine has the same tag) from the engine's own
    // output, through a temporary file and an atomic rename; users can
    // never upload precompiled code.
    unsafe { Component::deserialize_file(engine, path) }
        .map_err(|e| RuntimeError::artifact(&format!("load {}", path.display()), e))
}
