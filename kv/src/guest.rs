//! The guest side of the store: what a function's instance may open, and the
//! host implementations of `wasi:keyvalue` (`store`, `atomics`, `batch`) and
//! Perch's `perch:kv/ext`.
//!
//! `open("")` and `open("default")` give the tenant's `default` namespace;
//! other identifiers must be bound in the function's settings. Request limits
//! (sizes, operations per invocation) are errors the guest sees; nothing here
//! traps except a bug or a missing resource. The store's own failures reach
//! the guest as a bare "storage error"; their detail goes to the server log.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::bindings::perch::kv::ext;
use crate::bindings::wasi::keyvalue::{atomics, batch, store};
use crate::{Entry, KvError, KvStore, NamespaceId, PutOptions, WriteOp, WriteResult};

/// What one function may reach: its tenant's namespaces by binding.
#[derive(Clone)]
pub struct KvAccess {
    /// The store (with its limits checked in front, e.g. a
    /// [`CheckedKv`](crate::CheckedKv)).
    pub store: Arc<dyn KvStore>,
    /// Owning tenant.
    pub tenant: String,
    /// Identifier → namespace, from the function's settings.
    pub bindings: HashMap<String, String>,
    /// Operations allowed per invocation.
    pub max_ops: u32,
}

impl std::fmt::Debug for KvAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvAccess")
            .field("tenant", &self.tenant)
            .field("bindings", &self.bindings)
            .field("max_ops", &self.max_ops)
            .finish_non_exhaustive()
    }
}

/// Per-instance KV state.
pub struct KvCtx {
    access: Arc<KvAccess>,
    ops: u32,
}

impl KvCtx {
    /// A context for one invocation.
    pub fn new(access: Arc<KvAccess>) -> Self {
        KvCtx { access, ops: 0 }
    }
}

/// Borrowed view handed to the host implementations.
pub struct KvCtxView<'a> {
    /// The invocation's context.
    pub ctx: &'a mut KvCtx,
    /// The instance's resource table.
    pub table: &'a mut ResourceTable,
}

/// Implemented by store data that offers KV to guests.
pub trait KvView: Send {
    /// The KV context and resource table, or `None` when KV is unavailable
    /// (every `open` then fails with `no-such-store`).
    fn kv(&mut self) -> Option<KvCtxView<'_>>;
}

/// An opened bucket.
#[derive(Debug)]
pub struct Bucket {
    ns: NamespaceId,
}

/// Errors returned to guests (or traps for host bugs).
pub enum GuestError {
    /// The identifier is not bound.
    NoSuchStore,
    /// Refused.
    AccessDenied,
    /// Anything else, with a message.
    Other(String),
    /// A host failure: traps the instance.
    Trap(wasmtime::Error),
}

/// The message a guest gets for a failure of the store itself.
const STORAGE_ERROR: &str = "storage error";

impl From<KvError> for GuestError {
    /// A request error keeps its text (the guest can act on it); a storage
    /// failure's detail goes to the log, never to the guest.
    fn from(e: KvError) -> Self {
        match e {
            KvError::NoSuchNamespace => GuestError::NoSuchStore,
            KvError::Storage(detail) => {
                tracing::error!(error = %detail, "KV storage failure in a guest call");
                GuestError::Other(STORAGE_ERROR.into())
            }
            other => GuestError::Other(other.to_string()),
        }
    }
}

impl From<wasmtime::component::ResourceTableError> for GuestError {
    fn from(e: wasmtime::component::ResourceTableError) -> Self {
        GuestError::Trap(e.into())
    }
}

type GResult<T> = Result<T, GuestError>;

/// Marker for `add_to_linker`.
struct HasKv;
impl HasData for HasKv {
    type Data<'a> = KvHost<'a>;
}

/// The host implementation over a view (or nothing, when KV is off).
pub struct KvHost<'a>(Option<KvCtxView<'a>>);

/// Adds `wasi:keyvalue` and `perch:kv/ext` to a linker.
pub fn add_to_linker<T: KvView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    fn get<T: KvView>(t: &mut T) -> KvHost<'_> {
        KvHost(t.kv())
    }
    store::add_to_linker::<T, HasKv>(linker, get::<T>)?;
    atomics::add_to_linker::<T, HasKv>(linker, get::<T>)?;
    batch::add_to_linker::<T, HasKv>(linker, get::<T>)?;
    ext::add_to_linker::<T, HasKv>(linker, get::<T>)?;
    Ok(())
}

impl KvHost<'_> {
    fn parts(&mut self) -> GResult<(&mut KvCtx, &mut ResourceTable)> {
        match &mut self.0 {
            Some(v) => Ok((&mut *v.ctx, &mut *v.table)),
            None => Err(GuestError::NoSuchStore),
        }
    }

    /// Counts `n` operations against the per-invocation budget.
    fn charge(&mut self, n: usize) -> GResult<Arc<KvAccess>> {
        let (ctx, _) = self.parts()?;
        let max = ctx.access.max_ops;
        let next = ctx.ops.saturating_add(n.min(u32::MAX as usize) as u32);
        if next > max {
            return Err(GuestError::Other(format!(
                "KV operation limit reached ({max} per request)"
            )));
        }
        ctx.ops = next;
        Ok(ctx.access.clone())
    }

    fn bucket_ns(&mut self, bucket: &Resource<Bucket>) -> GResult<NamespaceId> {
        let (_, table) = self.parts()?;
        Ok(table.get(bucket)?.ns.clone())
    }

    async fn get_entry(
        &mut self,
        bucket: &Resource<Bucket>,
        key: String,
    ) -> GResult<Option<Entry>> {
        let access = self.charge(1)?;
        let ns = self.bucket_ns(bucket)?;
        // A cache hit answers inline, without a thread hop.
        if let Some(hit) = access.store.get_cached(&ns, &key) {
            return Ok(hit);
        }
        Ok(access.store.get(&ns, &key).await?)
    }

    async fn write(
        &mut self,
        bucket: &Resource<Bucket>,
        ops: Vec<WriteOp>,
    ) -> GResult<Vec<WriteResult>> {
        let access = self.charge(ops.len().max(1))?;
        let ns = self.bucket_ns(bucket)?;
        Ok(access.store.write(&ns, ops).await?)
    }
}

impl store::Host for KvHost<'_> {
    async fn open(&mut self, identifier: String) -> GResult<Resource<Bucket>> {
        let access = self.charge(1)?;
        let name = match identifier.as_str() {
            "" | "default" => "default".to_string(),
            other => access
                .bindings
                .get(other)
                .cloned()
                .ok_or(GuestError::NoSuchStore)?,
        };
        let ns = NamespaceId::new(&access.tenant, &name);
        // Namespaces are created on first use; once known, no disk access.
        if !access.store.namespace_known(&ns) {
            access.store.create_namespace(&ns).await?;
        }
        let (_, table) = self.parts()?;
        Ok(table.push(Bucket { ns })?)
    }

    fn convert_error(&mut self, err: GuestError) -> wasmtime::Result<store::Error> {
        match err {
            GuestError::NoSuchStore => Ok(store::Error::NoSuchStore),
            GuestError::AccessDenied => Ok(store::Error::AccessDenied),
            GuestError::Other(m) => Ok(store::Error::Other(m)),
            GuestError::Trap(e) => Err(e),
        }
    }
}

impl store::HostBucket for KvHost<'_> {
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> GResult<Option<Vec<u8>>> {
        Ok(self.get_entry(&bucket, key).await?.map(|e| e.value))
    }

    async fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> GResult<()> {
        self.write(
            &bucket,
            vec![WriteOp::Put {
                key,
                value,
                options: PutOptions::default(),
            }],
        )
        .await
        .map(drop)
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> GResult<()> {
        self.write(&bucket, vec![WriteOp::Delete { key }])
            .await
            .map(drop)
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> GResult<bool> {
        Ok(self.get_entry(&bucket, key).await?.is_some())
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> GResult<store::KeyResponse> {
        // The draft's cursor is a number: the count of keys already returned.
        let access = self.charge(1)?;
        let ns = self.bucket_ns(&bucket)?;
        let page_size = access.store.limits().unwrap_or_default().max_page;
        let mut skip = cursor.unwrap_or(0);
        let mut after: Option<String> = None;
        loop {
            let page = access
                .store
                .list(&ns, "", after.as_deref(), page_size)
                .await?;
            let n = page.keys.len() as u64;
            if skip >= n && page.cursor.is_some() {
                skip -= n;
                after = page.cursor;
                continue;
            }
            let start = skip.min(n) as usize;
            let keys: Vec<String> = page.keys.into_iter().skip(start).map(|k| k.name).collect();
            let returned = cursor.unwrap_or(0) + keys.len() as u64;
            let next = page.cursor.map(|_| returned);
            return Ok(store::KeyResponse { keys, cursor: next });
        }
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        if let Some(v) = &mut self.0 {
            v.table.delete(bucket)?;
        }
        Ok(())
    }
}

impl atomics::Host for KvHost<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> GResult<u64> {
        let delta =
            i64::try_from(delta).map_err(|_| GuestError::Other("delta too large".into()))?;
        match self
            .write(&bucket, vec![WriteOp::Increment { key, delta }])
            .await?
            .pop()
        {
            Some(WriteResult::Counter(n)) => {
                u64::try_from(n).map_err(|_| GuestError::Other("counter is negative".into()))
            }
            _ => Err(GuestError::Trap(wasmtime::format_err!(
                "unexpected increment result"
            ))),
        }
    }
}

impl batch::Host for KvHost<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> GResult<Vec<Option<(String, Vec<u8>)>>> {
        let access = self.charge(keys.len().max(1))?;
        let ns = self.bucket_ns(&bucket)?;
        let entries = access.store.get_many(&ns, &keys).await?;
        Ok(keys
            .into_iter()
            .zip(entries)
            .map(|(k, e)| e.map(|e| (k, e.value)))
            .collect())
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> GResult<()> {
        let ops = key_values
            .into_iter()
            .map(|(key, value)| WriteOp::Put {
                key,
                value,
                options: PutOptions::default(),
            })
            .collect();
        self.write(&bucket, ops).await.map(drop)
    }

    async fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> GResult<()> {
        let ops = keys
            .into_iter()
            .map(|key| WriteOp::Delete { key })
            .collect();
        self.write(&bucket, ops).await.map(drop)
    }
}

impl ext::Host for KvHost<'_> {
    async fn set_with_options(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        metadata: Option<String>,
    ) -> GResult<()> {
        if ttl_ms == Some(0) {
            return Err(GuestError::Other("ttl must be positive".into()));
        }
        let options = PutOptions {
            ttl: ttl_ms.map(Duration::from_millis),
            metadata,
        };
        self.write(
            &bucket,
            vec![WriteOp::Put {
                key,
                value,
                options,
            }],
        )
        .await
        .map(drop)
    }

    async fn get_entry(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> GResult<Option<ext::Entry>> {
        Ok(KvHost::get_entry(self, &bucket, key)
            .await?
            .map(|e| ext::Entry {
                value: e.value,
                metadata: e.metadata,
                expires_at: e.expires_at_ms,
            }))
    }

    async fn scan(
        &mut self,
        bucket: Resource<Bucket>,
        prefix: String,
        cursor: Option<String>,
        limit: u32,
    ) -> GResult<ext::Page> {
        let access = self.charge(1)?;
        let ns = self.bucket_ns(&bucket)?;
        let page = access
            .store
            .list(&ns, &prefix, cursor.as_deref(), limit as usize)
            .await?;
        Ok(ext::Page {
            keys: page
                .keys
                .into_iter()
                .map(|k| ext::KeyInfo {
                    name: k.name,
                    expires_at: k.expires_at_ms,
                    metadata: k.metadata,
                })
                .collect(),
            cursor: page.cursor,
        })
    }

    async fn compare_and_swap(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    ) -> GResult<bool> {
        let new = new.map(|v| (v, PutOptions::default()));
        match self
            .write(
                &bucket,
                vec![WriteOp::CompareAndSwap { key, expected, new }],
            )
            .await?
            .pop()
        {
            Some(WriteResult::Swapped(b)) => Ok(b),
            _ => Err(GuestError::Trap(wasmtime::format_err!(
                "unexpected swap result"
            ))),
        }
    }
}

#[cfg(test)]
#[path = "guest_tests.rs"]
mod tests;
