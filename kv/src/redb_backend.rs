//! The redb implementation of [`KvStore`].
//!
//! (One file of about 800 lines: the writer thread's group commit, the
//! overlay that makes a failing batch leave nothing, the purge and the
//! reads share the private job, outcome and cache types; split, they would
//! need crate-wide visibility for no reader's benefit.)
//!
//! Reads go through a moka cache; misses read redb on a blocking thread. All
//! writes go
//! through one writer thread that takes every job queued at that moment,
//! applies them in one transaction and commits once (group commit), then
//! invalidates the cache for the keys it touched and answers the callers,
//! whose tasks await the answer without holding a thread.
//! A cache fill racing a write is dropped (a write sequence number tells), so
//! a read after a write on this node never sees the old value.
use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use async_trait::async_trait;
use moka::sync::Cache;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};

use crate::apply::{entry_size, live, new_entry};
use crate::backend::{Job, Outcome, Reply, answer, get_many, start_purger, submit};
use crate::encoding::{
    decode_cursor, decode_entry, encode_cursor, encode_entry, expiry_key, full_key, ns_prefix,
    tenant_prefix,
};
use crate::{
    Entry, KeyInfo, KvError, KvQuotas, KvStore, KvUsage, NamespaceId, Page, WriteOp, WriteResult,
    now_ms,
};

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const KV_EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("kv_expiry");
const KV_NAMESPACES: TableDefinition<&str, u64> = TableDefinition::new("kv_namespaces");
/// Tenant → (bytes, keys) of its stored entries, kept in the transaction
/// of every write, purge and tenant deletion.
const KV_USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("kv_usage");

/// Jobs queued per transaction at most.
const MAX_GROUP: usize = 512;
/// Expired keys removed per purge pass at most.
const PURGE_BATCH: usize = 10_000;

fn storage(e: impl std::fmt::Display) -> KvError {
    KvError::Storage(e.to_string())
}

/// Counters for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct KvStats {
    /// Reads answered from the cache.
    pub cache_hits: AtomicU64,
    /// Reads that went to redb.
    pub cache_misses: AtomicU64,
    /// Write transactions committed.
    pub commits: AtomicU64,
    /// Write jobs committed (≥ commits: group commit).
    pub write_jobs: AtomicU64,
    /// Expired keys purged.
    pub purged: AtomicU64,
}

struct Shared {
    db: Arc<Database>,
    cache: Cache<Vec<u8>, Arc<Option<Entry>>>,
    /// Bumped after every commit, before the cache is invalidated.
    seq: AtomicU64,
    stats: KvStats,
    /// Namespaces seen to exist (they only go away with their tenant).
    namespaces: Mutex<HashSet<NamespaceId>>,
    /// Tenants' `kv_bytes` and `kv_keys` quotas.
    quotas: Arc<KvQuotas>,
}

/// The redb-backed store. It checks no sizes: put a
/// [`CheckedKv`](crate::CheckedKv) in front of it.
pub struct RedbKv {
    shared: Arc<Shared>,
    writer: Option<mpsc::Sender<Job>>,
    /// Dropping it stops the purge thread.
    stop_purge: Option<mpsc::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl RedbKv {
    /// Copies the KV tables (entries, expiries, namespaces, usage) from
    /// `from` into `to`, for a backup: one read transaction sees every
    /// write acknowledged before it began.
    pub fn copy_tables(
        from: &redb::ReadTransaction,
        to: &WriteTransaction,
    ) -> Result<(), redb::Error> {
        crate::copy::copy_table(from, to, KV)?;
        crate::copy::copy_table(from, to, KV_EXPIRY)?;
        crate::copy::copy_table(from, to, KV_NAMESPACES)?;
        crate::copy::copy_table(from, to, KV_USAGE)?;
        Ok(())
    }

    /// Opens the KV tables in `db` (creating them) and starts the writer and
    /// purge threads.
    pub fn open(db: Arc<Database>) -> Result<RedbKv, KvError> {
        RedbKv::open_with(db, Duration::from_secs(1), 64 << 20)
    }

    /// Like [`open`](Self::open), refusing writes past `quotas`.
    pub fn open_with_quotas(db: Arc<Database>, quotas: Arc<KvQuotas>) -> Result<RedbKv, KvError> {
        RedbKv::open_full(db, Duration::from_secs(1), 64 << 20, quotas)
    }

    /// Like [`open`](Self::open) with a purge interval and cache size (bytes).
    pub fn open_with(
        db: Arc<Database>,
        purge_every: Duration,
        cache_bytes: u64,
    ) -> Result<RedbKv, KvError> {
        RedbKv::open_full(db, purge_every, cache_bytes, Arc::default())
    }

    /// Opens with every setting.
    pub fn open_full(
        db: Arc<Database>,
        purge_every: Duration,
        cache_bytes: u64,
        quotas: Arc<KvQuotas>,
    ) -> Result<RedbKv, KvError> {
        // Data written before usage was kept gets its usage counted once.
        let counted = {
            let read = db.begin_read().map_err(storage)?;
            match read.open_table(KV_USAGE) {
                Ok(_) => true,
                Err(redb::TableError::TableDoesNotExist(_)) => false,
                Err(e) => return Err(storage(e)),
            }
        };
        let txn = db.begin_write().map_err(storage)?;
        {
            let kv = txn.open_table(KV).map_err(storage)?;
            txn.open_table(KV_EXPIRY).map_err(storage)?;
            txn.open_table(KV_NAMESPACES).map_err(storage)?;
            let mut usage = txn.open_table(KV_USAGE).map_err(storage)?;
            if !counted {
                count_usage(&kv, &mut usage)?;
            }
        }
        txn.commit().map_err(storage)?;

        let cache = Cache::builder()
            .max_capacity(cache_bytes)
            .weigher(|k: &Vec<u8>, v: &Arc<Option<Entry>>| {
                let size = k.len()
                    + v.as_ref()
                        .as_ref()
                        .map(|e| e.value.len() + 64)
                        .unwrap_or(16);
                size.min(u32::MAX as usize) as u32
            })
            .build();
        let shared = Arc::new(Shared {
            db,
            cache,
            seq: AtomicU64::new(0),
            stats: KvStats::default(),
            namespaces: Mutex::new(HashSet::new()),
            quotas,
        });
        let (tx, rx) = mpsc::channel();
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("perch-kv-writer".into())
            .spawn(move || writer_loop(&writer_shared, rx))
            .map_err(storage)?;
        let (stop_tx, purger) = start_purger(tx.clone(), purge_every)?;
        Ok(RedbKv {
            shared,
            writer: Some(tx),
            stop_purge: Some(stop_tx),
            threads: vec![purger, writer],
        })
    }

    /// Counters.
    pub fn stats(&self) -> &KvStats {
        &self.shared.stats
    }

    fn known_namespaces(&self) -> std::sync::MutexGuard<'_, HashSet<NamespaceId>> {
        self.shared.known_namespaces()
    }

    /// Removes expired keys now; returns how many.
    pub async fn purge_expired(&self) -> Result<usize, KvError> {
        self.submit(|reply| Job::Purge {
            now: now_ms(),
            reply: Some(reply),
        })
        .await
    }

    async fn submit<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, KvError> {
        submit(self.writer.as_ref(), job).await
    }

    /// Runs a read on a blocking thread: redb reads may wait on the disk.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T, KvError> + Send + 'static,
    ) -> Result<T, KvError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| KvError::Storage(format!("KV read task failed: {e}")))?
    }
}

impl Shared {
    fn known_namespaces(&self) -> std::sync::MutexGuard<'_, HashSet<NamespaceId>> {
        self.namespaces.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stored entries (expired ones too) of full keys, from one read
    /// transaction; fills the cache unless a commit raced the read.
    fn read_through(&self, keys: Vec<Vec<u8>>) -> Result<Vec<Option<Entry>>, KvError> {
        self.stats
            .cache_misses
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        let before = self.seq.load(Ordering::Acquire);
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(KV).map_err(storage)?;
        let mut entries = Vec::with_capacity(keys.len());
        for k in &keys {
            entries.push(match table.get(k.as_slice()).map_err(storage)? {
                Some(v) => Some(decode_entry(v.value())?),
                None => None,
            });
        }
        if self.seq.load(Ordering::Acquire) == before {
            for (k, e) in keys.into_iter().zip(&entries) {
                self.cache.insert(k, Arc::new(e.clone()));
            }
        }
        Ok(entries)
    }

    fn list(
        &self,
        ns: &NamespaceId,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, KvError> {
        let base = ns_prefix(ns);
        let mut scan_prefix = base.clone();
        scan_prefix.extend_from_slice(prefix.as_bytes());
        let start = match cursor.filter(|c| !c.is_empty()) {
            Some(c) => {
                let mut k = base.clone();
                k.extend_from_slice(&decode_cursor(c)?);
                Bound::Excluded(k)
            }
            None => Bound::Included(scan_prefix.clone()),
        };
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(KV).map_err(storage)?;
        let range = table
            .range::<&[u8]>((start.as_ref().map(Vec::as_slice), Bound::Unbounded))
            .map_err(storage)?;
        let now = now_ms();
        let mut keys = Vec::new();
        let mut more = false;
        for row in range {
            let (k, v) = row.map_err(storage)?;
            let k = k.value();
            if k < scan_prefix.as_slice() {
                continue; // a cursor from before the prefix
            }
            if !k.starts_with(&scan_prefix) {
                break;
            }
            let entry = decode_entry(v.value())?;
            if entry.expires_at_ms.is_some_and(|t| t <= now) {
                continue;
            }
            if keys.len() == limit {
                more = true;
                break;
            }
            let name = String::from_utf8(k[base.len()..].to_vec()).map_err(storage)?;
            keys.push(KeyInfo {
                name,
                expires_at_ms: entry.expires_at_ms,
                metadata: entry.metadata,
            });
        }
        let cursor = if more {
            keys.last().map(|k| encode_cursor(k.name.as_bytes()))
        } else {
            None
        };
        Ok(Page { keys, cursor })
    }

    fn list_namespaces(&self, tenant: &str) -> Result<Vec<String>, KvError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(KV_NAMESPACES).map_err(storage)?;
        let start = format!("{tenant}/");
        let mut out = Vec::new();
        for row in table.range(start.as_str()..).map_err(storage)? {
            let (k, _) = row.map_err(storage)?;
            match k.value().strip_prefix(&start) {
                Some(name) => out.push(name.to_string()),
                None => break,
            }
        }
        Ok(out)
    }

    fn namespace_exists(&self, ns: &NamespaceId) -> Result<bool, KvError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(KV_NAMESPACES).map_err(storage)?;
        let exists = table
            .get(format!("{}/{}", ns.tenant, ns.name).as_str())
            .map_err(storage)?
            .is_some();
        if exists {
            self.known_namespaces().insert(ns.clone());
        }
        Ok(exists)
    }
}

impl Drop for RedbKv {
    /// Stops the purge thread, lets the writer finish queued jobs, and joins
    /// both, so the database is released when this returns.
    fn drop(&mut self) {
        self.stop_purge.take();
        self.writer.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[async_trait]
impl KvStore for RedbKv {
    async fn get(&self, ns: &NamespaceId, key: &str) -> Result<Option<Entry>, KvError> {
        if let Some(hit) = self.get_cached(ns, key) {
            return Ok(hit);
        }
        let k = full_key(ns, key);
        let mut entries = self.read(move |s| s.read_through(vec![k])).await?;
        Ok(live(entries.pop().flatten(), now_ms()))
    }

    async fn write(
        &self,
        ns: &NamespaceId,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteResult>, KvError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let ns = ns.clone();
        // Awaits the writer's group commit without holding a blocking
        // thread: under concurrent writers most of a shared commit's cost is
        // waking the writers, and waking tasks is far cheaper than waking
        // one parked OS thread per writer.
        self.submit(|reply| Job::Write { ns, ops, reply }).await
    }

    async fn list(
        &self,
        ns: &NamespaceId,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, KvError> {
        let (ns, prefix, cursor) = (ns.clone(), prefix.to_string(), cursor.map(str::to_string));
        self.read(move |s| s.list(&ns, &prefix, cursor.as_deref(), limit))
            .await
    }

    async fn create_namespace(&self, ns: &NamespaceId) -> Result<bool, KvError> {
        if self.namespace_exists(ns).await? {
            return Ok(false);
        }
        let id = ns.clone();
        let created = self
            .submit(|reply| Job::CreateNamespace { ns: id, reply })
            .await?;
        self.known_namespaces().insert(ns.clone());
        Ok(created)
    }

    async fn namespace_exists(&self, ns: &NamespaceId) -> Result<bool, KvError> {
        if self.namespace_known(ns) {
            return Ok(true);
        }
        let ns = ns.clone();
        self.read(move |s| s.namespace_exists(&ns)).await
    }

    async fn list_namespaces(&self, tenant: &str) -> Result<Vec<String>, KvError> {
        let tenant = tenant.to_string();
        self.read(move |s| s.list_namespaces(&tenant)).await
    }

    async fn delete_tenant(&self, tenant: &str) -> Result<(), KvError> {
        let t = tenant.to_string();
        let result = self
            .submit(|reply| Job::DeleteTenant { tenant: t, reply })
            .await;
        self.known_namespaces().retain(|ns| ns.tenant != tenant);
        result
    }

    async fn usage(&self, tenant: &str) -> Result<KvUsage, KvError> {
        let tenant = tenant.to_string();
        self.read(move |s| {
            let txn = s.db.begin_read().map_err(storage)?;
            let table = txn.open_table(KV_USAGE).map_err(storage)?;
            read_usage(&table, &tenant)
        })
        .await
    }

    fn get_cached(&self, ns: &NamespaceId, key: &str) -> Option<Option<Entry>> {
        let hit = self.shared.cache.get(&full_key(ns, key))?;
        self.shared.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
        Some(live(hit.as_ref().clone(), now_ms()))
    }

    /// Namespaces are only removed with their tenant, so one seen to exist
    /// is known until then.
    fn namespace_known(&self, ns: &NamespaceId) -> bool {
        self.known_namespaces().contains(ns)
    }

    /// Cache hits inline, the misses from one read transaction.
    async fn get_many(
        &self,
        ns: &NamespaceId,
        keys: &[String],
    ) -> Result<Vec<Option<Entry>>, KvError> {
        get_many(self, ns, keys, |misses| {
            let misses: Vec<Vec<u8>> = misses.iter().map(|k| full_key(ns, k)).collect();
            self.read(move |s| s.read_through(misses))
        })
        .await
    }
}

fn writer_loop(shared: &Shared, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        run_group(shared, jobs);
    }
}

fn run_group(shared: &Shared, mut jobs: Vec<Job>) {
    let mut touched: Vec<Vec<u8>> = Vec::new();
    let mut flush_all = false;
    let result = (|| -> Result<Vec<Outcome>, KvError> {
        let txn = shared.db.begin_write().map_err(storage)?;
        let mut outcomes = Vec::with_capacity(jobs.len());
        {
            let mut t = Tables {
                kv: txn.open_table(KV).map_err(storage)?,
                expiry: txn.open_table(KV_EXPIRY).map_err(storage)?,
                usage: txn.open_table(KV_USAGE).map_err(storage)?,
            };
            for job in &mut jobs {
                outcomes.push(match job {
                    Job::Write { ns, ops, .. } => {
                        let quota = shared.quotas.get(&ns.tenant);
                        Outcome::Write(apply_write(&mut t, ns, ops, &mut touched, quota))
                    }
                    Job::CreateNamespace { ns, .. } => Outcome::Created(create_ns(&txn, ns)),
                    Job::DeleteTenant { tenant, .. } => {
                        flush_all = true;
                        Outcome::Deleted(delete_tenant(&txn, &mut t, tenant))
                    }
                    Job::Purge { now, .. } => Outcome::Purged(purge(&mut t, *now, &mut touched)),
                });
            }
        }
        txn.commit().map_err(storage)?;
        Ok(outcomes)
    })();

    shared.seq.fetch_add(1, Ordering::AcqRel);
    if flush_all || result.is_err() {
        shared.cache.invalidate_all();
    } else {
        for k in &touched {
            shared.cache.invalidate(k);
        }
    }
    if let Err(e) = &result {
        tracing::error!(error = %e, "KV commit failed");
    }
    answer(&shared.stats, jobs, result);
}

type KvTable<'t> = Table<'t, &'static [u8], &'static [u8]>;
type ExpiryTable<'t> = Table<'t, &'static [u8], ()>;
type UsageTable<'t> = Table<'t, &'static str, (u64, u64)>;

/// The tables a write transaction changes.
struct Tables<'t> {
    kv: KvTable<'t>,
    expiry: ExpiryTable<'t>,
    usage: UsageTable<'t>,
}

/// The same, of an encoded entry (its header is not counted).
fn encoded_size(key_len: usize, encoded: &[u8]) -> i64 {
    (key_len + encoded.len().saturating_sub(13)) as i64
}

fn read_usage(
    table: &impl ReadableTable<&'static str, (u64, u64)>,
    tenant: &str,
) -> Result<KvUsage, KvError> {
    Ok(table
        .get(tenant)
        .map_err(storage)?
        .map(|v| {
            let (bytes, keys) = v.value();
            KvUsage { bytes, keys }
        })
        .unwrap_or_default())
}

/// Adds `delta` (bytes, keys) to `tenant`'s usage.
fn add_usage(usage: &mut UsageTable<'_>, tenant: &str, delta: (i64, i64)) -> Result<(), KvError> {
    if delta == (0, 0) {
        return Ok(());
    }
    let next = read_usage(usage, tenant)?.plus(delta);
    if next == KvUsage::default() {
        usage.remove(tenant).map_err(storage)?;
    } else {
        usage
            .insert(tenant, (next.bytes, next.keys))
            .map_err(storage)?;
    }
    Ok(())
}

/// The tenant and the key length of a full key (`tenant 0 ns 0 key`).
fn split_full_key(k: &[u8]) -> Option<(&str, usize)> {
    let t = k.iter().position(|b| *b == 0)?;
    let n = k[t + 1..].iter().position(|b| *b == 0)?;
    let tenant = std::str::from_utf8(&k[..t]).ok()?;
    Some((tenant, k.len() - (t + 1 + n + 1)))
}

/// Counts every tenant's usage from the stored entries (once, for data
/// written before usage was kept).
fn count_usage(kv: &KvTable<'_>, usage: &mut UsageTable<'_>) -> Result<(), KvError> {
    let mut totals: HashMap<String, (i64, i64)> = HashMap::new();
    for row in kv.iter().map_err(storage)? {
        let (k, v) = row.map_err(storage)?;
        if let Some((tenant, key_len)) = split_full_key(k.value()) {
            let t = totals.entry(tenant.to_string()).or_default();
            t.0 += encoded_size(key_len, v.value());
            t.1 += 1;
        }
    }
    for (tenant, delta) in totals {
        add_usage(usage, &tenant, delta)?;
    }
    Ok(())
}

fn read_entry(kv: &KvTable<'_>, k: &[u8]) -> Result<Option<Entry>, KvError> {
    match kv.get(k).map_err(storage)? {
        Some(v) => Ok(Some(decode_entry(v.value())?)),
        None => Ok(None),
    }
}

/// The expiry of an encoded entry, read from its header.
fn stored_expiry(encoded: &[u8]) -> Option<u64> {
    let exp = u64::from_le_bytes(encoded.get(1..9)?.try_into().ok()?);
    (exp != 0).then_some(exp)
}

/// Applies one job. Jobs of puts and deletes only (which cannot fail) of a
/// tenant without KV quotas go straight to the table; anything else is
/// computed on an overlay first, so a failing op, or a job that would cross
/// a quota, leaves nothing behind.
fn apply_write(
    t: &mut Tables<'_>,
    ns: &NamespaceId,
    ops: &mut [WriteOp],
    touched: &mut Vec<Vec<u8>>,
    quota: crate::KvQuota,
) -> Result<Vec<WriteResult>, KvError> {
    let now = now_ms();
    if quota == crate::KvQuota::default()
        && ops
            .iter()
            .all(|op| matches!(op, WriteOp::Put { .. } | WriteOp::Delete { .. }))
    {
        return put_or_delete(t, ns, ops, touched, now);
    }
    apply_on_overlay(t, ns, ops, touched, now, quota)
}

/// Puts and deletes, without reading first: redb hands back the entry it
/// replaced, and that entry's expiry index key goes with it.
fn put_or_delete(
    t: &mut Tables<'_>,
    ns: &NamespaceId,
    ops: &mut [WriteOp],
    touched: &mut Vec<Vec<u8>>,
    now: u64,
) -> Result<Vec<WriteResult>, KvError> {
    let (kv, expiry) = (&mut t.kv, &mut t.expiry);
    let mut results = Vec::with_capacity(ops.len());
    let mut delta = (0i64, 0i64);
    for op in ops.iter_mut() {
        let key_len = op.key().len();
        let k = full_key(ns, op.key());
        // The replaced entry's expiry and size.
        let replaced = |v: Option<redb::AccessGuard<'_, &'static [u8]>>| {
            v.map(|v| (stored_expiry(v.value()), encoded_size(key_len, v.value())))
        };
        let (old, new) = match op {
            WriteOp::Put { value, options, .. } => {
                let entry = new_entry(std::mem::take(value), options, now);
                delta.0 += entry_size(key_len, &entry);
                delta.1 += 1;
                let old = replaced(
                    kv.insert(k.as_slice(), encode_entry(&entry).as_slice())
                        .map_err(storage)?,
                );
                (old, entry.expires_at_ms)
            }
            _ => (replaced(kv.remove(k.as_slice()).map_err(storage)?), None),
        };
        let old = old.map(|(expires, size)| {
            delta.0 -= size;
            delta.1 -= 1;
            expires
        });
        let old = old.flatten();
        if old != new {
            if let Some(t) = old {
                expiry
                    .remove(expiry_key(t, &k).as_slice())
                    .map_err(storage)?;
            }
            if let Some(t) = new {
                expiry
                    .insert(expiry_key(t, &k).as_slice(), ())
                    .map_err(storage)?;
            }
        }
        touched.push(k);
        results.push(WriteResult::Done);
    }
    add_usage(&mut t.usage, &ns.tenant, delta)?;
    Ok(results)
}

fn apply_on_overlay(
    t: &mut Tables<'_>,
    ns: &NamespaceId,
    ops: &[WriteOp],
    touched: &mut Vec<Vec<u8>>,
    now: u64,
    quota: crate::KvQuota,
) -> Result<Vec<WriteResult>, KvError> {
    let mut stored = HashMap::new();
    for op in ops {
        if !stored.contains_key(op.key()) {
            let entry = read_entry(&t.kv, &full_key(ns, op.key()))?;
            stored.insert(op.key().to_string(), entry);
        }
    }
    let applied = crate::apply::apply(ops, now, stored)?;
    // Refused past a quota before anything is written.
    if quota != crate::KvQuota::default() {
        read_usage(&t.usage, &ns.tenant)?.admit(applied.delta, quota)?;
    }
    let (kv, expiry) = (&mut t.kv, &mut t.expiry);
    for change in applied.changes {
        let k = full_key(ns, &change.key);
        if let Some(t) = change.before.as_ref().and_then(|e| e.expires_at_ms) {
            expiry
                .remove(expiry_key(t, &k).as_slice())
                .map_err(storage)?;
        }
        match &change.after {
            Some(e) => {
                kv.insert(k.as_slice(), encode_entry(e).as_slice())
                    .map_err(storage)?;
                if let Some(t) = e.expires_at_ms {
                    expiry
                        .insert(expiry_key(t, &k).as_slice(), ())
                        .map_err(storage)?;
                }
            }
            None => {
                kv.remove(k.as_slice()).map_err(storage)?;
            }
        }
        touched.push(k);
    }
    add_usage(&mut t.usage, &ns.tenant, applied.delta)?;
    Ok(applied.results)
}

fn create_ns(txn: &WriteTransaction, ns: &NamespaceId) -> Result<bool, KvError> {
    let mut t = txn.open_table(KV_NAMESPACES).map_err(storage)?;
    let key = format!("{}/{}", ns.tenant, ns.name);
    if t.get(key.as_str()).map_err(storage)?.is_some() {
        return Ok(false);
    }
    t.insert(key.as_str(), now_ms()).map_err(storage)?;
    Ok(true)
}

fn delete_tenant(txn: &WriteTransaction, t: &mut Tables<'_>, tenant: &str) -> Result<(), KvError> {
    t.usage.remove(tenant).map_err(storage)?;
    let (kv, expiry) = (&mut t.kv, &mut t.expiry);
    let prefix = tenant_prefix(tenant);
    let mut doomed = Vec::new();
    for row in kv.range::<&[u8]>(prefix.as_slice()..).map_err(storage)? {
        let (k, v) = row.map_err(storage)?;
        if !k.value().starts_with(&prefix) {
            break;
        }
        let e = decode_entry(v.value())?;
        doomed.push((k.value().to_vec(), e.expires_at_ms));
    }
    for (k, exp) in doomed {
        kv.remove(k.as_slice()).map_err(storage)?;
        if let Some(t) = exp {
            expiry
                .remove(expiry_key(t, &k).as_slice())
                .map_err(storage)?;
        }
    }
    let mut ns = txn.open_table(KV_NAMESPACES).map_err(storage)?;
    let start = format!("{tenant}/");
    let names: Vec<String> = ns
        .range(start.as_str()..)
        .map_err(storage)?
        .map_while(|r| {
            r.ok()
                .map(|(k, _)| k.value().to_string())
                .filter(|k| k.starts_with(&start))
        })
        .collect();
    for n in names {
        ns.remove(n.as_str()).map_err(storage)?;
    }
    Ok(())
}

fn purge(t: &mut Tables<'_>, now: u64, touched: &mut Vec<Vec<u8>>) -> Result<usize, KvError> {
    let (kv, expiry) = (&mut t.kv, &mut t.expiry);
    let end = (now + 1).to_be_bytes();
    let mut due = Vec::new();
    for row in expiry.range::<&[u8]>(..end.as_slice()).map_err(storage)? {
        let (k, _) = row.map_err(storage)?;
        due.push(k.value().to_vec());
        if due.len() >= PURGE_BATCH {
            break;
        }
    }
    let mut purged = 0;
    let mut gone: HashMap<String, (i64, i64)> = HashMap::new();
    for ek in due {
        expiry.remove(ek.as_slice()).map_err(storage)?;
        let t = u64::from_be_bytes(ek[..8].try_into().map_err(storage)?);
        let k = &ek[8..];
        // Only if the stored entry still carries this expiry (not re-put since).
        let Some(entry) = read_entry(kv, k)?.filter(|e| e.expires_at_ms == Some(t)) else {
            continue;
        };
        kv.remove(k).map_err(storage)?;
        if let Some((tenant, key_len)) = split_full_key(k) {
            let d = gone.entry(tenant.to_string()).or_insert((0, 0));
            d.0 -= entry_size(key_len, &entry);
            d.1 -= 1;
        }
        touched.push(k.to_vec());
        purged += 1;
    }
    for (tenant, delta) in gone {
        add_usage(&mut t.usage, &tenant, delta)?;
    }
    Ok(purged)
}

impl std::fmt::Debug for RedbKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbKv").finish_non_exhaustive()
    }
}
