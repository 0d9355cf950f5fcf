//! The registry's in-memory state: persistent maps (`imbl`) of the
//! records, so a copy made for a change shares everything it does not
//! touch, and what a batch of changes touched.
use std::collections::HashSet;

use imbl::OrdMap;

use super::model::{CertificateRecord, Function, ImageRecord, Route, Tenant, TokenRecord, fn_key};
use super::store::{Change, Kind, Records};
use crate::names::HostPattern;

/// Every record, keyed as the store keys them.
#[derive(Debug, Clone, Default)]
pub(super) struct State {
    pub(super) tenants: OrdMap<String, Tenant>,
    /// By token hash.
    pub(super) tokens: imbl::HashMap<String, TokenRecord>,
    /// By `tenant/name`.
    pub(super) functions: OrdMap<String, Function>,
    /// By route pattern text (`host` or `host/path`).
    pub(super) routes: OrdMap<String, Route>,
    /// By `tenant/id`.
    pub(super) images: OrdMap<String, ImageRecord>,
    /// By host.
    pub(super) certificates: OrdMap<String, CertificateRecord>,
}

impl State {
    /// The state holding `records`.
    pub(super) fn from_records(records: Records) -> State {
        let mut s = State::default();
        for t in records.tenants {
            s.tenants.insert(t.name.clone(), t);
        }
        for t in records.tokens {
            s.tokens.insert(t.hash.clone(), t);
        }
        for mut f in records.functions {
            f.upgrade();
            s.functions.insert(fn_key(&f.tenant, &f.name), f);
        }
        for r in records.routes {
            s.routes.insert(r.pattern(), r);
        }
        for i in records.images {
            s.images.insert(fn_key(&i.tenant, &i.id), i);
        }
        for c in records.certificates {
            s.certificates.insert(c.host.clone(), c);
        }
        s
    }
}

/// The values of a map keyed `tenant/…` (functions, images) that belong to
/// `tenant`, in key order: a range, not a scan of every tenant's.
pub(super) fn of_tenant<'a, V: Clone>(
    map: &'a OrdMap<String, V>,
    tenant: &str,
) -> impl Iterator<Item = &'a V> + 'a {
    let prefix = format!("{tenant}/");
    map.range(prefix.clone()..)
        .take_while(move |(k, _)| k.starts_with(&prefix))
        .map(|(_, v)| v)
}

/// Removes the entries `keep` rejects (`OrdMap` has no `retain`).
pub(super) fn retain<V: Clone>(
    map: &mut OrdMap<String, V>,
    mut keep: impl FnMut(&String, &V) -> bool,
) {
    let gone: Vec<String> = map
        .iter()
        .filter(|(k, v)| !keep(k, v))
        .map(|(k, _)| k.clone())
        .collect();
    for k in gone {
        map.remove(&k);
    }
}

/// Routes whose host is some host `pattern` also matches (one per host
/// pattern at least: every route on a host belongs to the same tenant).
/// For an exact host these can only be on the host itself and on
/// wildcards over its suffixes, so it costs two lookups per label; a
/// wildcard is compared with every route.
pub(super) fn overlapping<'a>(
    routes: &'a OrdMap<String, Route>,
    pattern: &'a HostPattern,
) -> Box<dyn Iterator<Item = &'a Route> + 'a> {
    match pattern {
        HostPattern::Exact(h) => Box::new(
            std::iter::once(h.clone())
                .chain(h.match_indices('.').map(|(i, _)| format!("*{}", &h[i..])))
                .flat_map(move |k| {
                    let with_path = format!("{k}/");
                    let first_path = routes
                        .range(with_path.clone()..)
                        .next()
                        .filter(|(key, _)| key.starts_with(&with_path))
                        .map(|(_, r)| r);
                    routes.get(&k).into_iter().chain(first_path)
                }),
        ),
        HostPattern::Wildcard(_) => Box::new(
            routes
                .values()
                .filter(|r| HostPattern::parse(&r.host).is_ok_and(|p| p.overlaps(pattern))),
        ),
    }
}

/// What a change wrote, and so what the routing snapshot must redo.
#[derive(Default)]
pub(super) struct Touched {
    pub(super) functions: HashSet<String>,
    pub(super) hosts: HashSet<String>,
    /// Tenant records written (their quotas feed the tenant gates).
    pub(super) tenants: HashSet<String>,
    /// Whether a certificate was written.
    pub(super) certificates: bool,
}

impl Touched {
    pub(super) fn of(batch: &[Change]) -> Touched {
        let mut t = Touched::default();
        for change in batch {
            match change.key() {
                (Kind::Function, key) => {
                    t.functions.insert(key);
                }
                (Kind::Route, key) => {
                    t.hosts.insert(key);
                }
                (Kind::Tenant, key) => {
                    t.tenants.insert(key);
                }
                (Kind::Certificate, _) => t.certificates = true,
                _ => {}
            }
        }
        t
    }

    pub(super) fn everything(state: &State) -> Touched {
        Touched {
            functions: state.functions.keys().cloned().collect(),
            hosts: state.routes.keys().cloned().collect(),
            tenants: state.tenants.keys().cloned().collect(),
            certificates: true,
        }
    }
}
