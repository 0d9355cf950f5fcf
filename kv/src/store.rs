//! The store trait and the types it speaks.
use std::time::Duration;

use async_trait::async_trait;

/// A tenant's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespaceId {
    /// Owning tenant.
    pub tenant: String,
    /// Namespace name within the tenant.
    pub name: String,
}

impl NamespaceId {
    /// `tenant`'s namespace `name`.
    pub fn new(tenant: &str, name: &str) -> Self {
        NamespaceId {
            tenant: tenant.to_string(),
            name: name.to_string(),
        }
    }
}

/// A stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The bytes.
    pub value: Vec<u8>,
    /// JSON metadata, if any.
    pub metadata: Option<String>,
    /// Expiry in Unix milliseconds, if any.
    pub expires_at_ms: Option<u64>,
}

/// Options of a put.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Time to live from now.
    pub ttl: Option<Duration>,
    /// JSON metadata.
    pub metadata: Option<String>,
    /// An expiry at this time (unix milliseconds) instead of `ttl`: for
    /// copying an entry with its expiry exact (`perch storage migrate`).
    pub expires_at_ms: Option<u64>,
}

/// One key of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key.
    pub name: String,
    /// Expiry in Unix milliseconds, if any.
    pub expires_at_ms: Option<u64>,
    /// JSON metadata, if any.
    pub metadata: Option<String>,
}

/// A page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Keys in lexicographic (byte) order.
    pub keys: Vec<KeyInfo>,
    /// Opaque cursor for the next page; `None` when this is the last.
    pub cursor: Option<String>,
}

/// A write, applied atomically with the others of the same call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Store a value.
    Put {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// TTL and metadata.
        options: PutOptions,
    },
    /// Remove a key (absent is fine).
    Delete {
        /// Key.
        key: String,
    },
    /// Add `delta` to the decimal counter stored at `key` (absent counts as 0).
    Increment {
        /// Key.
        key: String,
        /// Amount (may be negative).
        delta: i64,
    },
    /// Replace the value only if the current one equals `expected`
    /// (`None`: only if absent); `new: None` deletes.
    CompareAndSwap {
        /// Key.
        key: String,
        /// The value the caller saw.
        expected: Option<Vec<u8>>,
        /// The replacement.
        new: Option<(Vec<u8>, PutOptions)>,
    },
}

impl WriteOp {
    /// The key the operation touches.
    pub fn key(&self) -> &str {
        match self {
            WriteOp::Put { key, .. }
            | WriteOp::Delete { key }
            | WriteOp::Increment { key, .. }
            | WriteOp::CompareAndSwap { key, .. } => key,
        }
    }
}

/// The outcome of one [`WriteOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteResult {
    /// Put or delete done.
    Done,
    /// The counter's new value.
    Counter(i64),
    /// Whether the swap happened.
    Swapped(bool),
}

/// Size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    /// Key bytes.
    pub max_key: usize,
    /// Value bytes.
    pub max_value: usize,
    /// Metadata bytes.
    pub max_metadata: usize,
    /// Keys per listing page.
    pub max_page: usize,
}

impl Default for KvLimits {
    /// 512 B keys, 25 MiB values, 1 KiB metadata, 1000 keys per page.
    fn default() -> Self {
        KvLimits {
            max_key: 512,
            max_value: 25 << 20,
            max_metadata: 1024,
            max_page: 1000,
        }
    }
}

/// KV failures. Size and validity errors are the caller's; `Storage` is ours
/// (its text is for the server log, not for clients).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvError {
    /// Key over the limit.
    #[error("key is {0} bytes; the limit is {1}")]
    KeyTooLong(usize, usize),
    /// Empty key.
    #[error("key must not be empty")]
    EmptyKey,
    /// Value over the limit.
    #[error("value is {0} bytes; the limit is {1}")]
    ValueTooLarge(usize, usize),
    /// Metadata over the limit.
    #[error("metadata is {0} bytes; the limit is {1}")]
    MetadataTooLarge(usize, usize),
    /// Metadata that is not JSON.
    #[error("metadata must be valid JSON")]
    InvalidMetadata,
    /// Listing limit out of range.
    #[error("limit must be between 1 and {0}")]
    BadLimit(usize),
    /// A cursor this store did not issue.
    #[error("invalid cursor")]
    BadCursor,
    /// Increment on a value that is not a decimal integer, or overflow.
    #[error("{0}")]
    NotACounter(String),
    /// The namespace does not exist.
    #[error("no such namespace")]
    NoSuchNamespace,
    /// The write would take the tenant past a KV quota (none of it was
    /// applied). Its text is what a guest sees.
    #[error("quota_exceeded: {quota}")]
    QuotaExceeded {
        /// `kv_bytes` or `kv_keys`.
        quota: &'static str,
        /// The quota's value.
        limit: u64,
    },
    /// The database failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// The database cannot be reached (a shared database that is down or
    /// refuses connections); nothing was changed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// A key-value store with namespaces owned by tenants: what the guest host
/// calls, the admin API and tenant deletion all use, as `Arc<dyn KvStore>`.
///
/// Backends implement persistence only; [`CheckedKv`](crate::CheckedKv) in
/// front of one enforces the [`KvLimits`]. A write returns only once it is
/// durable. Methods may wait on disk or network, never block the caller's
/// async thread.
#[async_trait]
pub trait KvStore: Send + Sync + 'static {
    /// The value at `key`, unless absent or expired.
    async fn get(&self, ns: &NamespaceId, key: &str) -> Result<Option<Entry>, KvError>;

    /// Applies `ops` atomically and durably; one result per op. If any op
    /// fails (e.g. increment of a non-number) none is applied.
    async fn write(&self, ns: &NamespaceId, ops: Vec<WriteOp>)
    -> Result<Vec<WriteResult>, KvError>;

    /// Keys starting with `prefix`, sorted, after `cursor`, at most `limit`.
    async fn list(
        &self,
        ns: &NamespaceId,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, KvError>;

    /// Creates a namespace (idempotent); returns whether it is new.
    async fn create_namespace(&self, ns: &NamespaceId) -> Result<bool, KvError>;

    /// True when the namespace exists.
    async fn namespace_exists(&self, ns: &NamespaceId) -> Result<bool, KvError>;

    /// A tenant's namespaces, sorted.
    async fn list_namespaces(&self, tenant: &str) -> Result<Vec<String>, KvError>;

    /// Removes every namespace and key of a tenant.
    async fn delete_tenant(&self, tenant: &str) -> Result<(), KvError>;

    /// What a tenant's stored keys take.
    async fn usage(&self, tenant: &str) -> Result<crate::KvUsage, KvError>;

    /// The limits enforced in front of this store, if any (a bare backend
    /// enforces none).
    fn limits(&self) -> Option<KvLimits> {
        None
    }

    /// The value of `key` if it can be answered at once from memory: `None`
    /// when that would need a lookup, `Some(None)` for a key known to be
    /// absent or expired. Lets async callers skip a thread hop on hits.
    fn get_cached(&self, _ns: &NamespaceId, _key: &str) -> Option<Option<Entry>> {
        None
    }

    /// True when `ns` is known to exist without a lookup.
    fn namespace_known(&self, _ns: &NamespaceId) -> bool {
        false
    }

    /// True when `key` holds a live value.
    async fn exists(&self, ns: &NamespaceId, key: &str) -> Result<bool, KvError> {
        Ok(self.get(ns, key).await?.is_some())
    }

    /// Stores a value.
    async fn put(
        &self,
        ns: &NamespaceId,
        key: &str,
        value: Vec<u8>,
        options: PutOptions,
    ) -> Result<(), KvError> {
        let op = WriteOp::Put {
            key: key.to_string(),
            value,
            options,
        };
        self.write(ns, vec![op]).await.map(drop)
    }

    /// Removes a key.
    async fn delete(&self, ns: &NamespaceId, key: &str) -> Result<(), KvError> {
        let op = WriteOp::Delete {
            key: key.to_string(),
        };
        self.write(ns, vec![op]).await.map(drop)
    }

    /// Adds `delta` to a decimal counter; returns the new value.
    async fn increment(&self, ns: &NamespaceId, key: &str, delta: i64) -> Result<i64, KvError> {
        let op = WriteOp::Increment {
            key: key.to_string(),
            delta,
        };
        match self.write(ns, vec![op]).await?.pop() {
            Some(WriteResult::Counter(n)) => Ok(n),
            other => Err(KvError::Storage(format!(
                "unexpected increment result {other:?}"
            ))),
        }
    }

    /// Compare-and-swap; returns whether it happened.
    async fn compare_and_swap(
        &self,
        ns: &NamespaceId,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Option<(Vec<u8>, PutOptions)>,
    ) -> Result<bool, KvError> {
        let op = WriteOp::CompareAndSwap {
            key: key.to_string(),
            expected,
            new,
        };
        match self.write(ns, vec![op]).await?.pop() {
            Some(WriteResult::Swapped(b)) => Ok(b),
            other => Err(KvError::Storage(format!(
                "unexpected swap result {other:?}"
            ))),
        }
    }

    /// Values of several keys, in order.
    async fn get_many(
        &self,
        ns: &NamespaceId,
        keys: &[String],
    ) -> Result<Vec<Option<Entry>>, KvError> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(self.get(ns, k).await?);
        }
        Ok(out)
    }
}
