//! The data plane over TLS: certificates by SNI, HTTP/2 by ALPN, file
//! reload without a restart, handshake and HTTP/2 idle bounds.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use perch_tests::{NO_HANG, Perch, echoed_headers, eventually, free_port, guests};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use reqwest::blocking::Client;
use serde_json::Value;

/// A certificate authority made for one test.
pub(crate) struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate the [`TestCa`] issued, and its key.
pub(crate) struct Leaf {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    pub(crate) der: Vec<u8>,
}

impl TestCa {
    pub(crate) fn new(name: &str) -> TestCa {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, name);
        TestCa {
            issuer: CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    pub(crate) fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub(crate) fn der(&self) -> rustls::pki_types::CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A leaf for `names` (DNS names or IP addresses).
    pub(crate) fn issue(&self, names: &[&str]) -> Leaf {
        self.issue_with(names, |_| {})
    }

    /// A leaf for `names` with `edit` applied to its parameters.
    pub(crate) fn issue_with(
        &self,
        names: &[&str],
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        edit(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

impl Leaf {
    /// Writes `NAME.pem` and `NAME.key` into `dir`; returns the TOML of a
    /// `cert_file` / `key_file` pair.
    fn write(&self, dir: &Path, name: &str) -> String {
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        replace(&cert, &self.cert_pem);
        replace(&key, &self.key_pem);
        format!(
            "cert_file = {:?}\nkey_file = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        )
    }
}

/// Writes `path` by renaming a new file over it, as certificate tools do.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The TLS listener's address.
fn tls_addr(perch: &Perch) -> SocketAddr {
    let url = perch.tls_url.as_deref().expect("tls= in the start line");
    url.strip_prefix("https://").unwrap().parse().unwrap()
}

/// An HTTPS client that trusts `ca` and sends `hosts` to Perch's TLS port,
/// one new connection per client.
fn client(ca: &TestCa, addr: SocketAddr, hosts: &[&str], http1: bool) -> Client {
    let mut b = Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .tls_info(true)
        .timeout(Duration::from_secs(60));
    for h in hosts {
        b = b.resolve(h, addr);
    }
    if http1 {
        b = b.http1_only();
    }
    b.build().unwrap()
}

fn peer_certificate(resp: &reqwest::blocking::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("TLS info")
        .to_vec()
}

#[test]
fn tls_serves_certificates_by_sni_over_http2_and_http1() {
    let ca = TestCa::new("Perch test CA");
    let dir = tempfile::tempdir().unwrap();
    let (shop, apps) = (ca.issue(&["shop.test"]), ca.issue(&["*.apps.test"]));
    let perch = Perch::start_with(&format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\n[[tls.certificates]]\n{}[[tls.certificates]]\n{}",
        shop.write(dir.path(), "shop"),
        apps.write(dir.path(), "apps"),
    ));
    perch.deploy("a", "echo", guests::ECHO, "shop.test");
    perch.deploy("a", "hello", guests::HELLO, "x.apps.test");
    let addr = tls_addr(&perch);
    let port = addr.port();
    let hosts = ["shop.test", "x.apps.test", "other.test"];

    // HTTP/2 by ALPN; the exact host's certificate; the guest sees https.
    let h2 = client(&ca, addr, &hosts, false);
    let resp = h2
        .post(format!("https://shop.test:{port}/path?q=1"))
        .header("x-forwarded-proto", "http")
        .body("over h2")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(peer_certificate(&resp), shop.der);
    assert_eq!(resp.headers()["x-echo-scheme"], "https");
    assert_eq!(resp.headers()["x-echo-uri"], "/path?q=1");
    let headers = echoed_headers(&resp);
    assert!(
        headers.contains(&"x-forwarded-proto: https".to_string()),
        "{headers:?}"
    );
    assert_eq!(resp.text().unwrap(), "over h2");

    // The wildcard's host.
    let resp = h2
        .get(format!("https://x.apps.test:{port}/"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(peer_certificate(&resp), apps.der);
    assert_eq!(resp.text().unwrap(), "Hello, world!\n");

    // HTTP/1.1 when the client offers only that.
    let h1 = client(&ca, addr, &hosts, true);
    let resp = h1
        .get(format!("https://shop.test:{port}/one"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.headers()["x-echo-scheme"], "https");
    assert_eq!(resp.headers()["x-echo-uri"], "/one");

    // The plaintext listener still says http, whatever the URI claims.
    let resp = perch.get("shop.test", "/plain");
    assert_eq!(resp.headers()["x-echo-scheme"], "http");

    // Perch, not h2, answers a head over its limit.
    let resp = h2
        .get(format!("https://shop.test:{port}/"))
        .header("x-big", "a".repeat(40 << 10))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 431);
    let body: Value = resp.json().unwrap();
    assert_eq!(body["error"]["code"], "headers_too_large");

    // No certificate for the name and no default: the handshake fails.
    let err = h2
        .get(format!("https://other.test:{port}/"))
        .send()
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    // The server goes on.
    let resp = h2
        .get(format!("https://x.apps.test:{port}/"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// Reads from `stream` until the peer closes it; what it sent.
fn read_to_close(stream: &mut impl Read) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return got,
            Err(e) => panic!("the connection was not closed: {e}"),
        }
    }
}

#[test]
fn tls_reloads_files_and_cuts_stalled_handshakes_and_idle_http2() {
    let ca = TestCa::new("Perch test CA");
    let dir = tempfile::tempdir().unwrap();
    // The default certificate is served for any name no other covers:
    // this one names the host the client will ask for.
    let (first, fallback) = (ca.issue(&["shop.test"]), ca.issue(&["unnamed.test"]));
    let perch = Perch::start_with(&format!(
        "[node]\nheader_read_timeout_seconds = 1\n[tls]\nlisten = \"127.0.0.1:0\"\nhandshake_timeout_seconds = 1\n[[tls.certificates]]\n{}[tls.default_cert]\n{}",
        first.write(dir.path(), "shop"),
        fallback.write(dir.path(), "fallback"),
    ));
    perch.deploy("a", "hello", guests::HELLO, "shop.test");
    let addr = tls_addr(&perch);
    let url = format!("https://shop.test:{}/", addr.port());
    let hosts = ["shop.test", "unnamed.test"];
    let resp = client(&ca, addr, &hosts, true).get(&url).send().unwrap();
    assert_eq!(peer_certificate(&resp), first.der);
    let pid = perch.pid();

    // Any other name gets the default certificate.
    let resp = client(&ca, addr, &hosts, false)
        .get(format!("https://unnamed.test:{}/", addr.port()))
        .send()
        .unwrap();
    assert_eq!(peer_certificate(&resp), fallback.der);
    assert_eq!(resp.status(), 404);

    // New files: new handshakes get them, without a restart.
    let second = ca.issue(&["shop.test"]);
    second.write(dir.path(), "shop");
    eventually("the replaced certificate is served", || {
        let resp = client(&ca, addr, &hosts, false).get(&url).send().unwrap();
        peer_certificate(&resp) == second.der
    });
    perch.wait_for_log("TLS certificates reloaded", 1);

    // A certificate file that does not load keeps the last good one.
    replace(&dir.path().join("shop.pem"), "not a certificate");
    perch.wait_for_log("TLS certificates not reloaded", 1);
    let resp = client(&ca, addr, &hosts, false).get(&url).send().unwrap();
    assert_eq!(peer_certificate(&resp), second.der);
    assert_eq!(resp.status(), 200);

    // A handshake that never starts is cut at the timeout.
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled.set_read_timeout(Some(NO_HANG * 3)).unwrap();
    assert!(read_to_close(&mut stalled).is_empty());

    // An HTTP/2 connection that never sends a request gets a GOAWAY and is
    // closed.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "shop.test".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(NO_HANG * 3)).unwrap();
    let mut idle = rustls::StreamOwned::new(conn, tcp);
    // The client preface and an empty SETTINGS frame.
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let frames = read_to_close(&mut idle);
    assert_eq!(idle.conn.alpn_protocol(), Some(&b"h2"[..]));
    let mut types = Vec::new();
    let mut rest = &frames[..];
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        types.push(rest[3]);
        rest = &rest[(9 + len).min(rest.len())..];
    }
    assert!(types.contains(&7), "no GOAWAY among frame types {types:?}");

    // The same server all along, and it goes on serving.
    assert_eq!(perch.pid(), pid);
    let resp = client(&ca, addr, &hosts, false).get(&url).send().unwrap();
    assert_eq!(resp.status(), 200);
}

#[test]
fn tenants_upload_checked_certificates_served_by_sni_with_sealed_keys() {
    use serde_json::json;
    let ca = TestCa::new("Perch test CA");
    let mut perch = Perch::start_with("[tls]\nlisten = \"127.0.0.1:0\"\n");
    let admin = perch.admin();
    admin
        .put_json(
            "/v1/tenants/shop",
            Some(json!({"domains": ["shop.test", "*.shop.test"]})),
        )
        .expect_status(201);
    admin.put_json("/v1/tenants/other", None).expect_status(201);
    let token = admin
        .post_json(
            "/v1/tenants/shop/tokens",
            json!({"scopes": ["certificates"]}),
        )
        .ok()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let shop = perch.api(&token);
    let upload = |api: &perch_tests::Api, host: &str, leaf: &Leaf| {
        api.put_json(
            &format!("/v1/tenants/{}/certificates/{host}", api_tenant(host)),
            Some(json!({"cert_pem": leaf.cert_pem, "key_pem": leaf.key_pem})),
        )
    };
    fn api_tenant(host: &str) -> &'static str {
        if host.ends_with("shop.test") {
            "shop"
        } else {
            "other"
        }
    }

    // A certificate that also names a host that is not the tenant's.
    let www = ca.issue(&["www.shop.test", "evil.test"]);
    let body = upload(&shop, "www.shop.test", &www).expect_status(201);
    assert_eq!(body["host"], "www.shop.test");
    assert_eq!(body["source"], "tenant");
    assert_eq!(body["sans"], json!(["www.shop.test", "evil.test"]));
    assert!(body["not_after"].as_i64().unwrap() > body["not_before"].as_i64().unwrap());
    assert!(
        body["issuer"].as_str().unwrap().contains("Perch test CA"),
        "{body}"
    );
    assert!(body.get("key_pem").is_none() && body.get("cert_pem").is_none());
    upload(&shop, "www.shop.test", &www).expect_status(200);

    let addr = tls_addr(&perch);
    let hosts = ["www.shop.test", "evil.test"];
    let served = |host: &str| {
        client(&ca, addr, &hosts, false)
            .get(format!("https://{host}:{}/", addr.port()))
            .send()
            .map(|r| peer_certificate(&r))
    };
    // Served from the next handshake on, for its host only.
    eventually("the tenant's certificate is served", || {
        served("www.shop.test").is_ok_and(|c| c == www.der)
    });
    assert!(served("evil.test").is_err());

    // Checked: every refusal says why.
    let expired = ca.issue_with(&["old.shop.test"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let other = ca.issue(&["a.shop.test"]);
    let mismatched = Leaf {
        cert_pem: other.cert_pem.clone(),
        key_pem: www.key_pem.clone(),
        der: Vec::new(),
    };
    let garbage = Leaf {
        cert_pem: "-----BEGIN CERTIFICATE-----\nAAAA".into(),
        key_pem: www.key_pem.clone(),
        der: Vec::new(),
    };
    for (host, leaf, says) in [
        ("old.shop.test", &expired, "expired"),
        ("a.shop.test", &mismatched, "does not belong"),
        ("b.shop.test", &other, "does not cover `b.shop.test`"),
        (
            "a.shop.test",
            &garbage,
            "no `-----END CERTIFICATE-----` line",
        ),
    ] {
        let why = upload(&shop, host, leaf).expect_error(400, "invalid_certificate");
        assert!(why.contains(says), "{host}: {why}");
    }
    // A wildcard host needs the wildcard itself.
    let wild = ca.issue(&["*.shop.test"]);
    upload(&shop, "*.shop.test", &wild).expect_status(201);
    upload(&shop, "*.shop.test", &other).expect_error(400, "invalid_certificate");
    eventually("the wildcard is served", || {
        served("www.shop.test").is_ok_and(|c| c == www.der)
            && client(&ca, addr, &["x.shop.test"], false)
                .get(format!("https://x.shop.test:{}/", addr.port()))
                .send()
                .is_ok_and(|r| peer_certificate(&r) == wild.der)
    });

    // Hosts: within the tenant's domains, and not another tenant's.
    let evil = ca.issue(&["evil.test"]);
    admin
        .put_json(
            "/v1/tenants/shop/certificates/evil.test",
            Some(json!({"cert_pem": evil.cert_pem, "key_pem": evil.key_pem})),
        )
        .expect_error(403, "host_not_allowed");
    // The admin may upload for the tenant too.
    upload(&admin, "www.shop.test", &www).expect_status(200);
    admin
        .put_json(
            "/v1/tenants/other/certificates/www.shop.test",
            Some(json!({"cert_pem": www.cert_pem, "key_pem": www.key_pem})),
        )
        .expect_error(409, "host_taken");
    // Another tenant (one without domains) may not route a host a
    // tenant's certificate holds.
    perch.deploy("other", "hello", guests::HELLO, "other.test");
    admin
        .put_json(
            "/v1/tenants/other/routes/www.shop.test",
            Some(json!({"function": "hello"})),
        )
        .expect_error(409, "host_taken");
    // A token without the scope may not.
    let routes_only = admin
        .post_json("/v1/tenants/shop/tokens", json!({"scopes": ["routes"]}))
        .ok()["token"]
        .as_str()
        .unwrap()
        .to_string();
    perch
        .api(&routes_only)
        .get("/v1/tenants/shop/certificates")
        .expect_error(403, "forbidden");

    // Listed and shown, never with the key.
    let list = shop.get("/v1/tenants/shop/certificates").ok();
    let hosts_listed: Vec<&str> = list["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts_listed, ["*.shop.test", "www.shop.test"]);
    assert!(!list.to_string().contains("PRIVATE KEY"));
    let one = shop.get("/v1/tenants/shop/certificates/www.shop.test").ok();
    assert_eq!(one["source"], "tenant");
    shop.get("/v1/tenants/shop/certificates/nope.shop.test")
        .expect_error(404, "not_found");

    // Sealed at rest: the key's PEM is nowhere in the data directory.
    let key_line = www.key_pem.lines().nth(1).unwrap().to_string();
    for entry in std::fs::read_dir(perch.dir.join("data")).unwrap().flatten() {
        if entry.path().is_file() {
            let bytes = std::fs::read(entry.path()).unwrap();
            assert!(
                !bytes
                    .windows(key_line.len())
                    .any(|w| w == key_line.as_bytes()),
                "the key is readable in {}",
                entry.path().display()
            );
        }
    }

    // Kept across a restart.
    perch.sigterm();
    perch.restart();
    let addr = tls_addr(&perch);
    let resp = client(&ca, addr, &hosts, false)
        .get(format!("https://www.shop.test:{}/", addr.port()))
        .send()
        .unwrap();
    assert_eq!(peer_certificate(&resp), www.der);

    // Deleted: no longer served.
    let shop = perch.api(&token);
    shop.delete("/v1/tenants/shop/certificates/www.shop.test")
        .expect_status(204);
    shop.delete("/v1/tenants/shop/certificates/www.shop.test")
        .expect_error(404, "not_found");
    eventually("the deleted certificate is no longer served", || {
        client(&ca, addr, &hosts, false)
            .get(format!("https://www.shop.test:{}/", addr.port()))
            .send()
            .is_ok_and(|r| peer_certificate(&r) == wild.der)
    });
}

/// Pebble (the CA) with a [`TestDns`] as its resolver (127.0.0.1 for
/// every name), killed when dropped.
struct Pebble {
    child: std::process::Child,
    /// Its DNS server.
    _dns: TestDns,
    directory: String,
    management: u16,
    ca: TestCa,
    ca_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Pebble {
    /// Starts both, the CA's directory on `listen`; HTTP-01 validations go
    /// to `http_port` (Perch's plaintext listener); certificates live
    /// `validity_s` seconds.
    fn start_on(listen: u16, http_port: u16, validity_s: u64) -> Pebble {
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("Pebble's own TLS test CA");
        let tls = ca.issue(&["localhost", "127.0.0.1"]);
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        tls.write(dir.path(), "pebble");
        let management = free_port();
        let dns = TestDns::start();
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.path().join("pebble.pem"),
            "privateKey": dir.path().join("pebble.key"),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_s,
        }});
        let config_file = dir.path().join("pebble.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let log = |name: &str| Stdio::from(std::fs::File::create(dir.path().join(name)).unwrap());
        let ca_server = Command::new("pebble")
            .arg("-config")
            .arg(&config_file)
            .args(["-dnsserver", &format!("127.0.0.1:{}", dns.dns)])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log("pebble.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble");
        let mut pebble = Pebble {
            child: ca_server,
            _dns: dns,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            management,
            ca,
            ca_file,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", listen)).is_err()
            || TcpStream::connect(("127.0.0.1", management)).is_err()
        {
            let exited = pebble.child.try_wait().ok().flatten();
            if exited.is_some() || std::time::Instant::now() > deadline {
                let read = |n: &str| {
                    std::fs::read_to_string(pebble._dir.path().join(n)).unwrap_or_default()
                };
                panic!("Pebble did not start ({exited:?}):\n{}", read("pebble.log"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        pebble
    }

    /// The root Pebble issues under (it makes a new one each start).
    fn root_pem(&self) -> String {
        let client = Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca.pem().as_bytes()).unwrap())
            .build()
            .unwrap();
        client
            .get(format!("https://127.0.0.1:{}/roots/0", self.management))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }
}

/// Perch's plaintext port.
fn data_port(perch: &Perch) -> u16 {
    perch.data_url.rsplit(':').next().unwrap().parse().unwrap()
}

/// The `[tls]` table of a node whose ACME directory is `directory`.
fn acme_config(directory: &str, ca_file: &Path) -> String {
    format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\n[tls.acme]\ndirectory = \"{directory}\"\nemail = \"ops@shop.test\"\nca_file = {:?}\nbackoff_min_seconds = 1\nbackoff_max_seconds = 4\n",
        ca_file.display().to_string()
    )
}

#[test]
fn acme_issues_serves_and_renews_certificates_for_routed_hosts_only() {
    if !perch_tests::require_program("pebble")
        || !perch_tests::require_program("pebble-challtestsrv")
    {
        return;
    }
    // Pebble's ports are fixed in its config, and its config names Perch's
    // plaintext port: start Perch first, on a CA address chosen now.
    let bootstrap = TestCa::new("unused");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("pebble-ca.pem");
    std::fs::write(&ca_file, bootstrap.pem()).unwrap();
    let port = free_port();
    let directory = format!("https://127.0.0.1:{port}/dir");
    let perch = Perch::start_with(&acme_config(&directory, &ca_file));
    // Short-lived certificates: renewal comes due 2/3 in, after ~20 s.
    let pebble = Pebble::start_on(port, data_port(&perch), 30);
    assert_eq!(pebble.directory, directory);
    std::fs::copy(&pebble.ca_file, &ca_file).unwrap();
    let issued = || perch.metric("perch_acme_orders_total", "result=\"issued\"");
    let placed = || issued() + perch.metric("perch_acme_orders_total", "result=\"failed\"");
    assert_eq!(placed(), 0.0, "no route, no order");

    // A handshake for a host nobody routes orders nothing.
    let addr = tls_addr(&perch);
    let root = pebble.root_pem();
    let trusting = |hosts: &[&str]| {
        let mut b = Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes()).unwrap())
            .tls_info(true)
            .timeout(Duration::from_secs(30));
        for h in hosts {
            b = b.resolve(h, addr);
        }
        b.build().unwrap()
    };
    for _ in 0..3 {
        assert!(
            trusting(&["random.test"])
                .get(format!("https://random.test:{}/", addr.port()))
                .send()
                .is_err()
        );
    }

    // The first route of a host: a certificate, served without a restart.
    perch.deploy("shop", "hello", guests::HELLO, "shop.test");
    let url = format!("https://shop.test:{}/", addr.port());
    let mut first = Vec::new();
    eventually(
        "a certificate for shop.test is issued and served",
        || match trusting(&["shop.test"]).get(&url).send() {
            Ok(resp) if resp.status() == 200 => {
                first = peer_certificate(&resp);
                true
            }
            _ => false,
        },
    );
    perch.wait_for_log_line(&["ACME certificate issued", "shop.test"]);
    assert_eq!(issued(), 1.0);
    let listed = perch.admin().get("/v1/tenants/shop/certificates").ok();
    assert_eq!(listed["certificates"][0]["host"], "shop.test");
    assert_eq!(listed["certificates"][0]["source"], "acme");
    // The random SNIs ordered nothing.
    assert_eq!(placed(), 1.0);

    // Renewal at two thirds of the lifetime.
    perch.wait_for_log("ACME certificate issued", 2);
    eventually("the renewed certificate is served", || {
        trusting(&["shop.test"])
            .get(&url)
            .send()
            .is_ok_and(|r| peer_certificate(&r) != first)
    });
    assert!(issued() >= 2.0);
    assert_eq!(
        perch.metric("perch_acme_orders_total", "result=\"failed\""),
        0.0
    );
}

#[test]
fn acme_backs_off_while_the_ca_is_down_and_plaintext_keeps_serving() {
    let ca = TestCa::new("nobody");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    // Nothing listens there.
    let directory = format!("https://127.0.0.1:{}/dir", free_port());
    let perch = Perch::start_with(&acme_config(&directory, &ca_file));
    perch.deploy("shop", "hello", guests::HELLO, "shop.test");
    // Each retry waits twice as long as the one before, up to the maximum.
    perch.wait_for_log("ACME order failed", 4);
    let waits: Vec<String> = perch
        .log_lines(&["ACME order failed", "shop.test"])
        .iter()
        .filter_map(|l| {
            let rest = l.split("retry_in_s=").nth(1)?;
            rest.split_whitespace().next().map(str::to_string)
        })
        .collect();
    assert_eq!(waits[..4], ["1", "2", "4", "4"], "{waits:?}");
    assert!(perch.metric("perch_acme_orders_total", "result=\"failed\"") >= 4.0);
    let resp = perch.get("shop.test", "/");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().unwrap(), "Hello, world!\n");
}

/// pebble-challtestsrv as a plain DNS server (A: 127.0.0.1 for every
/// name; TXT records set over its management API), killed when dropped.
struct TestDns {
    child: std::process::Child,
    dns: u16,
    management: u16,
}

impl Drop for TestDns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestDns {
    fn start() -> TestDns {
        let (dns, management) = (free_port(), free_port());
        let child = std::process::Command::new("pebble-challtestsrv")
            .args([
                "-http01",
                "",
                "-tlsalpn01",
                "",
                "-https01",
                "",
                "-defaultIPv6",
                "",
            ])
            .args(["-defaultIPv4", "127.0.0.1"])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-management", &format!("127.0.0.1:{management}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv");
        eventually("the test DNS server answers", || {
            TcpStream::connect(("127.0.0.1", management)).is_ok()
        });
        TestDns {
            child,
            dns,
            management,
        }
    }

    fn set_txt(&self, name: &str, value: &str) {
        let resp = perch_tests::http()
            .post(format!("http://127.0.0.1:{}/set-txt", self.management))
            .body(serde_json::json!({"host": format!("{name}."), "value": value}).to_string())
            .send()
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
    }
}

#[test]
fn verify_hosts_asks_tenants_without_domains_to_prove_a_host_first() {
    use serde_json::json;
    if !perch_tests::require_program("pebble-challtestsrv") {
        return;
    }
    let dns = TestDns::start();
    let perch = Perch::start_with(&format!(
        "[node]\nverify_hosts = true\nverify_dns = \"127.0.0.1:{}\"\n",
        dns.dns
    ));
    let admin = perch.admin();
    admin.put_json("/v1/tenants/free", None).expect_status(201);
    admin
        .put_json(
            "/v1/tenants/owned",
            Some(json!({"domains": ["owned.test"]})),
        )
        .expect_status(201);
    let hello = std::fs::read(guests::HELLO).unwrap();
    for t in ["free", "owned"] {
        admin.upload(t, "hello", &hello).expect_status(201);
    }
    let route = |tenant: &str, host: &str| {
        admin.put_json(
            &format!("/v1/tenants/{tenant}/routes/{host}"),
            Some(json!({"function": "hello"})),
        )
    };
    // Within the tenant's domains: no verification.
    route("owned", "owned.test").expect_status(201);
    // Outside: refused until verified, with what to do.
    let why = route("free", "shop.test").expect_error(403, "host_not_verified");
    assert!(why.contains("verifications/shop.test"), "{why}");

    let v = admin
        .put_json("/v1/tenants/free/verifications/shop.test", None)
        .expect_status(201);
    let token = v["token"].as_str().unwrap().to_string();
    assert_eq!(v["status"], "pending");
    assert_eq!(v["dns"]["name"], "_perch-verify.shop.test");
    assert_eq!(
        v["http"]["url"],
        format!("http://shop.test/.well-known/perch-verify/{token}")
    );
    // Asking again gives the same token.
    let again = admin
        .put_json("/v1/tenants/free/verifications/shop.test", None)
        .expect_status(200);
    assert_eq!(again["token"], token.as_str());
    // Nothing published yet: the check says what it found.
    let why = admin
        .post_json("/v1/tenants/free/verifications/shop.test/check", json!({}))
        .expect_error(422, "verification_failed");
    assert!(why.contains("no TXT record"), "{why}");
    route("free", "shop.test").expect_error(403, "host_not_verified");

    // A TXT record with another value is not enough; the token is.
    dns.set_txt("_perch-verify.shop.test", "something else");
    admin
        .post_json("/v1/tenants/free/verifications/shop.test/check", json!({}))
        .expect_error(422, "verification_failed");
    dns.set_txt("_perch-verify.shop.test", &token);
    let done = admin
        .post_json("/v1/tenants/free/verifications/shop.test/check", json!({}))
        .expect_status(200);
    assert_eq!(done["status"], "verified");
    assert_eq!(done["method"], "dns");
    // Now the route binds, and a wildcard under the verified host too.
    route("free", "shop.test").expect_status(201);
    route("free", "*.shop.test").expect_status(201);
    assert_eq!(perch.get("shop.test", "/").status(), 200);
    let listed = admin.get("/v1/tenants/free/verifications").ok();
    assert_eq!(listed["verifications"][0]["status"], "verified");

    // Over HTTP: the host's current server (here on 127.0.0.1:80, where the
    // test DNS sends every name) answers the token.
    let Ok(server) = std::net::TcpListener::bind("127.0.0.1:80") else {
        eprintln!("note: 127.0.0.1:80 is taken; the HTTP verification was not tried");
        return;
    };
    let v = admin
        .put_json("/v1/tenants/free/verifications/web.test", None)
        .expect_status(201);
    let token = v["token"].as_str().unwrap().to_string();
    let served = token.clone();
    let origin = std::thread::spawn(move || {
        let (mut conn, _) = server.accept().unwrap();
        let mut head = [0u8; 2048];
        let n = conn.read(&mut head).unwrap();
        let head = String::from_utf8_lossy(&head[..n]).to_string();
        let body = if head.starts_with(&format!("GET /.well-known/perch-verify/{served} ")) {
            served
        } else {
            "wrong path".into()
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(resp.as_bytes()).unwrap();
        head
    });
    let done = admin
        .post_json("/v1/tenants/free/verifications/web.test/check", json!({}))
        .expect_status(200);
    assert_eq!(done["method"], "http");
    let head = origin.join().unwrap();
    assert!(
        head.to_ascii_lowercase().contains("host: web.test"),
        "{head}"
    );
    route("free", "web.test").expect_status(201);
}
