//! Perch's embedded key-value store.
//!
//! Namespaces belong to tenants. Each holds string keys with byte values, an
//! optional expiry (millisecond precision) and optional JSON metadata. The
//! async [`KvStore`] trait is what the gateway and the guest interfaces use,
//! as `Arc<dyn KvStore>`. [`RedbKv`] implements it on a redb database (the
//! same file as Perch's registry) with a moka read cache in front, a single
//! writer thread that commits concurrent writes together (group commit), and
//! a background purge of expired keys. Backends only persist: [`CheckedKv`]
//! in front of one enforces the [`KvLimits`] (sizes, metadata, page sizes).
//!
//! ```no_run
//! use std::sync::Arc;
//! use perch_kv::{CheckedKv, KvLimits, KvStore, NamespaceId, PutOptions, RedbKv};
//! # async fn demo() -> Result<(), perch_kv::KvError> {
//! let db = Arc::new(redb::Database::create("perch.redb").unwrap());
//! let kv: Arc<dyn KvStore> =
//!     Arc::new(CheckedKv::new(Arc::new(RedbKv::open(db)?), KvLimits::default()));
//! let ns = NamespaceId::new("acme", "default");
//! kv.put(&ns, "greeting", b"hello".to_vec(), PutOptions::default()).await?;
//! assert_eq!(kv.get(&ns, "greeting").await?.unwrap().value, b"hello");
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod apply;
mod backend;
mod bindings;
mod checked;
pub mod copy;
mod encoding;
pub mod guest;
mod pg_backend;
mod quota;
mod redb_backend;
mod store;

/// The attribute [`KvStore`] implementations put on their `impl` block.
pub use async_trait::async_trait;
pub use checked::CheckedKv;
pub use pg_backend::PgKv;
pub use quota::{KvQuota, KvQuotas, KvUsage};
pub use redb_backend::{KvStats, RedbKv};
pub use store::{
    Entry, KeyInfo, KvError, KvLimits, KvStore, NamespaceId, Page, PutOptions, WriteOp, WriteResult,
};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
