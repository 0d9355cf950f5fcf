//! The persistence seam of the registry.
//!
//! A [`RegistryStore`] keeps the records and a revision number. The
//! registry's rules (host ownership, domains, version numbering) run above
//! it, on the in-memory state; a store only loads records, commits a batch
//! of [`Change`]s atomically against the revision the batch was computed
//! from (compare-and-set), and tells when another writer committed.
use tokio::sync::watch;

use super::model::{CertificateRecord, Function, ImageRecord, Route, Tenant, TokenRecord, fn_key};

/// One write of a commit.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Create or replace a tenant (keyed by name).
    PutTenant(Tenant),
    /// Remove a tenant record.
    DeleteTenant(String),
    /// Create or replace a token (keyed by hash).
    PutToken(TokenRecord),
    /// Remove a token by hash.
    DeleteToken(String),
    /// Create or replace a function with its versions (keyed by `tenant/name`).
    PutFunction(Function),
    /// Remove a function by `tenant/name`.
    DeleteFunction(String),
    /// Create or replace a route (keyed by host pattern).
    PutRoute(Route),
    /// Remove a route by host pattern.
    DeleteRoute(String),
    /// Create or replace a tenant's image (keyed by `tenant/id`).
    PutImage(ImageRecord),
    /// Remove an image by `tenant/id`.
    DeleteImage(String),
    /// Create or replace a certificate (keyed by host).
    PutCertificate(CertificateRecord),
    /// Remove a certificate by host.
    DeleteCertificate(String),
}

/// Which kind of record a change writes, and its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A tenant.
    Tenant,
    /// A token.
    Token,
    /// A function.
    Function,
    /// A route.
    Route,
    /// A tenant's container image.
    Image,
    /// A certificate for a tenant's host.
    Certificate,
}

impl Change {
    /// The record a put stores, as the stores keep it (JSON); `None` for
    /// a deletion.
    pub fn record(&self) -> Option<Vec<u8>> {
        fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
            serde_json::to_vec(value).expect("registry records serialise")
        }
        match self {
            Change::PutTenant(r) => Some(json(r)),
            Change::PutToken(r) => Some(json(r)),
            Change::PutFunction(r) => Some(json(r)),
            Change::PutRoute(r) => Some(json(r)),
            Change::PutImage(r) => Some(json(r)),
            Change::PutCertificate(r) => Some(json(r)),
            Change::DeleteTenant(_)
            | Change::DeleteToken(_)
            | Change::DeleteFunction(_)
            | Change::DeleteRoute(_)
            | Change::DeleteImage(_)
            | Change::DeleteCertificate(_) => None,
        }
    }

    /// The kind of record and its key.
    pub fn key(&self) -> (Kind, String) {
        match self {
            Change::PutTenant(t) => (Kind::Tenant, t.name.clone()),
            Change::DeleteTenant(k) => (Kind::Tenant, k.clone()),
            Change::PutToken(t) => (Kind::Token, t.hash.clone()),
            Change::DeleteToken(k) => (Kind::Token, k.clone()),
            Change::PutFunction(f) => (Kind::Function, fn_key(&f.tenant, &f.name)),
            Change::DeleteFunction(k) => (Kind::Function, k.clone()),
            Change::PutRoute(r) => (Kind::Route, r.pattern()),
            Change::DeleteRoute(k) => (Kind::Route, k.clone()),
            Change::PutImage(i) => (Kind::Image, fn_key(&i.tenant, &i.id)),
            Change::DeleteImage(k) => (Kind::Image, k.clone()),
            Change::PutCertificate(c) => (Kind::Certificate, c.host.clone()),
            Change::DeleteCertificate(k) => (Kind::Certificate, k.clone()),
        }
    }
}

/// Every record a store holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Records {
    /// Tenants.
    pub tenants: Vec<Tenant>,
    /// Tokens.
    pub tokens: Vec<TokenRecord>,
    /// Functions with their versions.
    pub functions: Vec<Function>,
    /// Routes.
    pub routes: Vec<Route>,
    /// Tenants' container images.
    pub images: Vec<ImageRecord>,
    /// Certificates of tenants' hosts.
    pub certificates: Vec<CertificateRecord>,
}

/// The records at one revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    /// The records.
    pub records: Records,
    /// The revision they are at (0 for a new store).
    pub revision: u64,
}

/// Store failures.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// The store moved past the base revision: reload and recompute.
    #[error("the registry changed since revision {base} (now {current})")]
    Conflict {
        /// The revision the batch was computed from.
        base: u64,
        /// The store's revision.
        current: u64,
    },
    /// The store cannot be reached or failed.
    #[error("registry storage: {0}")]
    Unavailable(String),
    /// A stored record does not parse, or the layout is not this version's.
    #[error("registry storage: {0}")]
    Corrupt(String),
}

/// Persistence of the registry's records.
///
/// Methods are synchronous and may block on disk or network: async callers
/// run them on a blocking thread.
pub trait RegistryStore: Send + Sync + 'static {
    /// Every record and the revision they are at.
    fn load(&self) -> Result<Loaded, StoreError>;

    /// Applies `changes` atomically and durably if the store is still at
    /// `base`; returns the new revision (`base + 1`). An empty batch
    /// commits nothing and returns `base`. A store past `base` answers
    /// [`StoreError::Conflict`] and writes nothing.
    fn commit(&self, base: u64, changes: &[Change]) -> Result<u64, StoreError>;

    /// The latest revision committed by any writer of this store (including
    /// this process). A single-node store only ever reports its own commits.
    fn subscribe(&self) -> watch::Receiver<u64>;
}

/// A store in memory, for tests of the registry's rules and of two
/// registries (two "nodes") sharing one store.
#[cfg(test)]
pub(crate) mod memory {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Inner {
        revision: u64,
        records: BTreeMap<(u8, String), Change>,
    }

    /// Records in a map behind a mutex; commits notify every subscriber.
    pub(crate) struct MemoryStore {
        inner: Mutex<Inner>,
        tx: watch::Sender<u64>,
        /// False: commits are never announced (a notification that has not
        /// arrived yet), so only the compare-and-set protects a writer.
        announce: bool,
    }

    impl Default for MemoryStore {
        fn default() -> Self {
            MemoryStore {
                inner: Mutex::default(),
                tx: watch::channel(0).0,
                announce: true,
            }
        }
    }

    impl MemoryStore {
        /// A store whose commits are never announced to subscribers.
        pub(crate) fn silent() -> Self {
            MemoryStore {
                announce: false,
                ..MemoryStore::default()
            }
        }
    }

    fn tag(kind: Kind) -> u8 {
        kind as u8
    }

    impl RegistryStore for MemoryStore {
        fn load(&self) -> Result<Loaded, StoreError> {
            let inner = self.inner.lock().unwrap();
            let mut records = Records::default();
            for change in inner.records.values() {
                match change.clone() {
                    Change::PutTenant(t) => records.tenants.push(t),
                    Change::PutToken(t) => records.tokens.push(t),
                    Change::PutFunction(f) => records.functions.push(f),
                    Change::PutRoute(r) => records.routes.push(r),
                    Change::PutImage(i) => records.images.push(i),
                    Change::PutCertificate(c) => records.certificates.push(c),
                    _ => unreachable!("only puts are kept"),
                }
            }
            Ok(Loaded {
                records,
                revision: inner.revision,
            })
        }

        fn commit(&self, base: u64, changes: &[Change]) -> Result<u64, StoreError> {
            let mut inner = self.inner.lock().unwrap();
            if inner.revision != base {
                return Err(StoreError::Conflict {
                    base,
                    current: inner.revision,
                });
            }
            if changes.is_empty() {
                return Ok(base);
            }
            for change in changes {
                let (kind, key) = change.key();
                let is_put = matches!(
                    change,
                    Change::PutTenant(_)
                        | Change::PutToken(_)
                        | Change::PutFunction(_)
                        | Change::PutRoute(_)
                        | Change::PutImage(_)
                        | Change::PutCertificate(_)
                );
                if is_put {
                    inner.records.insert((tag(kind), key), change.clone());
                } else {
                    inner.records.remove(&(tag(kind), key));
                }
            }
            inner.revision += 1;
            let revision = inner.revision;
            drop(inner);
            if self.announce {
                self.tx.send_replace(revision);
            }
            Ok(revision)
        }

        fn subscribe(&self) -> watch::Receiver<u64> {
            self.tx.subscribe()
        }
    }
}
