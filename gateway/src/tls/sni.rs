//! Certificate selection by SNI. Each source of certificates (tenants'
//! uploads, ACME, the operator's files) is a [`Layer`] swapped whole when
//! it changes, so a handshake reads a consistent set without a lock.
//! Order: the exact host in each source (tenant, ACME, file), then the
//! wildcard of the host's parent in each source, then the default; with
//! none, rustls refuses the handshake with an alert.
use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::cert::Certificate;

/// Where a certificate came from, in the order SNI prefers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Uploaded by a tenant over the admin API.
    Tenant = 0,
    /// Issued by the ACME CA.
    Acme = 1,
    /// The operator's `[[tls.certificates]]` files.
    File = 2,
}

/// The certificates of one source, by the names they cover.
#[derive(Default)]
pub struct Layer {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl Layer {
    /// A layer of `certs`; where two cover the same name, the first
    /// listed that is still valid wins.
    pub fn new<'a>(certs: impl IntoIterator<Item = &'a Certificate>) -> Layer {
        let now = super::cert::unix_now();
        let mut certs: Vec<&Certificate> = certs.into_iter().collect();
        // A stable sort keeps the given order among valid ones.
        certs.sort_by_key(|c| c.expired_at(now));
        let mut layer = Layer::default();
        for c in certs {
            for name in &c.names {
                layer.insert(name, &c.key);
            }
        }
        layer
    }

    /// A layer that serves each certificate only for the host it was
    /// given for, whatever other names it covers (a tenant's certificate
    /// may name hosts that are not the tenant's).
    pub fn of_hosts<'a>(certs: impl IntoIterator<Item = (&'a str, &'a Certificate)>) -> Layer {
        let mut layer = Layer::default();
        for (host, c) in certs {
            layer.insert(host, &c.key);
        }
        layer
    }

    /// Serves `key` for `name` (`host` or `*.parent`) unless it has one.
    fn insert(&mut self, name: &str, key: &Arc<CertifiedKey>) {
        let map = match name.strip_prefix("*.") {
            Some(parent) => self.wildcard.entry(parent.to_string()),
            None => self.exact.entry(name.to_string()),
        };
        map.or_insert_with(|| key.clone());
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }
}

/// What rustls asks for a certificate.
pub struct Resolver {
    layers: [ArcSwap<Layer>; 3],
    default: ArcSwap<Option<Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver {
            layers: Default::default(),
            default: ArcSwap::from_pointee(None),
        }
    }
}

impl Resolver {
    /// Replaces the certificates of `source`.
    pub fn set(&self, source: Source, layer: Layer) {
        self.layers[source as usize].store(Arc::new(layer));
    }

    /// Replaces the certificate for handshakes no other matches.
    pub fn set_default(&self, key: Option<Arc<CertifiedKey>>) {
        self.default.store(Arc::new(key));
    }

    /// Whether the operator's files hold a certificate for `host`
    /// (exactly, or its parent's wildcard).
    pub fn has_file_certificate(&self, host: &str) -> bool {
        let files = self.layers[Source::File as usize].load();
        files.exact.contains_key(host)
            || host
                .split_once('.')
                .is_some_and(|(_, parent)| files.wildcard.contains_key(parent))
    }

    /// The certificate for `host` (lowercase, no trailing dot), or for a
    /// handshake without SNI (`None`).
    pub fn pick(&self, host: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(host) = host {
            let layers = self.layers.each_ref().map(|l| l.load());
            if let Some(k) = layers.iter().find_map(|l| l.exact.get(host)) {
                return Some(k.clone());
            }
            if let Some((_, parent)) = host.split_once('.')
                && let Some(k) = layers.iter().find_map(|l| l.wildcard.get(parent))
            {
                return Some(k.clone());
            }
        }
        self.default.load().as_ref().clone()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name() {
            Some(name) => {
                let host = name.trim_end_matches('.').to_ascii_lowercase();
                self.pick(Some(&host))
            }
            None => self.pick(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::cert::tests::self_signed;

    fn cert(names: &[&str]) -> Certificate {
        let (c, k) = self_signed(names);
        Certificate::from_pem(c.as_bytes(), k.as_bytes()).unwrap()
    }

    #[test]
    fn exact_then_wildcard_then_default_and_sources_in_order() {
        let r = Resolver::default();
        assert!(r.pick(Some("a.example.com")).is_none());
        assert!(r.pick(None).is_none());
        let (exact, wild, tenant, default) = (
            cert(&["a.example.com"]),
            cert(&["*.example.com"]),
            cert(&["a.example.com"]),
            cert(&["default.test"]),
        );
        r.set(Source::File, Layer::new([&exact, &wild]));
        let same = |k: Option<Arc<CertifiedKey>>, c: &Certificate| {
            k.is_some_and(|k| Arc::ptr_eq(&k, &c.key))
        };
        assert!(same(r.pick(Some("a.example.com")), &exact));
        assert!(same(r.pick(Some("b.example.com")), &wild));
        assert!(r.pick(Some("x.b.example.com")).is_none());
        assert!(r.pick(Some("example.com")).is_none());
        r.set_default(Some(default.key.clone()));
        assert!(same(r.pick(Some("example.com")), &default));
        assert!(same(r.pick(None), &default));
        // A tenant's exact certificate wins over the file's exact one.
        r.set(Source::Tenant, Layer::new([&tenant]));
        assert!(same(r.pick(Some("a.example.com")), &tenant));
        assert!(same(r.pick(Some("b.example.com")), &wild));
        r.set(Source::Tenant, Layer::default());
        assert!(same(r.pick(Some("a.example.com")), &exact));
    }
}
