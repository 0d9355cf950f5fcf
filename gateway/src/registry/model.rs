//! The registry's records: tenants, tokens, functions with their versions
//! and settings, routes. They are what a [`RegistryStore`](super::RegistryStore)
//! persists (as JSON, so their serde shape is the on-disk format).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Scopes a tenant token can hold. Each but `*` is also the first path
/// segment under `/v1/tenants/{tenant}/` that it opens; `*` grants them all.
pub const SCOPES: &[&str] = &[
    "functions",
    "routes",
    "kv",
    "logs",
    "images",
    "certificates",
    "*",
];

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
    /// The tenant's own quotas; an unset one is the config's default.
    #[serde(default, skip_serializing_if = "Quotas::is_empty")]
    pub quotas: Quotas,
    /// Hosts outside its domains it asked to verify (`node.verify_hosts`),
    /// by host.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub verifications: BTreeMap<String, HostVerification>,
}

/// A tenant's proof of control of a host (`node.verify_hosts`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostVerification {
    /// What the host must show.
    pub token: String,
    /// Unix seconds of the request.
    pub created_at: u64,
    /// Unix seconds of the check that found the token; `None`: pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<u64>,
}

/// What a tenant may hold. `None`: no quota of its own (for a tenant: the
/// config's `[quotas]` default; for the defaults: unlimited).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Functions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<u64>,
    /// Route patterns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<u64>,
    /// Bytes of the tenant's container image archives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_bytes: Option<u64>,
    /// Σ `memory_mb` × `max_instances` over deployed container versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_memory_mb: Option<u64>,
    /// Data-plane requests per second, per node (a token bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u64>,
    /// Bytes of the distinct components the tenant's kept versions run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_bytes: Option<u64>,
    /// Bytes of KV keys, values and metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_bytes: Option<u64>,
    /// KV keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_keys: Option<u64>,
}

/// What a tenant holds of the quotas that count stored things.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Holdings {
    /// Functions.
    pub functions: u64,
    /// Route patterns.
    pub routes: u64,
    /// Bytes of its container image archives.
    pub image_bytes: u64,
    /// Σ `memory_mb` × `max_instances` over deployed container versions.
    pub container_memory_mb: u64,
    /// Bytes of the distinct components its kept versions run.
    pub artifact_bytes: u64,
}

/// The quotas Perch enforces, by name.
pub const QUOTAS: &[&str] = &[
    "functions",
    "routes",
    "artifact_bytes",
    "image_bytes",
    "kv_bytes",
    "kv_keys",
    "container_memory_mb",
    "requests_per_second",
];

impl Quotas {
    /// Whether none is set.
    pub fn is_empty(&self) -> bool {
        *self == Quotas::default()
    }

    /// The one named `name` (one of [`QUOTAS`]).
    pub fn get(&self, name: &str) -> Option<u64> {
        match name {
            "functions" => self.functions,
            "routes" => self.routes,
            "image_bytes" => self.image_bytes,
            "container_memory_mb" => self.container_memory_mb,
            "requests_per_second" => self.requests_per_second,
            "artifact_bytes" => self.artifact_bytes,
            "kv_bytes" => self.kv_bytes,
            "kv_keys" => self.kv_keys,
            _ => None,
        }
    }

    /// Sets (or with `None` clears) the one named `name`; false for a name
    /// not in [`QUOTAS`].
    pub fn set(&mut self, name: &str, value: Option<u64>) -> bool {
        let slot = match name {
            "functions" => &mut self.functions,
            "routes" => &mut self.routes,
            "image_bytes" => &mut self.image_bytes,
            "container_memory_mb" => &mut self.container_memory_mb,
            "requests_per_second" => &mut self.requests_per_second,
            "artifact_bytes" => &mut self.artifact_bytes,
            "kv_bytes" => &mut self.kv_bytes,
            "kv_keys" => &mut self.kv_keys,
            _ => return false,
        };
        *slot = value;
        true
    }
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
    /// A label for people (not unique).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Unix seconds from which the token no longer works; `None`: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl TokenRecord {
    /// Whether the token no longer works at unix second `now`.
    pub fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// True when the token grants `scope`.
    pub fn allows(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == "*" || s == scope)
    }
}

/// A certificate Perch serves for one of a tenant's hosts: uploaded by
/// the tenant, or issued by ACME. The key is sealed (for
/// [`certificate_context`]) and never returned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CertificateRecord {
    /// The host (or `*.parent` pattern) it is served for; the key.
    pub host: String,
    /// The tenant that holds the host.
    pub tenant: String,
    /// `tenant` or `acme`.
    pub source: String,
    /// The chain, PEM.
    pub cert_pem: String,
    /// The private key, sealed.
    pub key_sealed: String,
    /// The DNS names it covers.
    pub sans: Vec<String>,
    /// Validity, Unix seconds.
    pub not_before: i64,
    /// Validity, Unix seconds.
    pub not_after: i64,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// Unix seconds.
    pub updated_at: u64,
}

/// What a certificate's sealed key is bound to: its host.
pub fn certificate_context(host: &str) -> String {
    format!("certificate/{host}")
}

/// What a version runs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VersionKind {
    /// A WebAssembly component.
    #[default]
    Wasm,
    /// A container image run by the container backend.
    Container,
}

impl VersionKind {
    /// `"wasm"`.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionKind::Wasm => "wasm",
            VersionKind::Container => "container",
        }
    }
}

/// The `wasi:http` world of the components Perch serves today.
pub const WORLD_P2: &str = "wasi:http/proxy@0.2";

fn world_p2() -> String {
    WORLD_P2.to_string()
}

/// One immutable version of a function.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Version {
    /// 1, 2, …
    pub version: u32,
    /// What it runs.
    #[serde(default)]
    pub kind: VersionKind,
    /// The component's `wasi:http` world.
    #[serde(default = "world_p2")]
    pub world: String,
    /// Component digest (lowercase hex SHA-256); empty for a container.
    pub digest: String,
    /// What a container version runs (its image an id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<perch_containers::ContainerSpec>,
    /// Unix seconds.
    pub created_at: u64,
    /// Vars, sealed secrets, KV bindings, limits, outbound policy.
    #[serde(default)]
    pub settings: Settings,
    /// The component's size in bytes (0 for a container, and for records
    /// from before sizes were kept).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
    /// Cron schedules (five fields, UTC), at most 5.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cron: Vec<String>,
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
    /// The deployed version with the largest percent (ties: the higher
    /// number); 0 when nothing is deployed. Kept in step with `deployment`
    /// by [`Function::deploy`].
    pub active_version: u32,
    /// Every kept version, oldest first.
    pub versions: Vec<Version>,
    /// The highest version number ever given (retention may have dropped
    /// it): numbers are never reused.
    #[serde(default)]
    pub latest_version: u32,
    /// Which versions serve traffic, in what share. Records written before
    /// deployments existed have none and are read as 100 % of
    /// `active_version` ([`Function::upgrade`]).
    #[serde(default)]
    pub deployment: Option<Deployment>,
    /// When it was created (unix seconds; 0 for records from before this
    /// was kept). Orders a tenant's functions for metric labels.
    #[serde(default)]
    pub created: u64,
}

/// One version's share of a deployment.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// The version.
    pub version: u32,
    /// Its share of the requests, 1–100.
    pub percent: u8,
}

/// Which versions of a function serve traffic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Deployment {
    /// 1–4 distinct versions, ascending, percents summing to 100.
    pub versions: Vec<Split>,
    /// `cookie:NAME` or `header:NAME`: the request value that keeps a
    /// client on one version.
    #[serde(default)]
    pub sticky: Option<String>,
    /// Unix seconds.
    pub updated_at: u64,
    /// The deployment this one replaced (without its own `previous`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Box<Deployment>>,
}

impl Deployment {
    /// All traffic to `version`.
    pub fn single(version: u32) -> Deployment {
        Deployment {
            versions: vec![Split {
                version,
                percent: 100,
            }],
            sticky: None,
            updated_at: now(),
            previous: None,
        }
    }

    /// Whether `version` gets traffic.
    pub fn includes(&self, version: u32) -> bool {
        self.versions.iter().any(|s| s.version == version)
    }

    /// The version with the largest percent (ties: the higher number).
    pub fn primary(&self) -> u32 {
        self.versions
            .iter()
            .max_by_key(|s| (s.percent, s.version))
            .map_or(0, |s| s.version)
    }
}

impl Function {
    /// The active version's record (see `active_version`).
    pub fn active(&self) -> Option<&Version> {
        self.version(self.active_version)
    }

    /// The component digests its wasm versions run.
    pub fn wasm_digests(&self) -> impl Iterator<Item = String> + '_ {
        self.versions
            .iter()
            .filter(|v| v.container.is_none())
            .map(|v| v.digest.clone())
    }

    /// Version `n`, if it is kept.
    pub fn version(&self, n: u32) -> Option<&Version> {
        self.versions.iter().find(|v| v.version == n)
    }

    /// The number the next version gets (never one given before).
    pub fn next_version(&self) -> u32 {
        self.versions
            .last()
            .map_or(0, |v| v.version)
            .max(self.latest_version)
            + 1
    }

    /// Makes `deployment` current; the one it replaces becomes its
    /// `previous`.
    pub fn deploy(&mut self, mut deployment: Deployment) {
        deployment.versions.sort_by_key(|s| s.version);
        deployment.previous = self.deployment.take().map(|mut old| {
            old.previous = None;
            Box::new(old)
        });
        self.active_version = deployment.primary();
        self.deployment = Some(deployment);
    }

    /// Whether `version` is in the deployment or the one it replaced (such
    /// a version is never dropped by retention).
    pub fn is_deployed(&self, version: u32) -> bool {
        self.deployment.as_ref().is_some_and(|d| {
            d.includes(version) || d.previous.as_ref().is_some_and(|p| p.includes(version))
        })
    }

    /// Fills in the deployment of a record written before deployments
    /// existed: all traffic to its `active_version`.
    pub fn upgrade(&mut self) {
        if self.deployment.is_none() && self.active_version != 0 {
            let updated_at = self.active().map_or(0, |v| v.created_at);
            self.deployment = Some(Deployment {
                updated_at,
                ..Deployment::single(self.active_version)
            });
        }
    }
}

/// A container image a tenant uploaded (the engine holds the image; the
/// archive is kept in the node's image directory).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// Owner.
    pub tenant: String,
    /// `sha256:<64 hex>`.
    pub id: String,
    /// Tags from the archive (display, and resolving a tenant's own tag).
    pub tags: Vec<String>,
    /// Archive bytes.
    pub size: u64,
    /// Unix seconds.
    pub created_at: u64,
}

/// A route pattern (a host, optionally with a path) bound to a function.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Route {
    /// Exact host or `*.suffix`.
    pub host: String,
    /// `/exact` or `/prefix/*`; `None` for the host-only route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Owner.
    pub tenant: String,
    /// Function name within the tenant.
    pub function: String,
}

impl Route {
    /// The pattern as text (`host` or `host/path`): how routes are keyed.
    pub fn pattern(&self) -> String {
        match &self.path {
            None => self.host.clone(),
            Some(p) => format!("{}{p}", self.host),
        }
    }
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
        assert_eq!(
            scopes_text(),
            "functions, routes, kv, logs, images, certificates and *"
        );
    }
}
