//! Custom-hostname verification (`node.verify_hosts`): before a tenant
//! without a domain covering a host may route it or upload a certificate
//! for it, the tenant proves control of the host, as Cloudflare for SaaS
//! has its customers do. Perch gives a token; the tenant makes the host's
//! current server answer `GET http://HOST/.well-known/perch-verify/TOKEN`
//! with the token, or publishes it as a TXT record at
//! `_perch-verify.HOST`; Perch then looks. Names are resolved by the
//! system, or by `node.verify_dns` (one resolver, for A and TXT queries,
//! spoken to directly over UDP).
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Where the HTTP answer is fetched under.
pub const HTTP_PREFIX: &str = "/.well-known/perch-verify/";
/// The label the TXT record sits under.
pub const TXT_LABEL: &str = "_perch-verify";

/// Time each look may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// How to look.
#[derive(Debug, Clone, Copy, Default)]
pub struct Checker {
    /// The resolver to ask; `None`: the system's.
    pub dns: Option<SocketAddr>,
}

impl Checker {
    /// Whether `host` shows `token` over HTTP or DNS; the error says what
    /// each look found.
    pub async fn check(&self, host: &str, token: &str) -> Result<&'static str, String> {
        let http = match tokio::time::timeout(TIMEOUT, self.http(host, token)).await {
            Ok(Ok(())) => return Ok("http"),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {}s", TIMEOUT.as_secs()),
        };
        let dns = match tokio::time::timeout(TIMEOUT, self.txt(host, token)).await {
            Ok(Ok(())) => return Ok("dns"),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {}s", TIMEOUT.as_secs()),
        };
        Err(format!(
            "http://{host}{HTTP_PREFIX}{token}: {http}; TXT {TXT_LABEL}.{host}: {dns}"
        ))
    }

    /// The host's IPv4 addresses.
    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        match self.dns {
            Some(server) => Ok(query(server, host, A)
                .await?
                .into_iter()
                .filter_map(|r| <[u8; 4]>::try_from(r.as_slice()).ok())
                .map(|b| IpAddr::V4(Ipv4Addr::from(b)))
                .collect()),
            None => tokio::net::lookup_host((host, 80))
                .await
                .map(|a| a.map(|s| s.ip()).collect())
                .map_err(|e| format!("cannot resolve: {e}")),
        }
    }

    async fn http(&self, host: &str, token: &str) -> Result<(), String> {
        use http_body_util::BodyExt;
        let addrs = self.addresses(host).await?;
        let addr = addrs.first().ok_or("the name has no address")?;
        let stream = tokio::net::TcpStream::connect((*addr, 80))
            .await
            .map_err(|e| format!("cannot connect to {addr}:80: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get(format!("{HTTP_PREFIX}{token}"))
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "perch-verify")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), 4096)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        if String::from_utf8_lossy(&body).trim() != token {
            return Err("answered something other than the token".into());
        }
        Ok(())
    }

    async fn txt(&self, host: &str, token: &str) -> Result<(), String> {
        let server = match self.dns {
            Some(s) => s,
            None => system_resolver()?,
        };
        let records = query(server, &format!("{TXT_LABEL}.{host}"), TXT).await?;
        let texts: Vec<String> = records.iter().map(|r| txt_text(r)).collect();
        if texts.iter().any(|t| t.trim() == token) {
            Ok(())
        } else if texts.is_empty() {
            Err("no TXT record".into())
        } else {
            Err(format!("{} TXT record(s), none the token", texts.len()))
        }
    }
}

/// The first `nameserver` of `/etc/resolv.conf`.
fn system_resolver() -> Result<SocketAddr, String> {
    let conf = std::fs::read_to_string("/etc/resolv.conf")
        .map_err(|e| format!("/etc/resolv.conf: {e}"))?;
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .find_map(|a| a.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .ok_or_else(|| "/etc/resolv.conf names no nameserver".into())
}

const A: u16 = 1;
const TXT: u16 = 16;

/// A query for `name`'s records of type `qtype`, as bytes.
fn encode_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, String> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("`{name}` is not a DNS name"));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes()); // IN
    Ok(q)
}

/// Skips a (possibly compressed) name at `at`; returns the offset after it.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)? as usize;
        match len {
            0 => return Some(at + 1),
            l if l & 0xC0 == 0xC0 => return Some(at + 2),
            l => at += 1 + l,
        }
    }
}

/// The rdata of the answers of type `qtype` in a response to query `id`.
fn decode_answers(msg: &[u8], id: u16, qtype: u16) -> Result<Vec<Vec<u8>>, String> {
    let bad = || "a malformed DNS answer".to_string();
    let u16_at =
        |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?])) };
    if msg.len() < 12 || u16_at(0) != Some(id) {
        return Err(bad());
    }
    match msg[3] & 0x0F {
        0 => {}
        3 => return Ok(Vec::new()), // NXDOMAIN: no records
        rcode => return Err(format!("the resolver answered rcode {rcode}")),
    }
    let (questions, answers) = (u16_at(4).ok_or_else(bad)?, u16_at(6).ok_or_else(bad)?);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(msg, at).ok_or_else(bad)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..answers {
        at = skip_name(msg, at).ok_or_else(bad)?;
        let rtype = u16_at(at).ok_or_else(bad)?;
        let len = u16_at(at + 8).ok_or_else(bad)? as usize;
        let data = msg.get(at + 10..at + 10 + len).ok_or_else(bad)?;
        if rtype == qtype {
            out.push(data.to_vec());
        }
        at += 10 + len;
    }
    Ok(out)
}

/// A TXT record's text: its character-strings joined.
fn txt_text(rdata: &[u8]) -> String {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(&len) = rdata.get(at) {
        let end = (at + 1 + len as usize).min(rdata.len());
        out.extend_from_slice(&rdata[at + 1..end]);
        at = end;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Asks `server` over UDP (twice, if the first try gets no answer).
async fn query(server: SocketAddr, name: &str, qtype: u16) -> Result<Vec<Vec<u8>>, String> {
    let id = fastrand::u16(..);
    let q = encode_query(id, name, qtype)?;
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("address")
    } else {
        "[::]:0".parse().expect("address")
    };
    let socket = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("DNS socket: {e}"))?;
    socket
        .connect(server)
        .await
        .map_err(|e| format!("DNS {server}: {e}"))?;
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        socket
            .send(&q)
            .await
            .map_err(|e| format!("DNS {server}: {e}"))?;
        match tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await {
            Ok(Ok(n)) => return decode_answers(&buf[..n], id, qtype),
            Ok(Err(e)) => return Err(format!("DNS {server}: {e}")),
            Err(_) => continue,
        }
    }
    Err(format!("DNS {server} did not answer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decode_with_compressed_names() {
        let q = encode_query(7, "_perch-verify.shop.test", TXT).unwrap();
        // The query, turned into a response with one TXT answer whose
        // name points back at the question (0xC00C).
        let mut r = q.clone();
        r[2] = 0x81;
        r[3] = 0x80;
        r[7] = 1;
        r.extend_from_slice(&[
            0xC0, 0x0C, 0, 16, 0, 1, 0, 0, 0, 60, 0, 9, 3, b'a', b'b', b'c', 4,
        ]);
        r.extend_from_slice(b"defg");
        let answers = decode_answers(&r, 7, TXT).unwrap();
        assert_eq!(answers.len(), 1);
        assert_eq!(txt_text(&answers[0]), "abcdefg");
        assert!(decode_answers(&r, 8, TXT).is_err(), "another id");
        let mut nx = q;
        nx[3] = 0x83;
        assert!(decode_answers(&nx, 7, TXT).unwrap().is_empty());
        assert!(encode_query(1, "a..b", A).is_err());
    }
}
