//! The PostgreSQL implementation of [`RegistryStore`] (cluster mode, issue
//! 17: this store is its first part): every record is one row of
//! `perch_registry (kind, key, value)` holding the same JSON as the redb
//! store, verbatim (`bytea`); the revision is one row of
//! `perch_registry_meta`. A commit is one transaction that locks the
//! revision row (`FOR UPDATE`), so two nodes committing against the same
//! revision get one success and one [`StoreError::Conflict`]; it records
//! the revision in `perch_registry_changes` and announces it with
//! `NOTIFY perch_registry`. A dedicated connection listens and feeds
//! [`RegistryStore::subscribe`]; after a lost connection it reconnects and
//! reports the current revision, so a node catches up on what it missed.
//! Migrations are numbered and applied at open; a database whose schema is
//! newer than this build is refused.
use std::sync::{Arc, Mutex};

use perch_pg::postgres::{self, Client};
use perch_pg::{Dedicated, Listening, PgConfig};
use tokio::sync::watch;

use super::store::{Change, Kind, Loaded, Records, RegistryStore, StoreError};

/// The schema migrations, in order; the schema's version is how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: records, revision, change log.
    "CREATE TABLE perch_registry_meta (
         id boolean PRIMARY KEY DEFAULT true CHECK (id),
         revision bigint NOT NULL
     );
     INSERT INTO perch_registry_meta (revision) VALUES (0);
     CREATE TABLE perch_registry (
         kind smallint NOT NULL,
         key text NOT NULL,
         value bytea NOT NULL,
         PRIMARY KEY (kind, key)
     );
     CREATE TABLE perch_registry_changes (
         revision bigint PRIMARY KEY,
         committed_at timestamptz NOT NULL DEFAULT now()
     );",
];

/// The channel commits are announced on.
const CHANNEL: &str = "perch_registry";

/// The `application_name` of the listening connections.
const LISTENER: &str = "perch-registry-listen";

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The stable number of a kind of record in `perch_registry.kind`.
fn kind_number(kind: Kind) -> i16 {
    match kind {
        Kind::Tenant => 1,
        Kind::Token => 2,
        Kind::Function => 3,
        Kind::Route => 4,
        Kind::Image => 5,
        Kind::Certificate => 6,
    }
}

/// The registry in a PostgreSQL database.
pub struct PgStore {
    client: Mutex<Dedicated>,
    tx: Arc<watch::Sender<u64>>,
    /// Held so the listening thread runs while the store lives.
    _listening: Listening,
}

fn revision_of(client: &mut Client) -> Result<u64, StoreError> {
    let row = client
        .query_one("SELECT revision FROM perch_registry_meta", &[])
        .map_err(unavailable)?;
    Ok(row.get::<_, i64>(0) as u64)
}

impl PgStore {
    /// Connects, applies the migrations (refusing a newer schema) and
    /// starts listening for other nodes' commits. Blocking.
    pub fn open(config: &PgConfig) -> Result<PgStore, StoreError> {
        let mut client = config
            .connect("perch-registry")
            .map_err(StoreError::Unavailable)?;
        perch_pg::migrate(&mut client, "perch_schema", MIGRATIONS).map_err(|e| {
            if e.contains("upgrade perch") {
                StoreError::Corrupt(e)
            } else {
                StoreError::Unavailable(e)
            }
        })?;
        let revision = revision_of(&mut client)?;
        let tx = Arc::new(watch::channel(revision).0);
        let (on_connect, on_note) = (tx.clone(), tx.clone());
        // After every (re)connection the current revision covers whatever
        // was missed.
        let listening = perch_pg::listen(
            config,
            LISTENER,
            &[CHANNEL],
            move |client| {
                let current: i64 = client
                    .query_one("SELECT revision FROM perch_registry_meta", &[])?
                    .get(0);
                on_connect.send_if_modified(|r| bump(r, current as u64));
                Ok(())
            },
            move |_channel, payload| {
                if let Ok(n) = payload.parse::<u64>() {
                    on_note.send_if_modified(|r| bump(r, n));
                }
            },
        )
        .map_err(unavailable)?;
        Ok(PgStore {
            client: Mutex::new(Dedicated::with(config, "perch-registry", client)),
            tx,
            _listening: listening,
        })
    }

    /// Runs `f` on the store's connection, reconnecting first if it broke.
    fn with_client<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut slot = self.client.lock().unwrap_or_else(|e| e.into_inner());
        f(slot.get().map_err(StoreError::Unavailable)?)
    }
}

/// Raises `r` to `n`; whether it changed.
fn bump(r: &mut u64, n: u64) -> bool {
    if n > *r {
        *r = n;
        true
    } else {
        false
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value)
        .map_err(|e| StoreError::Corrupt(format!("corrupt record {key}: {e}")))
}

impl RegistryStore for PgStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        self.with_client(load)
    }

    fn commit(&self, base: u64, changes: &[Change]) -> Result<u64, StoreError> {
        let next = self.with_client(|client| commit(client, base, changes))?;
        self.tx.send_if_modified(|r| bump(r, next));
        Ok(next)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

fn load(client: &mut Client) -> Result<Loaded, StoreError> {
    let mut txn = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(unavailable)?;
    let revision: i64 = txn
        .query_one("SELECT revision FROM perch_registry_meta", &[])
        .map_err(unavailable)?
        .get(0);
    let mut records = Records::default();
    for row in txn
        .query(
            "SELECT kind, key, value FROM perch_registry ORDER BY kind, key",
            &[],
        )
        .map_err(unavailable)?
    {
        let (kind, key, value): (i16, String, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
        match kind {
            1 => records.tenants.push(decode(&key, &value)?),
            2 => records.tokens.push(decode(&key, &value)?),
            3 => records.functions.push(decode(&key, &value)?),
            4 => records.routes.push(decode(&key, &value)?),
            5 => records.images.push(decode(&key, &value)?),
            6 => records.certificates.push(decode(&key, &value)?),
            other => {
                return Err(StoreError::Corrupt(format!(
                    "record {key} of unknown kind {other}"
                )));
            }
        }
    }
    txn.commit().map_err(unavailable)?;
    Ok(Loaded {
        records,
        revision: revision as u64,
    })
}

fn commit(client: &mut Client, base: u64, changes: &[Change]) -> Result<u64, StoreError> {
    let mut txn = client.transaction().map_err(unavailable)?;
    let current: i64 = txn
        .query_one("SELECT revision FROM perch_registry_meta FOR UPDATE", &[])
        .map_err(unavailable)?
        .get(0);
    if current as u64 != base {
        return Err(StoreError::Conflict {
            base,
            current: current as u64,
        });
    }
    if changes.is_empty() {
        return Ok(base);
    }
    let put = txn
        .prepare(
            "INSERT INTO perch_registry (kind, key, value) VALUES ($1, $2, $3)
                 ON CONFLICT (kind, key) DO UPDATE SET value = EXCLUDED.value",
        )
        .map_err(unavailable)?;
    let delete = txn
        .prepare("DELETE FROM perch_registry WHERE kind = $1 AND key = $2")
        .map_err(unavailable)?;
    for change in changes {
        let (kind, key) = change.key();
        let kind = kind_number(kind);
        match change.record() {
            Some(v) => {
                txn.execute(&put, &[&kind, &key, &v]).map_err(unavailable)?;
            }
            None => {
                txn.execute(&delete, &[&kind, &key]).map_err(unavailable)?;
            }
        }
    }
    let next = current + 1;
    txn.execute("UPDATE perch_registry_meta SET revision = $1", &[&next])
        .map_err(unavailable)?;
    txn.execute(
        "INSERT INTO perch_registry_changes (revision) VALUES ($1)",
        &[&next],
    )
    .map_err(unavailable)?;
    txn.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &next.to_string()])
        .map_err(unavailable)?;
    txn.commit().map_err(unavailable)?;
    Ok(next as u64)
}

/// A new, empty database for one test (see [`perch_pg::test_database`]).
#[cfg(test)]
pub(crate) fn test_database() -> Option<PgConfig> {
    perch_pg::test_database().map(|url| PgConfig::new(&url))
}

impl Drop for PgStore {
    /// Closing the connection blocks (and panics on an async thread).
    fn drop(&mut self) {
        let client = self
            .client
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(client) = client {
            let _ = std::thread::Builder::new()
                .name("perch-pg-close".into())
                .spawn(move || drop(client));
        }
    }
}
