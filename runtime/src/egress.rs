//! Outbound HTTP policy for guests (`wasi:http/outgoing-handler`).
//!
//! The host name is resolved once; every resolved address is checked; for
//! plain HTTP the request is then dialled to the checked address itself (the
//! URI's authority is replaced by the IP, the `Host` header keeps the name),
//! so a second lookup cannot rebind the name to a refused address. Refused by
//! default: loopback, private, shared (CGNAT), link-local (incl.
//! 169.254.169.254), unique-local, multicast, broadcast, unspecified and
//! documentation ranges, the IPv4-mapped/compatible forms of all of these,
//! and the node's own addresses. Only the operator's exemptions open one.
//! A function's allow-list narrows; it never opens a refused range. Every
//! refusal is an error the guest sees, not a trap.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};

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
}

impl EgressConfig {
    /// Refuses the node's own interface addresses; caps timeouts at 10 s
    /// connect, 60 s first byte, 60 s between bytes.
    pub fn new(exempt: Vec<SocketAddr>) -> Self {
        EgressConfig {
            exempt,
            node_addrs: local_addresses(),
            max_timeouts: [
                Duration::from_secs(10),
                Duration::from_secs(60),
                Duration::from_secs(60),
            ],
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
    mut request: http::Request<WasiBody>,
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
    let target = addrs[0];
    if !https {
        // Dial the checked address: no second lookup.
        let authority = match target {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        *request.uri_mut() = http::Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(pq)
            .build()
            .map_err(|_| HttpError::HttpRequestUriInvalid)?;
    }
    let [connect, first, between] = config.max_timeouts;
    let cap = |asked: Option<Duration>, max: Duration| Some(asked.map_or(max, |a| a.min(max)));
    let options = RequestOptions {
        connect_timeout: cap(options.and_then(|o| o.connect_timeout), connect),
        first_byte_timeout: cap(options.and_then(|o| o.first_byte_timeout), first),
        between_bytes_timeout: cap(options.and_then(|o| o.between_bytes_timeout), between),
    };
    let (resp, io) = wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
    Ok((resp.map(BodyExt::boxed_unsync), Box::new(io)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_ranges() {
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "ff02::1",
        ] {
            assert!(refused_ip(ip.parse().unwrap()), "{ip} should be refused");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!refused_ip(ip.parse().unwrap()), "{ip} should be allowed");
        }
    }

    #[test]
    fn allow_list_narrows() {
        let allow = vec!["api.example.com".to_string(), "*.cdn.test".to_string()];
        assert!(host_allowed(&allow, "api.example.com"));
        assert!(host_allowed(&allow, "a.b.cdn.test"));
        assert!(!host_allowed(&allow, "cdn.test"));
        assert!(!host_allowed(&allow, "evil.com"));
        assert!(host_allowed(&[], "anything.test"));
    }
}
