//! The PostgreSQL implementation of [`KvStore`] (cluster mode): the same
//! semantics as [`RedbKv`](crate::RedbKv), shared by every node on one
//! database.
//!
//! - Rows of `perch_kv (tenant, ns, key bytea, value bytea, metadata bytea,
//!   expires_at_ms)`: keys are bytes (any byte, U+0000 too, and bytewise
//!   order for listings), metadata is kept verbatim (not `jsonb`, which
//!   would reorder it).
//! - Writes go through one writer thread per node that takes every job
//!   queued at the moment into one transaction (group commit): it first
//!   locks the usage rows of the tenants involved (in name order, so two
//!   nodes' groups cannot deadlock on them), which also serialises every
//!   writer of a tenant across the cluster; the keys every job of the
//!   group touches are read in one statement, each job works out its
//!   result on what the jobs before it left (`apply`) or is refused past a
//!   quota, and the group's changes are written in at most two statements:
//!   a group costs a handful of round trips however many jobs it holds. A
//!   group that meets a deadlock or serialisation failure is run again.
//! - Reads go through a moka cache, filled from the pool. Every commit
//!   announces its keys on `NOTIFY perch_kv`; each node's listening
//!   connection invalidates them, so another node sees a write as soon as
//!   the notification lands. While that connection is down the cache is
//!   bypassed (and emptied when it comes back), so a node never serves
//!   what it cannot know is current. A node reads its own writes: the
//!   writer invalidates before it answers, and a fill racing any
//!   invalidation is dropped.
//! - The TTL purge runs on one node at a time (a transaction-scoped
//!   advisory lock; the others skip that round).
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use async_trait::async_trait;
use moka::sync::Cache;
use perch_pg::postgres::{self, Client, Transaction};
use perch_pg::{Dedicated, Listening, PgConfig, Pool};

use crate::apply::{Applied, apply, live};
use crate::backend::{Job, Outcome, Reply, answer, get_many, start_purger, submit};
use crate::encoding::{decode_cursor, encode_cursor, full_key};
use crate::{
    Entry, KeyInfo, KvError, KvQuotas, KvStats, KvStore, KvUsage, NamespaceId, Page, WriteOp,
    WriteResult, now_ms,
};

const MIGRATIONS: &[&str] = &[
    // 1: entries, namespaces, usage.
    "CREATE TABLE perch_kv_namespaces (
         tenant text NOT NULL,
         name text NOT NULL,
         created_ms bigint NOT NULL,
         PRIMARY KEY (tenant, name)
     );
     CREATE TABLE perch_kv (
         tenant text NOT NULL,
         ns text NOT NULL,
         key bytea NOT NULL,
         value bytea NOT NULL,
         metadata bytea,
         expires_at_ms bigint,
         PRIMARY KEY (tenant, ns, key)
     );
     CREATE INDEX perch_kv_expiry ON perch_kv (expires_at_ms) WHERE expires_at_ms IS NOT NULL;
     CREATE TABLE perch_kv_usage (
         tenant text PRIMARY KEY,
         bytes bigint NOT NULL,
         keys bigint NOT NULL
     );",
];

/// The channel commits announce their keys on.
const CHANNEL: &str = "perch_kv";
/// A notification's payload stays below PostgreSQL's 8000 bytes.
const NOTE_BYTES: usize = 7000;
/// The advisory lock the purge holds for its transaction.
const PURGE_LOCK: i64 = 0x7065_7263_6b76; // "perckv"
/// Jobs per transaction at most.
const MAX_GROUP: usize = 256;
/// Expired keys removed per purge pass at most.
const PURGE_BATCH: i64 = 10_000;
/// Runs of a group that met a deadlock or serialisation failure.
const ATTEMPTS: usize = 3;

fn storage(e: impl std::fmt::Display) -> KvError {
    KvError::Storage(e.to_string())
}

/// No connection to be had (from the pool, or a new one).
fn unreachable_db(e: String) -> KvError {
    KvError::Unavailable(e)
}

/// A failed statement: the database out of reach (the connection broke;
/// SQLSTATE classes 08 connection exception, 53 insufficient resources, 57
/// operator intervention such as a shutdown) is [`KvError::Unavailable`],
/// anything else [`KvError::Storage`].
fn db(e: postgres::Error) -> KvError {
    let out_of_reach = match e.code() {
        None => true,
        Some(code) => matches!(&code.code()[..2], "08" | "53" | "57"),
    };
    let text = perch_pg::describe(&e);
    if out_of_reach {
        KvError::Unavailable(text)
    } else {
        KvError::Storage(text)
    }
}

/// What the node remembers, shared with the listening thread.
#[derive(Clone)]
struct Memory {
    cache: Cache<Vec<u8>, Arc<Option<Entry>>>,
    /// Bumped at every invalidation, before it: a fill that began earlier
    /// is dropped.
    seq: Arc<AtomicU64>,
    /// Namespaces seen to exist (they only go away with their tenant).
    namespaces: Arc<Mutex<HashSet<NamespaceId>>>,
    /// Whether the listening connection is up: the cache is only used then.
    listening: Arc<AtomicBool>,
}

impl Memory {
    fn namespaces(&self) -> std::sync::MutexGuard<'_, HashSet<NamespaceId>> {
        self.namespaces.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forget_all(&self) {
        self.seq.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate_all();
        self.namespaces().clear();
    }

    fn forget_keys(&self, keys: &[Vec<u8>]) {
        self.seq.fetch_add(1, Ordering::AcqRel);
        for k in keys {
            self.cache.invalidate(k);
        }
    }

    /// Namespaces first: once a key of the tenant reads as gone, so does
    /// its namespace.
    fn forget_tenant(&self, tenant: &str) {
        self.forget_namespaces(tenant);
        self.forget_all_entries();
    }

    fn forget_namespaces(&self, tenant: &str) {
        self.namespaces().retain(|ns| ns.tenant != tenant);
    }

    fn forget_all_entries(&self) {
        self.seq.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate_all();
    }

    /// Applies one notification's payload: hex full keys separated by
    /// spaces, or `tenant:<name>` after a tenant's deletion.
    fn note(&self, payload: &str) {
        if let Some(tenant) = payload.strip_prefix("tenant:") {
            self.forget_tenant(tenant);
            return;
        }
        let keys: Vec<Vec<u8>> = payload
            .split(' ')
            .filter_map(|k| decode_cursor(k).ok())
            .collect();
        self.forget_keys(&keys);
    }
}

struct Shared {
    pool: Pool,
    memory: Memory,
    stats: KvStats,
    quotas: Arc<KvQuotas>,
}

/// The PostgreSQL-backed store. It checks no sizes: put a
/// [`CheckedKv`](crate::CheckedKv) in front of it.
pub struct PgKv {
    shared: Arc<Shared>,
    writer: Option<mpsc::Sender<Job>>,
    stop_purge: Option<mpsc::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    _listening: Listening,
}

impl PgKv {
    /// Connects, applies the schema migrations (refusing a newer schema),
    /// starts listening for other nodes' writes and starts the writer and
    /// purge threads. Blocking.
    pub fn open(
        config: &PgConfig,
        quotas: Arc<KvQuotas>,
        purge_every: Duration,
        cache_bytes: u64,
    ) -> Result<PgKv, KvError> {
        let mut writer_client = config.connect("perch-kv-writer").map_err(storage)?;
        perch_pg::migrate(&mut writer_client, "perch_kv_schema", MIGRATIONS).map_err(storage)?;
        let memory = Memory {
            cache: Cache::builder()
                .max_capacity(cache_bytes)
                .weigher(|k: &Vec<u8>, v: &Arc<Option<Entry>>| {
                    let size = k.len() + v.as_ref().as_ref().map_or(16, |e| e.value.len() + 64);
                    size.min(u32::MAX as usize) as u32
                })
                .build(),
            seq: Arc::new(AtomicU64::new(0)),
            namespaces: Arc::default(),
            listening: Arc::new(AtomicBool::new(false)),
        };
        let (on_connect, on_note) = (memory.clone(), memory.clone());
        let listening = perch_pg::listen(
            config,
            "perch-kv-listen",
            &[CHANNEL],
            move |_client| {
                // Whatever was written while nobody listened is unknown.
                on_connect.forget_all();
                on_connect.listening.store(true, Ordering::Release);
                Ok(())
            },
            move |_channel, payload| on_note.note(payload),
        )
        .map_err(storage)?;
        // Reads may use the cache from the start (if the connection comes
        // later, they go to the database meanwhile).
        listening.wait_connected(config.connect_timeout);
        let shared = Arc::new(Shared {
            pool: Pool::new(config.clone(), "perch-kv"),
            memory,
            stats: KvStats::default(),
            quotas,
        });
        let (tx, rx) = mpsc::channel();
        let writer_shared = shared.clone();
        let writer_config = config.clone();
        let writer = std::thread::Builder::new()
            .name("perch-kv-writer".into())
            .spawn(move || writer_loop(&writer_shared, &writer_config, writer_client, rx))
            .map_err(storage)?;
        let (stop_tx, purger) = start_purger(tx.clone(), purge_every)?;
        Ok(PgKv {
            shared,
            writer: Some(tx),
            stop_purge: Some(stop_tx),
            threads: vec![purger, writer],
            _listening: listening,
        })
    }

    /// Counters.
    pub fn stats(&self) -> &KvStats {
        &self.shared.stats
    }

    /// Removes expired keys now (unless another node is purging); returns
    /// how many.
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

    /// Runs `f` with a pooled connection on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared, &mut Client) -> Result<T, KvError> + Send + 'static,
    ) -> Result<T, KvError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let mut client = shared.pool.get().map_err(unreachable_db)?;
            f(&shared, &mut client)
        })
        .await
        .map_err(|e| KvError::Storage(format!("KV read task failed: {e}")))?
    }
}

impl Drop for PgKv {
    fn drop(&mut self) {
        self.stop_purge.take();
        self.writer.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for PgKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgKv").finish_non_exhaustive()
    }
}

/// An entry from a row's `value, metadata, expires_at_ms`.
fn entry(
    value: Vec<u8>,
    metadata: Option<Vec<u8>>,
    expires: Option<i64>,
) -> Result<Entry, KvError> {
    Ok(Entry {
        value,
        metadata: metadata
            .map(String::from_utf8)
            .transpose()
            .map_err(|_| storage("corrupt metadata (not UTF-8)"))?,
        expires_at_ms: expires.map(|t| t as u64),
    })
}

/// The stored entries (expired ones too) of `keys` in `ns`.
fn read_keys(
    client: &mut impl postgres::GenericClient,
    ns: &NamespaceId,
    keys: &[&str],
) -> Result<HashMap<String, Option<Entry>>, KvError> {
    let wanted: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let rows = client
        .query(
            "SELECT key, value, metadata, expires_at_ms FROM perch_kv
             WHERE tenant = $1 AND ns = $2 AND key = ANY($3)",
            &[&ns.tenant, &ns.name, &wanted],
        )
        .map_err(db)?;
    let mut out: HashMap<String, Option<Entry>> =
        keys.iter().map(|k| (k.to_string(), None)).collect();
    for row in rows {
        let key = String::from_utf8(row.get(0)).map_err(storage)?;
        out.insert(key, Some(entry(row.get(1), row.get(2), row.get(3))?));
    }
    Ok(out)
}

impl Shared {
    /// Entries of `keys`, from the database; fills the cache unless an
    /// invalidation raced the read or the listener is down.
    fn read_through(
        &self,
        client: &mut Client,
        ns: &NamespaceId,
        keys: &[String],
    ) -> Result<Vec<Option<Entry>>, KvError> {
        self.stats
            .cache_misses
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        let memory = &self.memory;
        let before = memory.seq.load(Ordering::Acquire);
        let listening = memory.listening.load(Ordering::Acquire);
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut found = read_keys(client, ns, &refs)?;
        let entries: Vec<Option<Entry>> = keys.iter().map(|k| found.remove(k).flatten()).collect();
        if listening && memory.seq.load(Ordering::Acquire) == before {
            for (k, e) in keys.iter().zip(&entries) {
                memory.cache.insert(full_key(ns, k), Arc::new(e.clone()));
            }
        }
        Ok(entries)
    }
}

/// The smallest byte string above every string starting with `prefix`
/// (`None`: there is none).
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut s = prefix.to_vec();
    while let Some(last) = s.pop() {
        if last < 0xff {
            s.push(last + 1);
            return Some(s);
        }
    }
    None
}

fn list(
    client: &mut Client,
    ns: &NamespaceId,
    prefix: &str,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Page, KvError> {
    let prefix = prefix.as_bytes();
    let after: Option<Vec<u8>> = match cursor.filter(|c| !c.is_empty()) {
        Some(c) => Some(decode_cursor(c)?),
        None => None,
    };
    let upper = successor(prefix);
    let rows = client
        .query(
            "SELECT key, metadata, expires_at_ms FROM perch_kv
             WHERE tenant = $1 AND ns = $2 AND key >= $3
               AND ($4::bytea IS NULL OR key > $4)
               AND ($5::bytea IS NULL OR key < $5)
               AND (expires_at_ms IS NULL OR expires_at_ms > $6)
             ORDER BY key LIMIT $7",
            &[
                &ns.tenant,
                &ns.name,
                &prefix,
                &after,
                &upper,
                &(now_ms() as i64),
                &(limit as i64 + 1),
            ],
        )
        .map_err(db)?;
    let more = rows.len() > limit;
    let mut keys = Vec::with_capacity(rows.len().min(limit));
    for row in rows.into_iter().take(limit) {
        let e = entry(Vec::new(), row.get(1), row.get(2))?;
        keys.push(KeyInfo {
            name: String::from_utf8(row.get(0)).map_err(storage)?,
            expires_at_ms: e.expires_at_ms,
            metadata: e.metadata,
        });
    }
    let cursor = if more {
        keys.last().map(|k| encode_cursor(k.name.as_bytes()))
    } else {
        None
    };
    Ok(Page { keys, cursor })
}

#[async_trait]
impl KvStore for PgKv {
    async fn get(&self, ns: &NamespaceId, key: &str) -> Result<Option<Entry>, KvError> {
        if let Some(hit) = self.get_cached(ns, key) {
            return Ok(hit);
        }
        let (ns, key) = (ns.clone(), vec![key.to_string()]);
        let mut got = self.read(move |s, c| s.read_through(c, &ns, &key)).await?;
        Ok(live(got.pop().flatten(), now_ms()))
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
        self.read(move |_, c| list(c, &ns, &prefix, cursor.as_deref(), limit))
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
        self.shared.memory.namespaces().insert(ns.clone());
        Ok(created)
    }

    async fn namespace_exists(&self, ns: &NamespaceId) -> Result<bool, KvError> {
        if self.namespace_known(ns) {
            return Ok(true);
        }
        let id = ns.clone();
        let exists = self
            .read(move |_, c| {
                c.query_opt(
                    "SELECT 1 FROM perch_kv_namespaces WHERE tenant = $1 AND name = $2",
                    &[&id.tenant, &id.name],
                )
                .map(|r| r.is_some())
                .map_err(db)
            })
            .await?;
        if exists && self.shared.memory.listening.load(Ordering::Acquire) {
            self.shared.memory.namespaces().insert(ns.clone());
        }
        Ok(exists)
    }

    async fn list_namespaces(&self, tenant: &str) -> Result<Vec<String>, KvError> {
        let tenant = tenant.to_string();
        self.read(move |_, c| {
            let rows = c
                .query(
                    "SELECT name FROM perch_kv_namespaces WHERE tenant = $1 ORDER BY name COLLATE \"C\"",
                    &[&tenant],
                )
                .map_err(db)?;
            Ok(rows.into_iter().map(|r| r.get(0)).collect())
        })
        .await
    }

    async fn delete_tenant(&self, tenant: &str) -> Result<(), KvError> {
        // The writer forgets what this node knew of the tenant before it
        // answers.
        let tenant = tenant.to_string();
        self.submit(|reply| Job::DeleteTenant { tenant, reply })
            .await
    }

    async fn usage(&self, tenant: &str) -> Result<KvUsage, KvError> {
        let tenant = tenant.to_string();
        self.read(move |_, c| {
            let row = c
                .query_opt(
                    "SELECT bytes, keys FROM perch_kv_usage WHERE tenant = $1",
                    &[&tenant],
                )
                .map_err(db)?;
            Ok(row.map_or_else(KvUsage::default, |r| KvUsage {
                bytes: r.get::<_, i64>(0).max(0) as u64,
                keys: r.get::<_, i64>(1).max(0) as u64,
            }))
        })
        .await
    }

    fn get_cached(&self, ns: &NamespaceId, key: &str) -> Option<Option<Entry>> {
        let memory = &self.shared.memory;
        if !memory.listening.load(Ordering::Acquire) {
            return None;
        }
        let hit = memory.cache.get(&full_key(ns, key))?;
        self.shared.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
        Some(live(hit.as_ref().clone(), now_ms()))
    }

    fn namespace_known(&self, ns: &NamespaceId) -> bool {
        let memory = &self.shared.memory;
        memory.listening.load(Ordering::Acquire) && memory.namespaces().contains(ns)
    }

    async fn get_many(
        &self,
        ns: &NamespaceId,
        keys: &[String],
    ) -> Result<Vec<Option<Entry>>, KvError> {
        let id = ns.clone();
        get_many(self, ns, keys, |misses| {
            self.read(move |s, c| s.read_through(c, &id, &misses))
        })
        .await
    }
}

fn writer_loop(shared: &Shared, config: &PgConfig, client: Client, rx: mpsc::Receiver<Job>) {
    let mut client = Dedicated::with(config, "perch-kv-writer", client);
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        // A purge runs alone: its tenants are only known inside it.
        if !matches!(jobs[0], Job::Purge { .. }) {
            while jobs.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(job @ Job::Purge { .. }) => {
                        run_group(shared, &mut client, jobs);
                        jobs = vec![job];
                        break;
                    }
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
        }
        run_group(shared, &mut client, jobs);
    }
}

/// What a group's transaction touched, announced after its commit.
#[derive(Default)]
struct Touched {
    keys: Vec<Vec<u8>>,
    tenants: Vec<String>,
}

fn run_group(shared: &Shared, client: &mut Dedicated, jobs: Vec<Job>) {
    let mut result = Err(Retry::Failed(storage("not run")));
    let mut touched = Touched::default();
    for attempt in 1..=ATTEMPTS {
        touched = Touched::default();
        let conn = match client.get() {
            Ok(c) => c,
            Err(e) => {
                result = Err(Retry::Failed(unreachable_db(e)));
                break;
            }
        };
        result = run_transaction(shared, conn, &jobs, &mut touched);
        match &result {
            Err(Retry::Again(e)) if attempt < ATTEMPTS => {
                tracing::debug!(error = %e, attempt, "KV group met a conflict; running it again");
            }
            _ => break,
        }
    }
    let result = result.map_err(|e| match e {
        Retry::Again(e) | Retry::Failed(e) => e,
    });
    // Whatever the outcome, what this node remembers of the touched keys
    // goes (a failed commit may still have happened).
    let memory = &shared.memory;
    if !touched.tenants.is_empty() || result.is_err() {
        memory.forget_all_entries();
    } else {
        memory.forget_keys(&touched.keys);
    }
    for job in &jobs {
        if let Job::DeleteTenant { tenant, .. } = job {
            memory.forget_namespaces(tenant);
        }
    }
    if let Err(e) = &result {
        tracing::warn!(error = %e, "KV commit failed");
    }
    answer(&shared.stats, jobs, result);
}

/// A failed transaction: worth running again (deadlock, serialisation
/// failure), or not.
enum Retry {
    Again(KvError),
    Failed(KvError),
}

impl From<postgres::Error> for Retry {
    fn from(e: postgres::Error) -> Retry {
        let again = e.code().is_some_and(|c| {
            *c == postgres::error::SqlState::T_R_DEADLOCK_DETECTED
                || *c == postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
        });
        if again {
            Retry::Again(db(e))
        } else {
            Retry::Failed(db(e))
        }
    }
}

impl From<KvError> for Retry {
    fn from(e: KvError) -> Retry {
        Retry::Failed(e)
    }
}

/// Usage rows locked by a group: the tenant's usage now, and whether the
/// group changed it.
type Usage = HashMap<String, (KvUsage, bool)>;

fn run_transaction(
    shared: &Shared,
    client: &mut Client,
    jobs: &[Job],
    touched: &mut Touched,
) -> Result<Vec<Outcome>, Retry> {
    let mut txn = client.transaction()?;
    let mut outcomes = Vec::with_capacity(jobs.len());
    if let [Job::Purge { now, .. }] = jobs {
        outcomes.push(Outcome::Purged(Ok(purge(&mut txn, *now, touched)?)));
    } else {
        let mut tenants: Vec<&str> = jobs
            .iter()
            .filter_map(|j| match j {
                Job::Write { ns, .. } => Some(ns.tenant.as_str()),
                Job::DeleteTenant { tenant, .. } => Some(tenant.as_str()),
                _ => None,
            })
            .collect();
        tenants.sort_unstable();
        tenants.dedup();
        let mut usage = lock_usage(&mut txn, &tenants)?;
        let mut pending = Pending::read(&mut txn, jobs)?;
        for job in jobs {
            outcomes.push(match job {
                Job::Write { ns, ops, .. } => {
                    let quota = shared.quotas.get(&ns.tenant);
                    Outcome::Write(write_job(&mut pending, ns, ops, quota, &mut usage, touched))
                }
                Job::CreateNamespace { ns, .. } => {
                    let n = txn.execute(
                        "INSERT INTO perch_kv_namespaces (tenant, name, created_ms)
                         VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                        &[&ns.tenant, &ns.name, &(now_ms() as i64)],
                    )?;
                    Outcome::Created(Ok(n == 1))
                }
                Job::DeleteTenant { tenant, .. } => {
                    // Earlier jobs' writes first, so that they go too.
                    pending.flush(&mut txn)?;
                    pending.forget_tenant(tenant);
                    txn.execute("DELETE FROM perch_kv WHERE tenant = $1", &[tenant])?;
                    txn.execute(
                        "DELETE FROM perch_kv_namespaces WHERE tenant = $1",
                        &[tenant],
                    )?;
                    usage.insert(tenant.clone(), (KvUsage::default(), true));
                    touched.tenants.push(tenant.clone());
                    Outcome::Deleted(Ok(()))
                }
                Job::Purge { .. } => unreachable!("a purge runs alone"),
            });
        }
        pending.flush(&mut txn)?;
        save_usage(&mut txn, usage)?;
    }
    announce(&mut txn, touched)?;
    txn.commit()?;
    Ok(outcomes)
}

/// Locks the usage rows of `tenants` (sorted), creating missing ones.
fn lock_usage(txn: &mut Transaction<'_>, tenants: &[&str]) -> Result<Usage, Retry> {
    let mut usage = Usage::new();
    if tenants.is_empty() {
        return Ok(usage);
    }
    txn.execute(
        "INSERT INTO perch_kv_usage (tenant, bytes, keys)
         SELECT t, 0, 0 FROM unnest($1::text[]) AS t ORDER BY t COLLATE \"C\"
         ON CONFLICT DO NOTHING",
        &[&tenants],
    )?;
    for row in txn.query(
        "SELECT tenant, bytes, keys FROM perch_kv_usage WHERE tenant = ANY($1)
         ORDER BY tenant COLLATE \"C\" FOR UPDATE",
        &[&tenants],
    )? {
        let u = KvUsage {
            bytes: row.get::<_, i64>(1).max(0) as u64,
            keys: row.get::<_, i64>(2).max(0) as u64,
        };
        usage.insert(row.get(0), (u, false));
    }
    Ok(usage)
}

fn save_usage(txn: &mut Transaction<'_>, usage: Usage) -> Result<(), Retry> {
    for (tenant, (u, changed)) in usage {
        if changed {
            txn.execute(
                "UPDATE perch_kv_usage SET bytes = $2, keys = $3 WHERE tenant = $1",
                &[&tenant, &(u.bytes as i64), &(u.keys as i64)],
            )?;
        }
    }
    Ok(())
}

/// What a group's write jobs see and leave: every key they touch, read in
/// one statement before the first job (`None`: absent), updated as each
/// job applies, and written in (at most) two statements at the end
/// ([`Pending::flush`]), so a group of N jobs costs a few round trips,
/// not 2N.
#[derive(Default)]
struct Pending {
    state: HashMap<(NamespaceId, String), Option<Entry>>,
    /// Keys a job changed since the last flush.
    dirty: HashSet<(NamespaceId, String)>,
}

impl Pending {
    /// Reads the stored entries (expired ones too) of every key the write
    /// jobs of `jobs` touch.
    fn read(txn: &mut Transaction<'_>, jobs: &[Job]) -> Result<Pending, Retry> {
        let mut wanted: HashSet<(NamespaceId, String)> = HashSet::new();
        for job in jobs {
            if let Job::Write { ns, ops, .. } = job {
                wanted.extend(ops.iter().map(|op| (ns.clone(), op.key().to_string())));
            }
        }
        let mut pending = Pending::default();
        if wanted.is_empty() {
            return Ok(pending);
        }
        let (mut tenants, mut names, mut keys) = (vec![], vec![], vec![]);
        for (ns, key) in &wanted {
            tenants.push(ns.tenant.as_str());
            names.push(ns.name.as_str());
            keys.push(key.as_bytes());
        }
        let rows = txn.query(
            "SELECT tenant, ns, key, value, metadata, expires_at_ms FROM perch_kv
             WHERE (tenant, ns, key) IN
                   (SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]))",
            &[&tenants, &names, &keys],
        )?;
        pending.state = wanted.into_iter().map(|k| (k, None)).collect();
        for row in rows {
            let ns = NamespaceId::new(row.get::<_, &str>(0), row.get::<_, &str>(1));
            let key = String::from_utf8(row.get(2)).map_err(storage)?;
            let e = entry(row.get(3), row.get(4), row.get(5))?;
            pending.state.insert((ns, key), Some(e));
        }
        Ok(pending)
    }

    /// Writes what the jobs since the last flush left: one upsert, one
    /// delete.
    fn flush(&mut self, txn: &mut Transaction<'_>) -> Result<(), Retry> {
        let (mut pt, mut pn, mut pk, mut values, mut metas, mut expiries) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut dt, mut dn, mut dk) = (vec![], vec![], vec![]);
        for slot in &self.dirty {
            let (ns, key) = slot;
            match self.state.get(slot).and_then(Option::as_ref) {
                Some(e) => {
                    pt.push(ns.tenant.as_str());
                    pn.push(ns.name.as_str());
                    pk.push(key.as_bytes());
                    values.push(e.value.as_slice());
                    metas.push(e.metadata.as_deref().map(str::as_bytes));
                    expiries.push(e.expires_at_ms.map(|t| t as i64));
                }
                None => {
                    dt.push(ns.tenant.as_str());
                    dn.push(ns.name.as_str());
                    dk.push(key.as_bytes());
                }
            }
        }
        if !pk.is_empty() {
            txn.execute(
                "INSERT INTO perch_kv (tenant, ns, key, value, metadata, expires_at_ms)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[],
                                      $5::bytea[], $6::int8[])
                 ON CONFLICT (tenant, ns, key) DO UPDATE
                 SET value = EXCLUDED.value, metadata = EXCLUDED.metadata,
                     expires_at_ms = EXCLUDED.expires_at_ms",
                &[&pt, &pn, &pk, &values, &metas, &expiries],
            )?;
        }
        if !dk.is_empty() {
            txn.execute(
                "DELETE FROM perch_kv WHERE (tenant, ns, key) IN
                     (SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]))",
                &[&dt, &dn, &dk],
            )?;
        }
        self.dirty.clear();
        Ok(())
    }

    /// After a tenant's keys were deleted: none of them is stored.
    fn forget_tenant(&mut self, tenant: &str) {
        for ((ns, _), entry) in self.state.iter_mut() {
            if ns.tenant == tenant {
                *entry = None;
            }
        }
    }
}

/// One write job, applied to `pending`: `Err` when the job fails on its
/// own (an op, a quota), changing nothing, and the group goes on without
/// it.
fn write_job(
    pending: &mut Pending,
    ns: &NamespaceId,
    ops: &[WriteOp],
    quota: crate::KvQuota,
    usage: &mut Usage,
    touched: &mut Touched,
) -> Result<Vec<WriteResult>, KvError> {
    let stored: HashMap<String, Option<Entry>> = ops
        .iter()
        .map(|op| {
            let key = op.key().to_string();
            let e = pending
                .state
                .get(&(ns.clone(), key.clone()))
                .cloned()
                .flatten();
            (key, e)
        })
        .collect();
    let Applied {
        changes,
        results,
        delta,
    } = apply(ops, now_ms(), stored)?;
    let slot = usage.entry(ns.tenant.clone()).or_default();
    if quota != crate::KvQuota::default() {
        slot.0.admit(delta, quota)?;
    }
    if delta != (0, 0) {
        *slot = (slot.0.plus(delta), true);
    }
    for c in changes {
        touched.keys.push(full_key(ns, &c.key));
        let slot = (ns.clone(), c.key);
        pending.state.insert(slot.clone(), c.after);
        pending.dirty.insert(slot);
    }
    Ok(results)
}

/// Removes up to [`PURGE_BATCH`] expired keys, unless another node holds
/// the purge lock (then 0).
fn purge(txn: &mut Transaction<'_>, now: u64, touched: &mut Touched) -> Result<usize, Retry> {
    let mine: bool = txn
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PURGE_LOCK])?
        .get(0);
    if !mine {
        return Ok(0);
    }
    let now = now as i64;
    let tenants: Vec<String> = txn
        .query(
            "SELECT DISTINCT tenant FROM perch_kv WHERE expires_at_ms <= $1",
            &[&now],
        )?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    if tenants.is_empty() {
        return Ok(0);
    }
    let refs: Vec<&str> = tenants.iter().map(String::as_str).collect();
    let mut usage = lock_usage(txn, &refs)?;
    let rows = txn.query(
        "DELETE FROM perch_kv WHERE ctid IN (
             SELECT ctid FROM perch_kv WHERE expires_at_ms <= $1 AND tenant = ANY($2) LIMIT $3)
         RETURNING tenant, ns, key, octet_length(key) + octet_length(value) + coalesce(octet_length(metadata), 0)",
        &[&now, &refs, &PURGE_BATCH],
    )?;
    let purged = rows.len();
    for row in rows {
        let (tenant, ns, key): (String, String, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
        let size: i32 = row.get(3);
        if let Some(slot) = usage.get_mut(&tenant) {
            *slot = (slot.0.plus((-i64::from(size), -1)), true);
        }
        let mut full = crate::encoding::ns_prefix(&NamespaceId::new(&tenant, &ns));
        full.extend_from_slice(&key);
        touched.keys.push(full);
    }
    save_usage(txn, usage)?;
    Ok(purged)
}

/// Tells every node (this one too) what the transaction changed; delivered
/// at its commit.
fn announce(txn: &mut Transaction<'_>, touched: &Touched) -> Result<(), Retry> {
    let mut payloads: Vec<String> = touched
        .tenants
        .iter()
        .map(|t| format!("tenant:{t}"))
        .collect();
    let mut current = String::new();
    for k in &touched.keys {
        let hex = encode_cursor(k);
        if !current.is_empty() && current.len() + 1 + hex.len() > NOTE_BYTES {
            payloads.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(&hex);
    }
    if !current.is_empty() {
        payloads.push(current);
    }
    for p in payloads {
        txn.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &p])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::successor;

    #[test]
    fn successor_bounds_a_prefix() {
        assert_eq!(successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(successor(b"\xff\xff"), None);
        assert_eq!(successor(b""), None);
    }
}
