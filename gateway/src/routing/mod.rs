//! The data plane's routing snapshot: host → function target, exact hosts
//! first, then the longest matching wildcard; each target carries its
//! deployment's split (`split.rs`).
use std::sync::Arc;

use http::HeaderMap;
use imbl::HashMap;

use crate::names::{HostPattern, PathPattern, RoutePattern};
use std::sync::atomic::{AtomicU32, Ordering};

mod internal;
mod split;

pub use internal::{CONTAINERS_SUFFIX, ContainerDestinations, ContainerDirectory};
pub use split::{Split, StickyKey, VERSION_OVERRIDE, sticky_bucket};

/// Where a request goes: a function and its deployed versions.
#[derive(Debug)]
pub struct Target {
    /// Owning tenant.
    pub tenant: String,
    /// Function name.
    pub function: String,
    /// The deployed versions, ascending (1–4).
    pub versions: Vec<Deployed>,
    /// How requests are shared among them.
    pub split: Split,
    /// The tenant's concurrency gate (shared across snapshots).
    pub gate: Arc<TenantGate>,
    /// The function's label in metrics: its name, or `_other` past the
    /// tenant's first 50 functions (`telemetry::metrics`).
    pub metric_function: Arc<str>,
    /// The tenant's usage counters (shared across snapshots).
    pub usage: Arc<crate::telemetry::TenantUsage>,
}

/// One deployed version, ready to run.
#[derive(Debug)]
pub struct Deployed {
    /// Its number.
    pub version: u32,
    /// What runs it.
    pub run: Runnable,
}

/// What a deployed version runs on.
#[derive(Debug)]
pub enum Runnable {
    /// The wasm runtime, with this invocation.
    Wasm(perch_runtime::Invocation),
    /// The container backend, through this version's pool.
    Container(Arc<perch_containers::Pool>),
}

impl Target {
    /// The index (into `versions`) of the deployed version that serves a
    /// request with `headers`.
    pub fn pick(&self, headers: &HeaderMap) -> usize {
        let i = self.split.pick(&self.tenant, &self.function, headers);
        i.min(self.versions.len() - 1)
    }
}

/// Counts a tenant's in-flight requests on this node, and holds its
/// request-rate bucket when it has a `requests_per_second` quota.
#[derive(Debug, Default)]
pub struct TenantGate {
    in_flight: AtomicU32,
    /// Requests per second allowed; 0: no limit (the fast path reads only
    /// this).
    rate: AtomicU32,
    /// Tokens left and when they were last refilled (used only with a rate).
    bucket: std::sync::Mutex<Option<(f64, std::time::Instant)>>,
}

impl TenantGate {
    /// Sets the tenant's requests-per-second limit (`None`: none). The
    /// bucket holds one second's worth.
    pub fn set_rate(&self, per_second: Option<u64>) {
        let rate = per_second.map_or(0, |r| u32::try_from(r).unwrap_or(u32::MAX));
        self.rate.store(rate, Ordering::Relaxed);
    }

    /// Takes one request from the bucket; false when the tenant is over its
    /// rate on this node.
    pub fn admit(&self) -> bool {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return true;
        }
        let rate = f64::from(rate);
        let now = std::time::Instant::now();
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = bucket.get_or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes a slot unless `cap` are taken; the permit frees it on drop.
    pub fn try_enter(self: &Arc<Self>, cap: u32) -> Option<GatePermit> {
        let mut cur = self.in_flight.load(Ordering::Relaxed);
        loop {
            if cur >= cap {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(GatePermit(self.clone())),
                Err(now) => cur = now,
            }
        }
    }
}

/// One in-flight request of a tenant.
#[derive(Debug)]
pub struct GatePermit(Arc<TenantGate>);

impl Drop for GatePermit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The routes of one host pattern: the host-only route, exact paths and
/// path prefixes.
#[derive(Debug, Default, Clone)]
pub struct HostRoutes {
    /// The host-only route (`host`, the same as `host/*`).
    pub all: Option<Arc<Target>>,
    /// Exact paths.
    pub paths: std::collections::HashMap<String, Arc<Target>>,
    /// Prefixes (each ending in `/`), longest first.
    pub prefixes: Vec<(String, Arc<Target>)>,
}

impl HostRoutes {
    /// The most specific route for `path`: the exact path, then the
    /// longest prefix, then the host-only route.
    pub fn find(&self, path: &str) -> Option<&Arc<Target>> {
        if let Some(t) = self.paths.get(path) {
            return Some(t);
        }
        self.prefixes
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
            .map(|(_, t)| t)
            .or(self.all.as_ref())
    }

    fn is_empty(&self) -> bool {
        self.all.is_none() && self.paths.is_empty() && self.prefixes.is_empty()
    }

    fn set(&mut self, path: Option<&PathPattern>, target: Option<Arc<Target>>) {
        match path {
            None => self.all = target,
            Some(PathPattern::Exact(p)) => match target {
                Some(t) => {
                    self.paths.insert(p.clone(), t);
                }
                None => {
                    self.paths.remove(p);
                }
            },
            Some(PathPattern::Prefix(p)) => {
                self.prefixes.retain(|(q, _)| q != p);
                if let Some(t) = target {
                    self.prefixes.push((p.clone(), t));
                    self.prefixes
                        .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
                }
            }
        }
    }

    /// Every route here as `(path pattern or None, target)`.
    fn entries(&self) -> impl Iterator<Item = (Option<String>, &Arc<Target>)> {
        self.all
            .iter()
            .map(|t| (None, t))
            .chain(self.paths.iter().map(|(p, t)| (Some(p.clone()), t)))
            .chain(
                self.prefixes
                    .iter()
                    .map(|(p, t)| (Some(format!("{p}*")), t)),
            )
    }
}

/// Immutable routing snapshot. A registry change publishes a new one made
/// from a cheap copy of the last (persistent maps share the untouched part).
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    /// Exact hosts.
    pub exact: HashMap<String, Arc<HostRoutes>>,
    /// Wildcards by suffix (`*.a.test` is stored as `a.test`).
    pub wildcard: HashMap<String, Arc<HostRoutes>>,
}

impl RouteTable {
    /// Points the route pattern (`a.test`, `*.a.test`, `a.test/api/*`, …)
    /// at `target`, or removes it; a pattern that does not parse is ignored.
    pub fn set(&mut self, pattern: &str, target: Option<Arc<Target>>) {
        let Ok(RoutePattern { host, path }) = RoutePattern::parse(pattern) else {
            return;
        };
        let (map, key) = match host {
            HostPattern::Exact(h) => (&mut self.exact, h),
            HostPattern::Wildcard(s) => (&mut self.wildcard, s),
        };
        let mut routes = map
            .get(&key)
            .map(|r| HostRoutes::clone(r))
            .unwrap_or_default();
        routes.set(path.as_ref(), target);
        if routes.is_empty() {
            map.remove(&key);
        } else {
            map.insert(key, Arc::new(routes));
        }
    }

    /// Finds the target for a normalised host and a raw request path: the
    /// most specific host first (exact, then the longest wildcard), then
    /// the most specific path on it; a host with no route for the path
    /// gives way to the next wildcard.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<Target>> {
        if let Some(t) = self.exact.get(host).and_then(|r| r.find(path)) {
            return Some(t);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        // Suffixes after each dot, longest first.
        host.match_indices('.')
            .find_map(|(i, _)| self.wildcard.get(&host[i + 1..])?.find(path))
    }

    /// The path part of the route [`RouteTable::lookup`] finds, as
    /// OpenTelemetry's `http.route`: the exact path, a prefix as `/p/*`,
    /// or `/*` for a host-only route.
    pub fn http_route(&self, host: &str, path: &str) -> Option<String> {
        let on = |r: &HostRoutes| -> Option<String> {
            if r.paths.contains_key(path) {
                return Some(path.to_string());
            }
            if let Some((p, _)) = r
                .prefixes
                .iter()
                .find(|(p, _)| path.starts_with(p.as_str()))
            {
                return Some(format!("{p}*"));
            }
            r.all.as_ref().map(|_| "/*".to_string())
        };
        if let Some(route) = self.exact.get(host).and_then(|r| on(r)) {
            return Some(route);
        }
        host.match_indices('.')
            .find_map(|(i, _)| on(self.wildcard.get(&host[i + 1..])?))
    }

    /// Every route as `(pattern, target)`.
    pub fn entries(&self) -> Vec<(String, Arc<Target>)> {
        let exact = self.exact.iter().map(|(h, r)| (h.clone(), r));
        let wild = self.wildcard.iter().map(|(s, r)| (format!("*.{s}"), r));
        exact
            .chain(wild)
            .flat_map(|(host, r)| {
                r.entries()
                    .map(|(path, t)| (format!("{host}{}", path.unwrap_or_default()), t.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str) -> Arc<Target> {
        Arc::new(Target {
            tenant: "t".into(),
            function: name.into(),
            versions: vec![Deployed {
                version: 1,
                run: Runnable::Wasm(perch_runtime::Invocation::new(
                    perch_runtime::Digest([0; 32]),
                    perch_runtime::Limits::default(),
                    name,
                )),
            }],
            split: Split::new(&[(1, 100)], None),
            gate: Arc::default(),
            metric_function: name.into(),
            usage: Arc::default(),
        })
    }

    #[test]
    fn exact_then_longest_wildcard() {
        let mut t = RouteTable::default();
        t.set("a.w.test", Some(target("exact")));
        t.set("*.w.test", Some(target("short")));
        t.set("*.b.w.test", Some(target("long")));
        let f = |t: &RouteTable, host| t.lookup(host, "/").map(|t| t.function.clone());
        assert_eq!(f(&t, "a.w.test").unwrap(), "exact");
        assert_eq!(f(&t, "x.w.test").unwrap(), "short");
        assert_eq!(f(&t, "x.b.w.test").unwrap(), "long");
        assert_eq!(f(&t, "b.w.test").unwrap(), "short");
        assert!(f(&t, "w.test").is_none());
        t.set("*.b.w.test", None);
        assert_eq!(f(&t, "x.b.w.test").unwrap(), "short");
        assert!(t.wildcard.get("b.w.test").is_none());
    }

    #[test]
    fn the_most_specific_path_wins() {
        let mut t = RouteTable::default();
        t.set("a.test/api/*", Some(target("f1")));
        t.set("a.test", Some(target("f2")));
        t.set("a.test/api/health", Some(target("f3")));
        t.set("a.test/api/v2/*", Some(target("f4")));
        t.set("*.a.test/static/*", Some(target("f5")));
        t.set("s.a.test/api/*", Some(target("f1")));
        let at = |t: &RouteTable, path| t.lookup("a.test", path).map(|t| t.function.clone());
        let f = |path| at(&t, path);
        assert_eq!(f("/api/users").unwrap(), "f1");
        assert_eq!(f("/api/").unwrap(), "f1");
        assert_eq!(f("/api").unwrap(), "f2", "/api/* does not match /api");
        assert_eq!(f("/apix").unwrap(), "f2");
        assert_eq!(f("/api/health").unwrap(), "f3");
        assert_eq!(
            f("/api/health/x").unwrap(),
            "f1",
            "an exact path matches only itself"
        );
        assert_eq!(f("/api/v2/x").unwrap(), "f4", "the longest prefix");
        assert_eq!(f("/").unwrap(), "f2");
        assert_eq!(f("/API/users").unwrap(), "f2", "case-sensitive");
        // No host-only route: a path the host does not route falls to the wildcard.
        let s = |path| t.lookup("s.a.test", path).map(|t| t.function.clone());
        assert_eq!(s("/static/x").unwrap(), "f5");
        assert_eq!(s("/api/x").unwrap(), "f1");
        assert!(s("/other").is_none());
        t.set("a.test", None);
        assert!(at(&t, "/other").is_none());
        let mut patterns: Vec<String> = t.entries().into_iter().map(|(p, _)| p).collect();
        patterns.sort();
        assert_eq!(
            patterns,
            [
                "*.a.test/static/*",
                "a.test/api/*",
                "a.test/api/health",
                "a.test/api/v2/*",
                "s.a.test/api/*"
            ]
        );
    }

    #[test]
    fn gate_caps_concurrency() {
        let g = Arc::new(TenantGate::default());
        let a = g.try_enter(2).unwrap();
        let _b = g.try_enter(2).unwrap();
        assert!(g.try_enter(2).is_none());
        drop(a);
        assert!(g.try_enter(2).is_some());
    }
}
