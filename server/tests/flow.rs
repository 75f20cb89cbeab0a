//! The happy paths: every row of both tables.

use serde_json::json;
use signald::Config;

use crate::util::{self, Server, start, start_default};

#[tokio::test]
async fn welcome_carries_id_timings_and_ice_servers() {
    let cfg = Config {
        ice_servers: vec![
            p2p_proto::signal::IceServer::parse_flag("stun:127.0.0.1:3478").unwrap(),
            p2p_proto::signal::IceServer::parse_flag("turn:127.0.0.1:3478,u,p").unwrap(),
        ],
        ..Config::default()
    };
    let srv = start(cfg).await;
    let mut ws = srv.raw("id=alice").await;
    let w = util::next_frame(&mut ws, false).await.unwrap();
    assert_eq!(
        w,
        json!({"type":"welcome","id":"alice","ping_interval_ms":30000,"ping_timeout_ms":45000,
               "ice_servers":[{"urls":["stun:127.0.0.1:3478"]},
                              {"urls":["turn:127.0.0.1:3478"],"username":"u","credential":"p"}],
               "protocol":1})
    );
}

#[tokio::test]
async fn no_ice_servers_means_an_empty_list() {
    let srv = start_default().await;
    let mut ws = srv.raw("").await;
    let w = util::next_frame(&mut ws, false).await.unwrap();
    assert_eq!(w["ice_servers"], json!([]));
}

pub fn random_ids_are_url_safe_and_distinct_cfg() -> Config {
    Config::default()
}

#[tokio::test]
async fn random_ids_are_url_safe_and_distinct() {
    random_ids_are_url_safe_and_distinct_on(
        start(random_ids_are_url_safe_and_distinct_cfg()).await,
    )
    .await;
}

pub async fn random_ids_are_url_safe_and_distinct_on(srv: Server) {
    let a = srv.client("").await;
    let b = srv.client("token=0123456789abcdef").await;
    assert_ne!(a.id, b.id);
    for id in [&a.id, &b.id] {
        assert!(p2p_proto::signal::valid_id(id) && id.len() >= 8, "{id}");
    }
}

pub fn pair_relay_unpair_cfg() -> Config {
    Config::default()
}

#[tokio::test]
async fn pair_relay_unpair() {
    pair_relay_unpair_on(start(pair_relay_unpair_cfg()).await).await;
}

pub async fn pair_relay_unpair_on(srv: Server) {
    let (mut a, mut b) = srv.pair("a", "b").await;
    a.send(json!({"type":"offer","sdp":"v=0 offer","extra":1}))
        .await;
    assert_eq!(
        b.recv().await,
        json!({"type":"offer","sdp":"v=0 offer","from":"a"})
    );
    b.send(json!({"type":"answer","sdp":"v=0 answer","from":"spoofed"}))
        .await;
    assert_eq!(
        a.recv().await,
        json!({"type":"answer","sdp":"v=0 answer","from":"b"})
    );
    // Only the four members of a candidate, unknown ones stripped, nulls kept.
    a.send(json!({"type":"candidate","candidate":{
        "candidate":"candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host",
        "sdpMid":"0","sdpMLineIndex":0,"usernameFragment":null,"evil":"x"},"x":[1]}))
        .await;
    assert_eq!(
        b.recv().await,
        json!({"type":"candidate","candidate":{
            "candidate":"candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host",
            "sdpMid":"0","sdpMLineIndex":0,"usernameFragment":null},"from":"a"})
    );
    // Without the prefix, and absent optional members, passed on as null.
    b.send(json!({"type":"candidate","candidate":{"candidate":"1 1 udp 1 127.0.0.1 9 typ host"}}))
        .await;
    assert_eq!(
        a.recv().await,
        json!({"type":"candidate","candidate":{"candidate":"1 1 udp 1 127.0.0.1 9 typ host",
            "sdpMid":null,"sdpMLineIndex":null,"usernameFragment":null},"from":"b"})
    );
    b.send(json!({"type":"candidate","candidate":null})).await;
    assert_eq!(
        a.recv().await,
        json!({"type":"candidate","candidate":null,"from":"b"})
    );
    a.send(json!({"type":"pong"})).await;
    a.send(json!({"type":"unpair"})).await;
    assert_eq!(
        b.recv().await,
        json!({"type":"peer_disconnected","peer_id":"a","reason":"unpaired"})
    );
    // Both are free again: b may now pair with a (b is the initiator).
    a.probe_unpaired().await;
    b.send(json!({"type":"pair","peer_id":"a"})).await;
    assert_eq!(
        b.recv().await,
        json!({"type":"paired","peer_id":"a","initiator":true})
    );
    assert_eq!(
        a.recv().await,
        json!({"type":"paired","peer_id":"b","initiator":false})
    );
}

pub fn closing_tells_the_peer_left_cfg() -> Config {
    Config::default()
}

#[tokio::test]
async fn closing_tells_the_peer_left() {
    closing_tells_the_peer_left_on(start(closing_tells_the_peer_left_cfg()).await).await;
}

pub async fn closing_tells_the_peer_left_on(srv: Server) {
    let (a, mut b) = srv.pair("a", "b").await;
    drop(a);
    assert_eq!(
        b.recv().await,
        json!({"type":"peer_disconnected","peer_id":"a","reason":"left"})
    );
    b.probe_unpaired().await;
    // The ID is free again.
    srv.named("a").await;
}

pub fn relay_goes_to_the_current_peer_only_cfg() -> Config {
    Config::default()
}

#[tokio::test]
async fn relay_goes_to_the_current_peer_only() {
    relay_goes_to_the_current_peer_only_on(start(relay_goes_to_the_current_peer_only_cfg()).await)
        .await;
}

pub async fn relay_goes_to_the_current_peer_only_on(srv: Server) {
    let (mut a, mut b) = srv.pair("a", "b").await;
    let mut c = srv.named("c").await;
    a.send(json!({"type":"unpair"})).await;
    b.recv().await;
    a.send(json!({"type":"pair","peer_id":"c"})).await;
    a.recv().await;
    c.recv().await;
    a.send(json!({"type":"offer","sdp":"for c"})).await;
    assert_eq!(c.recv().await["sdp"], "for c");
    // b saw nothing more: its next frame is the answer to its own probe.
    b.probe_unpaired().await;
}

pub fn token_replacement_mid_pairing_cfg() -> Config {
    Config::default()
}

#[tokio::test]
async fn token_replacement_mid_pairing() {
    token_replacement_mid_pairing_on(start(token_replacement_mid_pairing_cfg()).await).await;
}

pub async fn token_replacement_mid_pairing_on(srv: Server) {
    let token = "s3cret-token-0123%2B%26";
    let mut old = srv.client(&format!("id=a&token={token}")).await;
    let mut b = srv.named("b").await;
    old.send(json!({"type":"pair","peer_id":"b"})).await;
    old.recv().await;
    b.recv().await;
    let mut new = srv.client(&format!("id=a&token={token}")).await;
    assert_eq!(new.id, "a");
    // The old connection: close 4002 and no error frame before it.
    old.expect_close(4002).await;
    assert_eq!(
        b.recv().await,
        json!({"type":"peer_disconnected","peer_id":"a","reason":"replaced"})
    );
    // The new one starts unpaired and can pair again.
    new.probe_unpaired().await;
    new.send(json!({"type":"pair","peer_id":"b"})).await;
    assert_eq!(new.recv().await["type"], "paired");
    assert_eq!(b.recv().await["type"], "paired");
}

#[tokio::test]
async fn healthz_metrics_and_other_paths() {
    let srv = start_default().await;
    assert_eq!(
        srv.http_get("/healthz").await,
        ("HTTP/1.1 200 OK".to_string(), "ok\n".to_string())
    );
    let (_a, _b) = srv.pair("a", "b").await;
    let mut c = srv.named("c").await;
    c.send(json!({"type":"hello"})).await;
    c.expect_error("unknown_type").await;
    assert_eq!(srv.metric("signald_clients").await, 3.0);
    assert_eq!(srv.metric("signald_pairings").await, 1.0);
    assert_eq!(
        srv.metric("signald_errors_total{code=\"unknown_type\"}")
            .await,
        1.0
    );
    assert_eq!(srv.metric("signald_timeouts_total").await, 0.0);
    assert_eq!(srv.metric("signald_frames_relayed_total").await, 0.0);
    assert!(srv.http_get("/nope").await.0.contains("404"));
    assert!(srv.http_get("/ws").await.0.contains("426"));
}

/// p2pd checks a connection it suspects (after a network change) with a
/// WebSocket ping: signald must answer it at once, with nothing else to
/// write.
#[tokio::test]
async fn a_websocket_ping_is_answered_at_once() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let srv = crate::util::start(signald::Config::default()).await;
    let mut c = srv.named("alice").await;
    c.ws.send(Message::Ping(b"p2pd".to_vec().into()))
        .await
        .unwrap();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        loop {
            match c.ws.next().await {
                Some(Ok(Message::Pong(p))) => return p,
                Some(Ok(_)) => continue,
                other => panic!("{other:?}"),
            }
        }
    })
    .await
    .expect("a pong within 2 s");
    assert_eq!(&answer[..], b"p2pd");
}
