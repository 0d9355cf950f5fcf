//! Building the data plane's routing snapshot from the registry's state:
//! each routed function's target (its deployed versions, each as a runtime
//! [`Invocation`](perch_runtime::Invocation): limits, environment with the
//! unsealed secrets, `wasi:config` values, KV access; and the split
//! between them) and the host table.
//!
//! A change rebuilds only the targets of the functions and hosts it wrote;
//! every other entry of the new snapshot is shared with the last one.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::Registry;
use super::model::{Function, Version, fn_key, secret_context};
use super::state::{State, Touched, of_tenant};
use crate::routing::{Deployed, RouteTable, Runnable, Split, StickyKey, Target, TenantGate};
use crate::telemetry::metrics::{FUNCTION_SERIES, OTHER_FUNCTIONS};

/// Tells the container backend which container versions of a touched
/// function are deployed now: its others drain (at once when they no longer
/// exist).
fn retire_undeployed(backend: &perch_containers::Backend, inner: &Inner, key: &str) {
    let Some((tenant, function)) = key.split_once('/') else {
        return;
    };
    let deployed: Vec<u32> = inner
        .targets
        .get(key)
        .into_iter()
        .flat_map(|t| t.versions.iter())
        .filter(|d| matches!(d.run, Runnable::Container(_)))
        .map(|d| d.version)
        .collect();
    let kept = inner.state.functions.get(key);
    backend.retire_function(tenant, function, &deployed, |v| {
        kept.is_some_and(|f| f.version(v).is_some())
    });
}

/// KV operations a guest may make per request.
pub const KV_OPS_PER_INVOCATION: u32 = 1000;

/// The registry's state, its revision, and what was derived from it for
/// the data plane.
#[derive(Default)]
pub(super) struct Inner {
    pub(super) state: State,
    /// The store revision `state` is at.
    pub(super) revision: u64,
    /// `tenant/name` → the target of its deployment.
    targets: HashMap<String, Arc<Target>>,
    /// `tenant/name` → the host patterns routed to it.
    hosts: HashMap<String, BTreeSet<String>>,
    /// Tenant → its first [`FUNCTION_SERIES`] functions by creation: the
    /// ones with metric series of their own.
    named: HashMap<String, HashSet<String>>,
}

impl Inner {
    /// A function's label in metrics: its name, or `_other`.
    pub(super) fn metric_function(&self, tenant: &str, function: &str) -> Arc<str> {
        match self.named.get(tenant) {
            Some(named) if named.contains(function) => function.into(),
            _ => OTHER_FUNCTIONS.into(),
        }
    }

    /// Recomputes which functions of the tenants in `tenants` have series of
    /// their own; returns the keys of functions whose label changed.
    fn relabel(&mut self, state: &State, tenants: &HashSet<String>) -> Vec<String> {
        let mut changed = Vec::new();
        for tenant in tenants {
            let mut all: Vec<(u64, &str)> = of_tenant(&state.functions, tenant)
                .map(|f| (f.created, f.name.as_str()))
                .collect();
            all.sort_unstable();
            let named: HashSet<String> = all
                .iter()
                .take(FUNCTION_SERIES)
                .map(|(_, n)| n.to_string())
                .collect();
            let old = self.named.remove(tenant).unwrap_or_default();
            changed.extend(
                old.symmetric_difference(&named)
                    .map(|name| fn_key(tenant, name)),
            );
            if !named.is_empty() {
                self.named.insert(tenant.clone(), named);
            }
        }
        changed
    }
}

impl Registry {
    /// Replaces everything with `state` at `revision` and publishes a
    /// snapshot rebuilt from scratch.
    pub(super) fn republish(&self, inner: &mut Inner, state: State, revision: u64) {
        let touched = Touched::everything(&state);
        *inner = Inner {
            revision,
            ..Inner::default()
        };
        self.install(inner, RouteTable::default(), state, &touched);
    }

    /// Makes `state` current and publishes `table` (a copy of the current
    /// snapshot, or an empty one for a full rebuild) with the touched
    /// functions' targets rebuilt and the touched hosts re-pointed; every
    /// other entry stays shared.
    pub(super) fn install(
        &self,
        inner: &mut Inner,
        mut table: RouteTable,
        state: State,
        touched: &Touched,
    ) {
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
        // A function created or deleted may move others of its tenant into
        // or out of the named set: their targets get their new label.
        let recount: HashSet<String> = touched
            .functions
            .iter()
            .filter(|k| inner.state.functions.contains_key(*k) != state.functions.contains_key(*k))
            .filter_map(|k| k.split_once('/').map(|(t, _)| t.to_string()))
            .collect();
        let mut rebuild: Vec<String> = touched.functions.iter().cloned().collect();
        rebuild.extend(
            inner
                .relabel(&state, &recount)
                .into_iter()
                .filter(|k| !touched.functions.contains(k)),
        );
        for key in &rebuild {
            let target = state
                .functions
                .get(key)
                .and_then(|f| self.build_target(f, inner.metric_function(&f.tenant, &f.name)))
                .map(Arc::new);
            match &target {
                Some(t) => inner.targets.insert(key.clone(), t.clone()),
                None => inner.targets.remove(key),
            };
            self.directory.set(key, target.as_ref());
            for host in inner.hosts.get(key).into_iter().flatten() {
                table.set(host, target.clone());
            }
        }
        inner.state = state;
        for name in &touched.tenants {
            if !inner.state.tenants.contains_key(name) {
                self.usage.forget(name);
            }
        }
        // A written tenant's request rate (its quota, else the default) on
        // the gate its targets share, and its KV quotas for the store.
        for name in &touched.tenants {
            let own = inner.state.tenants.get(name).map(|t| &t.quotas);
            let quota = |q: &str| own.and_then(|o| o.get(q)).or(self.quota_defaults.get(q));
            self.gate(name).set_rate(quota("requests_per_second"));
            // A deleted tenant's are cleared (`None`, `None`).
            let exists = own.is_some();
            self.kv_quotas.set(
                name,
                perch_kv::KvQuota {
                    bytes: quota("kv_bytes").filter(|_| exists),
                    keys: quota("kv_keys").filter(|_| exists),
                },
            );
        }
        self.routes.store(Arc::new(table));
        if touched.certificates {
            self.certificates.send_modify(|n| *n += 1);
        }
        self.installs.send_modify(|n| *n += 1);
        if let Some(backend) = self.containers.get() {
            for key in &touched.functions {
                retire_undeployed(backend, inner, key);
            }
        }
    }

    /// The target of a function's deployment (routed or not).
    pub fn target(&self, tenant: &str, function: &str) -> Option<Arc<Target>> {
        self.lock().targets.get(&fn_key(tenant, function)).cloned()
    }

    /// Every deployed function's cron schedules (those of its primary
    /// version) as `(tenant, function, expressions)`.
    pub fn schedules(&self) -> Vec<(String, String, Vec<String>)> {
        self.read(|s| {
            s.functions
                .values()
                .filter_map(|f| {
                    let cron = &f.active()?.settings.cron;
                    (!cron.is_empty()).then(|| (f.tenant.clone(), f.name.clone(), cron.clone()))
                })
                .collect()
        })
    }

    pub(super) fn gate(&self, tenant: &str) -> Arc<TenantGate> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        gates
            .entry(tenant.to_string())
            .or_insert_with(|| Arc::new(TenantGate::default()))
            .clone()
    }

    /// The target of a function's deployment, if it has one.
    fn build_target(&self, function: &Function, metric_function: Arc<str>) -> Option<Target> {
        let deployment = function.deployment.as_ref()?;
        let mut versions = Vec::new();
        let mut shares = Vec::new();
        for split in &deployment.versions {
            let Some(version) = function.version(split.version) else {
                continue;
            };
            let run = match &version.container {
                Some(spec) => {
                    let Some(backend) = self.containers.get() else {
                        continue;
                    };
                    let id = perch_containers::VersionId {
                        tenant: function.tenant.clone(),
                        function: function.name.clone(),
                        version: version.version,
                    };
                    Runnable::Container(backend.pool(
                        id,
                        spec,
                        &self.environment(function, version),
                    ))
                }
                None => {
                    let Ok(digest) = version.digest.parse() else {
                        continue;
                    };
                    let label =
                        format!("{}/{}@{}", function.tenant, function.name, version.version);
                    Runnable::Wasm(self.invocation(function, version, digest, &label))
                }
            };
            versions.push(Deployed {
                version: version.version,
                run,
            });
            shares.push((version.version, split.percent));
        }
        if versions.is_empty() {
            return None;
        }
        let sticky = deployment
            .sticky
            .as_deref()
            .and_then(|k| StickyKey::parse(k).ok());
        Some(Target {
            tenant: function.tenant.clone(),
            function: function.name.clone(),
            versions,
            split: Split::new(&shares, sticky),
            gate: self.gate(&function.tenant),
            metric_function,
            usage: self.usage.tenant(&function.tenant),
        })
    }

    /// A version's environment: its vars and its unsealed secrets.
    fn environment(&self, function: &Function, version: &Version) -> Vec<(String, String)> {
        let st = &version.settings;
        let mut env: Vec<(String, String)> = st
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, sealed) in &st.secrets {
            let context = secret_context(&function.tenant, &function.name, name);
            match self.secrets.open(&context, sealed) {
                Some(plain) => env.push((name.clone(), plain)),
                None => tracing::error!(
                    function = %format!("{}/{}@{}", function.tenant, function.name, version.version),
                    secret = %name,
                    "secret cannot be unsealed with this node's key"
                ),
            }
        }
        env
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
        let env = self.environment(function, version);
        inv.outbound = Arc::new(perch_runtime::OutboundPolicy {
            allow: st.outbound.allow.clone(),
            max_requests: limits.outbound_requests,
        });
        inv.config = Arc::new(env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect());
        if self.containers.get().is_some() {
            inv.internal = Some(Arc::new(crate::routing::ContainerDestinations {
                tenant: function.tenant.clone(),
                directory: self.directory.clone(),
            }));
        }
        inv.env = env;
        if let Some(kv) = self.kv.get() {
            inv.kv = Some(Arc::new(perch_runtime::KvAccess {
                store: kv.clone(),
                tenant: function.tenant.clone(),
                bindings: st.kv.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                max_ops: KV_OPS_PER_INVOCATION,
                counters: self.kv_counters.clone(),
            }));
        }
        inv
    }
}
