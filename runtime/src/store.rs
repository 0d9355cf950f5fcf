//! Where uploaded components are kept for good: the [`ArtifactStore`]
//! seam, and its first implementation, a local directory.
//!
//! The runtime's own artifacts directory is only a cache in front of the
//! store (of component bytes fetched from it, and of precompiled files):
//! a store shared by several nodes can be plugged in without touching the
//! compile path.
use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::files::write_durable;
use crate::{Digest, RuntimeError};

/// Durable storage of component bytes by digest.
///
/// Methods block (file or network I/O): the runtime calls them on blocking
/// threads only. Content-addressed: `put` of a digest already stored and
/// `delete` of one that is not are both successes. Errors are
/// [`RuntimeError::Artifact`].
pub trait ArtifactStore: Send + Sync + fmt::Debug {
    /// Stores `bytes` (whose SHA-256 is `digest`) durably: once this
    /// returns, the bytes survive a crash of the process or the machine.
    fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<(), RuntimeError>;

    /// The bytes stored for `digest`, or `None` when there are none.
    fn get(&self, digest: &Digest) -> Result<Option<Vec<u8>>, RuntimeError>;

    /// Whether bytes are stored for `digest`.
    fn contains(&self, digest: &Digest) -> Result<bool, RuntimeError>;

    /// Forgets the bytes stored for `digest`.
    fn delete(&self, digest: &Digest) -> Result<(), RuntimeError>;
}

/// An [`ArtifactStore`] in a local directory: `<dir>/<sha256>.wasm`, each
/// written to a temporary file, fsynced and renamed into place. With the
/// runtime's own artifacts directory as `dir` (the default), the store and
/// the runtime's cache are the same files.
#[derive(Debug, Clone)]
pub struct LocalArtifactStore {
    dir: PathBuf,
}

impl LocalArtifactStore {
    /// A store in `dir` (created on the first `put`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalArtifactStore { dir: dir.into() }
    }

    /// The directory the components are kept in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        component_path(&self.dir, digest)
    }
}

/// `<dir>/<sha256>.wasm`: a component's file name, in the store and in the
/// runtime's cache alike.
pub(crate) fn component_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join(format!("{digest}.wasm"))
}

impl ArtifactStore for LocalArtifactStore {
    fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<(), RuntimeError> {
        let path = self.path(digest);
        // Files only appear whole (renamed into place), so one that exists
        // holds these bytes already.
        if path.exists() {
            return Ok(());
        }
        fs::create_dir_all(&self.dir)
            .map_err(|e| RuntimeError::artifact("create artifacts dir", e))?;
        write_durable(&path, bytes)
    }

    fn get(&self, digest: &Digest) -> Result<Option<Vec<u8>>, RuntimeError> {
        match fs::read(self.path(digest)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RuntimeError::artifact(
                &format!("read component {digest}"),
                e,
            )),
        }
    }

    fn contains(&self, digest: &Digest) -> Result<bool, RuntimeError> {
        Ok(self.path(digest).exists())
    }

    fn delete(&self, digest: &Digest) -> Result<(), RuntimeError> {
        match fs::remove_file(self.path(digest)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::artifact(
                &format!("delete component {digest}"),
                e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_store_puts_gets_and_deletes_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalArtifactStore::new(dir.path().join("artifacts"));
        let bytes = b"component bytes".to_vec();
        let digest = Digest::of(&bytes);
        assert!(!store.contains(&digest).unwrap());
        assert_eq!(store.get(&digest).unwrap(), None);
        store.put(&digest, &bytes).unwrap();
        store.put(&digest, &bytes).unwrap();
        assert!(store.contains(&digest).unwrap());
        assert_eq!(store.get(&digest).unwrap(), Some(bytes));
        // Today's layout: `<sha256>.wasm`, and no temporary left behind.
        let names: Vec<String> = fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![format!("{digest}.wasm")]);
        store.delete(&digest).unwrap();
        store.delete(&digest).unwrap();
        assert!(!store.contains(&digest).unwrap());
    }
}
