//! Tests of `egress.rs`.
use super::*;

/// A loopback port nothing listens on (bound, then closed).
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn dial_goes_on_to_the_next_address_when_one_refuses() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = listener.local_addr().unwrap();
    let refused = closed_port();
    let accept = tokio::spawn(async move { listener.accept().await.map(|(_, peer)| peer) });
    let stream = dial(&[refused, open], None, Duration::from_secs(5))
        .await
        .expect("the second address accepts");
    drop(stream);
    accept
        .await
        .unwrap()
        .expect("the listener saw the connection");

    // Every address refusing is the guest's `connection-refused`.
    let err = dial(
        &[closed_port(), closed_port()],
        None,
        Duration::from_secs(5),
    )
    .await
    .err()
    .expect("nothing listens");
    assert!(
        matches!(err, HttpError::ConnectionRefused),
        "unexpected error: {err:?}"
    );
}

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
