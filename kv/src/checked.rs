//! The request checks every backend gets: sizes, metadata, listing limits.
use std::sync::Arc;

use async_trait::async_trait;

use crate::{
    Entry, KvError, KvLimits, KvStore, NamespaceId, Page, PutOptions, WriteOp, WriteResult,
};

/// A [`KvStore`] that enforces [`KvLimits`] in front of a backend: keys
/// non-empty and at most `max_key` bytes, values at most `max_value`,
/// metadata at most `max_metadata` and valid JSON, listing limits from 1 to
/// `max_page`. A call that fails a check never reaches the backend.
pub struct CheckedKv {
    inner: Arc<dyn KvStore>,
    limits: KvLimits,
}

impl CheckedKv {
    /// `inner` behind the checks of `limits`.
    pub fn new(inner: Arc<dyn KvStore>, limits: KvLimits) -> Self {
        CheckedKv { inner, limits }
    }

    fn check_key(&self, key: &str) -> Result<(), KvError> {
        if key.is_empty() {
            return Err(KvError::EmptyKey);
        }
        if key.len() > self.limits.max_key {
            return Err(KvError::KeyTooLong(key.len(), self.limits.max_key));
        }
        Ok(())
    }

    fn check_put(&self, value: &[u8], options: &PutOptions) -> Result<(), KvError> {
        if value.len() > self.limits.max_value {
            return Err(KvError::ValueTooLarge(value.len(), self.limits.max_value));
        }
        if let Some(m) = &options.metadata {
            if m.len() > self.limits.max_metadata {
                return Err(KvError::MetadataTooLarge(m.len(), self.limits.max_metadata));
            }
            if serde_json::from_str::<serde_json::Value>(m).is_err() {
                return Err(KvError::InvalidMetadata);
            }
        }
        Ok(())
    }

    fn check_ops(&self, ops: &[WriteOp]) -> Result<(), KvError> {
        for op in ops {
            self.check_key(op.key())?;
            match op {
                WriteOp::Put { value, options, .. }
                | WriteOp::CompareAndSwap {
                    new: Some((value, options)),
                    ..
                } => self.check_put(value, options)?,
                _ => {}
            }
        }
        Ok(())
    }
}

#[async_trait]
impl KvStore for CheckedKv {
    async fn get(&self, ns: &NamespaceId, key: &str) -> Result<Option<Entry>, KvError> {
        self.check_key(key)?;
        self.inner.get(ns, key).await
    }

    async fn write(
        &self,
        ns: &NamespaceId,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteResult>, KvError> {
        self.check_ops(&ops)?;
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.inner.write(ns, ops).await
    }

    async fn list(
        &self,
        ns: &NamespaceId,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, KvError> {
        if limit == 0 || limit > self.limits.max_page {
            return Err(KvError::BadLimit(self.limits.max_page));
        }
        self.inner.list(ns, prefix, cursor, limit).await
    }

    async fn create_namespace(&self, ns: &NamespaceId) -> Result<bool, KvError> {
        self.inner.create_namespace(ns).await
    }

    async fn namespace_exists(&self, ns: &NamespaceId) -> Result<bool, KvError> {
        self.inner.namespace_exists(ns).await
    }

    async fn list_namespaces(&self, tenant: &str) -> Result<Vec<String>, KvError> {
        self.inner.list_namespaces(tenant).await
    }

    async fn delete_tenant(&self, tenant: &str) -> Result<(), KvError> {
        self.inner.delete_tenant(tenant).await
    }

    async fn usage(&self, tenant: &str) -> Result<crate::KvUsage, KvError> {
        self.inner.usage(tenant).await
    }

    fn limits(&self) -> Option<KvLimits> {
        Some(self.limits)
    }

    fn get_cached(&self, ns: &NamespaceId, key: &str) -> Option<Option<Entry>> {
        // A bad key is not answered here: `get` returns its error.
        self.check_key(key).ok()?;
        self.inner.get_cached(ns, key)
    }

    fn namespace_known(&self, ns: &NamespaceId) -> bool {
        self.inner.namespace_known(ns)
    }

    async fn get_many(
        &self,
        ns: &NamespaceId,
        keys: &[String],
    ) -> Result<Vec<Option<Entry>>, KvError> {
        for k in keys {
            self.check_key(k)?;
        }
        self.inner.get_many(ns, keys).await
    }
}

impl std::fmt::Debug for CheckedKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedKv")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A backend that accepts anything and counts the calls that reach it.
    #[derive(Default)]
    struct AcceptAll {
        calls: AtomicUsize,
    }

    impl AcceptAll {
        fn called(&self) {
            self.calls.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[async_trait]
    impl KvStore for AcceptAll {
        async fn get(&self, _: &NamespaceId, _: &str) -> Result<Option<Entry>, KvError> {
            self.called();
            Ok(None)
        }
        async fn write(
            &self,
            _: &NamespaceId,
            ops: Vec<WriteOp>,
        ) -> Result<Vec<WriteResult>, KvError> {
            self.called();
            Ok(ops
                .iter()
                .map(|op| match op {
                    WriteOp::Increment { .. } => WriteResult::Counter(0),
                    WriteOp::CompareAndSwap { .. } => WriteResult::Swapped(true),
                    _ => WriteResult::Done,
                })
                .collect())
        }
        async fn list(
            &self,
            _: &NamespaceId,
            _: &str,
            _: Option<&str>,
            _: usize,
        ) -> Result<Page, KvError> {
            self.called();
            Ok(Page {
                keys: Vec::new(),
                cursor: None,
            })
        }
        async fn create_namespace(&self, _: &NamespaceId) -> Result<bool, KvError> {
            self.called();
            Ok(true)
        }
        async fn namespace_exists(&self, _: &NamespaceId) -> Result<bool, KvError> {
            self.called();
            Ok(true)
        }
        async fn list_namespaces(&self, _: &str) -> Result<Vec<String>, KvError> {
            self.called();
            Ok(Vec::new())
        }
        async fn delete_tenant(&self, _: &str) -> Result<(), KvError> {
            self.called();
            Ok(())
        }
        async fn usage(&self, _: &str) -> Result<crate::KvUsage, KvError> {
            self.called();
            Ok(crate::KvUsage::default())
        }
        fn get_cached(&self, _: &NamespaceId, _: &str) -> Option<Option<Entry>> {
            self.called();
            Some(None)
        }
    }

    fn meta(m: &str) -> PutOptions {
        PutOptions {
            ttl: None,
            metadata: Some(m.to_string()),
            expires_at_ms: None,
        }
    }

    #[tokio::test]
    async fn checks_run_before_any_backend() {
        let backend = Arc::new(AcceptAll::default());
        let kv = CheckedKv::new(backend.clone(), KvLimits::default());
        let ns = NamespaceId::new("t", "default");
        let long = "k".repeat(513);

        assert_eq!(kv.get(&ns, "").await, Err(KvError::EmptyKey));
        assert_eq!(kv.get(&ns, &long).await, Err(KvError::KeyTooLong(513, 512)));
        assert_eq!(kv.get_cached(&ns, &long), None);
        assert_eq!(
            kv.get_many(&ns, &["a".into(), long.clone()]).await,
            Err(KvError::KeyTooLong(513, 512))
        );
        assert_eq!(kv.delete(&ns, "").await, Err(KvError::EmptyKey));
        assert_eq!(
            kv.increment(&ns, &long, 1).await,
            Err(KvError::KeyTooLong(513, 512))
        );
        assert_eq!(
            kv.put(&ns, "k", vec![0; (25 << 20) + 1], PutOptions::default())
                .await,
            Err(KvError::ValueTooLarge((25 << 20) + 1, 25 << 20))
        );
        assert_eq!(
            kv.put(&ns, "k", vec![], meta(&format!("\"{}\"", "m".repeat(1100))))
                .await,
            Err(KvError::MetadataTooLarge(1102, 1024))
        );
        assert_eq!(
            kv.put(&ns, "k", vec![], meta("not json")).await,
            Err(KvError::InvalidMetadata)
        );
        assert_eq!(
            kv.compare_and_swap(&ns, "k", None, Some((vec![], meta("{"))))
                .await,
            Err(KvError::InvalidMetadata)
        );
        // One bad op refuses the whole batch.
        let batch = vec![
            WriteOp::Delete { key: "ok".into() },
            WriteOp::Put {
                key: "k".into(),
                value: vec![],
                options: meta("nope"),
            },
        ];
        assert_eq!(kv.write(&ns, batch).await, Err(KvError::InvalidMetadata));
        assert_eq!(
            kv.list(&ns, "", None, 0).await,
            Err(KvError::BadLimit(1000))
        );
        assert_eq!(
            kv.list(&ns, "", None, 1001).await,
            Err(KvError::BadLimit(1000))
        );
        assert_eq!(backend.calls.load(Ordering::Relaxed), 0);

        // What passes the checks reaches the backend.
        assert_eq!(kv.get(&ns, &"k".repeat(512)).await, Ok(None));
        assert_eq!(kv.get_cached(&ns, "k"), Some(None));
        kv.put(&ns, "k", vec![0; 25 << 20], meta("{\"a\":[1]}"))
            .await
            .unwrap();
        kv.compare_and_swap(&ns, "k", None, None).await.unwrap();
        kv.list(&ns, "", None, 1000).await.unwrap();
        assert_eq!(kv.write(&ns, Vec::new()).await, Ok(Vec::new()));
        assert_eq!(backend.calls.load(Ordering::Relaxed), 5);
        assert_eq!(kv.limits(), Some(KvLimits::default()));
    }
}
