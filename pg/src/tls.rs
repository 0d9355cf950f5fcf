//! TLS to PostgreSQL, with rustls.
//!
//! Two modes, as libpq's:
//! - **verified** (`[storage] ca_file`): TLS is required and the server's
//!   certificate must chain to one of the file's CA certificates and name
//!   the host connected to (libpq's `sslmode=verify-full`);
//! - **unverified** (no CA file): TLS when the server offers it (the URL's
//!   `sslmode`, `prefer` by default) or insists (`require`), with the
//!   handshake's signatures checked but not who signed the certificate
//!   (libpq's `prefer` / `require`): it keeps the traffic from being read,
//!   not a man in the middle out — except that SCRAM authentication is
//!   bound to the certificate the client saw (`tls-server-end-point`
//!   channel binding), so one cannot relay a password login.
//!
//! Unix-socket connections never use TLS (the server offers none there).
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The TLS set-up every connection of a [`crate::PgConfig`] uses.
#[derive(Clone)]
pub struct PgTls {
    config: Arc<rustls::ClientConfig>,
    verified: bool,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTls")
            .field("verified", &self.verified)
            .finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl PgTls {
    /// Unverified TLS (see the module's comment).
    pub fn unverified() -> PgTls {
        let provider = provider();
        let verifier = Arc::new(AnyCertificate(provider.clone()));
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        PgTls::with(config, false)
    }

    /// Verified TLS against the PEM CA certificates in `ca_file`.
    pub fn verified(ca_file: &Path) -> Result<PgTls, String> {
        use rustls::pki_types::pem::PemObject;
        let what = || format!("storage.ca_file {}", ca_file.display());
        let certs = CertificateDer::pem_file_iter(ca_file)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", what()))?;
        if certs.is_empty() {
            return Err(format!("{}: no PEM certificates found", what()));
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("{}: unusable certificate: {e}", what()))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(PgTls::with(config, true))
    }

    fn with(mut config: rustls::ClientConfig, verified: bool) -> PgTls {
        // What PostgreSQL 17's direct negotiation requires, and what older
        // servers ignore.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        PgTls {
            config: Arc::new(config),
            verified,
        }
    }

    /// Whether the server's certificate is checked against a CA.
    pub fn is_verified(&self) -> bool {
        self.verified
    }
}

/// Accepts any certificate, but checks that the server holds its key.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = io::Error;

    /// `host` is empty for a Unix socket, where no handshake happens: a
    /// name that is not one fails the handshake, not the connection.
    fn make_tls_connect(&mut self, host: &str) -> io::Result<PgTlsConnect> {
        Ok(PgTlsConnect {
            config: self.config.clone(),
            name: ServerName::try_from(host.to_string())
                .map_err(|_| format!("`{host}` is not a host name or IP address to verify")),
        })
    }
}

/// One connection's handshake.
pub struct PgTlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: Result<ServerName<'static>, String>,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = self.name.map_err(io::Error::other)?;
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await?;
            Ok(PgTlsStream(tls))
        })
    }
}

/// A TLS connection to the server.
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        match session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| end_point_hash(cert))
        {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

/// RFC 5929's `tls-server-end-point`: the certificate hashed with its
/// signature's hash (SHA-256 in place of MD5 and SHA-1); none when that is
/// not one hash (Ed25519, RSA-PSS), as the server has none either.
fn end_point_hash(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    use x509_parser::oid_registry as oid;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let alg = &parsed.signature_algorithm.algorithm;
    let digest = if [
        oid::OID_PKCS1_SHA256WITHRSA,
        oid::OID_PKCS1_SHA1WITHRSA,
        oid::OID_PKCS1_MD5WITHRSAENC,
        oid::OID_SIG_ECDSA_WITH_SHA256,
    ]
    .contains(alg)
    {
        &ring::digest::SHA256
    } else if [oid::OID_PKCS1_SHA384WITHRSA, oid::OID_SIG_ECDSA_WITH_SHA384].contains(alg) {
        &ring::digest::SHA384
    } else if [oid::OID_PKCS1_SHA512WITHRSA, oid::OID_SIG_ECDSA_WITH_SHA512].contains(alg) {
        &ring::digest::SHA512
    } else {
        return None;
    };
    Some(
        ring::digest::digest(digest, cert.as_ref())
            .as_ref()
            .to_vec(),
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
