//! Concurrency: overlapping disconnects, many clients, a reader that stalls.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use signald::Config;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{self, Client, Server, start};

/// Reads frames until the answer to a probe (`self_pair`, which nothing
/// else in these tests provokes); returns the frames before it.
pub async fn frames_until_probe(c: &mut Client) -> Vec<Value> {
    let id = c.id.clone();
    c.send(json!({"type":"pair","peer_id":id})).await;
    let mut seen = Vec::new();
    loop {
        let v = c.recv().await;
        if v["type"] == "error" && v["code"] == "self_pair" {
            return seen;
        }
        seen.push(v);
    }
}

pub fn both_sides_unpair_at_the_same_instant_cfg() -> Config {
    Config::default()
}

#[tokio::test]
async fn both_sides_unpair_at_the_same_instant() {
    both_sides_unpair_at_the_same_instant_on(
        start(both_sides_unpair_at_the_same_instant_cfg()).await,
    )
    .await;
}

pub async fn both_sides_unpair_at_the_same_instant_on(srv: Server) {
    for round in 0..100 {
        let (a_id, b_id) = (format!("a{round}"), format!("b{round}"));
        let (mut a, mut b) = srv.pair(&a_id, &b_id).await;
        let unpair = json!({"type":"unpair"}).to_string();
        let (ra, rb) = tokio::join!(
            a.ws.send(Message::text(unpair.clone())),
            b.ws.send(Message::text(unpair))
        );
        ra.unwrap();
        rb.unwrap();
        // One unpair wins; the other side gets exactly one notice, and its own
        // unpair then finds no pairing.
        let fa = frames_until_probe(&mut a).await;
        let fb = frames_until_probe(&mut b).await;
        let notices = |f: &[Value]| {
            f.iter()
                .filter(|v| v["type"] == "peer_disconnected")
                .count()
        };
        assert_eq!(
            notices(&fa) + notices(&fb),
            1,
            "round {round}: {fa:?} {fb:?}"
        );
        for (f, peer) in [(&fa, &b_id), (&fb, &a_id)] {
            if notices(f) == 1 {
                assert_eq!(
                    f[0],
                    json!({"type":"peer_disconnected","peer_id":peer,"reason":"unpaired"})
                );
                assert_eq!(f[1]["code"], "not_paired", "{f:?}");
                assert_eq!(f.len(), 2);
            } else {
                assert!(f.is_empty(), "{f:?}");
            }
        }
    }
}

pub fn one_leaves_while_the_other_unpairs_cfg() -> Config {
    Config::default()
}

#[tokio::test]
async fn one_leaves_while_the_other_unpairs() {
    one_leaves_while_the_other_unpairs_on(start(one_leaves_while_the_other_unpairs_cfg()).await)
        .await;
}

pub async fn one_leaves_while_the_other_unpairs_on(srv: Server) {
    for round in 0..100 {
        let (a_id, b_id) = (format!("a{round}"), format!("b{round}"));
        let (mut a, mut b) = srv.pair(&a_id, &b_id).await;
        let (ra, rb) = tokio::join!(
            a.ws.close(None),
            b.ws.send(Message::text(json!({"type":"unpair"}).to_string()))
        );
        ra.unwrap();
        rb.unwrap();
        // Either b's unpair won (no notice, unpair accepted) or a's close
        // won (one `left` notice, then b's unpair finds nothing). Never two.
        let fb = frames_until_probe(&mut b).await;
        match fb.as_slice() {
            [] => {}
            [n, e] => {
                assert_eq!(
                    *n,
                    json!({"type":"peer_disconnected","peer_id":a_id,"reason":"left"})
                );
                assert_eq!(e["code"], "not_paired");
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
}

pub fn both_leave_at_once_and_the_ids_are_freed_cfg() -> Config {
    Config::default()
}

#[tokio::test]
async fn both_leave_at_once_and_the_ids_are_freed() {
    both_leave_at_once_and_the_ids_are_freed_on(
        start(both_leave_at_once_and_the_ids_are_freed_cfg()).await,
    )
    .await;
}

pub async fn both_leave_at_once_and_the_ids_are_freed_on(srv: Server) {
    for round in 0..50 {
        let (mut a, mut b) = srv.pair("a", "b").await;
        let (ra, rb) = tokio::join!(a.ws.close(None), b.ws.close(None));
        ra.unwrap();
        rb.unwrap();
        // Each side sees at most the close reply; neither gets two notices.
        for ws in [&mut a.ws, &mut b.ws] {
            let mut notices = 0;
            while let Ok(v) = util::next_frame(ws, true).await {
                assert_eq!(v["type"], "peer_disconnected", "round {round}: {v}");
                notices += 1;
            }
            assert!(notices <= 1);
        }
        // Registration is atomic with removal: wait until both IDs are free.
        util::eventually("clients at zero", || async {
            srv.metric("signald_clients").await == 0.0
        })
        .await;
        assert_eq!(srv.metric("signald_pairings").await, 0.0);
    }
}

#[tokio::test]
async fn many_clients_pair_concurrently() {
    let srv = start(Config {
        max_clients: 1000,
        // 500 handshakes at once from 127.0.0.1: the per-address limit
        // (64 by default) is not what this tests.
        max_handshakes_per_ip: 0,
        ..Config::default()
    })
    .await;
    let srv = std::sync::Arc::new(srv);
    let mut tasks = Vec::new();
    for i in 0..250 {
        let srv = srv.clone();
        tasks.push(tokio::spawn(async move {
            let (a_id, b_id) = (format!("a{i}"), format!("b{i}"));
            let (mut a, mut b) = srv.pair(&a_id, &b_id).await;
            a.send(json!({"type":"offer","sdp":format!("o{i}")})).await;
            assert_eq!(
                b.recv().await,
                json!({"type":"offer","sdp":format!("o{i}"),"from":a_id})
            );
            b.send(json!({"type":"answer","sdp":format!("a{i}")})).await;
            assert_eq!(
                a.recv().await,
                json!({"type":"answer","sdp":format!("a{i}"),"from":b_id})
            );
            (a, b)
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    assert_eq!(srv.metric("signald_clients").await, 500.0);
    assert_eq!(srv.metric("signald_pairings").await, 250.0);
    assert_eq!(srv.metric("signald_frames_relayed_total").await, 500.0);
}

#[tokio::test]
async fn a_stuck_reader_is_dropped_and_nobody_else_stalls() {
    let srv = start(a_stuck_reader_is_dropped_and_nobody_else_stalls_cfg()).await;
    a_stuck_reader_is_dropped_and_nobody_else_stalls_on(srv).await;
}

pub fn a_stuck_reader_is_dropped_and_nobody_else_stalls_cfg() -> Config {
    Config {
        max_queue: 16,
        rate_limit: 1_000_000,
        rate_burst: 1_000_000,
        rate_limit_bytes: u32::MAX,
        rate_burst_bytes: u32::MAX,
        close_grace: Duration::from_millis(200),
        ..Config::default()
    }
}

pub async fn a_stuck_reader_is_dropped_and_nobody_else_stalls_on(srv: Server) {
    // `stuck` has a tiny receive buffer and never reads after `paired`.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let addr = srv.next_addr();
    let stream = sock.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        util::url_at(addr, "id=stuck"),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    let mut stuck = Client {
        ws,
        id: "stuck".into(),
    };
    stuck.recv().await;
    let mut flooder = srv.named("flooder").await;
    flooder.send(json!({"type":"pair","peer_id":"stuck"})).await;
    flooder.recv().await;
    stuck.recv().await;
    let (mut c, mut d) = srv.pair("c", "d").await;
    let sdp = "x".repeat(32 * 1024);
    let frame = json!({"type":"offer","sdp":sdp}).to_string();
    // Flood until told that the stuck peer is gone; the flooder never blocks
    // for long because the server keeps reading it.
    let flood = async {
        for _ in 0..2000 {
            flooder.ws.feed(Message::text(frame.clone())).await.unwrap();
        }
        flooder.ws.flush().await.unwrap();
    };
    tokio::time::timeout(util::WAIT, flood)
        .await
        .expect("flooder stalled");
    assert_eq!(
        flooder.recv().await,
        json!({"type":"peer_disconnected","peer_id":"stuck","reason":"left"})
    );
    // Meanwhile others relay as usual.
    c.send(json!({"type":"offer","sdp":"fine"})).await;
    assert_eq!(d.recv().await["sdp"], "fine");
    assert_eq!(srv.metric("signald_slow_reader_drops_total").await, 1.0);
    flooder.probe_unpaired().await;
    drop(stuck);
}
