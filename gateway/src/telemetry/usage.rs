//! What each tenant has used since it was created: requests, CPU time,
//! response bytes sent, container instance time.
//!
//! The hot path bumps atomics of the tenant's [`TenantUsage`], which every
//! routed target of the tenant holds (no map lookup per request). A flusher
//! writes the totals to the node's database every few seconds and once
//! more at shutdown ([`flush_every`]); at start they are loaded back
//! ([`Usage::load`]) before any request is served, so the totals survive
//! restarts (a crash loses at most the last interval).
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// One tenant's counters.
#[derive(Debug, Default)]
pub struct TenantUsage {
    requests: AtomicU64,
    cpu_us: AtomicU64,
    egress_bytes: AtomicU64,
    container_ms: AtomicU64,
}

/// A tenant's totals, as stored and as `GET …/usage` shows them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Data-plane requests and scheduled runs that reached a function
    /// (those Perch refused first, with 413 or 429, are not counted).
    pub requests: u64,
    /// CPU time of wasm invocations, in microseconds.
    pub cpu_us: u64,
    /// Response body bytes sent to clients.
    pub egress_bytes: u64,
    /// Container instances' time in service, in milliseconds.
    pub container_ms: u64,
}

impl TenantUsage {
    /// Counts one request that reached a function, with its CPU time.
    pub fn request(&self, cpu: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let us = cpu.as_micros() as u64;
        if us > 0 {
            self.cpu_us.fetch_add(us, Ordering::Relaxed);
        }
    }

    /// Counts response bytes sent.
    pub fn egress(&self, bytes: u64) {
        self.egress_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts container instance time.
    pub fn container_time(&self, d: Duration) {
        self.container_ms
            .fetch_add(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// The totals now.
    pub fn totals(&self) -> Totals {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Totals {
            requests: load(&self.requests),
            cpu_us: load(&self.cpu_us),
            egress_bytes: load(&self.egress_bytes),
            container_ms: load(&self.container_ms),
        }
    }

    fn add(&self, t: Totals) {
        self.requests.fetch_add(t.requests, Ordering::Relaxed);
        self.cpu_us.fetch_add(t.cpu_us, Ordering::Relaxed);
        self.egress_bytes
            .fetch_add(t.egress_bytes, Ordering::Relaxed);
        self.container_ms
            .fetch_add(t.container_ms, Ordering::Relaxed);
    }
}

/// Where the totals are kept between runs.
pub trait UsageStore: Send + Sync + 'static {
    /// Every tenant's stored totals.
    fn load(&self) -> Result<Vec<(String, Totals)>, String>;
    /// Replaces the stored totals with `totals` (tenants not listed are
    /// removed: they were deleted).
    fn save(&self, totals: &[(String, Totals)]) -> Result<(), String>;
    /// What other nodes counted for `tenant` (cluster mode; a single
    /// node's store has no others).
    fn elsewhere(&self, _tenant: &str) -> Result<Totals, String> {
        Ok(Totals::default())
    }
}

const USAGE: TableDefinition<&str, &[u8]> = TableDefinition::new("usage");

/// The totals in the node's redb database (table `usage`).
pub struct RedbUsage {
    db: Arc<Database>,
}

impl RedbUsage {
    /// The totals in `db`.
    pub fn new(db: Arc<Database>) -> RedbUsage {
        RedbUsage { db }
    }

    /// Copies the `usage` table, for a backup.
    pub fn copy_tables(
        from: &redb::ReadTransaction,
        to: &redb::WriteTransaction,
    ) -> Result<(), redb::Error> {
        perch_kv::copy::copy_table(from, to, USAGE).map(drop)
    }
}

impl UsageStore for RedbUsage {
    fn load(&self) -> Result<Vec<(String, Totals)>, String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let txn = self.db.begin_read().map_err(|x| e(&x))?;
        let table = match txn.open_table(USAGE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(x) => return Err(e(&x)),
        };
        let mut out = Vec::new();
        for row in table.iter().map_err(|x| e(&x))? {
            let (k, v) = row.map_err(|x| e(&x))?;
            let totals = serde_json::from_slice(v.value()).map_err(|x| e(&x))?;
            out.push((k.value().to_string(), totals));
        }
        Ok(out)
    }

    fn save(&self, totals: &[(String, Totals)]) -> Result<(), String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let txn = self.db.begin_write().map_err(|x| e(&x))?;
        {
            let mut table = txn.open_table(USAGE).map_err(|x| e(&x))?;
            table.retain(|_, _| false).map_err(|x| e(&x))?;
            for (tenant, t) in totals {
                let bytes = serde_json::to_vec(t).map_err(|x| e(&x))?;
                table
                    .insert(tenant.as_str(), bytes.as_slice())
                    .map_err(|x| e(&x))?;
            }
        }
        txn.commit().map_err(|x| e(&x))
    }
}

/// Every tenant's counters on this node.
#[derive(Default)]
pub struct Usage {
    tenants: Mutex<HashMap<String, Arc<TenantUsage>>>,
    /// Set when a tenant was forgotten since the last flush.
    forgot: AtomicBool,
}

impl Usage {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<TenantUsage>>> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counters of `tenant` (made on first use).
    pub fn tenant(&self, tenant: &str) -> Arc<TenantUsage> {
        self.lock().entry(tenant.to_string()).or_default().clone()
    }

    /// The totals of `tenant` (zero when it has none).
    pub fn totals(&self, tenant: &str) -> Totals {
        self.lock()
            .get(tenant)
            .map(|u| u.totals())
            .unwrap_or_default()
    }

    /// Forgets a deleted tenant: a new one of the same name starts at zero.
    pub fn forget(&self, tenant: &str) {
        if self.lock().remove(tenant).is_some() {
            self.forgot.store(true, Ordering::Relaxed);
        }
    }

    /// Adds the stored totals to the counters. Called once at start,
    /// before the first flush. Blocking (the store's I/O).
    pub fn load(&self, store: &dyn UsageStore) -> Result<(), String> {
        for (tenant, totals) in store.load()? {
            self.tenant(&tenant).add(totals);
        }
        Ok(())
    }

    /// Writes every tenant's totals. Blocking (the store's I/O).
    pub fn flush(&self, store: &dyn UsageStore) -> Result<(), String> {
        let mut totals: Vec<(String, Totals)> = self
            .lock()
            .iter()
            .map(|(t, u)| (t.clone(), u.totals()))
            .collect();
        totals.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.forgot.store(false, Ordering::Relaxed);
        store.save(&totals)
    }
}

/// Samples the container backend each second (instance time per tenant)
/// and flushes the totals every `every` until `stop` turns true, then once
/// more.
pub async fn flush_every(
    usage: Arc<Usage>,
    store: Arc<dyn UsageStore>,
    containers: Option<Arc<perch_containers::Backend>>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let tick = Duration::from_secs(1);
    let mut since_flush = Duration::ZERO;
    let mut last = tokio::time::Instant::now();
    let mut flushed = Totals::default();
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(tick) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        let now = tokio::time::Instant::now();
        let elapsed = now - last;
        last = now;
        if let Some(backend) = &containers {
            for pool in backend.pools() {
                let n = pool.instances().len() as u32;
                if n > 0 {
                    usage.tenant(&pool.id.tenant).container_time(elapsed * n);
                }
            }
        }
        since_flush += elapsed;
        if since_flush < every && !stopping {
            continue;
        }
        since_flush = Duration::ZERO;
        // Nothing to write when no counter moved and no tenant went.
        let sum = sum_totals(&usage);
        if sum != flushed || usage.forgot.load(Ordering::Relaxed) || stopping {
            let (u, s) = (usage.clone(), store.clone());
            match tokio::task::spawn_blocking(move || u.flush(&*s)).await {
                Ok(Ok(())) => flushed = sum,
                Ok(Err(e)) => tracing::error!(error = %e, "could not write usage totals"),
                Err(e) => tracing::error!(error = %e, "usage flush panicked"),
            }
        }
        if stopping {
            return;
        }
    }
}

/// The sum of every tenant's totals (to see whether anything moved).
fn sum_totals(usage: &Usage) -> Totals {
    usage
        .lock()
        .values()
        .map(|u| u.totals())
        .fold(Totals::default(), |a, t| Totals {
            requests: a.requests + t.requests,
            cpu_us: a.cpu_us + t.cpu_us,
            egress_bytes: a.egress_bytes + t.egress_bytes,
            container_ms: a.container_ms + t.container_ms,
        })
}

/// A response body that counts the bytes it yields as the tenant's egress.
pub struct Metered<B> {
    inner: B,
    usage: Arc<TenantUsage>,
}

impl<B> Metered<B> {
    /// `inner`, counted into `usage`.
    pub fn new(inner: B, usage: Arc<TenantUsage>) -> Self {
        Metered { inner, usage }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Metered<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.usage.egress(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_survive_a_restart_and_deleted_tenants_go() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("u.redb")).unwrap());
        let store = RedbUsage::new(db.clone());
        let usage = Usage::default();
        let acme = usage.tenant("acme");
        acme.request(Duration::from_micros(1500));
        acme.request(Duration::ZERO);
        acme.egress(100);
        usage
            .tenant("beta")
            .container_time(Duration::from_millis(2500));
        usage.flush(&store).unwrap();

        // A new node counts on from the stored totals.
        let again = Usage::default();
        again.tenant("acme").request(Duration::from_micros(500));
        again.load(&store).unwrap();
        let t = again.totals("acme");
        assert_eq!(
            t,
            Totals {
                requests: 3,
                cpu_us: 2000,
                egress_bytes: 100,
                container_ms: 0
            }
        );
        assert_eq!(again.totals("beta").container_ms, 2500);
        again.forget("beta");
        again.flush(&store).unwrap();
        let stored = store.load().unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].0, "acme");
    }
}
