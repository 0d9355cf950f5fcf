//! The registry's rules, applied to the in-memory state before anything is
//! committed: tenants and their domains, tokens, version numbering and
//! settings inheritance, host ownership (a host and every pattern
//! overlapping it belong to one tenant). Stores never see a rule: they
//! persist what these functions decided.
use std::collections::HashSet;
use std::sync::Arc;

use perch_containers::ContainerSpec;

use super::model::{
    CertificateRecord, Deployment, Function, Holdings, HostVerification, ImageRecord, QUOTAS,
    Quotas, Route, Settings, Split, Tenant, TokenRecord, Version, VersionKind, WORLD_P2, fn_key,
    now,
};
use super::state::{State, of_tenant, overlapping, retain};
use super::store::Change;
use super::{Registry, RegistryError, Result};
use crate::names::{HostPattern, RoutePattern};

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
                quotas: Quotas::default(),
                verifications: Default::default(),
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

    /// Edits a tenant's own quotas: each `(name, value)` sets one (`None`
    /// resets it to the config's default); returns the tenant.
    pub fn set_quotas(&self, name: &str, edits: &[(&'static str, Option<u64>)]) -> Result<Tenant> {
        self.change(|s, b| {
            let mut tenant = s.tenants.get(name).cloned().ok_or_else(|| {
                RegistryError::NotFound(format!("tenant `{name}` does not exist"))
            })?;
            for (quota, value) in edits {
                tenant.quotas.set(quota, *value);
            }
            if s.tenants.get(name) != Some(&tenant) {
                b.push(Change::PutTenant(tenant.clone()));
                s.tenants.insert(name.to_string(), tenant.clone());
            }
            Ok(tenant)
        })
    }

    /// The quota `quota` of `tenant`: its own, else the default.
    fn quota(&self, s: &State, tenant: &str, quota: &'static str) -> Option<u64> {
        s.tenants
            .get(tenant)
            .and_then(|t| t.quotas.get(quota))
            .or(self.quota_defaults.get(quota))
    }

    /// Refuses a change that takes `tenant` to `used` of `quota` when that
    /// is over its limit and more than it held (`before`): shrinking is
    /// always allowed.
    fn within(
        &self,
        s: &State,
        tenant: &str,
        quota: &'static str,
        before: u64,
        used: u64,
    ) -> Result<()> {
        match self.quota(s, tenant, quota) {
            Some(limit) if used > limit && used > before => Err(RegistryError::QuotaExceeded {
                quota,
                limit,
                message: format!(
                    "tenant `{tenant}` would hold {used} of its {quota} quota of {limit}"
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Σ `memory_mb` × `max_instances` over the tenant's deployed container
    /// versions, with `changed` in place of its stored self.
    fn container_memory(s: &State, tenant: &str, changed: Option<&Function>) -> u64 {
        let deployed = |f: &Function| -> u64 {
            let Some(d) = &f.deployment else { return 0 };
            d.versions
                .iter()
                .filter_map(|split| f.version(split.version)?.container.as_ref())
                .map(|c| u64::from(c.memory_mb) * u64::from(c.max_instances))
                .sum()
        };
        let others: u64 = of_tenant(&s.functions, tenant)
            .filter(|f| changed.is_none_or(|c| c.name != f.name))
            .map(deployed)
            .sum();
        others + changed.map_or(0, deployed)
    }

    /// Checks a function's new state against the tenant's function and
    /// container-memory quotas.
    fn function_quotas(&self, s: &State, f: &Function) -> Result<()> {
        let key = fn_key(&f.tenant, &f.name);
        if !s.functions.contains_key(&key) {
            let count = of_tenant(&s.functions, &f.tenant).count() as u64;
            self.within(s, &f.tenant, "functions", count, count + 1)?;
        }
        let before = Self::container_memory(s, &f.tenant, None);
        let after = Self::container_memory(s, &f.tenant, Some(f));
        self.within(s, &f.tenant, "container_memory_mb", before, after)
    }

    /// What `tenant` holds of each stored quota, and its quotas in force
    /// (its own, else the config's defaults).
    pub fn holdings(&self, tenant: &str) -> Result<(Holdings, Quotas)> {
        self.read(|s| {
            Self::require_tenant(s, tenant)?;
            let held = Holdings {
                functions: of_tenant(&s.functions, tenant).count() as u64,
                routes: s.routes.values().filter(|r| r.tenant == tenant).count() as u64,
                image_bytes: of_tenant(&s.images, tenant).map(|i| i.size).sum(),
                container_memory_mb: Self::container_memory(s, tenant, None),
                artifact_bytes: Self::artifact_bytes(s, tenant),
            };
            let mut quotas = Quotas::default();
            for q in QUOTAS {
                quotas.set(q, self.quota(s, tenant, q));
            }
            Ok((held, quotas))
        })
    }

    /// All tenants, by name.
    pub fn list_tenants(&self) -> Vec<Tenant> {
        self.read(|s| s.tenants.values().cloned().collect())
    }

    /// Before an upload does its expensive part (compiling): a hold on a
    /// place for function `name` within the tenant's `functions` quota,
    /// counting the places other uploads in progress hold. `None` when the
    /// function exists already (it takes no new place). The quota is
    /// checked again, authoritatively, when the version commits; the hold
    /// keeps uploads that would fail then from compiling first.
    pub fn reserve_function(
        self: &Arc<Self>,
        tenant: &str,
        name: &str,
    ) -> Result<Option<FunctionHold>> {
        let inner = self.lock();
        Self::require_tenant(&inner.state, tenant)?;
        if inner.state.functions.contains_key(&fn_key(tenant, name)) {
            return Ok(None);
        }
        let mut held = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        let mine = held.get(tenant);
        if !mine.is_some_and(|m| m.contains_key(name)) {
            let count =
                of_tenant(&inner.state.functions, tenant).count() + mine.map_or(0, |m| m.len());
            self.within(
                &inner.state,
                tenant,
                "functions",
                count as u64,
                count as u64 + 1,
            )?;
        }
        *held
            .entry(tenant.to_string())
            .or_default()
            .entry(name.to_string())
            .or_default() += 1;
        Ok(Some(FunctionHold {
            registry: self.clone(),
            tenant: tenant.to_string(),
            name: name.to_string(),
        }))
    }

    /// True when the tenant exists.
    pub fn tenant_exists(&self, name: &str) -> bool {
        self.read(|s| s.tenants.contains_key(name))
    }

    /// Deletes a tenant with its tokens, functions and routes; returns the
    /// digests its functions' versions ran.
    pub fn delete_tenant(&self, name: &str) -> Result<Vec<String>> {
        self.change(|s, b| {
            let mut dropped = Vec::new();
            if s.tenants.remove(name).is_none() {
                return Ok(dropped);
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
                    dropped.extend(f.wasm_digests());
                    b.push(Change::DeleteFunction(key.clone()));
                }
                keep
            });
            retain(&mut s.images, |key, i| {
                let keep = i.tenant != name;
                if !keep {
                    b.push(Change::DeleteImage(key.clone()));
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
            retain(&mut s.certificates, |host, c| {
                let keep = c.tenant != name;
                if !keep {
                    b.push(Change::DeleteCertificate(host.clone()));
                }
                keep
            });
            Ok(dropped)
        })
    }

    /// The key and a copy of a function, or a new one without versions.
    fn existing_or_new(s: &State, tenant: &str, name: &str) -> (String, Function) {
        let key = fn_key(tenant, name);
        let f = s.functions.get(&key).cloned().unwrap_or_else(|| Function {
            tenant: tenant.to_string(),
            name: name.to_string(),
            active_version: 0,
            versions: Vec::new(),
            latest_version: 0,
            deployment: None,
            created: now(),
        });
        (key, f)
    }

    /// The key and a copy of an existing function (404 for it or its tenant).
    fn existing(s: &State, tenant: &str, name: &str) -> Result<(String, Function)> {
        Self::require_tenant(s, tenant)?;
        let key = fn_key(tenant, name);
        let f =
            s.functions.get(&key).cloned().ok_or_else(|| {
                RegistryError::NotFound(format!("function `{name}` does not exist"))
            })?;
        Ok((key, f))
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

    /// The token whose SHA-256 is `hash`, unless it has expired.
    pub fn lookup_token(&self, hash: &str) -> Option<TokenRecord> {
        self.read(|s| s.tokens.get(hash).filter(|t| !t.expired(now())).cloned())
    }

    // ---- functions ----

    /// Adds version N+1 running `digest`, with the settings of the active
    /// version; `activate` deploys it alone (else it is staged). Retention
    /// may drop the oldest undeployed version to make room.
    pub fn add_version(
        &self,
        tenant: &str,
        name: &str,
        digest: &str,
        size: u64,
        activate: bool,
    ) -> Result<NewVersion> {
        self.change(|s, b| {
            Self::require_tenant(s, tenant)?;
            let (key, mut f) = Self::existing_or_new(s, tenant, name);
            // New code keeps the settings of the version it replaces.
            let settings = f.active().map(|v| v.settings.clone()).unwrap_or_default();
            self.artifact_room(s, tenant, digest, size)?;
            let out =
                self.push_version(&mut f, (digest.to_string(), size), None, settings, activate)?;
            self.function_quotas(s, &f)?;
            b.push(Change::PutFunction(f.clone()));
            s.functions.insert(key, f);
            Ok(out)
        })
    }

    /// Adds version N+1 running the container `spec` (its image already
    /// resolved to an id the tenant may run), with the vars, secrets and
    /// cron schedules of the active version (KV bindings, limits and the
    /// outbound policy are wasm settings and do not carry over).
    pub fn add_container_version(
        &self,
        tenant: &str,
        name: &str,
        spec: ContainerSpec,
        activate: bool,
    ) -> Result<NewVersion> {
        self.change(|s, b| {
            Self::require_tenant(s, tenant)?;
            let (key, mut f) = Self::existing_or_new(s, tenant, name);
            let settings = f.active().map_or_else(Settings::default, |v| Settings {
                vars: v.settings.vars.clone(),
                secrets: v.settings.secrets.clone(),
                cron: v.settings.cron.clone(),
                ..Settings::default()
            });
            let out = self.push_version(
                &mut f,
                (String::new(), 0),
                Some(spec.clone()),
                settings,
                activate,
            )?;
            self.function_quotas(s, &f)?;
            b.push(Change::PutFunction(f.clone()));
            s.functions.insert(key, f);
            Ok(out)
        })
    }

    /// Creates version N+1 with the active version's artifact and `edit`
    /// applied to a copy of its settings; `activate` deploys it alone.
    pub fn put_settings(
        &self,
        tenant: &str,
        name: &str,
        activate: bool,
        edit: impl Fn(&mut Settings) -> Result<()>,
    ) -> Result<NewVersion> {
        self.change(|s, b| {
            let (key, mut f) = Self::existing(s, tenant, name)?;
            let base = f.active().or(f.versions.last()).cloned().ok_or_else(|| {
                RegistryError::NotFound(format!("function `{name}` has no version"))
            })?;
            let mut settings = base.settings.clone();
            edit(&mut settings)?;
            if base.container.is_some() {
                container_settings(&settings)?;
            }
            let out = self.push_version(
                &mut f,
                (base.digest, base.size),
                base.container,
                settings,
                activate,
            )?;
            self.function_quotas(s, &f)?;
            b.push(Change::PutFunction(f.clone()));
            s.functions.insert(key, f);
            Ok(out)
        })
    }

    /// Appends a version to `f`, dropping the oldest version that is not
    /// deployed (nor in the previous deployment) when `f` would keep more
    /// than `max_versions`.
    fn push_version(
        &self,
        f: &mut Function,
        (digest, size): (String, u64),
        container: Option<ContainerSpec>,
        settings: Settings,
        activate: bool,
    ) -> Result<NewVersion> {
        let mut dropped = Vec::new();
        while f.versions.len() >= self.max_versions.max(1) as usize {
            // Activating moves today's deployment into `previous`: it stays
            // protected, the one before it does not.
            let protected = |v: u32| match activate {
                true => f.deployment.as_ref().is_some_and(|d| d.includes(v)),
                false => f.is_deployed(v),
            };
            let oldest = f.versions.iter().position(|v| !protected(v.version));
            let Some(i) = oldest else {
                return Err(RegistryError::TooManyVersions(format!(
                    "function `{}` keeps at most {} versions and every one is deployed; \
                     change the deployment first",
                    f.name, self.max_versions
                )));
            };
            let gone = f.versions.remove(i);
            if gone.container.is_none() {
                dropped.push(gone.digest);
            }
        }
        let version = f.next_version();
        f.latest_version = version;
        let (kind, world) = match container {
            Some(_) => (VersionKind::Container, String::new()),
            None => (VersionKind::Wasm, WORLD_P2.to_string()),
        };
        f.versions.push(Version {
            version,
            kind,
            world,
            digest,
            container,
            created_at: now(),
            settings,
            size,
        });
        if activate {
            f.deploy(Deployment::single(version));
        }
        Ok(NewVersion {
            version,
            active: activate,
            dropped,
        })
    }

    /// Replaces a function's deployment: 1–4 distinct versions it keeps,
    /// integer percents 1–100 summing to 100, an optional sticky key.
    /// Returns the function with its new deployment.
    pub fn set_deployment(
        &self,
        tenant: &str,
        name: &str,
        versions: Vec<Split>,
        sticky: Option<String>,
    ) -> Result<Function> {
        check_deployment(&versions, sticky.as_deref())?;
        self.change(|s, b| {
            let (key, mut f) = Self::existing(s, tenant, name)?;
            if let Some(missing) = versions.iter().find(|v| f.version(v.version).is_none()) {
                return Err(RegistryError::NotFound(format!(
                    "function `{name}` has no version {}",
                    missing.version
                )));
            }
            f.deploy(Deployment {
                versions: versions.clone(),
                sticky: sticky.clone(),
                updated_at: now(),
                previous: None,
            });
            self.function_quotas(s, &f)?;
            b.push(Change::PutFunction(f.clone()));
            s.functions.insert(key, f.clone());
            Ok(f)
        })
    }

    /// A tenant's functions, by name.
    pub fn list_functions(&self, tenant: &str) -> Result<Vec<Function>> {
        self.read(|s| {
            Self::require_tenant(s, tenant)?;
            Ok(of_tenant(&s.functions, tenant).cloned().collect())
        })
    }

    /// One function.
    pub fn get_function(&self, tenant: &str, name: &str) -> Result<Function> {
        self.read(|s| Self::existing(s, tenant, name).map(|(_, f)| f))
    }

    /// Every digest some version refers to (for start-up checks).
    pub fn all_digests(&self) -> Vec<String> {
        self.read(|s| {
            let mut v: Vec<String> = s
                .functions
                .values()
                .flat_map(Function::wasm_digests)
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
                .filter(|v| v.container.is_none())
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

    /// Deletes a function, its versions and its routes (absent is fine);
    /// returns the digests its versions ran.
    pub fn delete_function(&self, tenant: &str, name: &str) -> Result<Vec<String>> {
        self.change(|s, b| {
            Self::require_tenant(s, tenant)?;
            let key = fn_key(tenant, name);
            let mut dropped = Vec::new();
            if let Some(f) = s.functions.remove(&key) {
                dropped.extend(f.wasm_digests());
                b.push(Change::DeleteFunction(key.clone()));
            }
            retain(&mut s.routes, |host, r| {
                let keep = !(r.tenant == tenant && r.function == name);
                if !keep {
                    b.push(Change::DeleteRoute(host.clone()));
                }
                keep
            });
            Ok(dropped)
        })
    }

    // ---- images ----

    /// Records a tenant's image; returns it and whether it is new (an
    /// image the tenant already has keeps its record).
    pub fn put_image(&self, image: ImageRecord) -> Result<(ImageRecord, bool)> {
        self.change(|s, b| {
            Self::require_tenant(s, &image.tenant)?;
            let key = fn_key(&image.tenant, &image.id);
            if let Some(old) = s.images.get(&key) {
                return Ok((old.clone(), false));
            }
            self.image_room(s, &image.tenant, image.size)?;
            b.push(Change::PutImage(image.clone()));
            s.images.insert(key, image.clone());
            Ok((image.clone(), true))
        })
    }

    /// The tenant's record of image `id` if it has one; else whether it may
    /// add it (`size` bytes) within its `image_bytes` quota (checked again
    /// when the image is recorded).
    pub fn admit_image(&self, tenant: &str, id: &str, size: u64) -> Result<Option<ImageRecord>> {
        self.read(|s| {
            Self::require_tenant(s, tenant)?;
            if let Some(have) = s.images.get(&fn_key(tenant, id)) {
                return Ok(Some(have.clone()));
            }
            self.image_room(s, tenant, size).map(|()| None)
        })
    }

    /// Bytes of the distinct components the tenant's kept versions run.
    fn artifact_bytes(s: &State, tenant: &str) -> u64 {
        let mut seen = HashSet::new();
        of_tenant(&s.functions, tenant)
            .flat_map(|f| f.versions.iter())
            .filter(|v| v.container.is_none() && seen.insert(v.digest.as_str()))
            .map(|v| v.size)
            .sum()
    }

    /// Refuses a component of `size` bytes the tenant does not run yet past
    /// its `artifact_bytes`.
    fn artifact_room(&self, s: &State, tenant: &str, digest: &str, size: u64) -> Result<()> {
        let runs = of_tenant(&s.functions, tenant)
            .flat_map(|f| f.versions.iter())
            .any(|v| v.digest == digest);
        if runs {
            return Ok(());
        }
        let held = Self::artifact_bytes(s, tenant);
        self.within(s, tenant, "artifact_bytes", held, held + size)
    }

    /// Before an upload compiles: whether the tenant may add a component of
    /// `size` bytes (checked again when the version commits).
    pub fn admit_artifact(&self, tenant: &str, digest: &str, size: u64) -> Result<()> {
        self.read(|s| {
            Self::require_tenant(s, tenant)?;
            self.artifact_room(s, tenant, digest, size)
        })
    }

    /// Refuses an image of `size` bytes past the tenant's `image_bytes`.
    fn image_room(&self, s: &State, tenant: &str, size: u64) -> Result<()> {
        let held: u64 = of_tenant(&s.images, tenant).map(|i| i.size).sum();
        self.within(s, tenant, "image_bytes", held, held + size)
    }

    /// A tenant's images, by id.
    pub fn list_images(&self, tenant: &str) -> Result<Vec<ImageRecord>> {
        self.read(|s| {
            Self::require_tenant(s, tenant)?;
            Ok(of_tenant(&s.images, tenant).cloned().collect())
        })
    }

    /// Whether any tenant other than `tenant` has image `id`.
    pub fn image_held_elsewhere(&self, tenant: &str, id: &str) -> bool {
        self.read(|s| s.images.values().any(|i| i.id == id && i.tenant != tenant))
    }

    /// The image id `reference` names for `tenant`: one of its own ids, one
    /// of `allowed`, or one of its own tags (the newest image with it).
    pub fn resolve_image(
        &self,
        tenant: &str,
        reference: &str,
        allowed: &[String],
    ) -> Result<String> {
        self.read(|s| {
            Self::require_tenant(s, tenant)?;
            if allowed.iter().any(|a| a == reference)
                || s.images.contains_key(&fn_key(tenant, reference))
            {
                return Ok(reference.to_string());
            }
            of_tenant(&s.images, tenant)
                .filter(|i| i.tags.iter().any(|t| t == reference))
                .max_by_key(|i| i.created_at)
                .map(|i| i.id.clone())
                .ok_or_else(|| {
                    RegistryError::ImageNotAllowed(format!(
                        "image `{reference}` is neither one of tenant `{tenant}`'s images nor allowed by the operator"
                    ))
                })
        })
    }

    /// Forgets a tenant's image; 409 while a kept version runs it, 404
    /// when the tenant has no such image.
    pub fn delete_image(&self, tenant: &str, id: &str) -> Result<()> {
        self.change(|s, b| {
            Self::require_tenant(s, tenant)?;
            let key = fn_key(tenant, id);
            if !s.images.contains_key(&key) {
                return Err(RegistryError::NotFound(format!(
                    "tenant `{tenant}` has no image `{id}`"
                )));
            }
            let user = of_tenant(&s.functions, tenant).find_map(|f| {
                let v = f
                    .versions
                    .iter()
                    .find(|v| v.container.as_ref().is_some_and(|c| c.image == id))?;
                Some(format!("{}@{}", f.name, v.version))
            });
            if let Some(user) = user {
                return Err(RegistryError::ImageInUse(format!(
                    "image `{id}` is run by version {user}; delete that function or let retention drop the version first"
                )));
            }
            s.images.remove(&key);
            b.push(Change::DeleteImage(key));
            Ok(())
        })
    }

    /// Of `digests`, those no kept version of any function runs.
    pub fn unreferenced(&self, digests: &[String]) -> Vec<String> {
        self.read(|s| {
            let mut left: HashSet<&str> = digests.iter().map(String::as_str).collect();
            for f in s.functions.values() {
                for v in &f.versions {
                    left.remove(v.digest.as_str());
                }
                if left.is_empty() {
                    break;
                }
            }
            let mut out: Vec<String> = left.into_iter().map(str::to_string).collect();
            out.sort();
            out
        })
    }

    // ---- routes ----

    /// Binds a route pattern (`host` or `host/path`) to a function;
    /// returns the route and whether it is new. Ownership is by host: every
    /// pattern on a host (and on hosts overlapping it) is one tenant's.
    pub fn put_route(&self, tenant: &str, pattern: &str, function: &str) -> Result<(Route, bool)> {
        let parsed = RoutePattern::parse(pattern).map_err(RegistryError::Invalid)?;
        let key = parsed.as_string();
        let host_pattern = parsed.host.clone();
        let host = host_pattern.as_string();
        self.change(|s, b| {
            self.may_hold(s, tenant, &host_pattern)?;
            if !s.functions.contains_key(&fn_key(tenant, function)) {
                return Err(RegistryError::NotFound(format!(
                    "function `{function}` does not exist"
                )));
            }
            let route = Route {
                host: host.clone(),
                path: parsed.path.as_ref().map(|p| p.as_string()),
                tenant: tenant.to_string(),
                function: function.to_string(),
            };
            let created = !s.routes.contains_key(&key);
            if created {
                let count = s.routes.values().filter(|r| r.tenant == tenant).count() as u64;
                self.within(s, tenant, "routes", count, count + 1)?;
            }
            if s.routes.get(&key) != Some(&route) {
                b.push(Change::PutRoute(route.clone()));
                s.routes.insert(key.clone(), route.clone());
            }
            Ok((route, created))
        })
    }

    /// Whether `tenant` may hold `host`: within its domains (if it has
    /// any; without, verified first when `node.verify_hosts` is on), and
    /// not overlapping another tenant's route or certificate.
    fn may_hold(&self, s: &State, tenant: &str, host: &HostPattern) -> Result<()> {
        let t = s
            .tenants
            .get(tenant)
            .ok_or_else(|| RegistryError::NotFound(format!("tenant `{tenant}` does not exist")))?;
        let name = host.as_string();
        if !t.domains.is_empty()
            && !t
                .domains
                .iter()
                .any(|d| HostPattern::parse(d).is_ok_and(|d| d.covers(host)))
        {
            return Err(RegistryError::HostNotAllowed(format!(
                "host `{name}` is outside tenant `{tenant}`'s domains ({})",
                t.domains.join(", ")
            )));
        }
        if self.verify_hosts && t.domains.is_empty() {
            // A wildcard stands on its parent's verification.
            let needed = match host {
                HostPattern::Exact(h) => h.clone(),
                HostPattern::Wildcard(parent) => parent.clone(),
            };
            if t.verifications
                .get(&needed)
                .is_none_or(|v| v.verified_at.is_none())
            {
                return Err(RegistryError::HostNotVerified(format!(
                    "host `{needed}` is not verified for tenant `{tenant}`: PUT /v1/tenants/{tenant}/verifications/{needed}, publish the token, then POST …/verifications/{needed}/check"
                )));
            }
        }
        if overlapping(&s.routes, host).any(|r| r.tenant != tenant) {
            return Err(RegistryError::HostTaken(format!(
                "host `{name}` overlaps a route held by another tenant"
            )));
        }
        // A tenant's own certificate claims its host; ACME's follow routes.
        let claimed = s.certificates.values().any(|c| {
            c.tenant != tenant
                && c.source == "tenant"
                && HostPattern::parse(&c.host).is_ok_and(|p| p.overlaps(host))
        });
        if claimed {
            return Err(RegistryError::HostTaken(format!(
                "host `{name}` overlaps a certificate held by another tenant"
            )));
        }
        Ok(())
    }

    // ---- host verification ----

    /// Starts (or returns) the verification of an exact host for a tenant;
    /// returns it and whether it is new. `token` is used for a new one.
    pub fn start_verification(
        &self,
        tenant: &str,
        host: &str,
        token: String,
    ) -> Result<(HostVerification, bool)> {
        let Ok(HostPattern::Exact(host)) = HostPattern::parse(host) else {
            return Err(RegistryError::Invalid(format!(
                "`{host}` is not a host name (a wildcard is covered by its parent's verification)"
            )));
        };
        self.change(|s, b| {
            Self::require_tenant(s, tenant)?;
            let t = s.tenants.get_mut(tenant).expect("checked");
            if let Some(v) = t.verifications.get(&host) {
                return Ok((v.clone(), false));
            }
            let v = HostVerification {
                token: token.clone(),
                created_at: now(),
                verified_at: None,
            };
            t.verifications.insert(host.clone(), v.clone());
            b.push(Change::PutTenant(t.clone()));
            Ok((v, true))
        })
    }

    /// A tenant's verifications, by host.
    pub fn verifications(&self, tenant: &str) -> Result<Vec<(String, HostVerification)>> {
        self.read(|s| {
            let t = s.tenants.get(tenant).ok_or_else(|| {
                RegistryError::NotFound(format!("tenant `{tenant}` does not exist"))
            })?;
            Ok(t.verifications
                .iter()
                .map(|(h, v)| (h.clone(), v.clone()))
                .collect())
        })
    }

    /// Marks `host` verified for the tenant, if its token is still `token`.
    pub fn mark_verified(&self, tenant: &str, host: &str, token: &str) -> Result<HostVerification> {
        self.change(|s, b| {
            Self::require_tenant(s, tenant)?;
            let t = s.tenants.get_mut(tenant).expect("checked");
            let Some(v) = t.verifications.get_mut(host).filter(|v| v.token == token) else {
                return Err(RegistryError::NotFound(format!(
                    "no verification of `{host}` for tenant `{tenant}`"
                )));
            };
            if v.verified_at.is_none() {
                v.verified_at = Some(now());
            }
            let v = v.clone();
            b.push(Change::PutTenant(t.clone()));
            Ok(v)
        })
    }

    /// Forgets a verification (routes it allowed stay).
    pub fn delete_verification(&self, tenant: &str, host: &str) -> Result<()> {
        self.change(|s, b| {
            Self::require_tenant(s, tenant)?;
            let t = s.tenants.get_mut(tenant).expect("checked");
            if t.verifications.remove(host).is_none() {
                return Err(RegistryError::NotFound(format!(
                    "no verification of `{host}` for tenant `{tenant}`"
                )));
            }
            b.push(Change::PutTenant(t.clone()));
            Ok(())
        })
    }

    // ---- certificates ----

    /// Stores a certificate for one of the tenant's hosts (the caller
    /// checked the certificate itself); returns whether it is new.
    pub fn put_certificate(&self, record: CertificateRecord) -> Result<bool> {
        let host = HostPattern::parse(&record.host).map_err(RegistryError::Invalid)?;
        self.change(|s, b| {
            self.may_hold(s, &record.tenant, &host)?;
            let created = !s.certificates.contains_key(&record.host);
            b.push(Change::PutCertificate(record.clone()));
            s.certificates.insert(record.host.clone(), record.clone());
            Ok(created)
        })
    }

    /// A tenant's certificates (its own and ACME's), by host.
    pub fn list_certificates(&self, tenant: &str) -> Result<Vec<CertificateRecord>> {
        self.read(|s| {
            Self::require_tenant(s, tenant)?;
            Ok(s.certificates
                .values()
                .filter(|c| c.tenant == tenant)
                .cloned()
                .collect())
        })
    }

    /// The routed exact hosts ACME should hold a certificate for: no
    /// tenant certificate covers them. With the route's tenant and the
    /// current ACME certificate's validity, if there is one.
    pub fn acme_hosts(&self) -> Vec<AcmeHost> {
        self.read(|s| {
            let mut out: Vec<AcmeHost> = Vec::new();
            let mut seen = HashSet::new();
            for r in s.routes.values() {
                let Ok(HostPattern::Exact(host)) = HostPattern::parse(&r.host) else {
                    continue;
                };
                if !seen.insert(host.clone()) {
                    continue; // the same host with another path
                }
                let tenant_cert = |key: &str| {
                    s.certificates
                        .get(key)
                        .is_some_and(|c| c.source == "tenant")
                };
                let wildcard = host.split_once('.').map(|(_, p)| format!("*.{p}"));
                if tenant_cert(&host) || wildcard.as_deref().is_some_and(tenant_cert) {
                    continue;
                }
                let current = s
                    .certificates
                    .get(&host)
                    .filter(|c| c.source == "acme")
                    .map(|c| (c.not_before, c.not_after));
                out.push(AcmeHost {
                    host,
                    tenant: r.tenant.clone(),
                    current,
                });
            }
            out
        })
    }

    /// Stores a certificate ACME issued for `record.host`, for the tenant
    /// that routes the host now; refused when the host is no longer routed
    /// or a tenant's own certificate took it meanwhile.
    pub fn put_acme_certificate(&self, mut record: CertificateRecord) -> Result<()> {
        self.change(|s, b| {
            let with_path = format!("{}/", record.host);
            let routed = s
                .routes
                .get(&record.host)
                .or_else(|| {
                    s.routes
                        .range(with_path.clone()..)
                        .next()
                        .filter(|(k, _)| k.starts_with(&with_path))
                        .map(|(_, r)| r)
                })
                .map(|r| r.tenant.clone());
            let Some(tenant) = routed else {
                return Err(RegistryError::NotFound(format!(
                    "host `{}` is no longer routed",
                    record.host
                )));
            };
            if s.certificates
                .get(&record.host)
                .is_some_and(|c| c.source == "tenant")
            {
                return Err(RegistryError::HostTaken(format!(
                    "host `{}` has a tenant's certificate",
                    record.host
                )));
            }
            record.tenant = tenant;
            record.source = "acme".into();
            b.push(Change::PutCertificate(record.clone()));
            s.certificates.insert(record.host.clone(), record.clone());
            Ok(())
        })
    }

    /// Every certificate, for the TLS listener.
    pub fn all_certificates(&self) -> Vec<CertificateRecord> {
        self.read(|s| s.certificates.values().cloned().collect())
    }

    /// Removes a tenant's certificate for `host` (404 when it has none).
    pub fn delete_certificate(&self, tenant: &str, host: &str) -> Result<()> {
        self.change(|s, b| {
            Self::require_tenant(s, tenant)?;
            if s.certificates.get(host).is_none_or(|c| c.tenant != tenant) {
                return Err(RegistryError::NotFound(format!(
                    "tenant `{tenant}` has no certificate for `{host}`"
                )));
            }
            s.certificates.remove(host);
            b.push(Change::DeleteCertificate(host.to_string()));
            Ok(())
        })
    }

    /// A tenant's routes, by pattern.
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

    /// Unbinds a route pattern (absent, or another tenant's, is a no-op);
    /// `host` alone removes only the host-only route.
    pub fn delete_route(&self, tenant: &str, pattern: &str) -> Result<()> {
        let host = RoutePattern::parse(pattern)
            .map(|p| p.as_string())
            .unwrap_or_else(|_| pattern.to_string());
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

/// A routed host ACME looks after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeHost {
    /// The exact host.
    pub host: String,
    /// The tenant whose route it is.
    pub tenant: String,
    /// `(not_before, not_after)` of its ACME certificate, if it has one.
    pub current: Option<(i64, i64)>,
}

/// What an upload or a settings change created.
#[derive(Debug, Clone, PartialEq)]
pub struct NewVersion {
    /// Its number.
    pub version: u32,
    /// Whether it was deployed (else staged).
    pub active: bool,
    /// Digests of the versions retention dropped to make room.
    pub dropped: Vec<String>,
}

/// Versions a deployment may split traffic over.
pub const MAX_DEPLOYED: usize = 4;

/// The shape rules of a deployment (which versions exist is checked
/// against the function).
fn check_deployment(versions: &[Split], sticky: Option<&str>) -> Result<()> {
    let bad = |m: String| Err(RegistryError::InvalidDeployment(m));
    if versions.is_empty() || versions.len() > MAX_DEPLOYED {
        return bad(format!(
            "a deployment names 1 to {MAX_DEPLOYED} versions, not {}",
            versions.len()
        ));
    }
    let mut seen = HashSet::new();
    for v in versions {
        if !seen.insert(v.version) {
            return bad(format!("version {} is named twice", v.version));
        }
        if !(1..=100).contains(&v.percent) {
            return bad(format!(
                "version {}: percent must be 1 to 100, not {}",
                v.version, v.percent
            ));
        }
    }
    let sum: u32 = versions.iter().map(|v| u32::from(v.percent)).sum();
    if sum != 100 {
        return bad(format!("the percents add up to {sum}, not 100"));
    }
    if let Some(key) = sticky {
        crate::routing::StickyKey::parse(key).map_err(RegistryError::InvalidDeployment)?;
    }
    Ok(())
}

/// KV bindings, limits and the outbound policy are wasm settings.
fn container_settings(settings: &Settings) -> Result<()> {
    if !settings.kv.is_empty()
        || settings.limits != crate::limits::LimitOverrides::default()
        || !settings.outbound.allow.is_empty()
    {
        return Err(RegistryError::InvalidSettings(
            "kv, limits and outbound settings do not apply to a container version".into(),
        ));
    }
    Ok(())
}

/// A place for a new function held by an upload in progress
/// ([`Registry::reserve_function`]); released when dropped.
pub struct FunctionHold {
    registry: Arc<Registry>,
    tenant: String,
    name: String,
}

impl Drop for FunctionHold {
    fn drop(&mut self) {
        let mut held = self
            .registry
            .holds
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(mine) = held.get_mut(&self.tenant) {
            if let Some(n) = mine.get_mut(&self.name) {
                *n -= 1;
                if *n == 0 {
                    mine.remove(&self.name);
                }
            }
            if mine.is_empty() {
                held.remove(&self.tenant);
            }
        }
    }
}
