//! Perch's embedded key-value store.
//!
//! Namespaces belong to tenants. Each holds string keys with byte values, an
//! optional expiry (millisecond precision) and optional JSON metadata. The
//! [`KvBackend`] trait is what the gateway and the guest interfaces use;
//! [`RedbKv`] implements it on a redb database (the same file as Perch's
//! registry) with a moka read cache in front, a single writer thread that
//! commits concurrent writes together (group commit), and a background purge
//! of expired keys.
//!
//! ```no_run
//! use perch_kv::{KvBackend, KvLimits, NamespaceId, PutOptions, RedbKv};
//! # fn demo() -> Result<(), perch_kv::KvError> {
//! let db = std::sync::Arc::new(redb::Database::create("perch.redb").unwrap());
//! let kv = RedbKv::open(db, KvLimits::default())?;
//! let ns = NamespaceId::new("acme", "default");
//! kv.put(&ns, "greeting", b"hello".to_vec(), PutOptions::default())?;
//! assert_eq!(kv.get(&ns, "greeting")?.unwrap().value, b"hello");
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod backend;
mod bindings;
mod encoding;
pub mod guest;
mod redb_backend;

pub use backend::{
    Entry, KeyInfo, KvBackend, KvError, KvLimits, NamespaceId, Page, PutOptions, WriteOp,
    WriteResult,
};
pub use redb_backend::{KvStats, RedbKv};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
