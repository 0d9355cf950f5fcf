//! Backups of a node (design.md, "Backups"): a tar of one consistent
//! snapshot, taken while the server keeps serving and writing, and the
//! offline restore of one into an empty data directory.
//!
//! The snapshot is one redb read transaction: every table of the node's
//! database (registry, KV, usage, audit) is copied from it into a new
//! database file, so it holds exactly the writes acknowledged before it
//! began. The components its versions run are held against garbage
//! collection before they are read (a component collected between the
//! snapshot and its hold makes the backup start over), and container
//! image archives its image records name are added. `manifest.json`, last
//! in the tar, gives every file's size and SHA-256 and a check value
//! sealed with the node's secret key; `secret.key` and `admin.token` are
//! never in a backup. A restore extracts into a scratch directory, checks
//! every file against the manifest, the secret key against the check
//! value and every version against the components, and only then moves the
//! files into place: a corrupted or incomplete backup leaves nothing.
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase};
use serde::{Deserialize, Serialize};

use crate::artifacts::{Artifacts, Hold};
use crate::registry::{Loaded, RedbStore};
use crate::secrets::{SecretBox, hex};

/// The manifest's name in the tar (its last entry).
pub const MANIFEST: &str = "manifest.json";
/// The format this version writes and reads.
pub const FORMAT: &str = "perch-backup/1";
/// The node's database, in the tar and in the data directory.
pub const DATABASE: &str = "perch.redb";
/// What the key check value is sealed for.
const KEY_CHECK: &str = "backup/key-check";

/// What a backup holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// Unix seconds.
    pub created_at: u64,
    /// The registry revision of the snapshot.
    pub revision: u64,
    /// A value sealed with the node's secret key: a restore opens it to
    /// tell whether it was given the same key.
    pub key_check: String,
    /// Every other file of the tar.
    pub files: Vec<FileEntry>,
}

/// One file of a backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    /// Its path in the tar and under the data directory.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
}

/// What a backup is taken from.
pub struct Sources<'a> {
    /// The node's database.
    pub db: &'a Database,
    /// Where component bytes are read.
    pub runtime: &'a perch_runtime::Runtime,
    /// Holds components against collection while they are copied.
    pub artifacts: &'a Arc<Artifacts>,
    /// The container image archives.
    pub images_dir: &'a Path,
    /// Seals the key check value.
    pub secrets: &'a SecretBox,
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    sha: ring::digest::Context,
    size: u64,
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            sha: ring::digest::Context::new(&ring::digest::SHA256),
            size: 0,
        }
    }

    fn finish(self) -> (u64, String) {
        (self.size, hex(self.sha.finish().as_ref()))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// A file's size and SHA-256 (hex), read through [`Hashing`].
pub(crate) fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut hashing = Hashing::new(std::fs::File::open(path)?);
    std::io::copy(&mut hashing, &mut std::io::sink())?;
    Ok(hashing.finish())
}

fn io(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn db_error(e: impl std::fmt::Display) -> String {
    format!("database: {e}")
}

/// The tar path of a component.
fn component_entry(digest: &str) -> String {
    format!("artifacts/{digest}.wasm")
}

/// The components a snapshot's versions run, and its image archives' ids.
fn referenced(loaded: &Loaded) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut components = BTreeSet::new();
    let mut images = BTreeSet::new();
    for f in &loaded.records.functions {
        for v in &f.versions {
            match &v.container {
                Some(spec) => {
                    images.insert(spec.image.clone());
                }
                None => {
                    components.insert(v.digest.clone());
                }
            }
        }
    }
    images.extend(loaded.records.images.iter().map(|i| i.id.clone()));
    (components, images)
}

/// Appends one file to the tar from `reader`, hashing it.
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    size: u64,
    reader: impl Read,
    files: &mut Vec<FileEntry>,
) -> Result<(), String> {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o600);
    header.set_mtime(crate::registry::now());
    let mut hashing = Hashing::new(reader);
    tar.append_data(&mut header, path, &mut hashing)
        .map_err(io(path))?;
    let (read, sha256) = hashing.finish();
    if read != size {
        return Err(format!(
            "{path} changed while it was written ({size} → {read} bytes)"
        ));
    }
    files.push(FileEntry {
        path: path.to_string(),
        size,
        sha256,
    });
    Ok(())
}

/// Writes a backup of `src` to `out` (a new file in `work`, a scratch
/// directory of its own); returns its manifest. Blocking.
pub fn write(src: &Sources, work: &Path, out: &Path) -> Result<Manifest, String> {
    fs::create_dir_all(work).map_err(io("backup directory"))?;
    for _ in 0..3 {
        if let Some(manifest) = try_write(src, work, out)? {
            return Ok(manifest);
        }
    }
    Err("components kept disappearing while the backup was taken".into())
}

/// One attempt: `None` when a component of the snapshot was collected
/// before it could be held.
fn try_write(src: &Sources, work: &Path, out: &Path) -> Result<Option<Manifest>, String> {
    let snapshot = work.join(DATABASE);
    let _ = fs::remove_file(&snapshot);
    let read = src.db.begin_read().map_err(db_error)?;
    let loaded = RedbStore::load_from(&read).map_err(db_error)?;
    let (components, images) = referenced(&loaded);
    // Each component with its hold, kept until its bytes are in the tar.
    let mut held: Vec<(&String, perch_runtime::Digest, Hold)> = Vec::new();
    for d in &components {
        let digest = d
            .parse()
            .map_err(|_| format!("a version names a malformed digest `{d}`"))?;
        held.push((d, digest, src.artifacts.hold(digest)));
    }
    {
        let copy = Database::create(&snapshot).map_err(db_error)?;
        let txn = copy.begin_write().map_err(db_error)?;
        RedbStore::copy_tables(&read, &txn).map_err(db_error)?;
        perch_kv::RedbKv::copy_tables(&read, &txn).map_err(db_error)?;
        crate::telemetry::usage::RedbUsage::copy_tables(&read, &txn).map_err(db_error)?;
        crate::audit::RedbAudit::copy_tables(&read, &txn).map_err(db_error)?;
        txn.commit().map_err(db_error)?;
    }
    drop(read);

    let file = File::create(out).map_err(io("backup file"))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let mut files = Vec::new();
    let db_file = File::open(&snapshot).map_err(io("snapshot"))?;
    let size = db_file.metadata().map_err(io("snapshot"))?.len();
    append(&mut tar, DATABASE, size, db_file, &mut files)?;
    fs::remove_file(&snapshot).map_err(io("snapshot"))?;
    for (d, digest, _) in &held {
        let Some(bytes) = src
            .runtime
            .component_bytes(digest)
            .map_err(|e| format!("component {d}: {e}"))?
        else {
            return Ok(None);
        };
        let len = bytes.len() as u64;
        append(
            &mut tar,
            &component_entry(d),
            len,
            bytes.as_slice(),
            &mut files,
        )?;
    }
    for id in &images {
        let path = perch_containers::archive::archive_path(src.images_dir, id);
        match File::open(&path) {
            Ok(f) => {
                let size = f.metadata().map_err(io("image archive"))?.len();
                let name = format!(
                    "images/{}",
                    path.file_name().unwrap_or_default().to_string_lossy()
                );
                append(&mut tar, &name, size, f, &mut files)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(image = %id, "backup: the image's archive is not on this node; restore it by uploading the image again");
            }
            Err(e) => return Err(format!("image archive {}: {e}", path.display())),
        }
    }
    drop(held);
    let manifest = Manifest {
        format: FORMAT.into(),
        created_at: crate::registry::now(),
        revision: loaded.revision,
        key_check: src.secrets.seal(KEY_CHECK, FORMAT),
        files,
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    let mut header = tar::Header::new_gnu();
    header.set_size(json.len() as u64);
    header.set_mode(0o600);
    header.set_mtime(manifest.created_at);
    tar.append_data(&mut header, MANIFEST, json.as_slice())
        .map_err(io("manifest"))?;
    let mut out_file = tar.into_inner().map_err(io("backup file"))?;
    out_file.flush().map_err(io("backup file"))?;
    out_file
        .into_inner()
        .map_err(|e| format!("backup file: {}", e.error()))?
        .sync_all()
        .map_err(io("backup file"))?;
    Ok(Some(manifest))
}

/// What a restore put in place.
#[derive(Debug)]
pub struct Restored {
    /// The backup's manifest.
    pub manifest: Manifest,
    /// Functions in the restored registry.
    pub functions: usize,
}

/// Whether `path` is one a backup may hold: the database, a component,
/// an image archive (no directories, no `..`).
fn allowed(path: &str) -> bool {
    let name_ok = |n: &str, ext: &str| {
        n.strip_suffix(ext)
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    match path.split_once('/') {
        None => path == DATABASE,
        Some(("artifacts", n)) => name_ok(n, ".wasm"),
        Some(("images", n)) => name_ok(n, ".tar"),
        _ => false,
    }
}

/// Restores the backup `from` into `dir` (absent or empty), checking it
/// whole first; `secrets` must be the key of the node it was taken on.
/// Blocking.
pub fn restore(from: &Path, dir: &Path, secrets: &SecretBox) -> Result<Restored, String> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(format!(
                    "{} is not empty: restore into a new data directory",
                    dir.display()
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io("data directory"))?;
        }
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    }
    let scratch = dir.join(".restore");
    let result = extract_and_check(from, &scratch, secrets).and_then(|restored| {
        for entry in fs::read_dir(&scratch).map_err(io("restore"))? {
            let entry = entry.map_err(io("restore"))?;
            fs::rename(entry.path(), dir.join(entry.file_name())).map_err(io("restore"))?;
        }
        fs::remove_dir(&scratch).map_err(io("restore"))?;
        Ok(restored)
    });
    if result.is_err() {
        // Leave the directory as it was found: empty.
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
    }
    result
}

fn extract_and_check(from: &Path, scratch: &Path, secrets: &SecretBox) -> Result<Restored, String> {
    let bad = |why: String| format!("not a usable backup: {why}");
    let file = File::open(from).map_err(|e| format!("{}: {e}", from.display()))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut seen: Vec<FileEntry> = Vec::new();
    let mut manifest: Option<Manifest> = None;
    for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
        let entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry
            .path()
            .map_err(|e| bad(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        if manifest.is_some() {
            return Err(bad(format!("`{path}` after the manifest")));
        }
        if path == MANIFEST {
            let mut json = Vec::new();
            entry
                .take(16 << 20)
                .read_to_end(&mut json)
                .map_err(|e| bad(e.to_string()))?;
            manifest =
                Some(serde_json::from_slice(&json).map_err(|e| bad(format!("manifest: {e}")))?);
            continue;
        }
        if !allowed(&path) || seen.iter().any(|f| f.path == path) {
            return Err(bad(format!("unexpected entry `{path}`")));
        }
        let target = scratch.join(&path);
        fs::create_dir_all(target.parent().expect("entries have a parent"))
            .map_err(io("restore"))?;
        let mut out = File::create(&target).map_err(io("restore"))?;
        let mut hashing = Hashing::new(entry);
        std::io::copy(&mut hashing, &mut out).map_err(|e| bad(format!("{path}: {e}")))?;
        out.sync_all().map_err(io("restore"))?;
        let (size, sha256) = hashing.finish();
        seen.push(FileEntry { path, size, sha256 });
    }
    let manifest = manifest.ok_or_else(|| bad("no manifest (truncated?)".into()))?;
    if manifest.format != FORMAT {
        return Err(bad(format!(
            "format `{}` (this perch reads {FORMAT})",
            manifest.format
        )));
    }
    for want in &manifest.files {
        match seen.iter().find(|f| f.path == want.path) {
            None => return Err(bad(format!("`{}` is missing", want.path))),
            Some(got) if got != want => {
                return Err(bad(format!(
                    "`{}` does not match its checksum (corrupted)",
                    want.path
                )));
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = seen
        .iter()
        .find(|f| !manifest.files.iter().any(|w| w.path == f.path))
    {
        return Err(bad(format!("`{}` is not in the manifest", extra.path)));
    }
    if secrets.open(KEY_CHECK, &manifest.key_check).is_none() {
        return Err(
            "the secret key given is not the key of the node this backup was taken on: its secrets could not be opened"
                .into(),
        );
    }
    // The registry is consistent: every version's component is here.
    let db = Database::open(scratch.join(DATABASE)).map_err(|e| bad(format!("database: {e}")))?;
    let loaded = RedbStore::load_from(&db.begin_read().map_err(db_error)?)
        .map_err(|e| bad(format!("registry: {e}")))?;
    drop(db);
    let (components, _) = referenced(&loaded);
    if let Some(missing) = components
        .iter()
        .find(|d| !scratch.join(component_entry(d)).exists())
    {
        return Err(bad(format!(
            "the component {missing} of a version is missing"
        )));
    }
    Ok(Restored {
        functions: loaded.records.functions.len(),
        manifest,
    })
}

/// A scratch directory for one backup under `data_dir`.
pub fn work_dir(data_dir: &Path) -> PathBuf {
    data_dir
        .join("backups")
        .join(format!("tmp-{}", crate::secrets::random_hex(8)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_database_components_and_image_archives_are_restored() {
        let hex = "ab".repeat(32);
        assert!(allowed(DATABASE));
        assert!(allowed(&format!("artifacts/{hex}.wasm")));
        assert!(allowed(&format!("images/{hex}.tar")));
        for bad in [
            "secret.key".to_string(),
            "admin.token".into(),
            format!("artifacts/../{hex}.wasm"),
            format!("artifacts/{hex}.cwasm"),
            "artifacts/x.wasm".into(),
            format!("images/sub/{hex}.tar"),
            format!("/etc/{hex}.tar"),
            "../perch.redb".into(),
        ] {
            assert!(!allowed(&bad), "{bad}");
        }
    }
}
