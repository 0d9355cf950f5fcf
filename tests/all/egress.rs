//! Outbound requests from guests: refused destinations, the operator's
//! exemptions, and a function's allow-list. Only loopback and this host's
//! own addresses are ever dialled.
use std::io::{Read, Write};
use std::net::TcpListener;

use perch_tests::{Perch, guests};
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
        let start = std::time::Instant::now();
        while refusals(&perch) < i + 1 {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(5),
                "{url} not refused by policy: {body}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
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
    assert!(
        perch
            .logs()
            .contains("host not in the function's outbound.allow")
    );
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
