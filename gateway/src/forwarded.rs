//! Who the client is (`[node] trusted_proxies`): the peer of the
//! connection, unless that peer is a trusted proxy, in which case the
//! right-most `X-Forwarded-For` entry that is not itself a trusted proxy
//! (`Forwarded: for=` only when there is no `X-Forwarded-For`), and the
//! scheme from `X-Forwarded-Proto` (or `Forwarded: proto=`).
//!
//! Whatever a client sent in those headers is never passed on: [`set`]
//! replaces them with what Perch believes, so a spoofed address from an
//! untrusted peer is dropped, not appended to.
use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// The networks whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

/// The client of a request, as far as Perch believes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The client's address.
    pub ip: IpAddr,
    /// Whether the client spoke HTTPS (to a trusted proxy).
    pub https: bool,
}

impl TrustedProxies {
    /// Parses `node.trusted_proxies`: CIDRs (`10.42.0.0/16`, `fd00::/8`)
    /// or single addresses.
    pub fn parse(list: &[String]) -> Result<TrustedProxies, String> {
        list.iter()
            .map(|s| {
                let s = s.trim();
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| {
                        format!(
                            "node.trusted_proxies: {s:?} is not an address or a CIDR (e.g. \"10.42.0.0/16\")"
                        )
                    })
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client of a request that came from `peer` with `headers`, over
    /// TLS or not (`tls`: the scheme unless a trusted proxy names one).
    pub fn client(&self, peer: IpAddr, tls: bool, headers: &HeaderMap) -> Client {
        let peer = peer.to_canonical();
        let direct = Client {
            ip: peer,
            https: tls,
        };
        if self.0.is_empty() || !self.trusts(peer) {
            return direct;
        }
        let mut hops = Vec::new();
        let mut protos = Vec::new();
        if headers.contains_key(&X_FORWARDED_FOR) {
            for value in headers.get_all(&X_FORWARDED_FOR) {
                let Ok(value) = value.to_str() else {
                    return direct;
                };
                hops.extend(value.split(',').map(node));
            }
            for value in headers.get_all(&X_FORWARDED_PROTO) {
                if let Ok(value) = value.to_str() {
                    protos.extend(value.split(',').map(|p| p.trim().to_ascii_lowercase()));
                }
            }
        } else {
            for value in headers.get_all(&FORWARDED) {
                let Ok(value) = value.to_str() else {
                    return direct;
                };
                for element in value.split(',') {
                    let mut hop = None;
                    for pair in element.split(';') {
                        let Some((k, v)) = pair.split_once('=') else {
                            continue;
                        };
                        let v = v.trim().trim_matches('"');
                        match k.trim().to_ascii_lowercase().as_str() {
                            "for" => hop = Some(node(v)),
                            "proto" => protos.push(v.to_ascii_lowercase()),
                            _ => {}
                        }
                    }
                    hops.push(hop.flatten());
                }
            }
        }
        // From the nearest hop outwards: the first one that is not a trusted
        // proxy is the client; an entry that cannot be read ends the walk
        // at the last address known.
        let mut ip = peer;
        for hop in hops.into_iter().rev() {
            let Some(hop) = hop else { break };
            ip = hop;
            if !self.trusts(hop) {
                break;
            }
        }
        Client {
            ip,
            https: protos.last().map_or(tls, |p| p == "https"),
        }
    }
}

/// One address of a forwarding header: `1.2.3.4`, `1.2.3.4:80`,
/// `2001:db8::1`, `[2001:db8::1]:443`; `None` for anything else
/// (`unknown`, obfuscated names).
fn node(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|ip| ip.parse::<IpAddr>().ok())
}

/// Replaces the request's forwarding headers with Perch's own:
/// `X-Forwarded-For: <client>` and `X-Forwarded-Proto`; `Forwarded` is
/// removed.
pub fn set(headers: &mut HeaderMap, client: &Client) {
    headers.remove(&FORWARDED);
    headers.remove(&X_FORWARDED_FOR);
    if let Ok(v) = HeaderValue::from_str(&client.ip.to_string()) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if client.https { "https" } else { "http" }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::header_map as headers;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_cidrs_and_addresses() {
        let t = TrustedProxies::parse(&["10.42.0.0/16".into(), "::1".into()]).unwrap();
        assert!(t.trusts(ip("10.42.7.1")));
        assert!(!t.trusts(ip("10.43.0.1")));
        assert!(t.trusts(ip("::1")));
        // An IPv4-mapped IPv6 peer is its IPv4 address.
        assert!(t.trusts(ip("::ffff:10.42.0.9")));
        let err = TrustedProxies::parse(&["10.0.0.0/33".into()]).unwrap_err();
        assert!(
            err.contains("node.trusted_proxies: \"10.0.0.0/33\""),
            "{err}"
        );
        assert!(TrustedProxies::parse(&["proxy.internal".into()]).is_err());
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap();
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let c = t.client(ip("203.0.113.9"), false, &h);
        assert_eq!(
            c,
            Client {
                ip: ip("203.0.113.9"),
                https: false
            }
        );
        // No trusted proxies at all: the same.
        let c = TrustedProxies::default().client(ip("10.0.0.1"), false, &h);
        assert_eq!(c.ip, ip("10.0.0.1"));
    }

    #[test]
    fn a_trusted_peer_names_the_right_most_untrusted_hop() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap();
        // The client spoofed 6.6.6.6; the outer proxy 10.1.1.1 appended
        // the real 198.51.100.7.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 198.51.100.7"),
            ("x-forwarded-for", "10.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let c = t.client(ip("10.2.2.2"), false, &h);
        assert_eq!(
            c,
            Client {
                ip: ip("198.51.100.7"),
                https: true
            }
        );
        // Every hop trusted: the left-most.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(t.client(ip("10.2.2.2"), false, &h).ip, ip("10.9.9.9"));
        // An unreadable hop ends the walk at the last address known.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, unknown, 10.1.1.1")]);
        assert_eq!(t.client(ip("10.2.2.2"), false, &h).ip, ip("10.1.1.1"));
        // Ports and brackets.
        let h = headers(&[("x-forwarded-for", "[2001:db8::7]:4711")]);
        assert_eq!(t.client(ip("10.2.2.2"), false, &h).ip, ip("2001:db8::7"));
        // No header: the peer.
        assert_eq!(
            t.client(ip("10.2.2.2"), false, &HeaderMap::new()).ip,
            ip("10.2.2.2")
        );
    }

    #[test]
    fn forwarded_counts_only_without_x_forwarded_for() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap();
        let h = headers(&[(
            "forwarded",
            "for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.1.1.1",
        )]);
        let c = t.client(ip("10.2.2.2"), false, &h);
        assert_eq!(
            c,
            Client {
                ip: ip("2001:db8:cafe::17"),
                https: true
            }
        );
        let h = headers(&[
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(t.client(ip("10.2.2.2"), false, &h).ip, ip("198.51.100.7"));
    }

    #[test]
    fn set_replaces_what_the_client_sent() {
        let mut h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "7.7.7.7"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        set(
            &mut h,
            &Client {
                ip: ip("203.0.113.9"),
                https: false,
            },
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("forwarded"));
    }
}
