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

use crate::RuntimeError;

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
}

impl ArtifactStore {
    pub(crate) fn open(dir: &Path, engine: &Engine) -> Result<ArtifactStore, RuntimeError> {
        fs::create_dir_all(dir).map_err(|e| RuntimeError::artifact("create artifacts dir", e))?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(ArtifactStore {
            dir: dir.to_path_buf(),
            engine_tag: format!("{:016x}", hasher.finish()),
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

    /// Stores the component bytes and its precompiled form (both durable).
    pub(crate) fn write(
        &self,
        digest: &Digest,
        bytes: &[u8],
        component: &Component,
    ) -> Result<(), RuntimeError> {
        let path = self.component_path(digest);
        if !path.exists() {
            write_atomic(&path, bytes)?;
        }
        let compiled = component
            .serialize()
            .map_err(|e| RuntimeError::artifact("serialize", e))?;
        write_atomic(&self.precompiled_path(digest), &compiled)?;
        sync_dir(&self.dir)
    }

    /// Loads the compiled component; returns whether it had to be compiled
    /// (no precompiled file for this engine).
    pub(crate) fn load(
        &self,
        engine: &Engine,
        digest: &Digest,
    ) -> Result<(Component, bool), RuntimeError> {
        let pre = self.precompiled_path(digest);
        if pre.exists() {
            // SAFETY: files named `*.<engine_tag>.cwasm` are only ever written
            // by `write` above from `Component::serialize` of this engine,
            // through a temporary file and an atomic rename; users can never
            // upload precompiled code.
            match unsafe { Component::deserialize_file(engine, &pre) } {
                Ok(c) => return Ok((c, false)),
                Err(e) => {
                    tracing::warn!(%digest, error = %e, "precompiled artifact unusable; recompiling")
                }
            }
        }
        let bytes = fs::read(self.component_path(digest))
            .map_err(|e| RuntimeError::artifact(&format!("read component {digest}"), e))?;
        let component = Component::new(engine, &bytes)
            .map_err(|e| RuntimeError::artifact(&format!("compile {digest}"), e))?;
        let compiled = component
            .serialize()
            .map_err(|e| RuntimeError::artifact("serialize", e))?;
        write_atomic(&pre, &compiled)?;
        Ok((component, true))
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    let tmp = path.with_extension(format!(
        "tmp{}.{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
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
