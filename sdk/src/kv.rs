//! The tenant's key-value store.
//!
//! `Kv::open("default")` (or `""`) opens the tenant's default namespace;
//! other names must be bound in the function's settings
//! (`"kv": {"CACHE": "sessions"}` makes `Kv::open("CACHE")` open `sessions`).
//!
//! ```no_run
//! use perch_sdk::kv::{Kv, PutOptions};
//! use std::time::Duration;
//!
//! # fn demo() -> Result<(), perch_sdk::kv::Error> {
//! let kv = Kv::open("default")?;
//! kv.put_with("session/42", b"alice", PutOptions { ttl: Some(Duration::from_secs(3600)), metadata: None })?;
//! let page = kv.list("session/", None, 100)?;
//! for key in page.keys {
//!     let _value = kv.get(&key.name)?;
//! }
//! # Ok(()) }
//! ```
use std::time::Duration;

use crate::bindings::perch::kv::ext;
use crate::bindings::wasi::keyvalue::{atomics, batch, store};

/// What a KV call can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The name is not bound for this function.
    NoSuchStore,
    /// Refused.
    AccessDenied,
    /// Any other failure (limits, invalid input), with Perch's message.
    Other(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NoSuchStore => f.write_str("no such store"),
            Error::AccessDenied => f.write_str("access denied"),
            Error::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl From<store::Error> for Error {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::NoSuchStore => Error::NoSuchStore,
            store::Error::AccessDenied => Error::AccessDenied,
            store::Error::Other(m) => Error::Other(m),
        }
    }
}

/// Options of a write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Expire after this long (millisecond precision).
    pub ttl: Option<Duration>,
    /// JSON metadata (at most 1 KiB).
    pub metadata: Option<String>,
}

/// A value with its metadata and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The bytes.
    pub value: Vec<u8>,
    /// JSON metadata.
    pub metadata: Option<String>,
    /// Expiry, Unix milliseconds.
    pub expires_at_ms: Option<u64>,
}

/// One key of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The key.
    pub name: String,
    /// Expiry, Unix milliseconds.
    pub expires_at_ms: Option<u64>,
    /// JSON metadata.
    pub metadata: Option<String>,
}

/// A page of keys; pass `cursor` back for the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Keys in lexicographic order.
    pub keys: Vec<Key>,
    /// `None` on the last page.
    pub cursor: Option<String>,
}

/// An open namespace.
pub struct Kv {
    bucket: store::Bucket,
}

impl Kv {
    /// Opens `name` (`"default"` or a binding from the function's settings).
    pub fn open(name: &str) -> Result<Kv, Error> {
        Ok(Kv {
            bucket: store::open(name)?,
        })
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.bucket.get(key)?)
    }

    /// The value with its metadata and expiry.
    pub fn entry(&self, key: &str) -> Result<Option<Entry>, Error> {
        Ok(ext::get_entry(&self.bucket, key)?.map(|e| Entry {
            value: e.value,
            metadata: e.metadata,
            expires_at_ms: e.expires_at,
        }))
    }

    /// Stores `value` (durable when this returns).
    pub fn put(&self, key: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
        Ok(self.bucket.set(key, value.as_ref())?)
    }

    /// Stores `value` with a time to live and/or metadata.
    pub fn put_with(
        &self,
        key: &str,
        value: impl AsRef<[u8]>,
        options: PutOptions,
    ) -> Result<(), Error> {
        let ttl = options.ttl.map(|t| t.as_millis().max(1) as u64);
        Ok(ext::set_with_options(
            &self.bucket,
            key,
            value.as_ref(),
            ttl,
            options.metadata.as_deref(),
        )?)
    }

    /// Removes `key` (absent is fine).
    pub fn delete(&self, key: &str) -> Result<(), Error> {
        Ok(self.bucket.delete(key)?)
    }

    /// True when `key` holds a value.
    pub fn exists(&self, key: &str) -> Result<bool, Error> {
        Ok(self.bucket.exists(key)?)
    }

    /// Keys starting with `prefix`, after `cursor`, at most `limit` (1 to 1000).
    pub fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> Result<Page, Error> {
        let page = ext::scan(&self.bucket, prefix, cursor, limit)?;
        Ok(Page {
            keys: page
                .keys
                .into_iter()
                .map(|k| Key {
                    name: k.name,
                    expires_at_ms: k.expires_at,
                    metadata: k.metadata,
                })
                .collect(),
            cursor: page.cursor,
        })
    }

    /// Every key, following `wasi:keyvalue`'s numeric cursor (pages of up
    /// to 1000). Prefer [`list`](Self::list) for large namespaces.
    pub fn keys(&self) -> Result<Vec<String>, Error> {
        let mut all = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.bucket.list_keys(cursor)?;
            all.extend(page.keys);
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(all),
            }
        }
    }

    /// Values of several keys, in order (`None` where absent).
    pub fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        Ok(batch::get_many(&self.bucket, keys)?
            .into_iter()
            .map(|e| e.map(|(_, v)| v))
            .collect())
    }

    /// Stores several values in one durable write.
    pub fn put_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), Error> {
        Ok(batch::set_many(&self.bucket, entries)?)
    }

    /// Removes several keys in one durable write.
    pub fn delete_many(&self, keys: &[String]) -> Result<(), Error> {
        Ok(batch::delete_many(&self.bucket, keys)?)
    }

    /// Adds `delta` to the decimal counter at `key` (absent counts as 0).
    pub fn increment(&self, key: &str, delta: u64) -> Result<u64, Error> {
        Ok(atomics::increment(&self.bucket, key, delta)?)
    }

    /// Writes `new` (or deletes, for `None`) only if the current value is
    /// `expected` (`None`: only if absent). Returns whether it happened.
    pub fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, Error> {
        Ok(ext::compare_and_swap(&self.bucket, key, expected, new)?)
    }
}
