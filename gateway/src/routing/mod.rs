//! The data plane's routing snapshot: host → function target, exact hosts
//! first, then the longest matching wildcard.
use std::sync::Arc;

use imbl::HashMap;

use crate::names::HostPattern;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where a request goes.
#[derive(Debug)]
pub struct Target {
    /// Owning tenant.
    pub tenant: String,
    /// Function name.
    pub function: String,
    /// Active version at snapshot time.
    pub version: u32,
    /// What the runtime runs.
    pub invocation: perch_runtime::Invocation,
    /// The tenant's concurrency gate (shared across snapshots).
    pub gate: Arc<TenantGate>,
}

/// Counts a tenant's in-flight requests on this node.
#[derive(Debug, Default)]
pub struct TenantGate {
    in_flight: AtomicU32,
}

impl TenantGate {
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

/// Immutable routing snapshot. A registry change publishes a new one made
/// from a cheap copy of the last (persistent maps share the untouched part).
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    /// Exact hosts.
    pub exact: HashMap<String, Arc<Target>>,
    /// Wildcards by suffix (`*.a.test` is stored as `a.test`).
    pub wildcard: HashMap<String, Arc<Target>>,
}

impl RouteTable {
    /// Points the pattern `host` (`a.test` or `*.a.test`) at `target`, or
    /// removes it; a pattern that does not parse is ignored.
    pub fn set(&mut self, host: &str, target: Option<Arc<Target>>) {
        let (map, key) = match HostPattern::parse(host) {
            Ok(HostPattern::Exact(h)) => (&mut self.exact, h),
            Ok(HostPattern::Wildcard(s)) => (&mut self.wildcard, s),
            Err(_) => return,
        };
        match target {
            Some(t) => {
                map.insert(key, t);
            }
            None => {
                map.remove(&key);
            }
        }
    }

    /// Finds the target for a normalised host.
    pub fn lookup(&self, host: &str) -> Option<&Arc<Target>> {
        if let Some(t) = self.exact.get(host) {
            return Some(t);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        // Suffixes after each dot, longest first.
        host.match_indices('.')
            .find_map(|(i, _)| self.wildcard.get(&host[i + 1..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str) -> Arc<Target> {
        Arc::new(Target {
            tenant: "t".into(),
            function: name.into(),
            version: 1,
            invocation: perch_runtime::Invocation::new(
                perch_runtime::Digest([0; 32]),
                perch_runtime::Limits::default(),
                name,
            ),
            gate: Arc::default(),
        })
    }

    #[test]
    fn exact_then_longest_wildcard() {
        let mut t = RouteTable::default();
        t.exact.insert("a.w.test".into(), target("exact"));
        t.wildcard.insert("w.test".into(), target("short"));
        t.wildcard.insert("b.w.test".into(), target("long"));
        assert_eq!(t.lookup("a.w.test").unwrap().function, "exact");
        assert_eq!(t.lookup("x.w.test").unwrap().function, "short");
        assert_eq!(t.lookup("x.b.w.test").unwrap().function, "long");
        assert_eq!(t.lookup("b.w.test").unwrap().function, "short");
        assert!(t.lookup("w.test").is_none());
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
