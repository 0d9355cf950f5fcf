//! Outbound requests from guests: refused destinations, the operator's
//! exemptions, a function's allow-list, and HTTPS through the same checked
//! dial (certificates from a CA made by the test, trusted via
//! `egress.ca_file`). Only loopback and this host's own addresses are ever
//! dialled.
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use perch_tests::{Perch, eventually, guests};
use rustls::pki_types::pem::PemObject;
use serde_json::json;

/// A tiny origin on 127.0.0.1 answering every request with `origin says hi`.
fn origin() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\nConnection: close\r\n\r\norigin says hi",
            );
        }
    });
    port
}

fn fetch(perch: &Perch, url: &str) -> (u16, String) {
    let resp = perch.get("echo.a.test", &format!("/fetch?url={url}"));
    (resp.status().as_u16(), resp.text().unwrap())
}

#[test]
fn egress_is_refused_by_default_and_exempted_by_the_operator() {
    let port = origin();
    let perch = Perch::start_with(&format!("[egress]\nallow = [\"127.0.0.1:{port}\"]\n"));
    let token = perch.deploy("a", "echo", guests::ECHO, "echo.a.test");

    // The operator's exemption works.
    assert_eq!(
        fetch(&perch, &format!("http://127.0.0.1:{port}/")),
        (200, "origin says hi".into())
    );

    // Everything else local is refused, as an error the guest sees.
    let admin_port = perch.admin_url.rsplit(':').next().unwrap().to_string();
    let own = perch_runtime_local_v4();
    let mut refused = vec![
        format!("http://127.0.0.1:{admin_port}/healthz"),
        format!("http://localhost:{admin_port}/"),
        format!("http://localhost.:{admin_port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://127.0.0.2:{port}/"),
    ];
    if let Some(ip) = own {
        refused.push(format!("http://{ip}:{port}/"));
    }
    let refusals = |p: &Perch| {
        p.logs()
            .matches("outbound request refused: destination address")
            .count()
    };
    for (i, url) in refused.iter().enumerate() {
        let (status, body) = fetch(&perch, url);
        assert_eq!(status, 502, "{url}: {body}");
        // The guest sees the refusal as an error; which one wstd reports first
        // (the error code, or its body write failing) depends on timing, so
        // the server log tells that the policy refused it.
        eventually(&format!("{url} refused by policy ({body})"), || {
            refusals(&perch) > i
        });
    }

    // A function's allow-list narrows even exempt destinations.
    perch
        .api(&token)
        .put_json(
            "/v1/tenants/a/functions/echo/settings",
            Some(json!({"outbound": {"allow": ["api.example.com"]}})),
        )
        .expect_status(201);
    let (status, body) = fetch(&perch, &format!("http://127.0.0.1:{port}/"));
    assert_eq!(status, 502, "{body}");
    // The server log line may follow the answer by a moment.
    eventually("the allow-list refusal is logged", || {
        perch
            .logs()
            .contains("host not in the function's outbound.allow")
    });
}

/// This host's first non-loopback IPv4 address, if it has one.
fn perch_runtime_local_v4() -> Option<std::net::Ipv4Addr> {
    let out = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|s| s.parse::<std::net::Ipv4Addr>().ok())
        .find(|ip| !ip.is_loopback())
}

/// A certificate authority made for one test, and a server certificate
/// for `localhost` / 127.0.0.1 it issued.
struct TestPki {
    ca: crate::tls::TestCa,
    leaf: crate::tls::Leaf,
}

fn test_pki(ca_name: &str) -> TestPki {
    let ca = crate::tls::TestCa::new(ca_name);
    let leaf = ca.issue(&["localhost", "127.0.0.1"]);
    TestPki { ca, leaf }
}

/// An HTTPS origin on 127.0.0.1 (and [::1] when it can bind there, on the
/// same port) answering `secure origin for <SNI>`. Returns the port and a
/// count of requests it answered.
fn https_origin(pki: &TestPki) -> (u16, Arc<AtomicUsize>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(
                pki.leaf.der.clone(),
            )],
            rustls::pki_types::PrivateKeyDer::from_pem_slice(pki.leaf.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = Arc::new(config);
    let served = Arc::new(AtomicUsize::new(0));
    let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = v4.local_addr().unwrap().port();
    let mut listeners = vec![v4];
    listeners.extend(TcpListener::bind(("::1", port)).ok());
    for listener in listeners {
        let (config, served) = (config.clone(), served.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let (config, served) = (config.clone(), served.clone());
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf) {
                            Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                            _ => return, // handshake refused by the client, or EOF
                        }
                    }
                    let sni = tls.conn.server_name().unwrap_or("none").to_string();
                    let body = format!("secure origin for {sni}");
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(resp.as_bytes());
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                    served.fetch_add(1, Ordering::SeqCst);
                    // Read what the client still sends (the end of a chunked
                    // empty body, its close_notify) until it closes: closing
                    // with unread input would reset the connection and could
                    // discard the response before the client reads it.
                    let _ = tls.sock.shutdown(std::net::Shutdown::Write);
                    let _ = tls
                        .sock
                        .set_read_timeout(Some(std::time::Duration::from_secs(5)));
                    while matches!(tls.sock.read(&mut buf), Ok(n) if n > 0) {}
                });
            }
        });
    }
    (port, served)
}

#[test]
fn https_egress_dials_the_checked_address_and_verifies_the_name() {
    let pki = test_pki("Perch test CA");
    let (port, served) = https_origin(&pki);
    // Same name, certificate from a CA nobody trusts.
    let stranger = test_pki("Unknown CA");
    let (untrusted_port, untrusted_served) = https_origin(&stranger);

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, pki.ca.pem()).unwrap();
    let allow = |p: u16| format!("\"127.0.0.1:{p}\", \"[::1]:{p}\"");
    let perch = Perch::start_with(&format!(
        "[egress]\nallow = [{}, {}]\nca_file = {:?}\n",
        allow(port),
        allow(untrusted_port),
        ca_file.display().to_string()
    ));
    perch.deploy("a", "echo", guests::ECHO, "echo.a.test");

    // By name (SNI and certificate name `localhost`) and by IP literal.
    assert_eq!(
        fetch(&perch, &format!("https://localhost:{port}/x")),
        (200, "secure origin for localhost".into())
    );
    assert_eq!(
        fetch(&perch, &format!("https://127.0.0.1:{port}/")),
        (200, "secure origin for none".into())
    );
    assert_eq!(served.load(Ordering::SeqCst), 2);

    // Exempt, but its certificate chains to no trusted root: no request is sent.
    let (status, body) = fetch(&perch, &format!("https://localhost:{untrusted_port}/"));
    assert_eq!(status, 502, "{body}");
    assert_eq!(untrusted_served.load(Ordering::SeqCst), 0);

    // Without the operator's exemption the same origin is refused before
    // any connection is made.
    let strict = Perch::start_with(&format!(
        "[egress]\nca_file = {:?}\n",
        ca_file.display().to_string()
    ));
    strict.deploy("a", "echo", guests::ECHO, "echo.a.test");
    let (status, body) = fetch(&strict, &format!("https://localhost:{port}/"));
    assert_eq!(status, 502, "{body}");
    eventually(&format!("refused by policy ({body})"), || {
        strict
            .logs()
            .contains("outbound request refused: destination address")
    });
    assert_eq!(served.load(Ordering::SeqCst), 2);
}
