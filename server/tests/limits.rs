//! Per-IP and global limits before the upgrade (HTTP 429 and 503, counted
//! in `/metrics`), and `X-Forwarded-For` from trusted proxies only. The
//! counters are read on a metrics listener of their own, which the limits
//! do not apply to.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use signald::Config;

use crate::util::{self, Server, eventually, start_with_metrics, try_connect};

/// Everything off but what a test turns on.
fn unlimited() -> Config {
    Config {
        max_conns_per_ip: 0,
        max_handshakes_per_ip: 0,
        max_handshakes: 0,
        registration_rate: 0.0,
        ..Config::default()
    }
}

async fn refused(srv: &Server, reason: &str) -> f64 {
    srv.metric(&format!("signald_refused_total{{reason=\"{reason}\"}}"))
        .await
}

#[tokio::test]
async fn a_herd_from_one_address_gets_429_past_the_connection_limit() {
    let srv = start_with_metrics(Config {
        max_conns_per_ip: 8,
        ..unlimited()
    })
    .await;
    let mut herd = Vec::new();
    for _ in 0..8 {
        herd.push(srv.client("").await);
    }
    for _ in 0..3 {
        assert_eq!(try_connect(&srv, "").await.err(), Some(429));
    }
    // Plain HTTP counts as a connection too, and is refused the same way.
    let (status, _) = srv.http_get("/healthz").await;
    assert!(status.contains("429"), "{status}");
    assert_eq!(refused(&srv, "conns_per_ip").await, 4.0);
    // Another address is not affected.
    let other = util::connect_from("127.0.0.2", srv.addr).await;
    util::upgrade_on(other, &srv.url(""), &[]).await.unwrap();
    // A connection that ends gives its place back.
    drop(herd.pop());
    eventually("a place is free again", || async {
        try_connect(&srv, "").await.is_ok()
    })
    .await;
}

#[tokio::test]
async fn unfinished_handshakes_are_limited_per_address_and_in_all() {
    let srv = start_with_metrics(Config {
        max_handshakes_per_ip: 4,
        max_handshakes: 6,
        ..unlimited()
    })
    .await;
    // Four connections that send half a head and wait.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    eventually("four handshakes in progress", || async {
        srv.metric("signald_handshakes").await == 4.0
    })
    .await;
    assert_eq!(try_connect(&srv, "").await.err(), Some(429));
    let (status, _) = srv.http_get("/healthz").await;
    assert!(status.contains("429"), "{status}");
    assert_eq!(refused(&srv, "handshakes_per_ip").await, 2.0);
    // From another address: two more fit in the global limit, then 503.
    for _ in 0..2 {
        let mut s = util::connect_from("127.0.0.2", srv.addr).await;
        s.write_all(b"GET /ws HTTP/1.1\r\n").await.unwrap();
        slow.push(s);
    }
    eventually("six handshakes in progress", || async {
        srv.metric("signald_handshakes").await == 6.0
    })
    .await;
    // A newcomer is not refused: the oldest handshake of the address
    // holding the most (127.0.0.1, four) is shed to make room.
    let s = util::connect_from("127.0.0.3", srv.addr).await;
    let (status, _) = util::http_on(s, b"GET /healthz HTTP/1.1\r\n\r\n").await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(srv.metric("signald_handshakes_shed_total").await, 1.0);
    assert_eq!(refused(&srv, "handshakes").await, 0.0);
    let mut shed = slow.remove(0);
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(
        util::WAIT,
        tokio::io::AsyncReadExt::read(&mut shed, &mut buf),
    )
    .await
    .expect("the oldest was closed")
    .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    // Finishing a head ends its handshake; giving up does too.
    let first = slow.remove(0);
    let (status, _) = util::http_on(first, b"\r\n").await;
    assert!(status.contains("426"), "{status}");
    drop(slow);
    eventually("no handshake in progress", || async {
        srv.metric("signald_handshakes").await == 0.0
    })
    .await;
    try_connect(&srv, "").await.unwrap();
}

/// Handshakes spread evenly (one per address) are not shed: the
/// newcomer past the global limit gets 503.
#[tokio::test]
async fn evenly_spread_handshakes_refuse_the_newcomer_with_503() {
    let srv = start_with_metrics(Config {
        max_handshakes: 3,
        ..unlimited()
    })
    .await;
    let mut slow = Vec::new();
    for from in ["127.0.0.4", "127.0.0.5", "127.0.0.6"] {
        let mut s = util::connect_from(from, srv.addr).await;
        s.write_all(b"GET /ws HTTP/1.1\r\n").await.unwrap();
        slow.push(s);
    }
    eventually("three handshakes in progress", || async {
        srv.metric("signald_handshakes").await == 3.0
    })
    .await;
    let s = util::connect_from("127.0.0.7", srv.addr).await;
    let (status, _) = util::http_on(s, b"GET /healthz HTTP/1.1\r\n\r\n").await;
    assert!(status.contains("503"), "{status}");
    assert_eq!(refused(&srv, "handshakes").await, 1.0);
    assert_eq!(srv.metric("signald_handshakes_shed_total").await, 0.0);
    drop(slow);
}

#[tokio::test]
async fn registrations_per_second_are_limited_per_address() {
    let srv = start_with_metrics(Config {
        // A burst of three, then one every thousand seconds.
        registration_rate: 0.001,
        registration_burst: 3,
        ..unlimited()
    })
    .await;
    let mut kept = Vec::new();
    for _ in 0..3 {
        kept.push(try_connect(&srv, "").await.unwrap());
    }
    // Closing does not give a registration back.
    drop(kept);
    assert_eq!(try_connect(&srv, "").await.err(), Some(429));
    // Only upgrades count: plain HTTP is still served.
    assert!(srv.http_get("/healthz").await.0.contains("200"));
    assert_eq!(refused(&srv, "registrations_per_ip").await, 1.0);
    let other = util::connect_from("127.0.0.2", srv.addr).await;
    util::upgrade_on(other, &srv.url(""), &[]).await.unwrap();
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
    let srv = start_with_metrics(Config {
        max_conns_per_ip: 1,
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
        ..unlimited()
    })
    .await;
    let url = srv.url("");
    let via_proxy = |xff: &'static str| {
        let url = url.clone();
        async move {
            let s = TcpStream::connect(srv.addr).await.unwrap();
            util::upgrade_on(s, &url, &[("X-Forwarded-For", xff)]).await
        }
    };
    // The proxy holds two connections although the limit is one: each is
    // counted for the client it names.
    let _a = via_proxy("198.51.100.1").await.unwrap();
    let _b = via_proxy("198.51.100.2").await.unwrap();
    // The right-most untrusted address counts, whatever the client wrote
    // left of it.
    assert_eq!(
        via_proxy("203.0.113.9, 198.51.100.1").await.err(),
        Some(429)
    );
    // A trusted hop right of the client is skipped.
    assert_eq!(via_proxy("198.51.100.2, 127.0.0.1").await.err(), Some(429));
    // From an untrusted peer the header proves nothing: 127.0.0.2 itself
    // is the client, and it has its one connection after the first.
    let untrusted = |xff: &'static str| {
        let url = url.clone();
        async move {
            let s = util::connect_from("127.0.0.2", srv.addr).await;
            util::upgrade_on(s, &url, &[("X-Forwarded-For", xff)]).await
        }
    };
    let _c = untrusted("198.51.100.3").await.unwrap();
    assert_eq!(untrusted("198.51.100.4").await.err(), Some(429));
    assert_eq!(refused(&srv, "conns_per_ip").await, 3.0);
}

#[tokio::test]
async fn metrics_listener_serves_metrics_and_the_main_one_does_not() {
    let srv = start_with_metrics(Config::default()).await;
    let _a = srv.client("").await;
    let metrics = srv.metrics_addr.unwrap();
    let (status, body) = util::http_get(metrics, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("\nsignald_clients 1\n"), "{body}");
    assert!(util::http_get(metrics, "/healthz").await.0.contains("200"));
    assert!(util::http_get(metrics, "/ws").await.0.contains("404"));
    assert!(srv.http_get("/metrics").await.0.contains("404"));
    assert!(srv.http_get("/healthz").await.0.contains("200"));
}
