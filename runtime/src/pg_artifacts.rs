//! An [`ArtifactStore`] in PostgreSQL (cluster mode): every node reads the
//! components any node stored, fetches each into its local cache on first
//! use, and compiles it there.
//!
//! A component is rows of `perch_artifact_chunks (digest, n, bytes)` of at
//! most 1 MiB each, written in one transaction with its header row in
//! `perch_artifacts` (size, chunk count): a component is either whole or
//! absent. Reads check the bytes against the digest.
//!
//! Collection ([`PgArtifactStore::collect`]) runs on one node at a time
//! (a transaction-scoped advisory lock) and deletes only components
//! untouched for a grace period: a node stores a component before the
//! version naming it commits, and storing it again (the same bytes) marks
//! it touched, so an upload under way is never collected under it.
use perch_pg::postgres;
use perch_pg::{PgConfig, Pool};

use crate::store::ArtifactStore;
use crate::{Digest, RuntimeError};

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE perch_artifacts (
         digest text PRIMARY KEY,
         size bigint NOT NULL,
         chunks integer NOT NULL,
         created_at timestamptz NOT NULL DEFAULT now()
     );
     CREATE TABLE perch_artifact_chunks (
         digest text NOT NULL REFERENCES perch_artifacts (digest) ON DELETE CASCADE,
         n integer NOT NULL,
         bytes bytea NOT NULL,
         PRIMARY KEY (digest, n)
     );",
    "ALTER TABLE perch_artifacts ADD COLUMN touched_at timestamptz NOT NULL DEFAULT now();",
];

/// The advisory lock key of collection ("perch-gc").
const COLLECT_LOCK: i64 = 0x7065_7263_682d_6763;

/// Bytes per chunk row.
const CHUNK: usize = 1 << 20;

/// Components by digest in a PostgreSQL database.
#[derive(Debug)]
pub struct PgArtifactStore {
    pool: Pool,
}

fn db(what: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::artifact(what, e)
}

fn pg(what: &str, e: postgres::Error) -> RuntimeError {
    RuntimeError::artifact(what, perch_pg::describe(&e))
}

impl PgArtifactStore {
    /// Connects and applies the schema migrations. Blocking.
    pub fn open(config: &PgConfig) -> Result<PgArtifactStore, RuntimeError> {
        let mut client = config
            .connect("perch-artifacts")
            .map_err(|e| db("connect", e))?;
        perch_pg::migrate(&mut client, "perch_artifacts_schema", MIGRATIONS)
            .map_err(|e| db("migrate", e))?;
        let mut pool_config = config.clone();
        // Components are few and large: a few connections are plenty.
        pool_config.pool_size = pool_config.pool_size.min(4);
        // Storing 50 MiB may take longer than a statement usually may.
        pool_config.statement_timeout = pool_config
            .statement_timeout
            .max(std::time::Duration::from_secs(60));
        Ok(PgArtifactStore {
            pool: Pool::new(pool_config, "perch-artifacts"),
        })
    }

    /// Deletes the components untouched for `grace` that `unused` says no
    /// version runs (it gets the candidates and returns those to delete);
    /// returns them. Another node collecting at the moment makes this a
    /// no-op (`None`). Blocking.
    pub fn collect(
        &self,
        grace: std::time::Duration,
        unused: impl FnOnce(Vec<Digest>) -> Vec<Digest>,
    ) -> Result<Option<Vec<Digest>>, RuntimeError> {
        let what = "collect components";
        let mut client = self.pool.get().map_err(|e| db(what, e))?;
        let mut txn = client.transaction().map_err(|e| pg(what, e))?;
        let locked: bool = txn
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&COLLECT_LOCK])
            .map_err(|e| pg(what, e))?
            .get(0);
        if !locked {
            return Ok(None);
        }
        // Locked rows: a node storing one of them again waits for this
        // transaction, then inserts it anew if it was deleted.
        let rows = txn
            .query(
                "SELECT digest FROM perch_artifacts
                 WHERE touched_at < now() - make_interval(secs => $1)
                 ORDER BY digest FOR UPDATE",
                &[&grace.as_secs_f64()],
            )
            .map_err(|e| pg(what, e))?;
        let candidates: Vec<Digest> = rows
            .iter()
            .filter_map(|r| r.get::<_, String>(0).parse().ok())
            .collect();
        let doomed = if candidates.is_empty() {
            Vec::new()
        } else {
            unused(candidates)
        };
        let keys: Vec<String> = doomed.iter().map(Digest::to_string).collect();
        if !keys.is_empty() {
            txn.execute(
                "DELETE FROM perch_artifacts WHERE digest = ANY($1)",
                &[&keys],
            )
            .map_err(|e| pg(what, e))?;
        }
        txn.commit().map_err(|e| pg(what, e))?;
        Ok(Some(doomed))
    }

    /// Every stored digest.
    #[cfg(test)]
    fn digests(&self) -> Result<Vec<Digest>, RuntimeError> {
        let mut client = self.pool.get().map_err(|e| db("connect", e))?;
        let rows = client
            .query("SELECT digest FROM perch_artifacts ORDER BY digest", &[])
            .map_err(|e| pg("list components", e))?;
        rows.iter()
            .map(|r| {
                r.get::<_, String>(0)
                    .parse()
                    .map_err(|e| db("stored digest", e))
            })
            .collect()
    }
}

impl ArtifactStore for PgArtifactStore {
    fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<(), RuntimeError> {
        let what = format!("store component {digest}");
        let mut client = self.pool.get().map_err(|e| db(&what, e))?;
        let mut txn = client.transaction().map_err(|e| pg(&what, e))?;
        let key = digest.to_string();
        let chunks = bytes.len().div_ceil(CHUNK) as i32;
        // The header first: a second node storing the same digest waits
        // here, then finds it (content-addressed: the same bytes) and
        // marks it touched (so a collection leaves it alone); a collection
        // deleting it at this moment makes this the insert.
        let inserted: bool = txn
            .query_one(
                "INSERT INTO perch_artifacts (digest, size, chunks) VALUES ($1, $2, $3)
                 ON CONFLICT (digest) DO UPDATE SET touched_at = now()
                 RETURNING (xmax = 0)",
                &[&key, &(bytes.len() as i64), &chunks],
            )
            .map_err(|e| pg(&what, e))?
            .get(0);
        if !inserted {
            return txn.commit().map_err(|e| pg(&what, e));
        }
        let insert = txn
            .prepare("INSERT INTO perch_artifact_chunks (digest, n, bytes) VALUES ($1, $2, $3)")
            .map_err(|e| pg(&what, e))?;
        for (n, chunk) in bytes.chunks(CHUNK).enumerate() {
            txn.execute(&insert, &[&key, &(n as i32), &chunk])
                .map_err(|e| pg(&what, e))?;
        }
        txn.commit().map_err(|e| pg(&what, e))
    }

    fn get(&self, digest: &Digest) -> Result<Option<Vec<u8>>, RuntimeError> {
        let what = format!("read component {digest}");
        let mut client = self.pool.get().map_err(|e| db(&what, e))?;
        let mut txn = client
            .build_transaction()
            .read_only(true)
            .start()
            .map_err(|e| pg(&what, e))?;
        let key = digest.to_string();
        let Some(head) = txn
            .query_opt(
                "SELECT size, chunks FROM perch_artifacts WHERE digest = $1",
                &[&key],
            )
            .map_err(|e| pg(&what, e))?
        else {
            return Ok(None);
        };
        let (size, chunks): (i64, i32) = (head.get(0), head.get(1));
        let mut bytes = Vec::with_capacity(size.max(0) as usize);
        let rows = txn
            .query(
                "SELECT n, bytes FROM perch_artifact_chunks WHERE digest = $1 ORDER BY n",
                &[&key],
            )
            .map_err(|e| pg(&what, e))?;
        if rows.len() != chunks as usize {
            return Err(db(
                &what,
                format!("{} of {chunks} chunks stored", rows.len()),
            ));
        }
        for row in rows {
            bytes.extend_from_slice(row.get::<_, &[u8]>(1));
        }
        txn.commit().map_err(|e| pg(&what, e))?;
        if bytes.len() as i64 != size || Digest::of(&bytes) != *digest {
            return Err(db(&what, "the stored bytes do not match the digest"));
        }
        Ok(Some(bytes))
    }

    fn contains(&self, digest: &Digest) -> Result<bool, RuntimeError> {
        let what = format!("look up component {digest}");
        let mut client = self.pool.get().map_err(|e| db(&what, e))?;
        let row = client
            .query_opt(
                "SELECT 1 FROM perch_artifacts WHERE digest = $1",
                &[&digest.to_string()],
            )
            .map_err(|e| pg(&what, e))?;
        Ok(row.is_some())
    }

    fn delete(&self, digest: &Digest) -> Result<(), RuntimeError> {
        let what = format!("delete component {digest}");
        let mut client = self.pool.get().map_err(|e| db(&what, e))?;
        client
            .execute(
                "DELETE FROM perch_artifacts WHERE digest = $1",
                &[&digest.to_string()],
            )
            .map_err(|e| pg(&what, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_stored_whole_in_chunks_and_checked() {
        let Some(url) = perch_pg::test_database() else {
            return;
        };
        let store = PgArtifactStore::open(&PgConfig::new(&url)).unwrap();
        // Three chunks, the last one short.
        let bytes: Vec<u8> = (0..(2 * CHUNK + 77)).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of(&bytes);
        assert!(!store.contains(&digest).unwrap());
        assert_eq!(store.get(&digest).unwrap(), None);
        store.put(&digest, &bytes).unwrap();
        store.put(&digest, &bytes).unwrap();
        assert!(store.contains(&digest).unwrap());
        assert_eq!(store.get(&digest).unwrap().as_deref(), Some(&bytes[..]));
        assert_eq!(store.digests().unwrap(), vec![digest]);
        // A second node sees it.
        let other = PgArtifactStore::open(&PgConfig::new(&url)).unwrap();
        assert_eq!(
            other.get(&digest).unwrap().map(|b| b.len()),
            Some(bytes.len())
        );
        // Damaged rows are an error, not wrong bytes.
        let mut admin = PgConfig::new(&url).connect("test").unwrap();
        admin
            .execute(
                "UPDATE perch_artifact_chunks SET bytes = 'x' WHERE n = 1",
                &[],
            )
            .unwrap();
        let err = store.get(&digest).unwrap_err().to_string();
        assert!(err.contains("do not match"), "{err}");
        store.delete(&digest).unwrap();
        store.delete(&digest).unwrap();
        assert!(!store.contains(&digest).unwrap());
        assert_eq!(
            admin
                .query("SELECT 1 FROM perch_artifact_chunks", &[])
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn collection_takes_only_what_is_unused_and_untouched_one_node_at_a_time() {
        use std::time::Duration;
        let Some(url) = perch_pg::test_database() else {
            return;
        };
        let (a, b) = (
            PgArtifactStore::open(&PgConfig::new(&url)).unwrap(),
            PgArtifactStore::open(&PgConfig::new(&url)).unwrap(),
        );
        let component = |n: u8| {
            let bytes = vec![n; 100];
            (Digest::of(&bytes), bytes)
        };
        let (used, used_bytes) = component(1);
        let (old, old_bytes) = component(2);
        let (fresh, fresh_bytes) = component(3);
        for (d, bytes) in [(&used, &used_bytes), (&old, &old_bytes)] {
            a.put(d, bytes).unwrap();
        }
        let mut admin = PgConfig::new(&url).connect("test").unwrap();
        admin
            .execute(
                "UPDATE perch_artifacts SET touched_at = now() - interval '2 hours'",
                &[],
            )
            .unwrap();
        a.put(&fresh, &fresh_bytes).unwrap();
        let grace = Duration::from_secs(3600);
        let keep_used = |c: Vec<Digest>| c.into_iter().filter(|d| *d != used).collect();
        // While one node collects, another's collection does nothing.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let first = std::thread::scope(|s| {
            let a = &a;
            let first = s.spawn(move || {
                a.collect(grace, move |c| {
                    tx.send(()).unwrap();
                    done_rx.recv().unwrap();
                    keep_used(c)
                })
            });
            rx.recv().unwrap();
            assert_eq!(b.collect(grace, keep_used).unwrap(), None);
            done_tx.send(()).unwrap();
            first.join().unwrap()
        });
        assert_eq!(first.unwrap(), Some(vec![old]));
        assert!(a.contains(&used).unwrap() && a.contains(&fresh).unwrap());
        assert!(!b.contains(&old).unwrap());
        // Storing an old component again touches it: it is kept.
        admin
            .execute(
                "UPDATE perch_artifacts SET touched_at = now() - interval '2 hours'",
                &[],
            )
            .unwrap();
        b.put(&fresh, &fresh_bytes).unwrap();
        assert_eq!(a.collect(grace, |c| c).unwrap(), Some(vec![used]));
        assert!(a.contains(&fresh).unwrap());
    }
}
