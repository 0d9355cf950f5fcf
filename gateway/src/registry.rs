//! The registry of tenants, tokens, functions, versions and routes.
//!
//! It lives in redb (durable before any write returns) and in memory. Every
//! change is made on a copy of the in-memory state, written to redb in one
//! transaction, and only after the commit installed — together with a new
//! routing snapshot that the data plane picks up atomically. No lock is held
//! by the data plane, and none across a guest call.
//!
//! The in-memory state and the snapshot are persistent maps (`imbl`): a copy
//! shares everything it does not change, and a change rebuilds the targets
//! of only the functions and hosts it wrote. An admin change therefore costs
//! the same with ten functions deployed as with ten thousand.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use imbl::OrdMap;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};

use crate::config::{LimitOverrides, LimitSet};
use crate::names::HostPattern;
use crate::routing::{RouteTable, Target, TenantGate};
use crate::secrets::SecretBox;

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const TENANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("tenants");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const FUNCTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("functions");
const ROUTES: TableDefinition<&str, &[u8]> = TableDefinition::new("routes");

/// Version of the on-disk layout; bumped on incompatible changes.
pub const SCHEMA_VERSION: &str = "1";

/// Scopes a tenant token can hold.
pub const SCOPES: &[&str] = &["functions", "routes", "kv", "logs", "*"];

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
    pub limits: LimitOverrides,
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

/// KV operations a guest may make per request.
pub const KV_OPS_PER_INVOCATION: u32 = 1000;

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

/// Registry failures, mapped to HTTP statuses by the admin API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The object or its parent does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The host is claimed by another tenant.
    #[error("{0}")]
    HostTaken(String),
    /// The host is outside the tenant's domains.
    #[error("{0}")]
    HostNotAllowed(String),
    /// A malformed value.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error("storage error: {0}")]
    Storage(String),
}

fn storage(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Storage(e.to_string())
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Default)]
struct State {
    tenants: OrdMap<String, Tenant>,
    /// By token hash.
    tokens: imbl::HashMap<String, TokenRecord>,
    /// By `tenant/name`.
    functions: OrdMap<String, Function>,
    /// By host pattern text.
    routes: OrdMap<String, Route>,
}

/// Removes the entries `keep` rejects (`OrdMap` has no `retain`).
fn retain<V: Clone>(map: &mut OrdMap<String, V>, mut keep: impl FnMut(&String, &V) -> bool) {
    let gone: Vec<String> = map
        .iter()
        .filter(|(k, v)| !keep(k, v))
        .map(|(k, _)| k.clone())
        .collect();
    for k in gone {
        map.remove(&k);
    }
}

/// The routes some host of `pattern` would also match. For an exact host
/// these can only be the host itself and wildcards over its suffixes, so it
/// costs a lookup per label; a wildcard is compared with every route.
fn overlapping<'a>(
    routes: &'a OrdMap<String, Route>,
    pattern: &'a HostPattern,
) -> Box<dyn Iterator<Item = &'a Route> + 'a> {
    match pattern {
        HostPattern::Exact(h) => Box::new(
            std::iter::once(h.clone())
                .chain(h.match_indices('.').map(|(i, _)| format!("*{}", &h[i..])))
                .filter_map(|k| routes.get(&k)),
        ),
        HostPattern::Wildcard(_) => Box::new(
            routes
                .values()
                .filter(|r| HostPattern::parse(&r.host).is_ok_and(|p| p.overlaps(pattern))),
        ),
    }
}

/// The registry's state and what was derived from it for the data plane.
#[derive(Default)]
struct Inner {
    state: State,
    /// `tenant/name` → the target of its active version.
    targets: HashMap<String, Arc<Target>>,
    /// `tenant/name` → the host patterns routed to it.
    hosts: HashMap<String, BTreeSet<String>>,
}

/// What a change wrote, and so what the snapshot must redo.
#[derive(Default)]
struct Touched {
    functions: HashSet<String>,
    hosts: HashSet<String>,
}

impl Touched {
    fn of(batch: &Batch) -> Touched {
        let mut t = Touched::default();
        for (table, key, _) in &batch.ops {
            if table.name() == FUNCTIONS.name() {
                t.functions.insert(key.clone());
            } else if table.name() == ROUTES.name() {
                t.hosts.insert(key.clone());
            }
        }
        t
    }

    fn everything(state: &State) -> Touched {
        Touched {
            functions: state.functions.keys().cloned().collect(),
            hosts: state.routes.keys().cloned().collect(),
        }
    }
}

type Table = TableDefinition<'static, &'static str, &'static [u8]>;

/// Pending writes of one change: (table, key, new value or deletion).
#[derive(Default)]
struct Batch {
    ops: Vec<(Table, String, Option<Vec<u8>>)>,
}

impl Batch {
    fn put<T: Serialize>(
        &mut self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        key: &str,
        value: &T,
    ) {
        let bytes = serde_json::to_vec(value).expect("registry records serialise");
        self.ops.push((table, key.to_string(), Some(bytes)));
    }
    fn delete(&mut self, table: Table, key: &str) {
        self.ops.push((table, key.to_string(), None));
    }
}

fn fn_key(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}")
}

/// The associated data a secret is sealed with.
pub fn secret_context(tenant: &str, function: &str, name: &str) -> String {
    format!("{tenant}/{function}/{name}")
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The registry.
pub struct Registry {
    db: Arc<Database>,
    secrets: Arc<SecretBox>,
    kv: std::sync::OnceLock<Arc<dyn perch_kv::KvStore>>,
    inner: Mutex<Inner>,
    routes: ArcSwap<RouteTable>,
    gates: Mutex<HashMap<String, Arc<TenantGate>>>,
    defaults: LimitSet,
}

impl Registry {
    /// Opens (or creates) the database at `path` and loads the registry.
    pub fn open(path: &Path, defaults: LimitSet, secrets: Arc<SecretBox>) -> Result<Registry> {
        let db = Database::create(path).map_err(storage)?;
        let db = Arc::new(db);
        let txn = db.begin_write().map_err(storage)?;
        {
            let mut meta = txn.open_table(META).map_err(storage)?;
            let existing = meta
                .get("schema_version")
                .map_err(storage)?
                .map(|v| v.value().to_string());
            match existing.as_deref() {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)
                        .map_err(storage)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(other) => {
                    return Err(RegistryError::Storage(format!(
                        "database schema version {other} is not supported by this perch (expects {SCHEMA_VERSION})"
                    )));
                }
            }
            for t in [TENANTS, TOKENS, FUNCTIONS, ROUTES] {
                txn.open_table(t).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)?;

        let mut state = State::default();
        let read = db.begin_read().map_err(storage)?;
        fn load<T: for<'de> Deserialize<'de>>(
            read: &redb::ReadTransaction,
            table: TableDefinition<&str, &[u8]>,
            mut f: impl FnMut(String, T),
        ) -> Result<()> {
            let t = read.open_table(table).map_err(storage)?;
            for row in t.iter().map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                let value = serde_json::from_slice(v.value()).map_err(|e| {
                    RegistryError::Storage(format!("corrupt record {}: {e}", k.value()))
                })?;
                f(k.value().to_string(), value);
            }
            Ok(())
        }
        load(&read, TENANTS, |k, v| {
            state.tenants.insert(k, v);
        })?;
        load(&read, TOKENS, |k, v| {
            state.tokens.insert(k, v);
        })?;
        load(&read, FUNCTIONS, |k, v| {
            state.functions.insert(k, v);
        })?;
        load(&read, ROUTES, |k, v| {
            state.routes.insert(k, v);
        })?;
        drop(read);

        let registry = Registry {
            db,
            secrets,
            kv: std::sync::OnceLock::new(),
            inner: Mutex::new(Inner::default()),
            routes: ArcSwap::from_pointee(RouteTable::default()),
            gates: Mutex::new(HashMap::new()),
            defaults,
        };
        registry.republish(Some(state));
        Ok(registry)
    }

    /// Connects the KV store that functions' buckets open, and republishes
    /// the routes so every target can reach it.
    pub fn attach_kv(&self, kv: Arc<dyn perch_kv::KvStore>) {
        let _ = self.kv.set(kv);
        self.republish(None);
    }

    /// Rebuilds every target and route from `state` (or the current one).
    fn republish(&self, state: Option<State>) {
        let mut inner = self.lock();
        let state = state.unwrap_or_else(|| inner.state.clone());
        let touched = Touched::everything(&state);
        *inner = Inner::default();
        self.install(&mut inner, RouteTable::default(), state, &touched);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node's secret sealing box.
    pub fn secrets(&self) -> &Arc<SecretBox> {
        &self.secrets
    }

    /// The shared database (the KV store lives in it too).
    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }

    /// The current routing snapshot.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.load_full()
    }

    fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.lock().state)
    }

    /// Applies a change: `f` edits a copy of the state and lists its writes;
    /// they commit durably, then the copy and a new route snapshot go live.
    fn change<R>(&self, f: impl FnOnce(&mut State, &mut Batch) -> Result<R>) -> Result<R> {
        let mut inner = self.lock();
        let mut next = inner.state.clone();
        let mut batch = Batch::default();
        let out = f(&mut next, &mut batch)?;
        if !batch.ops.is_empty() {
            let txn = self.db.begin_write().map_err(storage)?;
            for (table, key, value) in &batch.ops {
                let mut t = txn.open_table(*table).map_err(storage)?;
                match value {
                    Some(v) => {
                        t.insert(key.as_str(), v.as_slice()).map_err(storage)?;
                    }
                    None => {
                        t.remove(key.as_str()).map_err(storage)?;
                    }
                }
            }
            txn.commit().map_err(storage)?;
        }
        let touched = Touched::of(&batch);
        let current = RouteTable::clone(&self.routes.load());
        self.install(&mut inner, current, next, &touched);
        Ok(out)
    }

    /// Makes `state` current and publishes `table` (a copy of the current
    /// snapshot, or an empty one for a full rebuild) with the touched
    /// functions' targets rebuilt and the touched hosts re-pointed; every
    /// other entry stays shared.
    fn install(&self, inner: &mut Inner, mut table: RouteTable, state: State, touched: &Touched) {
        for host in &touched.hosts {
            if let Some(old) = inner.state.routes.get(host) {
                let key = fn_key(&old.tenant, &old.function);
                if let Some(set) = inner.hosts.get_mut(&key) {
                    set.remove(host);
                    if set.is_empty() {
                        inner.hosts.remove(&key);
                    }
                }
            }
            let target = state.routes.get(host).and_then(|r| {
                let key = fn_key(&r.tenant, &r.function);
                inner
                    .hosts
                    .entry(key.clone())
                    .or_default()
                    .insert(host.clone());
                inner.targets.get(&key).cloned()
            });
            table.set(host, target);
        }
        for key in &touched.functions {
            let target = state
                .functions
                .get(key)
                .and_then(|f| self.target(f))
                .map(Arc::new);
            match &target {
                Some(t) => inner.targets.insert(key.clone(), t.clone()),
                None => inner.targets.remove(key),
            };
            for host in inner.hosts.get(key).into_iter().flatten() {
                table.set(host, target.clone());
            }
        }
        inner.state = state;
        self.routes.store(Arc::new(table));
    }

    fn gate(&self, tenant: &str) -> Arc<TenantGate> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        gates
            .entry(tenant.to_string())
            .or_insert_with(|| Arc::new(TenantGate::default()))
            .clone()
    }

    /// The target of a function's active version, if it has one.
    fn target(&self, function: &Function) -> Option<Target> {
        let version = function.active()?;
        let digest = version.digest.parse().ok()?;
        let label = format!("{}/{}@{}", function.tenant, function.name, version.version);
        Some(Target {
            tenant: function.tenant.clone(),
            function: function.name.clone(),
            version: version.version,
            invocation: self.invocation(function, version, digest, &label),
            gate: self.gate(&function.tenant),
        })
    }

    /// What the runtime needs to run a version: limits, environment (vars
    /// and unsealed secrets), `wasi:config` values and KV access.
    fn invocation(
        &self,
        function: &Function,
        version: &Version,
        digest: perch_runtime::Digest,
        label: &str,
    ) -> perch_runtime::Invocation {
        let st = &version.settings;
        let limits = self.defaults.with(&st.limits);
        let mut inv = perch_runtime::Invocation::new(digest, limits.to_runtime(), label);
        inv.max_reuse = limits.instance_reuse;
        let mut env: Vec<(String, String)> = st
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, sealed) in &st.secrets {
            let context = secret_context(&function.tenant, &function.name, name);
            match self.secrets.open(&context, sealed) {
                Some(plain) => env.push((name.clone(), plain)),
                None => {
                    tracing::error!(function = %label, secret = %name, "secret cannot be unsealed with this node's key")
                }
            }
        }
        inv.outbound = Arc::new(perch_runtime::OutboundPolicy {
            allow: st.outbound.allow.clone(),
            max_requests: limits.outbound_requests,
        });
        inv.config = Arc::new(env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect());
        inv.env = env;
        if let Some(kv) = self.kv.get() {
            inv.kv = Some(Arc::new(perch_runtime::KvAccess {
                store: kv.clone(),
                tenant: function.tenant.clone(),
                bindings: st.kv.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                max_ops: KV_OPS_PER_INVOCATION,
            }));
        }
        inv
    }

    // ---- tenants ----

    /// Creates a tenant, or updates its domains; returns it and whether it is new.
    pub fn put_tenant(&self, name: &str, domains: Option<Vec<String>>) -> Result<(Tenant, bool)> {
        let domains = match domains {
            Some(list) => {
                let mut out = Vec::new();
                for d in list {
                    let p = HostPattern::parse(&d)
                        .map_err(|e| RegistryError::Invalid(format!("domains: {e}")))?;
                    out.push(p.as_string());
                }
                Some(out)
            }
            None => None,
        };
        self.change(|s, b| {
            let created = !s.tenants.contains_key(name);
            let tenant = s.tenants.entry(name.to_string()).or_insert_with(|| Tenant {
                name: name.to_string(),
                domains: Vec::new(),
                created_at: now(),
            });
            let changed = created || domains.as_ref().is_some_and(|d| *d != tenant.domains);
            if let Some(d) = domains {
                tenant.domains = d;
            }
            let tenant = tenant.clone();
            if changed {
                b.put(TENANTS, name, &tenant);
            }
            Ok((tenant, created))
        })
    }

    /// All tenants, by name.
    pub fn list_tenants(&self) -> Vec<Tenant> {
        self.read(|s| s.tenants.values().cloned().collect())
    }

    /// True when the tenant exists.
    pub fn tenant_exists(&self, name: &str) -> bool {
        self.read(|s| s.tenants.contains_key(name))
    }

    /// Deletes a tenant with its tokens, functions and routes.
    pub fn delete_tenant(&self, name: &str) -> Result<()> {
        self.change(|s, b| {
            if s.tenants.remove(name).is_none() {
                return Ok(());
            }
            b.delete(TENANTS, name);
            s.tokens.retain(|hash, t| {
                let keep = t.tenant != name;
                if !keep {
                    b.delete(TOKENS, hash);
                }
                keep
            });
            retain(&mut s.functions, |key, f| {
                let keep = f.tenant != name;
                if !keep {
                    b.delete(FUNCTIONS, key);
                }
                keep
            });
            retain(&mut s.routes, |host, r| {
                let keep = r.tenant != name;
                if !keep {
                    b.delete(ROUTES, host);
                }
                keep
            });
            Ok(())
        })
    }

    fn require_tenant(s: &State, tenant: &str) -> Result<()> {
        if s.tenants.contains_key(tenant) {
            Ok(())
        } else {
            Err(RegistryError::NotFound(format!(
                "tenant `{tenant}` does not exist"
            )))
        }
    }

    // ---- tokens ----

    /// Stores a new token record (the caller made the secret and its hash).
    pub fn add_token(&self, record: TokenRecord) -> Result<TokenRecord> {
        self.change(|s, b| {
            Self::require_tenant(s, &record.tenant)?;
            b.put(TOKENS, &record.hash, &record);
            s.tokens.insert(record.hash.clone(), record.clone());
            Ok(record)
        })
    }

    /// A tenant's tokens, oldest first.
    pub fn list_tokens(&self, tenant: &str) -> Result<Vec<TokenRecord>> {
        self.read(|s| {
            Self::require_tenant(s, tenant)?;
            let mut v: Vec<_> = s
                .tokens
                .values()
                .filter(|t| t.tenant == tenant)
                .cloned()
                .collect();
            v.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            Ok(v)
        })
    }

    /// Revokes a token by id (absent is fine).
    pub fn revoke_token(&self, tenant: &str, id: &str) -> Result<()> {
        self.change(|s, b| {
            Self::require_tenant(s, tenant)?;
            let hash = s
                .tokens
                .iter()
                .find(|(_, t)| t.tenant == tenant && t.id == id)
                .map(|(h, _)| h.clone());
            if let Some(hash) = hash {
                s.tokens.remove(&hash);
                b.delete(TOKENS, &hash);
            }
            Ok(())
        })
    }

    /// The token whose SHA-256 is `hash`.
    pub fn lookup_token(&self, hash: &str) -> Option<TokenRecord> {
        self.read(|s| s.tokens.get(hash).cloned())
    }

    // ---- functions ----

    /// Adds version N+1 with `digest` and activates it.
    pub fn add_version(&self, tenant: &str, name: &str, digest: &str) -> Result<u32> {
        self.change(|s, b| {
            Self::require_tenant(s, tenant)?;
            let key = fn_key(tenant, name);
            let f = s.functions.entry(key.clone()).or_insert_with(|| Function {
                tenant: tenant.to_string(),
                name: name.to_string(),
                active_version: 0,
                versions: Vec::new(),
            });
            let version = f.versions.last().map(|v| v.version).unwrap_or(0) + 1;
            // New code keeps the settings of the version it replaces.
            let settings = f.active().map(|v| v.settings.clone()).unwrap_or_default();
            f.versions.push(Version {
                version,
                digest: digest.to_string(),
                created_at: now(),
                settings,
            });
            f.active_version = version;
            b.put(FUNCTIONS, &key, f);
            Ok(version)
        })
    }

    /// Creates version N+1 with the active version's artifact and `edit`
    /// applied to a copy of its settings, and activates it.
    pub fn put_settings(
        &self,
        tenant: &str,
        name: &str,
        edit: impl FnOnce(&mut Settings) -> Result<()>,
    ) -> Result<u32> {
        self.change(|s, b| {
            Self::require_tenant(s, tenant)?;
            let key = fn_key(tenant, name);
            let f = s.functions.get_mut(&key).ok_or_else(|| {
                RegistryError::NotFound(format!("function `{name}` does not exist"))
            })?;
            let active = f.active().cloned().ok_or_else(|| {
                RegistryError::NotFound(format!("function `{name}` has no active version"))
            })?;
            let mut settings = active.settings.clone();
            edit(&mut settings)?;
            let version = f.versions.last().map(|v| v.version).unwrap_or(0) + 1;
            f.versions.push(Version {
                version,
                digest: active.digest,
                created_at: now(),
                settings,
            });
            f.active_version = version;
            b.put(FUNCTIONS, &key, f);
            Ok(version)
        })
    }

    /// A tenant's functions, by name.
    pub fn list_functions(&self, tenant: &str) -> Result<Vec<Function>> {
        self.read(|s| {
            Self::require_tenant(s, tenant)?;
            Ok(s.functions
                .values()
                .filter(|f| f.tenant == tenant)
                .cloned()
                .collect())
        })
    }

    /// One function.
    pub fn get_function(&self, tenant: &str, name: &str) -> Result<Function> {
        self.read(|s| {
            Self::require_tenant(s, tenant)?;
            s.functions
                .get(&fn_key(tenant, name))
                .cloned()
                .ok_or_else(|| RegistryError::NotFound(format!("function `{name}` does not exist")))
        })
    }

    /// Every digest some version refers to (for start-up checks).
    pub fn all_digests(&self) -> Vec<String> {
        self.read(|s| {
            let mut v: Vec<String> = s
                .functions
                .values()
                .flat_map(|f| f.versions.iter().map(|v| v.digest.clone()))
                .collect();
            v.sort();
            v.dedup();
            v
        })
    }

    /// Digests of the active versions of routed functions, newest version
    /// first, each once: what to load ahead of requests after a start.
    pub fn routed_digests(&self) -> Vec<String> {
        self.read(|s| {
            let routed: HashSet<String> = s
                .routes
                .values()
                .map(|r| fn_key(&r.tenant, &r.function))
                .collect();
            let mut active: Vec<&Version> = routed
                .iter()
                .filter_map(|k| s.functions.get(k)?.active())
                .collect();
            active.sort_by_key(|v| std::cmp::Reverse(v.created_at));
            let mut seen = HashSet::new();
            active
                .into_iter()
                .filter(|v| seen.insert(v.digest.as_str()))
                .map(|v| v.digest.clone())
                .collect()
        })
    }

    /// Deletes a function, its versions and its routes (absent is fine).
    pub fn delete_function(&self, tenant: &str, name: &str) -> Result<()> {
        self.change(|s, b| {
            Self::require_tenant(s, tenant)?;
            let key = fn_key(tenant, name);
            if s.functions.remove(&key).is_some() {
                b.delete(FUNCTIONS, &key);
            }
            retain(&mut s.routes, |host, r| {
                let keep = !(r.tenant == tenant && r.function == name);
                if !keep {
                    b.delete(ROUTES, host);
                }
                keep
            });
            Ok(())
        })
    }

    // ---- routes ----

    /// Binds `host` to a function; returns the route and whether it is new.
    pub fn put_route(&self, tenant: &str, host: &str, function: &str) -> Result<(Route, bool)> {
        let pattern = HostPattern::parse(host).map_err(RegistryError::Invalid)?;
        let host = pattern.as_string();
        self.change(|s, b| {
            let t = s.tenants.get(tenant).ok_or_else(|| {
                RegistryError::NotFound(format!("tenant `{tenant}` does not exist"))
            })?;
            if !t.domains.is_empty()
                && !t
                    .domains
                    .iter()
                    .any(|d| HostPattern::parse(d).is_ok_and(|d| d.covers(&pattern)))
            {
                return Err(RegistryError::HostNotAllowed(format!(
                    "host `{host}` is outside tenant `{tenant}`'s domains ({})",
                    t.domains.join(", ")
                )));
            }
            if overlapping(&s.routes, &pattern).any(|r| r.tenant != tenant) {
                return Err(RegistryError::HostTaken(format!(
                    "host `{host}` overlaps a route held by another tenant"
                )));
            }
            if !s.functions.contains_key(&fn_key(tenant, function)) {
                return Err(RegistryError::NotFound(format!(
                    "function `{function}` does not exist"
                )));
            }
            let route = Route {
                host: host.clone(),
                tenant: tenant.to_string(),
                function: function.to_string(),
            };
            let created = !s.routes.contains_key(&host);
            if s.routes.get(&host) != Some(&route) {
                b.put(ROUTES, &host, &route);
                s.routes.insert(host.clone(), route.clone());
            }
            Ok((route, created))
        })
    }

    /// A tenant's routes, by host.
    pub fn list_routes(&self, tenant: &str) -> Result<Vec<Route>> {
        self.read(|s| {
            Self::require_tenant(s, tenant)?;
            Ok(s.routes
                .values()
                .filter(|r| r.tenant == tenant)
                .cloned()
                .collect())
        })
    }

    /// Unbinds a host (absent, or another tenant's, is a no-op).
    pub fn delete_route(&self, tenant: &str, host: &str) -> Result<()> {
        let host = HostPattern::parse(host)
            .map(|p| p.as_string())
            .unwrap_or_else(|_| host.to_string());
        self.change(|s, b| {
            Self::require_tenant(s, tenant)?;
            if s.routes.get(&host).is_some_and(|r| r.tenant == tenant) {
                s.routes.remove(&host);
                b.delete(ROUTES, &host);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn open(dir: &Path) -> Registry {
        let limits = LimitSet {
            memory_mb: 128,
            cpu_ms: 50,
            wall_ms: 30_000,
            outbound_requests: 50,
            instance_reuse: 1,
        };
        Registry::open(
            &dir.join("registry.redb"),
            limits,
            Arc::new(SecretBox::new(&[7; 32])),
        )
        .unwrap()
    }

    /// Host → (tenant, function, version): what a snapshot routes where.
    fn view(t: &RouteTable) -> BTreeMap<String, (String, String, u32)> {
        let row = |t: &Arc<Target>| (t.tenant.clone(), t.function.clone(), t.version);
        t.exact
            .iter()
            .map(|(h, t)| (h.clone(), row(t)))
            .chain(t.wildcard.iter().map(|(s, t)| (format!("*.{s}"), row(t))))
            .collect()
    }

    /// What a snapshot built from scratch out of the current state routes.
    fn rebuilt(r: &Registry) -> BTreeMap<String, (String, String, u32)> {
        let state = r.lock().state.clone();
        let scratch = Registry {
            db: r.db.clone(),
            secrets: r.secrets.clone(),
            kv: std::sync::OnceLock::new(),
            inner: Mutex::new(Inner::default()),
            routes: ArcSwap::from_pointee(RouteTable::default()),
            gates: Mutex::new(HashMap::new()),
            defaults: r.defaults,
        };
        scratch.republish(Some(state));
        view(&scratch.routes())
    }

    #[derive(Debug, Clone)]
    enum Op {
        Tenant(usize),
        DeleteTenant(usize),
        Version(usize, usize, u8),
        Settings(usize, usize),
        DeleteFunction(usize, usize),
        Route(usize, usize, usize),
        DeleteRoute(usize, usize),
    }

    const TENANTS: [&str; 3] = ["a", "b", "c"];
    const FUNCTIONS: [&str; 3] = ["f", "g", "h"];
    const HOSTS: [&str; 6] = [
        "x.test",
        "y.x.test",
        "*.x.test",
        "*.y.x.test",
        "z.test",
        "*.z.test",
    ];

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3usize).prop_map(Op::Tenant),
            (0..3usize).prop_map(Op::DeleteTenant),
            (0..3usize, 0..3usize, any::<u8>()).prop_map(|(t, f, d)| Op::Version(t, f, d)),
            (0..3usize, 0..3usize).prop_map(|(t, f)| Op::Settings(t, f)),
            (0..3usize, 0..3usize).prop_map(|(t, f)| Op::DeleteFunction(t, f)),
            (0..3usize, 0..6usize, 0..3usize).prop_map(|(t, h, f)| Op::Route(t, h, f)),
            (0..3usize, 0..6usize).prop_map(|(t, h)| Op::DeleteRoute(t, h)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// After any sequence of changes (refused ones included), the
        /// incrementally maintained snapshot routes exactly like one rebuilt
        /// from the whole state.
        #[test]
        fn incremental_snapshot_matches_a_full_rebuild(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let r = open(dir.path());
            for op in ops {
                let _ = match op {
                    Op::Tenant(t) => r.put_tenant(TENANTS[t], None).map(drop),
                    Op::DeleteTenant(t) => r.delete_tenant(TENANTS[t]),
                    Op::Version(t, f, d) => r
                        .add_version(TENANTS[t], FUNCTIONS[f], &format!("{d:064x}"))
                        .map(drop),
                    Op::Settings(t, f) => r
                        .put_settings(TENANTS[t], FUNCTIONS[f], |s| {
                            s.vars.insert("N".into(), "1".into());
                            Ok(())
                        })
                        .map(drop),
                    Op::DeleteFunction(t, f) => r.delete_function(TENANTS[t], FUNCTIONS[f]),
                    Op::Route(t, h, f) => r.put_route(TENANTS[t], HOSTS[h], FUNCTIONS[f]).map(drop),
                    Op::DeleteRoute(t, h) => r.delete_route(TENANTS[t], HOSTS[h]),
                };
                prop_assert_eq!(view(&r.routes()), rebuilt(&r));
            }
        }
    }

    #[test]
    fn exact_host_overlap_finds_covering_wildcards_only() {
        let dir = tempfile::tempdir().unwrap();
        let r = open(dir.path());
        let digest = format!("{:064x}", 1);
        for t in ["a", "b"] {
            r.put_tenant(t, None).unwrap();
            r.add_version(t, "f", &digest).unwrap();
        }
        r.put_route("a", "*.x.test", "f").unwrap();
        r.put_route("a", "one.test", "f").unwrap();
        assert!(matches!(
            r.put_route("b", "deep.y.x.test", "f"),
            Err(RegistryError::HostTaken(_))
        ));
        assert!(matches!(
            r.put_route("b", "one.test", "f"),
            Err(RegistryError::HostTaken(_))
        ));
        // Not below the wildcard: the suffix itself and an unrelated host.
        r.put_route("b", "x.test", "f").unwrap();
        r.put_route("b", "two.test", "f").unwrap();
        assert_eq!(r.routes().lookup("x.test").unwrap().tenant, "b");
        assert_eq!(r.routes().lookup("q.x.test").unwrap().tenant, "a");
    }
}
