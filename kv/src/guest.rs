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
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// The node's counts of guest operations (shared by every function).
    pub counters: Arc<KvCounters>,
}

/// A guest's KV operation, by the name of the call it made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum KvOp {
    Open,
    Get,
    Exists,
    GetEntry,
    GetMany,
    Set,
    SetWithOptions,
    SetMany,
    Delete,
    DeleteMany,
    Increment,
    CompareAndSwap,
    ListKeys,
    Scan,
}

impl KvOp {
    /// Every operation, in the order of [`KvCounters::counts`].
    pub const ALL: [KvOp; 14] = [
        KvOp::Open,
        KvOp::Get,
        KvOp::Exists,
        KvOp::GetEntry,
        KvOp::GetMany,
        KvOp::Set,
        KvOp::SetWithOptions,
        KvOp::SetMany,
        KvOp::Delete,
        KvOp::DeleteMany,
        KvOp::Increment,
        KvOp::CompareAndSwap,
        KvOp::ListKeys,
        KvOp::Scan,
    ];

    /// Its name in metrics and trace spans (`kv.<name>`).
    pub fn as_str(self) -> &'static str {
        match self {
            KvOp::Open => "open",
            KvOp::Get => "get",
            KvOp::Exists => "exists",
            KvOp::GetEntry => "get_entry",
            KvOp::GetMany => "get_many",
            KvOp::Set => "set",
            KvOp::SetWithOptions => "set_with_options",
            KvOp::SetMany => "set_many",
            KvOp::Delete => "delete",
            KvOp::DeleteMany => "delete_many",
            KvOp::Increment => "increment",
            KvOp::CompareAndSwap => "compare_and_swap",
            KvOp::ListKeys => "list_keys",
            KvOp::Scan => "scan",
        }
    }
}

/// How many guest KV operations of each kind succeeded and failed.
#[derive(Debug, Default)]
pub struct KvCounters {
    counts: [[AtomicU64; 2]; KvOp::ALL.len()],
}

impl KvCounters {
    fn count(&self, op: KvOp, ok: bool) {
        self.counts[op as usize][usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// `(op, succeeded, failed)` for every operation.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, u64, u64)> + '_ {
        KvOp::ALL.iter().map(|op| {
            let [ok, err] = &self.counts[*op as usize];
            (
                op.as_str(),
                ok.load(Ordering::Relaxed),
                err.load(Ordering::Relaxed),
            )
        })
    }
}

/// Traces one request's guest calls: a span per call.
pub trait CallTracer: Send + Sync {
    /// Starts the span of `op`; it ends when [`CallSpan::end`] is called.
    fn start(&self, op: KvOp) -> Box<dyn CallSpan>;
}

/// A started span of a guest call.
pub trait CallSpan: Send {
    /// Ends the span; `error` is the message the guest got, if it failed.
    fn end(self: Box<Self>, error: Option<&str>);
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
    tracer: Option<Arc<dyn CallTracer>>,
}

impl KvCtx {
    /// A context for one invocation; with a `tracer`, each call is a span.
    pub fn new(access: Arc<KvAccess>, tracer: Option<Arc<dyn CallTracer>>) -> Self {
        KvCtx {
            access,
            ops: 0,
            tracer,
        }
    }
}

/// One guest call being watched: counted when it ends, and its span ended.
struct Watch {
    op: KvOp,
    counters: Option<Arc<KvCounters>>,
    span: Option<Box<dyn CallSpan>>,
}

impl Watch {
    fn end<T>(self, result: GResult<T>) -> GResult<T> {
        if let Some(c) = &self.counters {
            c.count(self.op, result.is_ok());
        }
        if let Some(span) = self.span {
            span.end(match &result {
                Ok(_) => None,
                Err(GuestError::NoSuchStore) => Some("no such store"),
                Err(GuestError::AccessDenied) => Some("access denied"),
                Err(GuestError::Other(m)) => Some(m),
                Err(GuestError::Trap(_)) => Some("host error"),
            });
        }
        result
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
            KvError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "KV storage unavailable in a guest call");
                GuestError::Other("storage unavailable".into())
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
    /// Starts watching a call of `op` (nothing to watch when KV is off).
    fn watch(&self, op: KvOp) -> Watch {
        let ctx = self.0.as_ref().map(|v| &*v.ctx);
        Watch {
            op,
            counters: ctx.map(|c| c.access.counters.clone()),
            span: ctx.and_then(|c| c.tracer.as_ref()).map(|t| t.start(op)),
        }
    }

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
        op: KvOp,
        bucket: &Resource<Bucket>,
        key: String,
    ) -> GResult<Option<Entry>> {
        let watch = self.watch(op);
        let result = async {
            let access = self.charge(1)?;
            let ns = self.bucket_ns(bucket)?;
            // A cache hit answers inline, without a thread hop.
            if let Some(hit) = access.store.get_cached(&ns, &key) {
                return Ok(hit);
            }
            Ok(access.store.get(&ns, &key).await?)
        };
        watch.end(result.await)
    }

    async fn write(
        &mut self,
        op: KvOp,
        bucket: &Resource<Bucket>,
        ops: Vec<WriteOp>,
    ) -> GResult<Vec<WriteResult>> {
        let watch = self.watch(op);
        let result = async {
            let access = self.charge(ops.len().max(1))?;
            let ns = self.bucket_ns(bucket)?;
            Ok(access.store.write(&ns, ops).await?)
        };
        watch.end(result.await)
    }
}

impl store::Host for KvHost<'_> {
    async fn open(&mut self, identifier: String) -> GResult<Resource<Bucket>> {
        let watch = self.watch(KvOp::Open);
        let result = async {
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
        };
        watch.end(result.await)
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
        Ok(self
            .get_entry(KvOp::Get, &bucket, key)
            .await?
            .map(|e| e.value))
    }

    async fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> GResult<()> {
        self.write(
            KvOp::Set,
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
        self.write(KvOp::Delete, &bucket, vec![WriteOp::Delete { key }])
            .await
            .map(drop)
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> GResult<bool> {
        Ok(self.get_entry(KvOp::Exists, &bucket, key).await?.is_some())
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> GResult<store::KeyResponse> {
        let watch = self.watch(KvOp::ListKeys);
        let result = async {
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
        };
        watch.end(result.await)
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
            .write(
                KvOp::Increment,
                &bucket,
                vec![WriteOp::Increment { key, delta }],
            )
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
        let watch = self.watch(KvOp::GetMany);
        let result = async {
            let access = self.charge(keys.len().max(1))?;
            let ns = self.bucket_ns(&bucket)?;
            let entries = access.store.get_many(&ns, &keys).await?;
            Ok(keys
                .into_iter()
                .zip(entries)
                .map(|(k, e)| e.map(|e| (k, e.value)))
                .collect())
        };
        watch.end(result.await)
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
        self.write(KvOp::SetMany, &bucket, ops).await.map(drop)
    }

    async fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> GResult<()> {
        let ops = keys
            .into_iter()
            .map(|key| WriteOp::Delete { key })
            .collect();
        self.write(KvOp::DeleteMany, &bucket, ops).await.map(drop)
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
            expires_at_ms: None,
        };
        self.write(
            KvOp::SetWithOptions,
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
        Ok(KvHost::get_entry(self, KvOp::GetEntry, &bucket, key)
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
        let watch = self.watch(KvOp::Scan);
        let result = async {
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
        };
        watch.end(result.await)
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
                KvOp::CompareAndSwap,
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
