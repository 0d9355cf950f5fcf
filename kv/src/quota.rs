//! What a tenant's KV data takes, and how much it may take: the
//! `kv_bytes` and `kv_keys` quotas. Backends keep each tenant's usage in
//! the same transaction as its writes and refuse, atomically, a write that
//! would take it past a quota ([`KvError::QuotaExceeded`]); the registry
//! sets the quotas ([`KvQuotas::set`]).
use std::collections::HashMap;
use std::sync::RwLock;

/// What a tenant's stored keys take: key, value and metadata bytes, and
/// their number. Expired keys count until the purge removes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvUsage {
    /// Bytes of keys, values and metadata.
    pub bytes: u64,
    /// Keys.
    pub keys: u64,
}

/// A tenant's KV quotas (`None`: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvQuota {
    /// `kv_bytes`.
    pub bytes: Option<u64>,
    /// `kv_keys`.
    pub keys: Option<u64>,
}

/// Every tenant's KV quotas, read by a backend at each write.
#[derive(Debug, Default)]
pub struct KvQuotas {
    tenants: RwLock<HashMap<String, KvQuota>>,
}

impl KvQuotas {
    /// Sets `tenant`'s quotas (both `None`: unlimited).
    pub fn set(&self, tenant: &str, quota: KvQuota) {
        let mut map = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        if quota == KvQuota::default() {
            map.remove(tenant);
        } else {
            map.insert(tenant.to_string(), quota);
        }
    }

    /// `tenant`'s quotas.
    pub fn get(&self, tenant: &str) -> KvQuota {
        let map = self.tenants.read().unwrap_or_else(|e| e.into_inner());
        map.get(tenant).copied().unwrap_or_default()
    }
}

impl KvUsage {
    /// Refuses going from `self` to `self + delta` past `quota` (shrinking,
    /// or staying put, is always allowed).
    pub fn admit(&self, delta: (i64, i64), quota: KvQuota) -> Result<(), crate::KvError> {
        let over = |used: u64, d: i64, limit: Option<u64>| {
            d > 0 && limit.is_some_and(|l| used.saturating_add(d as u64) > l)
        };
        if over(self.bytes, delta.0, quota.bytes) {
            return Err(crate::KvError::QuotaExceeded {
                quota: "kv_bytes",
                limit: quota.bytes.unwrap_or_default(),
            });
        }
        if over(self.keys, delta.1, quota.keys) {
            return Err(crate::KvError::QuotaExceeded {
                quota: "kv_keys",
                limit: quota.keys.unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// `self + delta`, never below zero.
    pub fn plus(self, delta: (i64, i64)) -> KvUsage {
        let add = |v: u64, d: i64| {
            if d >= 0 {
                v.saturating_add(d as u64)
            } else {
                v.saturating_sub(d.unsigned_abs())
            }
        };
        KvUsage {
            bytes: add(self.bytes, delta.0),
            keys: add(self.keys, delta.1),
        }
    }
}
