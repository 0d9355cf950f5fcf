//! An [`ArtifactStore`] in PostgreSQL (cluster mode): every node reads the
//! components any node stored, fetches each into its local cache on first
//! use, and compiles it there.
//!
//! A component is rows of `perch_artifact_chunks (digest, n, bytes)` of at
//! most 1 MiB each, written in one transaction with its header row in
//! `perch_artifacts` (size, chunk count): a component is either whole or
//! absent. Reads check the bytes against the digest.
use perch_pg::postgres;
use perch_pg::{PgConfig, Pool};

use crate::store::ArtifactStore;
use crate::{Digest, RuntimeError};

const MIGRATIONS: &[&str] = &["CREATE TABLE perch_artifacts (
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
     );"];

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
        // here, then finds it (content-addressed: the same bytes).
        let inserted = txn
            .execute(
                "INSERT INTO perch_artifacts (digest, size, chunks) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&key, &(bytes.len() as i64), &chunks],
            )
            .map_err(|e| pg(&what, e))?;
        if inserted == 0 {
            return Ok(());
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
}
