//! `perch storage migrate --from DATA_DIR --to URL`: a single node's state
//! copied into an empty cluster database, offline (the node stopped).
//!
//! In order, so that nothing committed names what is missing: the
//! components every version runs (each checked against its digest on the
//! way), the KV namespaces with their keys (values, metadata, and the time
//! left of each TTL; expired keys stay behind), then the registry (tenants,
//! tokens, functions with their versions and settings, routes, image and
//! certificate records) in one commit. Each part is read back from the
//! database and compared by count and SHA-256 with what was read from the
//! node. The secrets in the registry stay sealed: the cluster's
//! `PERCH_SECRET_KEY` must be the node's key, which is checked.
//!
//! The container image archives (`images/`) go into the shared store with
//! the components, each read back by its SHA-256; the audit log keeps its
//! entries' ids (appends go on after them), and the node's usage totals
//! become the totals of a node named `migrated` (a tenant's usage is the
//! sum over nodes).
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use perch_kv::{KvStore, NamespaceId, PutOptions, WriteOp};
use perch_pg::PgConfig;
use perch_runtime::{ArtifactStore, Digest, LocalArtifactStore, PgArtifactStore};
use ring::digest::{Context, SHA256};

use crate::audit::{AuditEntry, AuditStore};
use crate::registry::{Change, PgStore, Records, RedbStore, RegistryStore};
use crate::secrets::hex;
use crate::telemetry::usage::UsageStore;

/// What was copied, verified.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Migrated {
    /// Registry records (tenants, tokens, functions, routes, images,
    /// certificates).
    pub records: usize,
    /// Function versions among them.
    pub versions: usize,
    /// SHA-256 (hex) of the registry's records, by kind and key.
    pub registry_sha256: String,
    /// KV namespaces.
    pub namespaces: usize,
    /// KV keys (those not expired).
    pub keys: usize,
    /// SHA-256 (hex) of every namespace's keys, values and metadata.
    pub kv_sha256: String,
    /// Components.
    pub components: usize,
    /// Their bytes.
    pub component_bytes: u64,
    /// Image archives.
    pub images: usize,
    /// Their bytes.
    pub image_bytes: u64,
    /// Audit entries.
    pub audit_entries: usize,
    /// SHA-256 (hex) of the audit entries, in id order.
    pub audit_sha256: String,
    /// Tenants with usage totals.
    pub usage_tenants: usize,
}

/// The node name the migrated usage totals are kept under.
pub const MIGRATED_NODE: &str = "migrated";

/// Every entry of `audit`, in id order.
fn all_audit(audit: &dyn AuditStore) -> Result<Vec<AuditEntry>, String> {
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = audit.list(None, before, 1000)?;
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        all.extend(page);
    }
    all.reverse();
    Ok(all)
}

fn audit_digest(entries: &[AuditEntry]) -> Result<String, String> {
    let mut sha = Context::new(&SHA256);
    for e in entries {
        sha.update(&serde_json::to_vec(e).map_err(|e| e.to_string())?);
        sha.update(b"\n");
    }
    Ok(hex(sha.finish().as_ref()))
}

/// Every record as a put, in a stable order (by kind and key).
fn puts(records: &Records) -> Vec<Change> {
    let mut all: Vec<Change> = Vec::new();
    all.extend(records.tenants.iter().cloned().map(Change::PutTenant));
    all.extend(records.tokens.iter().cloned().map(Change::PutToken));
    all.extend(records.functions.iter().cloned().map(Change::PutFunction));
    all.extend(records.routes.iter().cloned().map(Change::PutRoute));
    all.extend(records.images.iter().cloned().map(Change::PutImage));
    all.extend(
        records
            .certificates
            .iter()
            .cloned()
            .map(Change::PutCertificate),
    );
    all.sort_by_key(|c| {
        let (kind, key) = c.key();
        (kind as u8, key)
    });
    all
}

/// SHA-256 of the records' kinds, keys and JSON.
fn registry_digest(records: &Records) -> String {
    let mut h = Context::new(&SHA256);
    for change in puts(records) {
        let (kind, key) = change.key();
        let json = change.record().unwrap_or_default();
        for part in [&[kind as u8][..], key.as_bytes(), &json] {
            h.update(&(part.len() as u64).to_be_bytes());
            h.update(part);
        }
    }
    hex(h.finish().as_ref())
}

/// The node's secret key (hex, as its data directory or the environment
/// holds it), checked against the cluster's.
fn check_key(from: &Path, cluster_key: Option<&str>) -> Result<(), String> {
    let file = from.join("secret.key");
    let node_key = match std::fs::read_to_string(&file) {
        Ok(text) => Some(text.trim().to_ascii_lowercase()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    let cluster_key = cluster_key
        .map(|k| k.trim().to_ascii_lowercase())
        .filter(|k| !k.is_empty());
    match (node_key, cluster_key) {
        (Some(n), Some(c)) if n != c => Err(format!(
            "the node's secrets are sealed with {} and PERCH_SECRET_KEY is another key: set PERCH_SECRET_KEY to the node's key (the cluster's nodes need it too)",
            file.display()
        )),
        (Some(_), _) => Ok(()),
        (None, Some(_)) => Ok(()),
        (None, None) => Err(format!(
            "{} is missing: set PERCH_SECRET_KEY to the key the node ran with",
            file.display()
        )),
    }
}

/// Walks every namespace of `tenants` in `kv`, bytewise, calling `each`
/// with each live key's entry; returns (namespaces, keys, SHA-256).
async fn walk_kv(
    kv: &dyn KvStore,
    tenants: &[String],
    mut each: impl AsyncFnMut(&NamespaceId, &str, &perch_kv::Entry) -> Result<(), String>,
) -> Result<(usize, usize, String), String> {
    let e = |e: perch_kv::KvError| e.to_string();
    let mut h = Context::new(&SHA256);
    let (mut namespaces, mut keys) = (0, 0);
    let mut tenants = tenants.to_vec();
    tenants.sort();
    for tenant in &tenants {
        let mut names = kv.list_namespaces(tenant).await.map_err(e)?;
        names.sort();
        for name in names {
            let ns = NamespaceId::new(tenant, &name);
            namespaces += 1;
            h.update(format!("ns {tenant}/{name}\n").as_bytes());
            let mut cursor: Option<String> = None;
            loop {
                let page = kv.list(&ns, "", cursor.as_deref(), 1000).await.map_err(e)?;
                for info in &page.keys {
                    let Some(entry) = kv.get(&ns, &info.name).await.map_err(e)? else {
                        continue; // expired in between
                    };
                    keys += 1;
                    for part in [
                        info.name.as_bytes(),
                        &entry.value,
                        entry.metadata.as_deref().unwrap_or("").as_bytes(),
                    ] {
                        h.update(&(part.len() as u64).to_be_bytes());
                        h.update(part);
                    }
                    each(&ns, &info.name, &entry).await?;
                }
                match page.cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
        }
    }
    Ok((namespaces, keys, hex(h.finish().as_ref())))
}

/// Copies the node at `from` into the database `to`. Blocking: run it
/// outside an async runtime.
pub fn migrate(from: &Path, to: &PgConfig, cluster_key: Option<&str>) -> Result<Migrated, String> {
    let path = from.join("perch.redb");
    if !path.exists() {
        return Err(format!(
            "{} is not a Perch data directory (no perch.redb)",
            from.display()
        ));
    }
    check_key(from, cluster_key)?;
    let db = redb::Database::open(&path).map_err(|e| {
        format!(
            "cannot open {}: {e} (stop the node first: it must not run during the migration)",
            path.display()
        )
    })?;
    let db = Arc::new(db);
    let source = RedbStore::open(db.clone())
        .and_then(|s| s.load())
        .map_err(|e| format!("reading the node's registry: {e}"))?
        .records;

    let target = PgStore::open(to).map_err(|e| format!("the database: {e}"))?;
    let there = target.load().map_err(|e| format!("the database: {e}"))?;
    if there.revision > 0 || !puts(&there.records).is_empty() {
        return Err(format!(
            "the database already holds a registry (revision {}): migrate into an empty database",
            there.revision
        ));
    }
    crate::pg::migrate(to).map_err(|e| format!("the database: {e}"))?;

    // Components.
    let mut out = Migrated::default();
    let local = LocalArtifactStore::new(from.join("artifacts"));
    let shared = PgArtifactStore::open(to).map_err(|e| e.to_string())?;
    let mut digests: Vec<&str> = source
        .functions
        .iter()
        .flat_map(|f| f.versions.iter().map(|v| v.digest.as_str()))
        .collect();
    digests.sort_unstable();
    digests.dedup();
    for text in digests {
        let digest: Digest = text
            .parse()
            .map_err(|e| format!("a version names `{text}`: {e}"))?;
        let bytes = local
            .get(&digest)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "component {digest} is missing from {}",
                    local.dir().display()
                )
            })?;
        if Digest::of(&bytes) != digest {
            return Err(format!("component {digest} does not match its digest"));
        }
        shared.put(&digest, &bytes).map_err(|e| e.to_string())?;
        let back = shared.get(&digest).map_err(|e| e.to_string())?;
        if back.as_deref() != Some(&bytes[..]) {
            return Err(format!("component {digest} did not read back whole"));
        }
        out.components += 1;
        out.component_bytes += bytes.len() as u64;
    }

    // Image archives, once per image whichever tenants hold it.
    let archives = crate::pg::PgImages::new(to);
    let mut images: Vec<&str> = source.images.iter().map(|i| i.id.as_str()).collect();
    images.sort_unstable();
    images.dedup();
    for id in images {
        use perch_containers::SharedArchives;
        let path = perch_containers::archive::archive_path(&crate::api::images_dir(from), id);
        let (size, sha) = crate::backup::hash_file(&path)
            .map_err(|e| format!("image {id}'s archive {}: {e}", path.display()))?;
        archives.put(id, &path)?;
        if archives.checksum(id)?.map(|c| hex(&c)) != Some(sha) {
            return Err(format!("image {id}'s archive did not read back the same"));
        }
        out.images += 1;
        out.image_bytes += size;
    }

    // KV.
    let tenants: Vec<String> = source.tenants.iter().map(|t| t.name.clone()).collect();
    let node_kv = perch_kv::RedbKv::open(db.clone()).map_err(|e| e.to_string())?;
    let cluster_kv = perch_kv::PgKv::open(to, Arc::default(), Duration::from_secs(3600), 1 << 20)
        .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let (copied, checked) = rt.block_on(async {
        let copied = walk_kv(&node_kv, &tenants, async |ns, key, entry| {
            let e = |e: perch_kv::KvError| format!("KV {}/{}/{key}: {e}", ns.tenant, ns.name);
            cluster_kv.create_namespace(ns).await.map_err(e)?;
            let op = WriteOp::Put {
                key: key.to_string(),
                value: entry.value.clone(),
                options: PutOptions {
                    ttl: None,
                    metadata: entry.metadata.clone(),
                    expires_at_ms: entry.expires_at_ms,
                },
            };
            cluster_kv.write(ns, vec![op]).await.map_err(e)?;
            Ok(())
        })
        .await?;
        // Empty namespaces too.
        for tenant in &tenants {
            for name in node_kv
                .list_namespaces(tenant)
                .await
                .map_err(|e| e.to_string())?
            {
                cluster_kv
                    .create_namespace(&NamespaceId::new(tenant, &name))
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        let checked = walk_kv(&cluster_kv, &tenants, async |_, _, _| Ok(())).await?;
        Ok::<_, String>((copied, checked))
    })?;
    if copied != checked {
        return Err(format!(
            "KV did not read back the same: {} namespaces, {} keys, {} copied; {} namespaces, {} keys, {} read",
            copied.0, copied.1, copied.2, checked.0, checked.1, checked.2
        ));
    }
    (out.namespaces, out.keys, out.kv_sha256) = copied;

    // The audit log, with its ids, and the usage totals.
    let pool = perch_pg::Pool::new(to.clone(), "perch-migrate");
    let node_audit = crate::audit::RedbAudit::new(db.clone());
    let entries = all_audit(&node_audit)?;
    let cluster_audit = crate::pg::PgAudit::new(pool.clone());
    cluster_audit.import(&entries)?;
    out.audit_sha256 = audit_digest(&entries)?;
    if audit_digest(&all_audit(&cluster_audit)?)? != out.audit_sha256 {
        return Err("the audit log did not read back the same".into());
    }
    out.audit_entries = entries.len();
    let totals = crate::telemetry::usage::RedbUsage::new(db.clone()).load()?;
    let cluster_usage = crate::pg::PgUsage::new(pool, MIGRATED_NODE);
    cluster_usage.save(&totals)?;
    let sorted = |mut t: Vec<(String, crate::telemetry::usage::Totals)>| {
        t.sort_by(|a, b| a.0.cmp(&b.0));
        serde_json::to_string(&t).unwrap_or_default()
    };
    if sorted(cluster_usage.load()?) != sorted(totals.clone()) {
        return Err("the usage totals did not read back the same".into());
    }
    out.usage_tenants = totals.len();

    // The registry, in one commit.
    target
        .commit(0, &puts(&source))
        .map_err(|e| format!("the database: {e}"))?;
    let back = target
        .load()
        .map_err(|e| format!("the database: {e}"))?
        .records;
    out.registry_sha256 = registry_digest(&source);
    if registry_digest(&back) != out.registry_sha256 {
        return Err("the registry did not read back the same".into());
    }
    out.records = puts(&source).len();
    out.versions = source.functions.iter().map(|f| f.versions.len()).sum();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_key_must_be_the_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let key = "ab".repeat(32);
        assert!(check_key(dir.path(), None).is_err());
        assert!(check_key(dir.path(), Some(&key)).is_ok());
        std::fs::write(dir.path().join("secret.key"), format!("{key}\n")).unwrap();
        assert!(check_key(dir.path(), None).is_ok());
        assert!(check_key(dir.path(), Some(&key.to_uppercase())).is_ok());
        let other = "cd".repeat(32);
        let e = check_key(dir.path(), Some(&other)).unwrap_err();
        assert!(e.contains("PERCH_SECRET_KEY"), "{e}");
    }
}
