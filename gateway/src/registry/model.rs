//! The registry's records: tenants, tokens, functions with their versions
//! and settings, routes. They are what a [`RegistryStore`](super::RegistryStore)
//! persists (as JSON, so their serde shape is the on-disk format).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Scopes a tenant token can hold. Each but `*` is also the first path
/// segment under `/v1/tenants/{tenant}/` that it opens; `*` grants them all.
pub const SCOPES: &[&str] = &["functions", "routes", "kv", "logs", "*"];

/// The scopes as a readable list (`functions, routes, kv, logs and *`).
pub fn scopes_text() -> String {
    match SCOPES.split_last() {
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// A tenant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tenant {
    /// Name.
    pub name: String,
    /// Hosts and wildcards the tenant may route; empty means any.
    pub domains: Vec<String>,
    /// Unix seconds.
    pub created_at: u64,
}

/// A tenant token (its secret is never stored, only its SHA-256).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenRecord {
    /// Public identifier used to revoke it.
    pub id: String,
    /// Owner.
    pub tenant: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// Lowercase hex SHA-256 of the token.
    pub hash: String,
}

impl TokenRecord {
    /// True when the token grants `scope`.
    pub fn allows(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == "*" || s == scope)
    }
}

/// One immutable version of a function.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Version {
    /// 1, 2, …
    pub version: u32,
    /// Component digest (lowercase hex SHA-256).
    pub digest: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Vars, sealed secrets, KV bindings, limits, outbound policy.
    #[serde(default)]
    pub settings: Settings,
}

/// Per-version settings. Secrets are stored sealed (see `secrets`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    /// Plain variables (environment and `wasi:config`).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Sealed secrets by name.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// KV identifier → namespace.
    #[serde(default)]
    pub kv: BTreeMap<String, String>,
    /// Limit overrides.
    #[serde(default)]
    pub limits: crate::limits::LimitOverrides,
    /// Outbound policy.
    #[serde(default)]
    pub outbound: Outbound,
}

/// Hosts a function may call (narrowing the node's egress rules).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Outbound {
    /// Host names or `*.suffix` patterns; empty means no narrowing.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// A function and its versions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Function {
    /// Owner.
    pub tenant: String,
    /// Name.
    pub name: String,
    /// The version that serves requests.
    pub active_version: u32,
    /// Every version, oldest first.
    pub versions: Vec<Version>,
}

impl Function {
    /// The active version's record.
    pub fn active(&self) -> Option<&Version> {
        self.versions
            .iter()
            .find(|v| v.version == self.active_version)
    }
}

/// A host bound to a function.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Route {
    /// Exact host or `*.suffix`.
    pub host: String,
    /// Owner.
    pub tenant: String,
    /// Function name within the tenant.
    pub function: String,
}

/// `tenant/name`: how functions are keyed.
pub fn fn_key(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}")
}

/// The associated data a secret is sealed with.
pub fn secret_context(tenant: &str, function: &str, name: &str) -> String {
    format!("{tenant}/{function}/{name}")
}

/// The first name that is both a var and a secret, if any.
pub fn var_secret_collision<'a, S: AsRef<str> + 'a>(
    vars: &BTreeMap<String, String>,
    secrets: impl IntoIterator<Item = &'a S>,
) -> Option<String> {
    secrets
        .into_iter()
        .map(AsRef::as_ref)
        .find(|name| vars.contains_key(*name))
        .map(str::to_string)
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_text_lists_every_scope() {
        assert_eq!(scopes_text(), "functions, routes, kv, logs and *");
    }
}
