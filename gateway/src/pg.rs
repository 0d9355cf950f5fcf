//! Cluster mode's PostgreSQL implementations of the gateway's smaller
//! stores: the audit log ([`PgAudit`]), each node's usage totals
//! ([`PgUsage`]), the cron tick lease ([`PgLease`]), the nodes'
//! heartbeats ([`PgNodes`]) and container image archives ([`PgImages`]). (The registry's
//! store is `registry::PgStore`, KV is `perch_kv::PgKv`, components are
//! `perch_runtime::PgArtifactStore`.) Every method blocks: callers run it
//! on blocking threads.
use std::io::{Read, Write};
use std::path::Path;

use perch_pg::{PgConfig, Pool};
use ring::digest::{Context, SHA256};

use crate::audit::{AuditEntry, AuditStore};
use crate::cron::{Tick, TickLease};
use crate::nodes::{LIVE, NodeRecord, NodeStore};
use crate::telemetry::usage::{Totals, UsageStore};

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE perch_audit (
         id bigserial PRIMARY KEY,
         tenant text NOT NULL,
         entry bytea NOT NULL
     );
     CREATE INDEX perch_audit_tenant ON perch_audit (tenant, id);
     CREATE TABLE perch_usage (
         node text NOT NULL,
         tenant text NOT NULL,
         totals bytea NOT NULL,
         PRIMARY KEY (node, tenant)
     );
     CREATE TABLE perch_cron_ticks (
         tenant text NOT NULL,
         function text NOT NULL,
         cron text NOT NULL,
         minute bigint NOT NULL,
         node text NOT NULL,
         PRIMARY KEY (tenant, function, cron, minute)
     );",
    "CREATE TABLE perch_nodes (
         id text PRIMARY KEY,
         address text NOT NULL,
         revision bigint NOT NULL,
         version text NOT NULL,
         last_seen timestamptz NOT NULL
     );",
    "CREATE TABLE perch_image_archives (
         image text PRIMARY KEY,
         size bigint NOT NULL,
         chunks integer NOT NULL,
         sha256 bytea NOT NULL
     );
     CREATE TABLE perch_image_chunks (
         image text NOT NULL,
         n integer NOT NULL,
         bytes bytea NOT NULL,
         PRIMARY KEY (image, n)
     );",
];

/// Applies the gateway's schema migrations. Blocking.
pub fn migrate(config: &PgConfig) -> Result<(), String> {
    let mut client = config.connect("perch-migrate")?;
    perch_pg::migrate(&mut client, "perch_gateway_schema", MIGRATIONS)
}

fn describe(e: perch_pg::postgres::Error) -> String {
    perch_pg::describe(&e)
}

/// The audit log in the shared database: every node appends to one log,
/// ids in commit order.
pub struct PgAudit {
    pool: Pool,
}

impl PgAudit {
    /// The log on `pool`.
    pub fn new(pool: Pool) -> PgAudit {
        PgAudit { pool }
    }

    /// Writes `entries` with their own ids (kept as they are where an id
    /// is there already), in one transaction; appends then go on after
    /// the largest id (`perch storage migrate`).
    pub fn import(&self, entries: &[AuditEntry]) -> Result<(), String> {
        let mut client = self.pool.get()?;
        let mut txn = client.transaction().map_err(describe)?;
        for e in entries {
            let bytes = serde_json::to_vec(e).map_err(|e| e.to_string())?;
            txn.execute(
                "INSERT INTO perch_audit (id, tenant, entry) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO NOTHING",
                &[&(e.id as i64), &e.tenant, &bytes],
            )
            .map_err(describe)?;
        }
        if !entries.is_empty() {
            txn.execute(
                "SELECT setval(pg_get_serial_sequence('perch_audit', 'id'),
                               (SELECT max(id) FROM perch_audit))",
                &[],
            )
            .map_err(describe)?;
        }
        txn.commit().map_err(describe)
    }
}

impl AuditStore for PgAudit {
    fn append(&self, entry: &AuditEntry) -> Result<u64, String> {
        let mut client = self.pool.get()?;
        let mut txn = client.transaction().map_err(describe)?;
        let id: i64 = txn
            .query_one(
                "INSERT INTO perch_audit (tenant, entry) VALUES ($1, '') RETURNING id",
                &[&entry.tenant],
            )
            .map_err(describe)?
            .get(0);
        let stored = AuditEntry {
            id: id as u64,
            ..entry.clone()
        };
        let bytes = serde_json::to_vec(&stored).map_err(|e| e.to_string())?;
        txn.execute(
            "UPDATE perch_audit SET entry = $2 WHERE id = $1",
            &[&id, &bytes],
        )
        .map_err(describe)?;
        txn.commit().map_err(describe)?;
        Ok(id as u64)
    }

    fn list(
        &self,
        tenant: Option<&str>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, String> {
        let mut client = self.pool.get()?;
        let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        let rows = client
            .query(
                "SELECT entry FROM perch_audit
                 WHERE ($1::text IS NULL OR tenant = $1) AND id < $2
                 ORDER BY id DESC LIMIT $3",
                &[&tenant, &before, &(limit as i64)],
            )
            .map_err(describe)?;
        rows.iter()
            .map(|r| serde_json::from_slice(r.get::<_, &[u8]>(0)).map_err(|e| e.to_string()))
            .collect()
    }
}

/// Each node's usage totals in the shared database, one row per node and
/// tenant: a node loads and saves its own rows, and a tenant's usage is
/// the sum over the nodes.
pub struct PgUsage {
    pool: Pool,
    node: String,
}

impl PgUsage {
    /// The rows of `node` on `pool`.
    pub fn new(pool: Pool, node: &str) -> PgUsage {
        PgUsage {
            pool,
            node: node.to_string(),
        }
    }
}

fn decode_totals(bytes: &[u8]) -> Result<Totals, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

impl UsageStore for PgUsage {
    fn load(&self) -> Result<Vec<(String, Totals)>, String> {
        let mut client = self.pool.get()?;
        let rows = client
            .query(
                "SELECT tenant, totals FROM perch_usage WHERE node = $1",
                &[&self.node],
            )
            .map_err(describe)?;
        rows.iter()
            .map(|r| Ok((r.get(0), decode_totals(r.get::<_, &[u8]>(1))?)))
            .collect()
    }

    fn save(&self, totals: &[(String, Totals)]) -> Result<(), String> {
        let mut client = self.pool.get()?;
        let mut txn = client.transaction().map_err(describe)?;
        let tenants: Vec<&str> = totals.iter().map(|(t, _)| t.as_str()).collect();
        txn.execute(
            "DELETE FROM perch_usage WHERE node = $1 AND NOT (tenant = ANY($2))",
            &[&self.node, &tenants],
        )
        .map_err(describe)?;
        for (tenant, t) in totals {
            let bytes = serde_json::to_vec(t).map_err(|e| e.to_string())?;
            txn.execute(
                "INSERT INTO perch_usage (node, tenant, totals) VALUES ($1, $2, $3)
                 ON CONFLICT (node, tenant) DO UPDATE SET totals = EXCLUDED.totals",
                &[&self.node, tenant, &bytes],
            )
            .map_err(describe)?;
        }
        txn.commit().map_err(describe)
    }

    fn elsewhere(&self, tenant: &str) -> Result<Totals, String> {
        let mut client = self.pool.get()?;
        let rows = client
            .query(
                "SELECT totals FROM perch_usage WHERE node <> $1 AND tenant = $2",
                &[&self.node, &tenant],
            )
            .map_err(describe)?;
        let mut sum = Totals::default();
        for r in rows {
            let t = decode_totals(r.get::<_, &[u8]>(0))?;
            sum.requests += t.requests;
            sum.cpu_us += t.cpu_us;
            sum.egress_bytes += t.egress_bytes;
            sum.container_ms += t.container_ms;
        }
        Ok(sum)
    }
}

/// Cron ticks claimed in the shared database: the first node to insert a
/// tick's row runs it. Rows older than a day are removed as ticks go by.
pub struct PgLease {
    pool: Pool,
    node: String,
}

impl PgLease {
    /// Claims as `node` on `pool`.
    pub fn new(pool: Pool, node: &str) -> PgLease {
        PgLease {
            pool,
            node: node.to_string(),
        }
    }
}

impl TickLease for PgLease {
    fn claim(&self, tick: &Tick) -> bool {
        let claimed = (|| -> Result<bool, String> {
            let mut client = self.pool.get()?;
            let minute = tick.minute as i64;
            let n = client
                .execute(
                    "INSERT INTO perch_cron_ticks (tenant, function, cron, minute, node)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[
                        &tick.tenant,
                        &tick.function,
                        &tick.cron,
                        &minute,
                        &self.node,
                    ],
                )
                .map_err(describe)?;
            if n == 1 && minute % 60 == 0 {
                client
                    .execute(
                        "DELETE FROM perch_cron_ticks WHERE minute < $1",
                        &[&(minute - 24 * 60)],
                    )
                    .map_err(describe)?;
            }
            Ok(n == 1)
        })();
        claimed.unwrap_or_else(|e| {
            tracing::warn!(error = %e, tenant = %tick.tenant, function = %tick.function, "cron: could not claim a tick (the database is unavailable); skipped");
            false
        })
    }
}

/// Heartbeats in the shared database, timed by the database's clock (so
/// nodes' clocks need not agree). Rows a day old are removed as nodes
/// beat.
pub struct PgNodes {
    pool: Pool,
}

impl PgNodes {
    /// Heartbeats on `pool`.
    pub fn new(pool: Pool) -> PgNodes {
        PgNodes { pool }
    }
}

impl NodeStore for PgNodes {
    fn beat(&self, me: &NodeRecord) -> Result<(), String> {
        let mut client = self.pool.get()?;
        client
            .execute(
                "INSERT INTO perch_nodes (id, address, revision, version, last_seen)
                 VALUES ($1, $2, $3, $4, now())
                 ON CONFLICT (id) DO UPDATE SET address = excluded.address,
                     revision = excluded.revision, version = excluded.version,
                     last_seen = excluded.last_seen",
                &[&me.id, &me.address, &(me.revision as i64), &me.version],
            )
            .map_err(describe)?;
        client
            .execute(
                "DELETE FROM perch_nodes WHERE last_seen < now() - interval '1 day'",
                &[],
            )
            .map_err(describe)?;
        Ok(())
    }

    fn live(&self) -> Result<Vec<NodeRecord>, String> {
        let mut client = self.pool.get()?;
        let rows = client
            .query(
                "SELECT id, address, revision, version,
                        extract(epoch FROM last_seen)::bigint
                 FROM perch_nodes
                 WHERE last_seen > now() - make_interval(secs => $1)
                 ORDER BY id",
                &[&LIVE.as_secs_f64()],
            )
            .map_err(describe)?;
        Ok(rows
            .iter()
            .map(|r| NodeRecord {
                id: r.get(0),
                address: r.get(1),
                revision: r.get::<_, i64>(2) as u64,
                version: r.get(3),
                last_seen: r.get::<_, i64>(4) as u64,
            })
            .collect())
    }

    fn leave(&self, id: &str) -> Result<(), String> {
        let mut client = self.pool.get()?;
        client
            .execute("DELETE FROM perch_nodes WHERE id = $1", &[&id])
            .map_err(describe)?;
        Ok(())
    }
}

/// Bytes per image chunk row.
const IMAGE_CHUNK: u64 = 1 << 20;

/// Container image archives in the shared database, so that a container
/// version runs on every node: a header row (size, chunk count, SHA-256)
/// and rows of at most 1 MiB, written in one transaction (an archive is
/// whole or absent), streamed both ways (an archive is never held in
/// memory whole).
pub struct PgImages {
    pool: Pool,
}

impl PgImages {
    /// Archives in the database of `config`, on a pool of their own whose
    /// statements may take a minute (storing waits for another node
    /// storing the same image).
    pub fn new(config: &PgConfig) -> PgImages {
        let mut config = config.clone();
        config.pool_size = config.pool_size.min(2);
        config.statement_timeout = config
            .statement_timeout
            .max(std::time::Duration::from_secs(60));
        PgImages {
            pool: Pool::new(config, "perch-images"),
        }
    }

    /// The SHA-256 of image `id`'s stored archive, if one is stored.
    pub fn checksum(&self, id: &str) -> Result<Option<Vec<u8>>, String> {
        let mut client = self.pool.get()?;
        let row = client
            .query_opt(
                "SELECT sha256 FROM perch_image_archives WHERE image = $1",
                &[&id],
            )
            .map_err(describe)?;
        Ok(row.map(|r| r.get(0)))
    }
}

fn io_error(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

impl perch_containers::SharedArchives for PgImages {
    fn put(&self, id: &str, path: &Path) -> Result<(), String> {
        let mut client = self.pool.get()?;
        let mut txn = client.transaction().map_err(describe)?;
        // One writer per image: another node storing it too waits here,
        // then finds it stored.
        txn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&id],
        )
        .map_err(describe)?;
        let stored = txn
            .query_opt(
                "SELECT 1 FROM perch_image_archives WHERE image = $1",
                &[&id],
            )
            .map_err(describe)?;
        if stored.is_some() {
            return txn.commit().map_err(describe);
        }
        let mut file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
        let mut sha = Context::new(&SHA256);
        let (mut chunks, mut size) = (0i32, 0i64);
        let mut chunk = Vec::with_capacity(IMAGE_CHUNK as usize);
        loop {
            chunk.clear();
            (&mut file)
                .take(IMAGE_CHUNK)
                .read_to_end(&mut chunk)
                .map_err(|e| io_error(path, e))?;
            if chunk.is_empty() {
                break;
            }
            sha.update(&chunk);
            txn.execute(
                "INSERT INTO perch_image_chunks (image, n, bytes) VALUES ($1, $2, $3)",
                &[&id, &chunks, &chunk],
            )
            .map_err(describe)?;
            chunks += 1;
            size += chunk.len() as i64;
        }
        txn.execute(
            "INSERT INTO perch_image_archives (image, size, chunks, sha256) VALUES ($1, $2, $3, $4)",
            &[&id, &size, &chunks, &sha.finish().as_ref()],
        )
        .map_err(describe)?;
        txn.commit().map_err(describe)
    }

    fn fetch(&self, id: &str, dest: &Path) -> Result<bool, String> {
        let mut client = self.pool.get()?;
        // One snapshot: an archive deleted meanwhile is read whole or not.
        let mut txn = client
            .build_transaction()
            .isolation_level(perch_pg::postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(describe)?;
        let Some(head) = txn
            .query_opt(
                "SELECT chunks, sha256 FROM perch_image_archives WHERE image = $1",
                &[&id],
            )
            .map_err(describe)?
        else {
            return Ok(false);
        };
        let (chunks, want): (i32, Vec<u8>) = (head.get(0), head.get(1));
        let part = dest.with_extension(format!("fetch-{:016x}", fastrand::u64(..)));
        let written = (|| {
            let mut out = std::fs::File::create(&part).map_err(|e| io_error(&part, e))?;
            let mut sha = Context::new(&SHA256);
            for n in 0..chunks {
                let row = txn
                    .query_one(
                        "SELECT bytes FROM perch_image_chunks WHERE image = $1 AND n = $2",
                        &[&id, &n],
                    )
                    .map_err(describe)?;
                let bytes: &[u8] = row.get(0);
                sha.update(bytes);
                out.write_all(bytes).map_err(|e| io_error(&part, e))?;
            }
            if sha.finish().as_ref() != want.as_slice() {
                return Err(format!(
                    "image {id}: the stored archive does not match its SHA-256"
                ));
            }
            out.sync_all().map_err(|e| io_error(&part, e))?;
            std::fs::rename(&part, dest).map_err(|e| io_error(dest, e))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&part);
        }
        written.map(|()| true)
    }

    fn delete(&self, id: &str) -> Result<(), String> {
        let mut client = self.pool.get()?;
        let mut txn = client.transaction().map_err(describe)?;
        txn.execute("DELETE FROM perch_image_archives WHERE image = $1", &[&id])
            .map_err(describe)?;
        txn.execute("DELETE FROM perch_image_chunks WHERE image = $1", &[&id])
            .map_err(describe)?;
        txn.commit().map_err(describe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Option<Pool> {
        let url = perch_pg::test_database()?;
        let config = PgConfig::new(&url);
        migrate(&config).unwrap();
        Some(Pool::new(config, "test"))
    }

    #[test]
    fn three_nodes_claim_each_tick_once() {
        let Some(pool) = pool() else { return };
        let leases: Vec<PgLease> = ["a", "b", "c"]
            .iter()
            .map(|n| PgLease::new(pool.clone(), n))
            .collect();
        for minute in 100..110 {
            let tick = Tick {
                tenant: "t".into(),
                function: "f".into(),
                cron: "* * * * *".into(),
                minute,
            };
            let won = std::thread::scope(|s| {
                let claims: Vec<_> = leases.iter().map(|l| s.spawn(|| l.claim(&tick))).collect();
                claims
                    .into_iter()
                    .map(|c| c.join().unwrap())
                    .filter(|won| *won)
                    .count()
            });
            assert_eq!(won, 1, "minute {minute}");
        }
    }

    #[test]
    fn usage_rows_are_per_node_and_summed_elsewhere() {
        let Some(pool) = pool() else { return };
        let (a, b) = (PgUsage::new(pool.clone(), "a"), PgUsage::new(pool, "b"));
        let t = |requests| Totals {
            requests,
            ..Totals::default()
        };
        a.save(&[("x".into(), t(3)), ("y".into(), t(1))]).unwrap();
        b.save(&[("x".into(), t(4))]).unwrap();
        assert_eq!(a.load().unwrap().len(), 2);
        assert_eq!(a.elsewhere("x").unwrap().requests, 4);
        assert_eq!(b.elsewhere("x").unwrap().requests, 3);
        a.save(&[("x".into(), t(5))]).unwrap();
        assert_eq!(a.load().unwrap(), vec![("x".to_string(), t(5))]);
        // A deleted tenant leaves each node's rows at its next save.
        b.save(&[]).unwrap();
        assert_eq!(a.elsewhere("x").unwrap().requests, 0);
    }

    #[test]
    fn nodes_are_listed_while_they_beat() {
        let Some(pool) = pool() else { return };
        let (a, b) = (PgNodes::new(pool.clone()), PgNodes::new(pool));
        use crate::nodes::tests::record;
        a.beat(&record("a", 3)).unwrap();
        b.beat(&record("b", 4)).unwrap();
        a.beat(&record("a", 5)).unwrap();
        let live = b.live().unwrap();
        let ids: Vec<(&str, u64)> = live.iter().map(|n| (n.id.as_str(), n.revision)).collect();
        assert_eq!(ids, [("a", 5), ("b", 4)]);
        // The database's clock, not the caller's.
        assert!(live.iter().all(|n| n.last_seen > 1000));
        b.leave("b").unwrap();
        assert_eq!(a.live().unwrap().len(), 1);
    }

    #[test]
    fn the_audit_log_is_shared_and_paged() {
        let Some(pool) = pool() else { return };
        let (a, b) = (PgAudit::new(pool.clone()), PgAudit::new(pool));
        crate::audit::tests::append_and_page(&a, &b);
    }
}
