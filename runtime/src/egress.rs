//! Outbound HTTP policy for guests (`wasi:http/outgoing-handler`).
//!
//! The host name is resolved once; every resolved address is checked; the
//! connection is then opened to the checked addresses themselves (in the
//! resolver's order, the next one when one does not accept), for plain HTTP
//! and HTTPS alike (one dialer; TLS is an extra step over the same socket,
//! verifying the certificate against the name the guest asked for, which is
//! also the SNI; the `Host` header keeps the name), so a second lookup
//! cannot rebind the name to a refused address. Refused by
//! default: loopback, private, shared (CGNAT), link-local (incl.
//! 169.254.169.254), unique-local, multicast, broadcast, unspecified and
//! documentation ranges, the IPv4-mapped/compatible forms of all of these,
//! and the node's own addresses. Only the operator's exemptions open one.
//! A function's allow-list narrows; it never opens a refused range. Every
//! refusal is an error the guest sees, not a trap.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};

/// The node's default caps on the timeouts a guest may ask for: 10 s
/// connect, 60 s first byte, 60 s between bytes.
pub const DEFAULT_MAX_TIMEOUTS: [Duration; 3] = [
    Duration::from_secs(10),
    Duration::from_secs(60),
    Duration::from_secs(60),
];

/// Node-wide egress settings.
#[derive(Debug, Clone, Default)]
pub struct EgressConfig {
    /// `ip:port` pairs guests may reach even though their range is refused.
    pub exempt: Vec<SocketAddr>,
    /// The node's own addresses (refused unless exempt).
    pub node_addrs: Vec<IpAddr>,
    /// Upper bounds for the timeouts a guest may ask for (connect, first
    /// byte, between bytes).
    pub max_timeouts: [Duration; 3],
    /// PEM file of CA certificates trusted for outbound HTTPS in addition to
    /// the webpki roots (e.g. an internal CA).
    pub ca_file: Option<PathBuf>,
    /// The TLS client built from the roots by `Runtime::new`.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

impl EgressConfig {
    /// Refuses the node's own interface addresses; caps timeouts at 10 s
    /// connect, 60 s first byte, 60 s between bytes.
    pub fn new(exempt: Vec<SocketAddr>) -> Self {
        EgressConfig {
            exempt,
            node_addrs: local_addresses(),
            max_timeouts: DEFAULT_MAX_TIMEOUTS,
            ca_file: None,
            tls: None,
        }
    }
}

/// Per-function outbound policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    /// Host names or `*.suffix` patterns; empty allows any (public) host.
    pub allow: Vec<String>,
    /// Outbound requests per invocation.
    pub max_requests: u32,
}

/// True for addresses no guest may reach by default.
pub fn refused_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return refused_v4(v4);
            }
            let seg = v6.segments();
            // IPv4-compatible (::a.b.c.d, deprecated) and NAT64 well-known prefix.
            if seg[..6] == [0, 0, 0, 0, 0, 0] || seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let v4 = Ipv4Addr::new(
                    (seg[6] >> 8) as u8,
                    seg[6] as u8,
                    (seg[7] >> 8) as u8,
                    seg[7] as u8,
                );
                if refused_v4(v4) {
                    return true;
                }
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (seg[0] & 0xffc0) == 0xfe80 // link local fe80::/10
                || (seg[0] & 0xffc0) == 0xfec0 // site local (deprecated)
                || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
        }
    }
}

fn refused_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || o[0] >= 240 // reserved
}

/// Addresses of this host's interfaces.
pub fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs fills a linked list we only read and then free.
    unsafe {
        let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut ifap) != 0 {
            return out;
        }
        let mut cur = ifap;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() {
                match (*addr).sa_family as i32 {
                    libc::AF_INET => {
                        let sin = &*(addr as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(ifap);
    }
    out
}

fn host_allowed(allow: &[String], host: &str) -> bool {
    allow.is_empty()
        || allow.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix)
                    && host[..host.len() - suffix.len()].ends_with('.')
            }
            None => p == host,
        })
}

type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ),
    HttpError,
>;

/// Checks and sends one outbound request.
pub(crate) async fn send(
    config: Arc<EgressConfig>,
    policy: Arc<OutboundPolicy>,
    label: Arc<str>,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> SendResult {
    let uri = request.uri().clone();
    let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let host = uri.host().ok_or(HttpError::HttpRequestUriInvalid)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    if !host_allowed(&policy.allow, &name) {
        tracing::info!(function = %label, host = %name, "outbound request refused: host not in the function's outbound.allow");
        return Err(HttpError::HttpRequestDenied);
    }
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => match tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::lookup_host((name.as_str(), port)),
        )
        .await
        {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(_)) => {
                return Err(HttpError::DnsError {
                    rcode: None,
                    info_code: None,
                });
            }
            Err(_) => return Err(HttpError::DnsTimeout),
        },
    };
    if addrs.is_empty() {
        return Err(HttpError::DestinationNotFound);
    }
    // Every resolved address must pass, so the choice below cannot matter.
    for a in &addrs {
        let exempt = config.exempt.contains(a);
        if !exempt && (refused_ip(a.ip()) || config.node_addrs.contains(&a.ip())) {
            tracing::info!(function = %label, host = %name, addr = %a, "outbound request refused: destination address");
            return Err(HttpError::DestinationIpProhibited);
        }
    }
    let tls = if https {
        // The certificate is checked against the name the guest asked for;
        // the connection goes to the address checked above.
        let client = config.tls.clone().ok_or(HttpError::ConfigurationError)?;
        let server_name =
            ServerName::try_from(name).map_err(|_| HttpError::HttpRequestUriInvalid)?;
        Some((client, server_name))
    } else {
        None
    };
    let timeouts = Timeouts::capped(options, config.max_timeouts);
    let stream = dial(&addrs, tls, timeouts.connect).await?;
    exchange(stream, request, timeouts).await
}

/// Sends `request` over plain HTTP/1.1 to `addr`, a destination Perch
/// chose itself (an internal one, see [`crate::InternalDestinations`]): no
/// egress checks, the same timeouts as any outbound request (the guest's,
/// capped by `max_timeouts`).
pub async fn send_direct(
    addr: SocketAddr,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    max_timeouts: [Duration; 3],
) -> SendResult {
    let timeouts = Timeouts::capped(options, max_timeouts);
    let stream = dial(&[addr], None, timeouts.connect).await?;
    exchange(stream, request, timeouts).await
}

/// The timeouts of one outbound request, each capped by the node's maximum.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    connect: Duration,
    first_byte: Duration,
    between_bytes: Duration,
}

impl Timeouts {
    fn capped(asked: Option<RequestOptions>, [connect, first, between]: [Duration; 3]) -> Self {
        let cap = |asked: Option<Duration>, max: Duration| asked.map_or(max, |a| a.min(max));
        Timeouts {
            connect: cap(asked.and_then(|o| o.connect_timeout), connect),
            first_byte: cap(asked.and_then(|o| o.first_byte_timeout), first),
            // A zero interval would never let a frame through; keep it positive.
            between_bytes: cap(asked.and_then(|o| o.between_bytes_timeout), between)
                .max(Duration::from_millis(1)),
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Opens a connection to one of `addrs` — the checked addresses, never a
/// name — and, for HTTPS, runs the TLS handshake over it, all within
/// `connect_timeout`.
async fn dial(
    addrs: &[SocketAddr],
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    connect_timeout: Duration,
) -> Result<Box<dyn Io>, HttpError> {
    let deadline = tokio::time::Instant::now() + connect_timeout;
    let connect = async {
        let tcp = connect_any(addrs, deadline).await?;
        let _ = tcp.set_nodelay(true);
        match tls {
            None => Ok(Box::new(tcp) as Box<dyn Io>),
            Some((client, server_name)) => {
                let stream = tokio_rustls::TlsConnector::from(client)
                    .connect(server_name, tcp)
                    .await
                    .map_err(tls_error)?;
                Ok(Box::new(stream) as Box<dyn Io>)
            }
        }
    };
    tokio::time::timeout_at(deadline, connect)
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?
}

/// A TCP connection to the first of `addrs` that accepts one, tried in the
/// resolver's order (a name with an IPv6 and an IPv4 address still works
/// where only one of them answers). Each attempt gets an equal share of the
/// time left, so an address that drops packets does not use up the whole
/// connect timeout. When none accepts, the last attempt's error.
async fn connect_any(
    addrs: &[SocketAddr],
    deadline: tokio::time::Instant,
) -> Result<TcpStream, HttpError> {
    let mut last = HttpError::DestinationNotFound;
    for (i, addr) in addrs.iter().enumerate() {
        let left = u32::try_from(addrs.len() - i).unwrap_or(u32::MAX);
        let share = deadline.saturating_duration_since(tokio::time::Instant::now()) / left;
        match tokio::time::timeout(share, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = HttpError::ConnectionRefused
            }
            Ok(Err(e)) => last = HttpError::Connect(e),
            Err(_) => last = HttpError::ConnectionTimeout,
        }
    }
    Err(last)
}

/// Maps a failed handshake to the wasi-http error the guest sees.
fn tls_error(e: std::io::Error) -> HttpError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(_)) => HttpError::TlsCertificateError,
        Some(rustls::Error::AlertReceived(alert)) => HttpError::TlsAlertReceived {
            alert_id: Some(u8::from(*alert)),
            alert_message: Some(format!("{alert:?}")),
        },
        Some(_) => HttpError::TlsProtocolError,
        None => HttpError::Tls(e),
    }
}

/// Sends `request` over an open connection with HTTP/1.1 and returns the
/// response head, its body (under the between-bytes timeout) and the future
/// that drives the connection until the body is read.
async fn exchange(
    stream: Box<dyn Io>,
    mut request: http::Request<WasiBody>,
    timeouts: Timeouts,
) -> SendResult {
    let (mut sender, conn) = tokio::time::timeout(
        timeouts.connect,
        hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| HttpError::ConnectionTimeout)??;
    // Origin form on the wire; the `Host` header (set by wasi-http from the
    // guest's authority) keeps the name.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;

    let send = tokio::time::timeout(timeouts.first_byte, sender.send_request(request));
    tokio::pin!(send);
    let mut conn = Some(Box::pin(conn));
    // The connection must be driven while waiting for the response head.
    let head = loop {
        let Some(driver) = conn.as_mut() else {
            break send.await;
        };
        tokio::select! {
            head = &mut send => break head,
            done = driver => {
                conn = None;
                done?;
            }
        }
    };
    let response = head.map_err(|_| HttpError::ConnectionReadTimeout)??;
    let io = async move {
        match conn {
            Some(driver) => driver.await.map_err(hyper_error),
            None => Ok(()),
        }
    };
    let response = response.map(|incoming| {
        TimedBody {
            incoming,
            between_bytes: timeouts.between_bytes,
            deadline: Box::pin(tokio::time::sleep(timeouts.between_bytes)),
        }
        .boxed_unsync()
    });
    Ok((response, Box::new(io)))
}

fn hyper_error(e: hyper::Error) -> HttpError {
    if e.is_timeout() {
        HttpError::HttpResponseTimeout
    } else {
        HttpError::Hyper(e)
    }
}

/// A response body that fails when no frame arrives within `between_bytes`.
struct TimedBody {
    incoming: hyper::body::Incoming,
    between_bytes: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for TimedBody {
    type Data = bytes::Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + self.between_bytes;
                self.deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(hyper_error(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}

/// The TLS client for outbound HTTPS: rustls with the ring provider, the
/// webpki roots plus the operator's extra CA certificates (PEM), ALPN
/// `http/1.1` only.
pub(crate) fn tls_client(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let what = || format!("egress.ca_file {}", path.display());
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", what()))?;
        if certs.is_empty() {
            return Err(format!("{}: no PEM certificates found", what()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("{}: unusable certificate: {e}", what()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(client))
}

#[cfg(test)]
#[path = "egress_tests.rs"]
mod tests;
