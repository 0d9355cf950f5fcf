//! The audit log: one entry per admin change (tenants, tokens, functions
//! and their settings and deployments, routes, images), whoever made it and
//! how it ended, kept across restarts. Entries are written by the admin
//! API's router after the change was answered (`api::handle`); KV data
//! writes, cron runs and reads are not changes and are not recorded.
use std::sync::Arc;

use http::Method;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// One admin change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    /// Its place in the log (1, 2, …); the listing's cursor.
    #[serde(default)]
    pub id: u64,
    /// Unix seconds.
    pub time: u64,
    /// The token that made it: its id, or `admin`.
    pub token_id: String,
    /// The tenant it concerns.
    pub tenant: String,
    /// `tenant.put`, `token.create`, `function.upload`, `deployment.put`, …
    pub action: String,
    /// What it changed, as the path below the tenant (`functions/web`).
    pub target: String,
    /// The status the change was answered with.
    pub status: u16,
}

/// Where audit entries are kept.
pub trait AuditStore: Send + Sync + 'static {
    /// Appends `entry` durably (its `id` is given here); returns the id.
    fn append(&self, entry: &AuditEntry) -> Result<u64, String>;

    /// Up to `limit` entries, newest first, before the id `before` (all
    /// when `None`), of one tenant or of all.
    fn list(
        &self,
        tenant: Option<&str>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, String>;
}

/// The audit log in the node's redb database (table `audit`).
pub struct RedbAudit {
    db: Arc<Database>,
}

impl RedbAudit {
    /// Copies the `audit` table, for a backup.
    pub fn copy_tables(
        from: &redb::ReadTransaction,
        to: &redb::WriteTransaction,
    ) -> Result<(), redb::Error> {
        perch_kv::copy::copy_table(from, to, AUDIT).map(drop)
    }

    /// The log in `db` (the table is created on the first append).
    pub fn new(db: Arc<Database>) -> RedbAudit {
        RedbAudit { db }
    }
}

impl AuditStore for RedbAudit {
    fn append(&self, entry: &AuditEntry) -> Result<u64, String> {
        let txn = self.db.begin_write().map_err(|e| e.to_string())?;
        let id = {
            let mut table = txn.open_table(AUDIT).map_err(|e| e.to_string())?;
            let last = table
                .last()
                .map_err(|e| e.to_string())?
                .map_or(0, |(k, _)| k.value());
            let id = last + 1;
            let entry = AuditEntry {
                id,
                ..entry.clone()
            };
            let bytes = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
            table
                .insert(id, bytes.as_slice())
                .map_err(|e| e.to_string())?;
            id
        };
        txn.commit().map_err(|e| e.to_string())?;
        Ok(id)
    }

    fn list(
        &self,
        tenant: Option<&str>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let table = match txn.open_table(AUDIT) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.to_string()),
        };
        let end = before.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for row in table.range(..end).map_err(|e| e.to_string())?.rev() {
            let (_, value) = row.map_err(|e| e.to_string())?;
            let entry: AuditEntry =
                serde_json::from_slice(value.value()).map_err(|e| e.to_string())?;
            if tenant.is_none_or(|t| t == entry.tenant) {
                out.push(entry);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// The tenant, action and target of an admin request that changes
/// something (`segments`: the path split at `/`, decoded), or `None`.
pub fn action(method: &Method, segments: &[&str]) -> Option<(String, &'static str, String)> {
    let ["v1", "tenants", tenant, rest @ ..] = segments else {
        return None;
    };
    let verb = |put: &'static str, post: &'static str, delete: &'static str| {
        match *method {
            Method::PUT => Some(put),
            Method::POST => Some(post),
            Method::DELETE => Some(delete),
            _ => None,
        }
        .filter(|a| !a.is_empty())
    };
    let action = match rest {
        [] => verb("tenant.put", "", "tenant.delete"),
        ["tokens"] => verb("", "token.create", ""),
        ["tokens", _] => verb("", "", "token.revoke"),
        ["functions", _] => verb("function.upload", "", "function.delete"),
        ["functions", _, "settings"] => verb("settings.put", "", ""),
        ["functions", _, "deployment"] => verb("deployment.put", "", ""),
        ["routes", _, ..] => verb("route.put", "", "route.delete"),
        ["images"] => verb("image.upload", "", ""),
        ["images", _] => verb("", "", "image.delete"),
        ["certificates", _] => verb("certificate.put", "", "certificate.delete"),
        ["verifications", _] => verb("verification.put", "", "verification.delete"),
        ["verifications", _, "check"] => verb("", "verification.check", ""),
        _ => None,
    }?;
    Some((tenant.to_string(), action, rest.join("/")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn changes_are_named_and_reads_and_data_are_not() {
        let a = |m: Method, p: &str| {
            let segs: Vec<&str> = p.split('/').collect();
            action(&m, &segs).map(|(t, a, target)| format!("{t} {a} {target}"))
        };
        assert_eq!(a(Method::PUT, "v1/tenants/t").unwrap(), "t tenant.put ");
        assert_eq!(
            a(Method::PUT, "v1/tenants/t/functions/web/deployment").unwrap(),
            "t deployment.put functions/web/deployment"
        );
        assert_eq!(
            a(Method::PUT, "v1/tenants/t/routes/a.test/api/*").unwrap(),
            "t route.put routes/a.test/api/*"
        );
        assert_eq!(
            a(Method::POST, "v1/tenants/t/tokens").unwrap(),
            "t token.create tokens"
        );
        assert_eq!(a(Method::GET, "v1/tenants/t/functions/web"), None);
        assert_eq!(a(Method::PUT, "v1/tenants/t/kv/ns/values/k"), None);
        assert_eq!(a(Method::POST, "v1/tenants/t/functions/f/scheduled"), None);
        assert_eq!(a(Method::POST, "v1/tenants/t/functions/f"), None);
    }

    /// Appends three entries, alternating between `first` and `second`
    /// (two views of one log), and checks the ids and the listings: newest
    /// first, by tenant, before an id. Every store's test runs it.
    pub(crate) fn append_and_page(first: &dyn AuditStore, second: &dyn AuditStore) {
        assert!(first.list(None, None, 10).unwrap().is_empty());
        for (i, tenant) in ["a", "b", "a"].iter().enumerate() {
            let log = if i % 2 == 0 { first } else { second };
            let e = AuditEntry {
                id: 0,
                time: i as u64,
                token_id: "admin".into(),
                tenant: tenant.to_string(),
                action: "tenant.put".into(),
                target: String::new(),
                status: 201,
            };
            assert_eq!(log.append(&e).unwrap(), i as u64 + 1);
        }
        assert_eq!(ids(second.list(None, None, 10).unwrap()), [3, 2, 1]);
        assert_eq!(ids(first.list(Some("a"), None, 10).unwrap()), [3, 1]);
        assert_eq!(ids(first.list(None, Some(3), 1).unwrap()), [2]);
    }

    fn ids(v: Vec<AuditEntry>) -> Vec<u64> {
        v.iter().map(|e| e.id).collect()
    }

    #[test]
    fn entries_are_kept_in_order_and_listed_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("a.redb")).unwrap());
        let log = RedbAudit::new(db.clone());
        append_and_page(&log, &log);
        // Kept across a reopen.
        drop(log);
        let again = RedbAudit::new(db);
        assert_eq!(ids(again.list(None, None, 10).unwrap()), [3, 2, 1]);
    }
}
