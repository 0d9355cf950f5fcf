//! Content-addressed storage of uploaded components and their precompiled
//! forms. Precompiled files are only ever written by this engine, through a
//! temporary file renamed into place, and their name carries the engine's
//! compatibility hash: after a wasmtime upgrade the old files are simply not
//! found, and the component is recompiled from its stored bytes.
use std::fmt;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::compile::{CompileError, Compiler};
use crate::{RuntimeError, ValidationError};

/// SHA-256 of a component's bytes; shown as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Hashes `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        let d = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Digest(out)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = String;
    fn from_str(s: &str) -> Result<Digest, String> {
        if s.len() != 64 {
            return Err(format!("digest must be 64 hex characters, got {}", s.len()));
        }
        let mut out = [0u8; 32];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let hex = std::str::from_utf8(chunk).map_err(|e| e.to_string())?;
            out[i] = u8::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
        }
        Ok(Digest(out))
    }
}

pub(crate) struct ArtifactStore {
    dir: PathBuf,
    /// Hex of the engine's compatibility hash, part of every precompiled file name.
    engine_tag: String,
    compiler: Compiler,
}

/// Hex of a hash of the engine's compatibility hash: two engines with the
/// same tag read each other's precompiled files.
pub(crate) fn engine_tag(engine: &Engine) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

impl ArtifactStore {
    pub(crate) fn open(
        dir: &Path,
        engine: &Engine,
        compiler: Compiler,
    ) -> Result<ArtifactStore, RuntimeError> {
        fs::create_dir_all(dir).map_err(|e| RuntimeError::artifact("create artifacts dir", e))?;
        // Temporary files left by a crash (ours or a killed compiler's).
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().contains(".tmp") {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(ArtifactStore {
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

/// `<path minus extension>.tmp<pid>.<n>`: unique per process and write.
fn temporary_path(path: &Path, pid: u32) -> PathBuf {
    path.with_extension(format!(
        "tmp{pid}.{}",
        TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ))
}

/// Removes what [`write_atomic`] in process `pid` may have left of `path`
/// (a compiler child writes only one file, as its first temporary).
pub(crate) fn remove_temporaries_of(path: &Path, pid: u32) {
    let _ = fs::remove_file(path.with_extension(format!("tmp{pid}.0")));
}

fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Writes `bytes` to a temporary file, fsyncs it and renames it to `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    let tmp = temporary_path(path, std::process::id());
    let result = write_file(&tmp, bytes).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| RuntimeError::artifact(&format!("write {}", path.display()), e))
}

fn sync_dir(dir: &Path) -> Result<(), RuntimeError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| RuntimeError::artifact("sync artifacts dir", e))
}

static TMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trips_through_hex() {
        let d = Digest::of(b"hello");
        let s = d.to_string();
        assert_eq!(
            s,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(s.parse::<Digest>().unwrap(), d);
        assert!("zz".parse::<Digest>().is_err());
    }
}
