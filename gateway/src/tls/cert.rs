//! One certificate: a PEM chain and its key parsed into what rustls
//! serves, with what Perch checks and reports about it (the DNS names it
//! covers, its validity, its issuer).
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A parsed certificate chain with a key that matches it.
#[derive(Clone)]
pub struct Certificate {
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// The DNS names of its subjectAltName, lowercase; wildcards as
    /// `*.example.com`.
    pub names: Vec<String>,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// The issuer's distinguished name.
    pub issuer: String,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The crypto provider Perch's TLS uses (ring: modern suites only).
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Certificate {
    /// Parses `cert_pem` (the end-entity certificate first, then its
    /// intermediates) and `key_pem` (PKCS#8, PKCS#1 or SEC1), and checks
    /// that the key is the certificate's. The error says what is wrong.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Certificate, String> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the certificate PEM does not parse: {}", pem_error(&e)))?;
        let Some(leaf) = chain.first() else {
            return Err("the certificate PEM holds no CERTIFICATE block".into());
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| format!("the certificate does not parse: {e}"))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(n) = name {
                    names.push(n.trim_end_matches('.').to_ascii_lowercase());
                }
            }
        }
        if names.is_empty() {
            return Err("the certificate names no DNS host (no subjectAltName DNS entry)".into());
        }
        let validity = parsed.validity();
        let (not_before, not_after) = (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        );
        let issuer = parsed.issuer().to_string();
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| format!("the key PEM holds no usable private key: {}", pem_error(&e)))?;
        let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                "the private key does not belong to the certificate".to_string()
            }
            e => format!("the private key is not usable: {e}"),
        })?;
        Ok(Certificate {
            key: Arc::new(certified),
            names,
            not_before,
            not_after,
            issuer,
        })
    }

    /// Whether one of its names covers `host` (exactly, or as a wildcard
    /// of one label).
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|n| name_covers(n, host))
    }

    /// Whether it is outside its validity at Unix time `now`.
    pub fn expired_at(&self, now: i64) -> bool {
        now < self.not_before || now >= self.not_after
    }
}

/// A PEM error in words (rustls's names the marker as bytes).
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => format!(
            "no `-----END {}-----` line",
            String::from_utf8_lossy(end_marker).trim()
        ),
        Error::IllegalSectionStart { line } => format!(
            "a bad BEGIN line `{}`",
            String::from_utf8_lossy(line).trim()
        ),
        Error::NoItemsFound => "no PEM block of that kind".into(),
        e => e.to_string(),
    }
}

/// Whether certificate name `name` (`shop.example.com` or
/// `*.example.com`) covers `host`: a wildcard stands for exactly one label.
pub fn name_covers(name: &str, host: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => name == host,
    }
}

/// Now, Unix seconds.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed certificate for `names` and its key, as PEM.
    pub(crate) fn self_signed(names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let c = rcgen::generate_simple_self_signed(names).expect("rcgen");
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn parses_names_validity_and_issuer() {
        let (cert, key) = self_signed(&["shop.example.com", "*.apps.example.com"]);
        let c = Certificate::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(c.names, ["shop.example.com", "*.apps.example.com"]);
        assert!(c.covers("shop.example.com"));
        assert!(c.covers("a.apps.example.com"));
        assert!(!c.covers("apps.example.com"));
        assert!(!c.covers("a.b.apps.example.com"));
        assert!(!c.covers("example.com"));
        assert!(!c.expired_at(unix_now()));
        assert!(c.expired_at(c.not_after));
        assert!(!c.issuer.is_empty());
    }

    #[test]
    fn refuses_a_key_of_another_certificate_and_garbage() {
        let (cert, _) = self_signed(&["a.example.com"]);
        let (_, other_key) = self_signed(&["a.example.com"]);
        let e = Certificate::from_pem(cert.as_bytes(), other_key.as_bytes()).unwrap_err();
        assert!(e.contains("does not belong"), "{e}");
        let e = Certificate::from_pem(b"hello", other_key.as_bytes()).unwrap_err();
        assert!(e.contains("no CERTIFICATE"), "{e}");
        let e = Certificate::from_pem(cert.as_bytes(), b"nope").unwrap_err();
        assert!(e.contains("no usable private key"), "{e}");
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_covers("*.example.com", "a.example.com"));
        assert!(!name_covers("*.example.com", ".example.com"));
        assert!(!name_covers("*.example.com", "a.b.example.com"));
        assert!(name_covers("a.example.com", "a.example.com"));
        assert!(!name_covers("a.example.com", "b.example.com"));
    }
}
