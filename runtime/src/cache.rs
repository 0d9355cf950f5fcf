//! The node's local artifacts directory, a cache in front of the
//! [`ArtifactStore`]: component bytes fetched from the store
//! (`<sha256>.wasm`) and their precompiled forms. Precompiled files are only
//! ever written by this engine, through a temporary file renamed into
//! place, and their name carries the engine's compatibility hash: after a
//! wasmtime upgrade the old files are simply not found, and the component
//! is recompiled from its bytes.
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::compile::{CompileError, Compiler, engine_tag};
use crate::files::{remove_temporaries, sync_dir, temporary_path, write_atomic, write_file};
use crate::store::{ArtifactStore, component_path};
use crate::{Digest, RuntimeError, ValidationError};

pub(crate) struct ArtifactCache {
    dir: PathBuf,
    /// Hex of the engine's compatibility hash, part of every precompiled file name.
    engine_tag: String,
    compiler: Compiler,
    store: Arc<dyn ArtifactStore>,
}

impl ArtifactCache {
    pub(crate) fn open(
        dir: &Path,
        engine: &Engine,
        compiler: Compiler,
        store: Arc<dyn ArtifactStore>,
    ) -> Result<ArtifactCache, RuntimeError> {
        fs::create_dir_all(dir).map_err(|e| RuntimeError::artifact("create artifacts dir", e))?;
        // Temporary files left by a crash (ours or a killed compiler's).
        remove_temporaries(dir);
        Ok(ArtifactCache {
            dir: dir.to_path_buf(),
            engine_tag: engine_tag(engine),
            compiler,
            store,
        })
    }

    fn component_path(&self, digest: &Digest) -> PathBuf {
        component_path(&self.dir, digest)
    }

    fn precompiled_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{digest}.{}.cwasm", self.engine_tag))
    }

    /// Whether the component's bytes are in the local directory.
    pub(crate) fn has_local(&self, digest: &Digest) -> bool {
        self.component_path(digest).exists()
    }

    /// The component's bytes: from the local directory, else the store.
    pub(crate) fn bytes(&self, digest: &Digest) -> Result<Option<Vec<u8>>, RuntimeError> {
        match fs::read(self.component_path(digest)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.store.get(digest),
            Err(e) => Err(RuntimeError::artifact("read component", e)),
        }
    }

    /// Whether the component is kept: locally, or in the store.
    pub(crate) fn has_component(&self, digest: &Digest) -> bool {
        self.has_local(digest) || self.store.contains(digest).unwrap_or(false)
    }

    /// Forgets a component: its local files (precompiled forms for any
    /// engine included) and its bytes in the store.
    pub(crate) fn remove(&self, digest: &Digest) -> Result<(), RuntimeError> {
        self.remove_local(digest)?;
        self.store.delete(digest)
    }

    /// Forgets a component's local files only (precompiled forms for any
    /// engine included).
    pub(crate) fn remove_local(&self, digest: &Digest) -> Result<(), RuntimeError> {
        let prefix = format!("{digest}.");
        let entries =
            fs::read_dir(&self.dir).map_err(|e| RuntimeError::artifact("list artifacts", e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(&prefix) {
                match fs::remove_file(entry.path()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(RuntimeError::artifact(
                            &format!("delete {}", entry.path().display()),
                            e,
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Digests of the components in the local directory (by file name:
    /// `<sha256>.wasm` and its precompiled forms).
    pub(crate) fn local_digests(&self) -> Result<Vec<Digest>, RuntimeError> {
        let entries =
            fs::read_dir(&self.dir).map_err(|e| RuntimeError::artifact("list artifacts", e))?;
        let mut out: Vec<Digest> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                name.split('.').next()?.parse().ok()
            })
            .collect();
        out.sort_by_key(|d| d.0);
        out.dedup();
        Ok(out)
    }

    /// Makes sure the store holds `bytes` (an upload whose digest is
    /// `digest`): durable there before the upload is acknowledged.
    pub(crate) fn ensure_stored(&self, digest: &Digest, bytes: &[u8]) -> Result<(), RuntimeError> {
        if self.store.contains(digest)? {
            return Ok(());
        }
        self.store.put(digest, bytes)
    }

    /// Compiles uploaded bytes, keeps them with their precompiled form in
    /// the local directory and puts them into the store (durable there)
    /// once `check` accepts the compiled component. Nothing is left behind
    /// locally when compilation or the check fails.
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
        // cached component by a rename once everything passed.
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
            // With the default store (this directory) the component is
            // there already.
            self.ensure_stored(digest, bytes).map_err(storage)?;
            Ok(checked)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&input);
        }
        result
    }

    /// Loads the compiled component; returns whether it had to be compiled
    /// (no precompiled file for this engine, e.g. after an upgrade, or a
    /// component this node has not run before, fetched from the store).
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
            self.fetch(digest, &input)?;
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

    /// Copies a component from the store into the local directory.
    fn fetch(&self, digest: &Digest, path: &Path) -> Result<(), RuntimeError> {
        let bytes = self
            .store
            .get(digest)?
            .ok_or_else(|| RuntimeError::Artifact(format!("component {digest} is missing")))?;
        // What the store returns is compiled and run: it must be the
        // component that was uploaded under this digest.
        if Digest::of(&bytes) != *digest {
            return Err(RuntimeError::Artifact(format!(
                "the store returned other bytes for component {digest}"
            )));
        }
        write_atomic(path, &bytes)
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
