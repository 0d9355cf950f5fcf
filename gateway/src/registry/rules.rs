//! The registry's rules, applied to the in-memory state before anything is
//! committed: tenants and their domains, tokens, version numbering and
//! settings inheritance, host ownership (a host and every pattern
//! overlapping it belong to one tenant). Stores never see a rule: they
//! persist what these functions decided.
use std::collections::HashSet;

use super::model::{Function, Route, Settings, Tenant, TokenRecord, Version, fn_key, now};
use super::state::{State, overlapping, retain};
use super::store::Change;
use super::{Registry, RegistryError, Result};
use crate::names::HostPattern;

impl Registry {
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
            if let Some(d) = &domains {
                tenant.domains = d.clone();
            }
            let tenant = tenant.clone();
            if changed {
                b.push(Change::PutTenant(tenant.clone()));
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
            b.push(Change::DeleteTenant(name.to_string()));
            s.tokens.retain(|hash, t| {
                let keep = t.tenant != name;
                if !keep {
                    b.push(Change::DeleteToken(hash.clone()));
                }
                keep
            });
            retain(&mut s.functions, |key, f| {
                let keep = f.tenant != name;
                if !keep {
                    b.push(Change::DeleteFunction(key.clone()));
                }
                keep
            });
            retain(&mut s.routes, |host, r| {
                let keep = r.tenant != name;
                if !keep {
                    b.push(Change::DeleteRoute(host.clone()));
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
            b.push(Change::PutToken(record.clone()));
            s.tokens.insert(record.hash.clone(), record.clone());
            Ok(record.clone())
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
                b.push(Change::DeleteToken(hash.clone()));
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
            b.push(Change::PutFunction(f.clone()));
            Ok(version)
        })
    }

    /// Creates version N+1 with the active version's artifact and `edit`
    /// applied to a copy of its settings, and activates it.
    pub fn put_settings(
        &self,
        tenant: &str,
        name: &str,
        edit: impl Fn(&mut Settings) -> Result<()>,
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
            b.push(Change::PutFunction(f.clone()));
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
                b.push(Change::DeleteFunction(key.clone()));
            }
            retain(&mut s.routes, |host, r| {
                let keep = !(r.tenant == tenant && r.function == name);
                if !keep {
                    b.push(Change::DeleteRoute(host.clone()));
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
                b.push(Change::PutRoute(route.clone()));
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
                b.push(Change::DeleteRoute(host.clone()));
            }
            Ok(())
        })
    }
}
