//! Tenants (admin only): list, create or update domains, delete with
//! everything the tenant owns.
use std::sync::Arc;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use perch_kv::KvStore;

use super::common::{PageQuery, Resp, TenantCall, blocking, collect_garbage, read_json};
use super::kv::kv_error;
use crate::app::App;
use crate::http::{error, json, method_not_allowed, no_content, tri};
use crate::registry::{QUOTAS, Registry, Tenant};

/// `GET /v1/tenants?limit=&cursor=`, by name.
pub(super) fn list(app: Arc<App>, method: Method, req: &Request<Incoming>) -> Resp {
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    let page = tri!(PageQuery::of(req));
    let all = app.registry.list_tenants();
    let after = page.cursor.clone();
    let (items, cursor) = page.cut(
        all.iter()
            .filter(|t| after.as_deref().is_none_or(|c| t.name.as_str() > c)),
        |t| t.name.clone(),
    );
    let items: Vec<_> = items.iter().map(|t| tenant_json(t)).collect();
    json(
        StatusCode::OK,
        &json!({ "tenants": items, "cursor": cursor }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantBody {
    domains: Option<Vec<String>>,
    /// Keys present replace, `null` resets to the default, omitted keys
    /// are kept.
    quotas: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The quota edits of a PUT body, or why not.
fn quota_edits(
    body: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<(&'static str, Option<u64>)>, String> {
    let mut out = Vec::new();
    for (name, value) in body {
        let Some(known) = QUOTAS.iter().find(|q| **q == name.as_str()) else {
            return Err(format!(
                "unknown quota `{name}`; quotas are {}",
                QUOTAS.join(", ")
            ));
        };
        let value =
            match value {
                serde_json::Value::Null => None,
                v => Some(v.as_u64().ok_or_else(|| {
                    format!("quota `{name}` must be a non-negative integer or null")
                })?),
            };
        out.push((*known, value));
    }
    Ok(out)
}

/// A tenant as the API shows it (`quotas` only when it has its own).
fn tenant_json(t: &Tenant) -> serde_json::Value {
    let mut v = json!({"name": t.name, "domains": t.domains});
    if !t.quotas.is_empty() {
        v["quotas"] = json!(t.quotas);
    }
    v
}

/// `PUT` (create, or replace the domains) and `DELETE` one tenant.
pub(super) async fn one(call: TenantCall) -> Resp {
    let (app, method, req, tenant) = call.into_parts();
    match method {
        Method::PUT => {
            let body: Option<TenantBody> = tri!(read_json(req, true).await);
            let (domains, quotas) = body.map_or((None, None), |b| (b.domains, b.quotas));
            let edits = match quotas.as_ref().map(quota_edits).transpose() {
                Ok(edits) => edits,
                Err(m) => return error(StatusCode::BAD_REQUEST, "invalid_quota", &m),
            };
            let (mut t, created) = tri!(
                put(
                    app.registry.clone(),
                    app.kv.as_ref(),
                    tenant.clone(),
                    domains
                )
                .await
            );
            if let Some(edits) = edits {
                let registry = app.registry.clone();
                t = tri!(blocking(move || registry.set_quotas(&tenant, &edits)).await);
            }
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json(status, &tenant_json(&t))
        }
        Method::DELETE => {
            let images: Vec<String> = app
                .registry
                .list_images(&tenant)
                .unwrap_or_default()
                .into_iter()
                .map(|i| i.id)
                .collect();
            let dropped = tri!(delete(app.registry.clone(), app.kv.as_ref(), tenant.clone()).await);
            app.logs.forget_tenant(&tenant);
            app.metrics.forget_tenant(&tenant);
            collect_garbage(&app, dropped).await;
            super::images::forget_tenant_images(&app, &tenant, images).await;
            no_content()
        }
        _ => method_not_allowed("PUT, DELETE"),
    }
}

/// Creates a tenant or updates its domains. A tenant created anew never
/// sees the data of a deleted one of the same name, even when deleting
/// that data failed at the time: whatever KV data the name still has is
/// purged before the tenant exists again.
async fn put(
    registry: Arc<Registry>,
    kv: &dyn KvStore,
    tenant: String,
    domains: Option<Vec<String>>,
) -> Result<(Tenant, bool), Resp> {
    if !registry.tenant_exists(&tenant) {
        kv.delete_tenant(&tenant).await.map_err(kv_error)?;
    }
    blocking(move || registry.put_tenant(&tenant, domains)).await
}

/// Deletes a tenant: the registry first, so its routes, tokens and
/// functions go at once and no new request reaches its data, then its KV
/// data. If that fails the answer is a 500 (the purge happens again before
/// a tenant of that name is created).
/// Returns the digests the tenant's versions ran.
async fn delete(
    registry: Arc<Registry>,
    kv: &dyn KvStore,
    tenant: String,
) -> Result<Vec<String>, Resp> {
    let name = tenant.clone();
    let dropped = blocking(move || registry.delete_tenant(&name)).await?;
    kv.delete_tenant(&tenant).await.map_err(kv_error)?;
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use perch_kv::{
        Entry, KvError, KvLimits, NamespaceId, Page, PutOptions, RedbKv, WriteOp, WriteResult,
        async_trait,
    };

    use super::*;
    use crate::registry::{RedbStore, TokenRecord};
    use crate::secrets::SecretBox;

    /// A store whose tenant deletion fails while `fail` is set.
    struct Flaky {
        inner: Arc<dyn KvStore>,
        fail: AtomicBool,
    }

    #[async_trait]
    impl KvStore for Flaky {
        async fn get(&self, ns: &NamespaceId, key: &str) -> Result<Option<Entry>, KvError> {
            self.inner.get(ns, key).await
        }
        async fn write(
            &self,
            ns: &NamespaceId,
            ops: Vec<WriteOp>,
        ) -> Result<Vec<WriteResult>, KvError> {
            self.inner.write(ns, ops).await
        }
        async fn list(
            &self,
            ns: &NamespaceId,
            prefix: &str,
            cursor: Option<&str>,
            limit: usize,
        ) -> Result<Page, KvError> {
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
            if self.fail.load(Ordering::Relaxed) {
                return Err(KvError::Storage("disk on fire".into()));
            }
            self.inner.delete_tenant(tenant).await
        }
        async fn usage(&self, tenant: &str) -> Result<perch_kv::KvUsage, KvError> {
            self.inner.usage(tenant).await
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_recreated_tenant_never_sees_a_deleted_namesake() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(redb::Database::create(dir.path().join("perch.redb")).unwrap());
        let store = Arc::new(RedbStore::open(db.clone()).unwrap());
        let registry = Arc::new(
            Registry::open(
                store,
                crate::limits::DEFAULT_LIMITS,
                Arc::new(SecretBox::new(&[1; 32])),
            )
            .unwrap(),
        );
        let redb = Arc::new(RedbKv::open(db).unwrap());
        let kv = Flaky {
            inner: Arc::new(perch_kv::CheckedKv::new(redb, KvLimits::default())),
            fail: AtomicBool::new(false),
        };
        let ns = NamespaceId::new("t", "default");

        put(registry.clone(), &kv, "t".into(), None).await.unwrap();
        kv.create_namespace(&ns).await.unwrap();
        kv.put(&ns, "secret", b"old".to_vec(), PutOptions::default())
            .await
            .unwrap();
        registry
            .add_version("t", "f", &format!("{:064x}", 1), 0, true)
            .unwrap();
        registry.put_route("t", "t.test", "f").unwrap();
        registry
            .add_token(TokenRecord {
                id: "1".into(),
                tenant: "t".into(),
                scopes: vec!["*".into()],
                created_at: 0,
                hash: "h".into(),
                name: None,
                expires_at: None,
            })
            .unwrap();

        // The KV part of the deletion fails: the client is told so.
        kv.fail.store(true, Ordering::Relaxed);
        let refused = delete(registry.clone(), &kv, "t".into()).await.unwrap_err();
        assert_eq!(refused.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!registry.tenant_exists("t"));
        assert!(registry.routes().lookup("t.test", "/").is_none());
        assert!(registry.lookup_token("h").is_none());

        // A new tenant of the same name starts empty.
        kv.fail.store(false, Ordering::Relaxed);
        let (_, created) = put(registry.clone(), &kv, "t".into(), None).await.unwrap();
        assert!(created);
        assert_eq!(kv.get(&ns, "secret").await.unwrap(), None);
        assert!(kv.list_namespaces("t").await.unwrap().is_empty());
        assert!(registry.list_functions("t").unwrap().is_empty());
        assert!(registry.list_routes("t").unwrap().is_empty());
        assert!(registry.list_tokens("t").unwrap().is_empty());

        // While the purge itself fails, the tenant is not created.
        kv.put(&ns, "again", b"x".to_vec(), PutOptions::default())
            .await
            .unwrap();
        delete(registry.clone(), &kv, "t".into()).await.unwrap();
        kv.put(&ns, "straggler", b"x".to_vec(), PutOptions::default())
            .await
            .unwrap();
        kv.fail.store(true, Ordering::Relaxed);
        assert!(put(registry.clone(), &kv, "t".into(), None).await.is_err());
        assert!(!registry.tenant_exists("t"));
    }
}
