//! Writing files so that a reader never sees a partial one: a temporary
//! file in the same directory, fsynced, then renamed into place.
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::RuntimeError;

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// `<path minus extension>.tmp<pid>.<n>`: unique per process and write.
/// Every temporary name contains `.tmp`, which is how leftovers of a crash
/// are recognised.
pub(crate) fn temporary_path(path: &Path, pid: u32) -> PathBuf {
    path.with_extension(format!(
        "tmp{pid}.{}",
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Removes temporary files (`*.tmp*`) a crash left in `dir`.
pub(crate) fn remove_temporaries(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().contains(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Removes what [`write_atomic`] in process `pid` may have left of `path`
/// (a compiler child writes only one file, as its first temporary).
pub(crate) fn remove_temporaries_of(path: &Path, pid: u32) {
    let _ = fs::remove_file(path.with_extension(format!("tmp{pid}.0")));
}

/// Creates `path` with `bytes` and fsyncs it.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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

/// [`write_atomic`], then fsyncs the directory so the rename survives a
/// crash too.
pub(crate) fn write_durable(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    write_atomic(path, bytes)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Fsyncs a directory (its entries: creations and renames).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), RuntimeError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| RuntimeError::artifact(&format!("sync {}", dir.display()), e))
}
