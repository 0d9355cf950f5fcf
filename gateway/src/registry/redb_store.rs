//! The redb implementation of [`RegistryStore`]: one JSON record per key in
//! the tables `tenants`, `tokens`, `functions`, `routes`, `images` and
//! `certificates` of the node's
//! database (`perch.redb`, shared with the KV store), the layout version
//! and the revision in `meta`. A commit is one durable redb write
//! transaction; redb serialises writers, so the revision check and the
//! writes are one atomic step.
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::store::{Change, Kind, Loaded, Records, RegistryStore, StoreError};

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const TENANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("tenants");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const FUNCTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("functions");
const ROUTES: TableDefinition<&str, &[u8]> = TableDefinition::new("routes");
const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
const CERTIFICATES: TableDefinition<&str, &[u8]> = TableDefinition::new("certificates");

/// Version of the on-disk layout; bumped on incompatible changes.
pub const SCHEMA_VERSION: &str = "1";

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Every kind of record, each in its table.
const KINDS: [Kind; 6] = [
    Kind::Tenant,
    Kind::Token,
    Kind::Function,
    Kind::Route,
    Kind::Image,
    Kind::Certificate,
];

fn table(kind: Kind) -> TableDefinition<'static, &'static str, &'static [u8]> {
    match kind {
        Kind::Tenant => TENANTS,
        Kind::Token => TOKENS,
        Kind::Function => FUNCTIONS,
        Kind::Route => ROUTES,
        Kind::Image => IMAGES,
        Kind::Certificate => CERTIFICATES,
    }
}

/// The registry in a redb database.
pub struct RedbStore {
    db: Arc<Database>,
    tx: watch::Sender<u64>,
}

impl RedbStore {
    /// Opens the registry tables in `db`, creating them (and the layout
    /// version) in a new database; refuses another layout version.
    pub fn open(db: Arc<Database>) -> Result<RedbStore, StoreError> {
        let txn = db.begin_write().map_err(unavailable)?;
        let revision;
        {
            let mut meta = txn.open_table(META).map_err(unavailable)?;
            let existing = meta
                .get("schema_version")
                .map_err(unavailable)?
                .map(|v| v.value().to_string());
            match existing.as_deref() {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)
                        .map_err(unavailable)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(other) => {
                    return Err(StoreError::Corrupt(format!(
                        "database schema version {other} is not supported by this perch (expects {SCHEMA_VERSION})"
                    )));
                }
            }
            revision = read_revision(&meta)?;
            for kind in KINDS {
                txn.open_table(table(kind)).map_err(unavailable)?;
            }
        }
        txn.commit().map_err(unavailable)?;
        Ok(RedbStore {
            db,
            tx: watch::channel(revision).0,
        })
    }
}

/// The stored revision (a database written before revisions were kept is
/// at 0).
fn read_revision(meta: &impl ReadableTable<&'static str, &'static str>) -> Result<u64, StoreError> {
    match meta.get("revision").map_err(unavailable)? {
        None => Ok(0),
        Some(v) => v
            .value()
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("bad revision `{}`", v.value()))),
    }
}

fn load_table<T: DeserializeOwned>(
    read: &redb::ReadTransaction,
    kind: Kind,
    out: &mut Vec<T>,
) -> Result<(), StoreError> {
    let t = read.open_table(table(kind)).map_err(unavailable)?;
    for row in t.iter().map_err(unavailable)? {
        let (k, v) = row.map_err(unavailable)?;
        let value = serde_json::from_slice(v.value())
            .map_err(|e| StoreError::Corrupt(format!("corrupt record {}: {e}", k.value())))?;
        out.push(value);
    }
    Ok(())
}

impl RedbStore {
    /// The records as `read` sees them (a backup's read transaction).
    pub fn load_from(read: &redb::ReadTransaction) -> Result<Loaded, StoreError> {
        let revision = read_revision(&read.open_table(META).map_err(unavailable)?)?;
        let mut records = Records::default();
        load_table(read, Kind::Tenant, &mut records.tenants)?;
        load_table(read, Kind::Token, &mut records.tokens)?;
        load_table(read, Kind::Function, &mut records.functions)?;
        load_table(read, Kind::Route, &mut records.routes)?;
        load_table(read, Kind::Image, &mut records.images)?;
        load_table(read, Kind::Certificate, &mut records.certificates)?;
        Ok(Loaded { records, revision })
    }

    /// Copies the registry's tables (and `meta`: the layout version and
    /// the revision), for a backup.
    pub fn copy_tables(
        from: &redb::ReadTransaction,
        to: &redb::WriteTransaction,
    ) -> Result<(), redb::Error> {
        perch_kv::copy::copy_table(from, to, META)?;
        for kind in KINDS {
            perch_kv::copy::copy_table(from, to, table(kind))?;
        }
        Ok(())
    }
}

impl RegistryStore for RedbStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let read = self.db.begin_read().map_err(unavailable)?;
        Self::load_from(&read)
    }

    fn commit(&self, base: u64, changes: &[Change]) -> Result<u64, StoreError> {
        let txn = self.db.begin_write().map_err(unavailable)?;
        let next = {
            let mut meta = txn.open_table(META).map_err(unavailable)?;
            let current = read_revision(&meta)?;
            if current != base {
                return Err(StoreError::Conflict { base, current });
            }
            if changes.is_empty() {
                return Ok(base);
            }
            let next = base + 1;
            meta.insert("revision", next.to_string().as_str())
                .map_err(unavailable)?;
            next
        };
        for change in changes {
            let (kind, key) = change.key();
            let mut t = txn.open_table(table(kind)).map_err(unavailable)?;
            match change.record() {
                Some(v) => t.insert(key.as_str(), v.as_slice()).map(drop),
                None => t.remove(key.as_str()).map(drop),
            }
            .map_err(unavailable)?;
        }
        txn.commit().map_err(unavailable)?;
        self.tx.send_replace(next);
        Ok(next)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}
