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
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};
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
    client: Mutex<Client>,
    tx: Arc<watch::Sender<u64>>,
}

/// Applies the migrations this build knows and the database lacks, in one
/// transaction; refuses a schema newer than this build's.
fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let mut txn = client.transaction().map_err(unavailable)?;
    // One migrator at a time across nodes.
    txn.execute("SELECT pg_advisory_xact_lock(7263)", &[])
        .map_err(unavailable)?;
    txn.batch_execute("CREATE TABLE IF NOT EXISTS perch_schema (version integer NOT NULL)")
        .map_err(unavailable)?;
    let current: i32 = match txn
        .query_opt("SELECT version FROM perch_schema", &[])
        .map_err(unavailable)?
    {
        Some(row) => row.get(0),
        None => {
            txn.execute("INSERT INTO perch_schema (version) VALUES (0)", &[])
                .map_err(unavailable)?;
            0
        }
    };
    let known = MIGRATIONS.len() as i32;
    if current > known {
        return Err(StoreError::Corrupt(format!(
            "the database's schema is version {current}; this perch knows up to {known}: upgrade perch"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        txn.batch_execute(sql)
            .map_err(|e| StoreError::Unavailable(format!("migration {}: {e}", i + 1)))?;
    }
    txn.execute("UPDATE perch_schema SET version = $1", &[&known])
        .map_err(unavailable)?;
    txn.commit().map_err(unavailable)
}

fn revision_of(client: &mut Client) -> Result<u64, StoreError> {
    let row = client
        .query_one("SELECT revision FROM perch_registry_meta", &[])
        .map_err(unavailable)?;
    Ok(row.get::<_, i64>(0) as u64)
}

impl PgStore {
    /// Connects to `url` (a libpq connection string or URL), applies the
    /// migrations and starts listening for other nodes' commits. Blocking.
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let mut client = Client::connect(url, NoTls).map_err(unavailable)?;
        migrate(&mut client)?;
        let revision = revision_of(&mut client)?;
        let tx = Arc::new(watch::channel(revision).0);
        let (url, weak) = (url.to_string(), Arc::downgrade(&tx));
        std::thread::Builder::new()
            .name("perch-pg-listen".into())
            .spawn(move || listen(&url, &weak))
            .map_err(unavailable)?;
        Ok(PgStore {
            client: Mutex::new(client),
            tx,
        })
    }

    fn client(&self) -> std::sync::MutexGuard<'_, Client> {
        self.client.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Announces every revision another node (or this one) commits, until the
/// store is dropped; reconnects after a lost connection and then reports
/// the revision it finds, which covers whatever it missed.
fn listen(url: &str, tx: &Weak<watch::Sender<u64>>) {
    let mut delay = Duration::from_millis(100);
    loop {
        let Some(sender) = tx.upgrade() else { return };
        let session = (|| -> Result<(), postgres::Error> {
            let mut config: postgres::Config = url.parse()?;
            config.application_name(LISTENER);
            let mut client = config.connect(NoTls)?;
            client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
            let current: i64 = client
                .query_one("SELECT revision FROM perch_registry_meta", &[])?
                .get(0);
            sender.send_if_modified(|r| bump(r, current as u64));
            drop(sender);
            loop {
                {
                    let mut notes = client.notifications();
                    let mut timed = notes.timeout_iter(Duration::from_secs(1));
                    while let Some(note) = timed.next()? {
                        let Some(sender) = tx.upgrade() else {
                            return Ok(());
                        };
                        if let Ok(n) = note.payload().parse::<u64>() {
                            sender.send_if_modified(|r| bump(r, n));
                        }
                    }
                }
                if tx.strong_count() == 0 {
                    return Ok(());
                }
                // A round trip, so a dead connection shows up here.
                client.is_valid(Duration::from_secs(5))?;
            }
        })();
        match session {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "registry: lost the PostgreSQL notification connection; reconnecting");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
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
        let mut client = self.client();
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

    fn commit(&self, base: u64, changes: &[Change]) -> Result<u64, StoreError> {
        let mut client = self.client();
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
            let value = match change {
                Change::PutTenant(r) => Some(serde_json::to_vec(r)),
                Change::PutToken(r) => Some(serde_json::to_vec(r)),
                Change::PutFunction(r) => Some(serde_json::to_vec(r)),
                Change::PutRoute(r) => Some(serde_json::to_vec(r)),
                Change::PutImage(r) => Some(serde_json::to_vec(r)),
                Change::PutCertificate(r) => Some(serde_json::to_vec(r)),
                _ => None,
            };
            match value {
                Some(v) => {
                    let v = v.expect("registry records serialise");
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
        self.tx.send_if_modified(|r| bump(r, next as u64));
        Ok(next as u64)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

/// A new, empty database on the PostgreSQL server of
/// `PERCH_TEST_POSTGRES_URL` for one test, as a connection string; `None`
/// (with a note) when the variable is unset and `PERCH_SKIP_EXTERNAL=1`.
#[cfg(test)]
pub(crate) fn test_database() -> Option<String> {
    let Ok(url) = std::env::var("PERCH_TEST_POSTGRES_URL") else {
        if std::env::var("PERCH_SKIP_EXTERNAL").as_deref() == Ok("1") {
            eprintln!("skipped: the PostgreSQL store (PERCH_TEST_POSTGRES_URL is not set)");
            return None;
        }
        panic!(
            "PERCH_TEST_POSTGRES_URL is not set: ./test.sh starts a PostgreSQL server for the tests (or set PERCH_SKIP_EXTERNAL=1)"
        );
    };
    let name = format!("perch_test_{}", crate::secrets::random_hex(6));
    let mut admin = Client::connect(&url, NoTls).expect("connect to the test PostgreSQL");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create a test database");
    Some(format!("{url} dbname={name}"))
}
