//! The certificates the registry holds (tenants' uploads and ACME's),
//! kept in the resolver's `Tenant` and `Acme` layers: rebuilt whenever a
//! certificate record changes. Each is served only for the host it is
//! stored under.
use std::sync::Arc;

use tokio::sync::watch;

use super::cert::Certificate;
use super::sni::{Layer, Resolver, Source};
use crate::registry::{Registry, certificate_context};

/// Builds both layers from the registry's records now.
pub fn load(registry: &Registry, resolver: &Resolver) {
    let records = registry.all_certificates();
    let mut parsed = Vec::with_capacity(records.len());
    for r in &records {
        let Some(key) = registry
            .secrets()
            .open(&certificate_context(&r.host), &r.key_sealed)
        else {
            tracing::warn!(host = %r.host, "a stored certificate's key does not open (another PERCH_SECRET_KEY?); not served");
            continue;
        };
        match Certificate::from_pem(r.cert_pem.as_bytes(), key.as_bytes()) {
            Ok(c) => parsed.push((r.host.as_str(), r.source.as_str(), c)),
            Err(e) => {
                tracing::warn!(host = %r.host, error = %e, "a stored certificate does not load; not served")
            }
        }
    }
    let layer = |source: &str| {
        Layer::of_hosts(
            parsed
                .iter()
                .filter(|(_, s, _)| *s == source)
                .map(|(h, _, c)| (*h, c)),
        )
    };
    resolver.set(Source::Tenant, layer("tenant"));
    resolver.set(Source::Acme, layer("acme"));
}

/// Keeps the layers current until `stop`: `changes` (the registry's
/// [`Registry::certificate_changes`]) was taken before the first [`load`],
/// so no change in between is missed.
pub async fn follow(
    registry: Arc<Registry>,
    resolver: Arc<Resolver>,
    mut changes: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        let (registry, resolver) = (registry.clone(), resolver.clone());
        let _ = tokio::task::spawn_blocking(move || load(&registry, &resolver)).await;
    }
}
