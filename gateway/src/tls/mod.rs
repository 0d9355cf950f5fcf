//! TLS at the edge: the data plane's TLS listener's configuration
//! (rustls, HTTP/2 and HTTP/1.1 by ALPN, TLS 1.2 and 1.3 with ring's
//! modern suites only), certificate selection by SNI ([`sni`]), the
//! operator's certificate files and their reload ([`files`]), ACME
//! ([`acme`]), the
//! tenants' and ACME's certificates from the registry ([`stored`]), and
//! what a certificate is checked for ([`cert`]).
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub mod acme;
pub mod cert;
pub mod files;
pub mod sni;
pub mod stored;

pub use cert::Certificate;
pub use files::{CertFiles, FileCerts};
pub use sni::{Layer, Resolver, Source};

/// The `[tls]` table resolved: present when the TLS listener is on.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Where the TLS listener binds.
    pub listen: SocketAddr,
    /// The operator's certificates.
    pub certificates: Vec<CertFiles>,
    /// The certificate of handshakes no other matches (and of those
    /// without SNI).
    pub default_cert: Option<CertFiles>,
    /// Time a client has to complete the handshake.
    pub handshake_timeout: Duration,
    /// Automatic certificates; `None` when off.
    pub acme: Option<acme::AcmeConfig>,
}

/// The ALPN protocols offered, preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The server side of rustls: certificates from `resolver`, HTTP/2 or
/// HTTP/1.1 by ALPN.
pub fn server_config(resolver: Arc<Resolver>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(cert::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}
