//! Memory under a slow reader: every outbox is bounded in bytes, all of
//! them together by the global budget, and what they held is given back.
//! Measured with the server's own accounting (`signald_buffered_bytes`);
//! the process's RSS is the benchmark's business. A reader that pauses
//! within its bound loses nothing: the bound's other side.
//!
//! The three policies both backends share (`directory::policy`): a relay
//! into a peer that does not read, the budget running out, a client's own
//! frames overflowing its queue. Each runs on both backends: in memory,
//! and on a one-node cluster, where both clients are on the same node and
//! the cluster's own path drops them. The peer is told at once on both.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use signald::Config;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{self, Client, Server, eventually, start, start_cluster_of};

/// A client with a tiny receive buffer that reads its `welcome` and then
/// only what the test asks it to.
async fn stuck(srv: &Server, id: &str) -> Client {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let addr = srv.next_addr();
    let stream = sock.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        util::url_at(addr, &format!("id={id}")),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    let mut c = Client { ws, id: id.into() };
    assert_eq!(c.recv().await["type"], "welcome");
    c
}

/// An offer of `len` bytes of JSON.
fn offer(len: usize) -> String {
    let head = r#"{"type":"offer","sdp":""#;
    let tail = r#""}"#;
    format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()))
}

/// `flooder` pairs with `target`, which reads its `paired` and then nothing.
async fn pair_with(flooder: &mut Client, target: &mut Client) {
    flooder
        .send(json!({"type":"pair","peer_id":target.id}))
        .await;
    assert_eq!(flooder.recv().await["type"], "paired");
    assert_eq!(target.recv().await["type"], "paired");
}

async fn flood(c: &mut Client, frame: &str, n: usize) {
    let send = async {
        for _ in 0..n {
            c.ws.feed(Message::text(frame.to_string())).await.unwrap();
        }
        c.ws.flush().await.unwrap();
    };
    tokio::time::timeout(util::WAIT, send)
        .await
        .expect("the flooder stalled: signald stopped reading it");
}

async fn buffered_back_to_zero(srv: &Server) {
    // Only small frames (notices, pings) may be in flight by then.
    eventually("buffered bytes back to ~0", || async {
        srv.metric("signald_buffered_bytes").await <= 1024.0
    })
    .await;
}

/// Runs each policy test on both backends.
macro_rules! on_both {
    ($($test:ident($cfg:expr);)*) => {
        mod in_memory {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::start($cfg).await).await;
                }
            )*
        }
        mod on_a_cluster_node {
            $(
                #[tokio::test]
                async fn $test() {
                    let test = concat!("memory_", stringify!($test));
                    if let Some(srv) = super::start_cluster_of(test, $cfg, 1).await {
                        super::$test(srv).await;
                    }
                }
            )*
        }
    };
}

on_both! {
    a_reader_that_pauses_within_its_bound_gets_every_frame_in_order(super::pause_cfg());
    a_slow_reader_is_dropped_by_bytes_and_its_peer_told_at_once(super::relay_cfg());
    many_slow_readers_stay_within_the_global_budget(super::budget_cfg());
    a_client_overflowing_its_own_queue_is_dropped_and_its_peer_told(super::own_cfg());
}

fn relay_cfg() -> Config {
    Config {
        close_grace: Duration::from_millis(200),
        // The sender's own byte budget out of the way (it is tested
        // below): what is tested is the reader's bound.
        rate_limit_bytes: u32::MAX,
        rate_burst_bytes: u32::MAX,
        ..Config::default()
    }
}

/// The other side of the bound: a peer that stops reading for a while,
/// until its socket takes no more and frames wait in its outbox, loses
/// none of them once it reads again (signald's writes that would block
/// are finished later, in order, fragments and all).
async fn a_reader_that_pauses_within_its_bound_gets_every_frame_in_order(srv: Server) {
    let mut target = stuck(&srv, "paused").await;
    let mut sender = srv.named("sender").await;
    pair_with(&mut sender, &mut target).await;
    // 128 offers of 64 KiB (each written as eight fragments): 8 MiB, under
    // the bound, twice what signald's socket may take (its send buffer
    // grows to 4 MiB at most, `tcp_wmem`; the reader's takes 4 KiB).
    const N: usize = 128;
    let frames: Vec<String> = (0..N)
        .map(|i| {
            let head = format!(r#"{{"type":"offer","sdp":"{i:03}"#);
            format!("{head}{}\"}}", "x".repeat(64 * 1024 - head.len() - 2))
        })
        .collect();
    for f in &frames {
        flood(&mut sender, f, 1).await;
    }
    eventually("frames waiting in the paused reader's outbox", || async {
        srv.metric("signald_buffered_bytes").await >= (2 << 20) as f64
    })
    .await;
    for (i, f) in frames.iter().enumerate() {
        let v = target.recv().await;
        let sent: serde_json::Value = serde_json::from_str(f).unwrap();
        assert!(v["sdp"] == sent["sdp"], "frame {i} is not the {i}th sent");
        assert_eq!(v["from"], "sender", "frame {i}");
    }
    buffered_back_to_zero(&srv).await;
    assert_eq!(srv.metric("signald_slow_reader_drops_total").await, 0.0);
    // Still paired, both ways.
    target
        .send(json!({"type":"answer","sdp":"after the pause"}))
        .await;
    assert_eq!(
        sender.recv().await,
        json!({"type":"answer","sdp":"after the pause","from":"paused"})
    );
}

fn pause_cfg() -> Config {
    Config {
        max_queue_bytes: 16 << 20,
        ..relay_cfg()
    }
}

/// Relaying into a peer's outbox: a peer that does not read is dropped.
async fn a_slow_reader_is_dropped_by_bytes_and_its_peer_told_at_once(srv: Server) {
    let limit = Config::default().max_queue_bytes;
    let mut target = stuck(&srv, "stuck").await;
    let mut flooder = srv.named("flooder").await;
    pair_with(&mut flooder, &mut target).await;
    // 150 offers of 64 KiB: under the rate limit's burst and under the
    // frame bound (256), 9.6 MB in all: far more than the socket takes.
    let frame = offer(64 * 1024);
    flood(&mut flooder, &frame, 150).await;
    // Told at once: the very next frame, no ping timeout in between.
    assert_eq!(
        flooder.recv().await,
        json!({"type":"peer_disconnected","peer_id":"stuck","reason":"left"})
    );
    let peak = srv.metric("signald_buffered_bytes_peak").await;
    assert!(peak > 0.0);
    // The reader's bound, plus the few small frames of the others.
    assert!(
        peak <= (limit + 4096) as f64,
        "buffered {peak} bytes at the peak, the bound is {limit}"
    );
    assert_eq!(srv.metric("signald_slow_reader_drops_total").await, 1.0);
    assert_eq!(srv.metric("signald_budget_evictions_total").await, 0.0);
    buffered_back_to_zero(&srv).await;
    // The flooder is unpaired and served as before.
    flooder.probe_unpaired().await;
    drop(target);
}

const BUDGET: usize = 512 * 1024;

fn budget_cfg() -> Config {
    Config {
        // Each reader alone may hold twice the budget: only the budget
        // stops them, by dropping whoever holds the most.
        max_queue_bytes: 2 * BUDGET,
        max_buffered_bytes: BUDGET,
        close_grace: Duration::from_millis(200),
        rate_limit_bytes: u32::MAX,
        rate_burst_bytes: u32::MAX,
        ..Config::default()
    }
}

/// Making room: when all outboxes together pass the budget, whoever holds
/// the most goes.
async fn many_slow_readers_stay_within_the_global_budget(srv: Server) {
    let budget = BUDGET;
    let frame_len = 64 * 1024;
    let (mut c, mut d) = srv.pair("c", "d").await;
    let mut pairs = Vec::new();
    for i in 0..4 {
        let mut target = stuck(&srv, &format!("stuck{i}")).await;
        let mut flooder = srv.named(&format!("flooder{i}")).await;
        pair_with(&mut flooder, &mut target).await;
        pairs.push((flooder, target));
    }
    let frame = offer(frame_len);
    // All four at once, 9.6 MB each: the kernel takes a few MB per socket
    // on loopback, the rest has to wait in signald.
    futures_util::future::join_all(
        pairs
            .iter_mut()
            .map(|(flooder, _)| flood(flooder, &frame, 150)),
    )
    .await;
    for (i, (flooder, _)) in pairs.iter_mut().enumerate() {
        assert_eq!(
            flooder.recv().await,
            json!({"type":"peer_disconnected","peer_id":format!("stuck{i}"),"reason":"left"})
        );
    }
    let peak = srv.metric("signald_buffered_bytes_peak").await;
    // The budget, passed by at most the frame that tipped it over.
    assert!(
        peak <= (budget + frame_len + 4096) as f64,
        "buffered {peak} bytes at the peak, the budget is {budget}"
    );
    assert_eq!(srv.metric("signald_budget_evictions_total").await, 4.0);
    assert_eq!(srv.metric("signald_slow_reader_drops_total").await, 0.0);
    buffered_back_to_zero(&srv).await;
    // A pairing that reads was never touched.
    c.send(json!({"type":"offer","sdp":"still here"})).await;
    assert_eq!(d.recv().await["sdp"], "still here");
    drop(pairs);
}

fn own_cfg() -> Config {
    Config {
        // Every frame the client sends earns it an error; none is dropped
        // by the rate limit, which would close it for another reason.
        rate_limit: u32::MAX,
        rate_burst: u32::MAX,
        rate_limit_bytes: u32::MAX,
        rate_burst_bytes: u32::MAX,
        max_queue: 64,
        close_grace: Duration::from_millis(200),
        ..Config::default()
    }
}

/// A client's own frames: one that keeps asking and never reads its
/// answers is a slow reader like any other, and its peer is told.
async fn a_client_overflowing_its_own_queue_is_dropped_and_its_peer_told(srv: Server) {
    let mut asker = stuck(&srv, "asker").await;
    let mut peer = srv.named("peer").await;
    pair_with(&mut peer, &mut asker).await;
    // 50,000 unknown types, 50,000 `unknown_type` errors of ~80 bytes:
    // more than the kernel holds for a reader with a 4 KiB window.
    let bad = r#"{"type":"nope"}"#;
    let send = async {
        for _ in 0..50_000 {
            if asker.ws.feed(Message::text(bad)).await.is_err() {
                break;
            }
        }
        let _ = asker.ws.flush().await;
    };
    tokio::time::timeout(util::WAIT, send)
        .await
        .expect("the asker was read");
    assert_eq!(
        peer.recv().await,
        json!({"type":"peer_disconnected","peer_id":"asker","reason":"left"})
    );
    assert_eq!(srv.metric("signald_slow_reader_drops_total").await, 1.0);
    // Only errors, then the close that says why.
    let closed = loop {
        match util::next_frame(&mut asker.ws, true).await {
            Ok(v) => assert_eq!(v["code"], "unknown_type", "{v}"),
            Err(code) => break code,
        }
    };
    assert_eq!(closed, Some(1008));
    buffered_back_to_zero(&srv).await;
    peer.probe_unpaired().await;
}

#[tokio::test]
async fn a_large_message_reaches_a_reader_whole() {
    a_large_message_reaches_a_reader_whole_on(
        start(a_large_message_reaches_a_reader_whole_cfg()).await,
    )
    .await;
}

pub fn a_large_message_reaches_a_reader_whole_cfg() -> Config {
    Config::default()
}

pub async fn a_large_message_reaches_a_reader_whole_on(srv: Server) {
    // Sent as fragments; the client sees one message, byte for byte,
    // multi-byte characters across the fragment boundaries included.
    let (mut a, mut b) = srv.pair("a", "b").await;
    let sdp: String = "é€😀x".repeat(6000);
    a.send(json!({"type":"offer","sdp":sdp})).await;
    let got = b.recv().await;
    assert_eq!(got["sdp"].as_str().map(str::len), Some(sdp.len()));
    assert_eq!(got["sdp"], sdp);
    assert_eq!(got["from"], "a");
    // Control characters grow six-fold in JSON: still one message.
    let ctl = "\u{1}".repeat(10_000);
    a.send(json!({"type":"answer","sdp":ctl})).await;
    assert_eq!(b.recv().await["sdp"], ctl);
    buffered_back_to_zero(&srv).await;
}

/// Issue 21's remote kick: an anonymous client pairs with an idle victim
/// and bursts 150 offers of 60 KB. The burst used to land in the victim's
/// queue and get the victim dropped as a slow reader. The sender now pays:
/// its frames over its byte budget are dropped with `rate_limited`, it is
/// closed with 1008 once it goes on, and the victim stays, told that its
/// peer left.
#[tokio::test]
async fn a_burst_is_paid_by_its_sender_not_by_its_peer() {
    let srv = start(a_burst_is_paid_by_its_sender_not_by_its_peer_cfg()).await;
    a_burst_is_paid_by_its_sender_not_by_its_peer_on(srv).await;
}

pub fn a_burst_is_paid_by_its_sender_not_by_its_peer_cfg() -> Config {
    Config::default()
}

pub async fn a_burst_is_paid_by_its_sender_not_by_its_peer_on(srv: Server) {
    let mut victim = stuck(&srv, "victim").await;
    let mut attacker = srv.named("attacker").await;
    pair_with(&mut attacker, &mut victim).await;
    let frame = offer(60_000);
    let burst = async {
        for _ in 0..150 {
            // The server closes the attacker part way: later writes fail.
            if attacker
                .ws
                .feed(Message::text(frame.clone()))
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = attacker.ws.flush().await;
    };
    tokio::time::timeout(util::WAIT, burst)
        .await
        .expect("the attacker was read");
    let mut limited = 0;
    let closed = loop {
        match util::next_frame(&mut attacker.ws, true).await {
            Ok(v) if v["code"] == "rate_limited" => limited += 1,
            Ok(v) => panic!("unexpected {v}"),
            Err(code) => break code,
        }
    };
    assert_eq!(closed, Some(1008), "after {limited} rate_limited");
    assert!(limited >= 1);
    // The victim held a few frames at most, read them late, and is fine.
    assert_eq!(srv.metric("signald_slow_reader_drops_total").await, 0.0);
    let mut offers = 0;
    loop {
        let v = victim.recv().await;
        match v["type"].as_str() {
            Some("offer") => offers += 1,
            Some("peer_disconnected") => {
                assert_eq!(v["reason"], "left");
                break;
            }
            _ => panic!("unexpected {v}"),
        }
    }
    assert!((1..=5).contains(&offers), "{offers} offers got through");
    victim.probe_unpaired().await;
}
