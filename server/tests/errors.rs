//! Every error code and close code, and a corpus of bad input.

use futures_util::SinkExt;
use serde_json::json;
use signald::Config;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{self, Server, start, start_default};

pub fn bad_input_corpus_is_bad_message_and_harmless_cfg() -> Config {
    Config::default()
}

#[tokio::test]
async fn bad_input_corpus_is_bad_message_and_harmless() {
    bad_input_corpus_is_bad_message_and_harmless_on(
        start(bad_input_corpus_is_bad_message_and_harmless_cfg()).await,
    )
    .await;
}

pub async fn bad_input_corpus_is_bad_message_and_harmless_on(srv: Server) {
    let (mut a, mut b) = srv.pair("a", "b").await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_obj = format!(
        r#"{{"type":"pong","x":{}1{}}}"#,
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    let corpus: Vec<String> = vec![
        "".into(),
        "not json".into(),
        "{".into(),
        "[]".into(),
        r#"[{"type":"pong"}]"#.into(),
        "null".into(),
        "42".into(),
        r#""pong""#.into(),
        "{}".into(),
        r#"{"type":null}"#.into(),
        r#"{"type":5}"#.into(),
        r#"{"type":["pong"]}"#.into(),
        r#"{"type":"pair"}"#.into(),
        r#"{"type":"pair","peer_id":5}"#.into(),
        r#"{"type":"pair","peer_id":null}"#.into(),
        r#"{"type":"offer"}"#.into(),
        r#"{"type":"offer","sdp":1e999}"#.into(),
        r#"{"type":"answer","sdp":{"a":1}}"#.into(),
        r#"{"type":"candidate"}"#.into(),
        r#"{"type":"candidate","candidate":"candidate:1"}"#.into(),
        r#"{"type":"candidate","candidate":{"sdpMid":"0"}}"#.into(),
        r#"{"type":"candidate","candidate":{"candidate":"c","sdpMLineIndex":-1}}"#.into(),
        r#"{"type":"candidate","candidate":{"candidate":"c","sdpMLineIndex":99999999999999999999999}}"#.into(),
        r#"{"type":"candidate","candidate":{"candidate":"c","sdpMLineIndex":1.5}}"#.into(),
        r#"{"type":"candidate","candidate":{"candidate":"c","sdpMid":7}}"#.into(),
        r#"{"type":"pong"} trailing"#.into(),
        deep,
        deep_obj,
    ];
    for text in &corpus {
        a.send_text(text).await;
        let v = a.recv().await;
        assert_eq!(v["type"], "error", "{text:.80}: {v}");
        assert_eq!(v["code"], "bad_message", "{text:.80}: {v}");
    }
    // Huge numbers where a number is not expected are fine to ignore.
    a.send_text(r#"{"type":"pong","n":1e999999,"m":123456789012345678901234567890}"#)
        .await;
    // Binary frames are bad_message too.
    a.ws.send(Message::binary(b"{\"type\":\"pong\"}".to_vec()))
        .await
        .unwrap();
    a.expect_error("bad_message").await;
    // Nothing changed: the pairing still relays, b saw none of it.
    a.send(json!({"type":"offer","sdp":"still here"})).await;
    assert_eq!(b.recv().await["sdp"], "still here");
}

pub fn unknown_types_including_server_only_ones_cfg() -> Config {
    Config::default()
}

#[tokio::test]
async fn unknown_types_including_server_only_ones() {
    unknown_types_including_server_only_ones_on(
        start(unknown_types_including_server_only_ones_cfg()).await,
    )
    .await;
}

pub async fn unknown_types_including_server_only_ones_on(srv: Server) {
    let mut a = srv.named("a").await;
    for t in [
        "welcome",
        "ping",
        "paired",
        "peer_disconnected",
        "error",
        "hello",
        "",
    ] {
        a.send(json!({"type":t})).await;
        a.expect_error("unknown_type").await;
    }
}

pub fn pair_refusals_in_contract_order_cfg() -> Config {
    Config::default()
}

#[tokio::test]
async fn pair_refusals_in_contract_order() {
    pair_refusals_in_contract_order_on(start(pair_refusals_in_contract_order_cfg()).await).await;
}

pub async fn pair_refusals_in_contract_order_on(srv: Server) {
    let (mut a, _b) = srv.pair("a", "b").await;
    let mut c = srv.named("c").await;
    // Fields first, even when everything else is also wrong.
    a.send(json!({"type":"pair","peer_id":1})).await;
    a.expect_error("bad_message").await;
    // self_pair before already_paired.
    a.send(json!({"type":"pair","peer_id":"a"})).await;
    a.expect_error("self_pair").await;
    // already_paired before unknown_peer.
    a.send(json!({"type":"pair","peer_id":"nobody"})).await;
    a.expect_error("already_paired").await;
    a.send(json!({"type":"pair","peer_id":"c"})).await;
    a.expect_error("already_paired").await;
    // unknown_peer, then peer_busy.
    c.send(json!({"type":"pair","peer_id":"nobody"})).await;
    c.expect_error("unknown_peer").await;
    c.send(json!({"type":"pair","peer_id":""})).await;
    c.expect_error("unknown_peer").await;
    c.send(json!({"type":"pair","peer_id":"b"})).await;
    c.expect_error("peer_busy").await;
    c.send(json!({"type":"pair","peer_id":"c"})).await;
    c.expect_error("self_pair").await;
}

pub fn not_paired_after_field_validation_cfg() -> Config {
    Config::default()
}

#[tokio::test]
async fn not_paired_after_field_validation() {
    not_paired_after_field_validation_on(start(not_paired_after_field_validation_cfg()).await)
        .await;
}

pub async fn not_paired_after_field_validation_on(srv: Server) {
    let mut a = srv.named("a").await;
    for (bad, good) in [
        (json!({"type":"offer"}), json!({"type":"offer","sdp":"x"})),
        (
            json!({"type":"answer","sdp":3}),
            json!({"type":"answer","sdp":"x"}),
        ),
        (
            json!({"type":"candidate"}),
            json!({"type":"candidate","candidate":null}),
        ),
    ] {
        a.send(bad).await;
        a.expect_error("bad_message").await;
        a.send(good).await;
        a.expect_error("not_paired").await;
    }
    a.send(json!({"type":"unpair"})).await;
    a.expect_error("not_paired").await;
}

pub fn bad_ids_close_4003_cfg() -> Config {
    Config::default()
}

#[tokio::test]
async fn bad_ids_close_4003() {
    bad_ids_close_4003_on(start(bad_ids_close_4003_cfg()).await).await;
}

pub async fn bad_ids_close_4003_on(srv: Server) {
    let long = "x".repeat(65);
    for q in [
        "id=".to_string(),
        "id".to_string(),
        "id=a%20b".to_string(),
        "id=%C3%A9".to_string(),
        "id=a.b".to_string(),
        format!("id={long}"),
        "id=a&id=b".to_string(),
        "id=a&token=short".to_string(),
        format!("token={}", "x".repeat(129)),
        "token=0123456789abcdef%20".to_string(),
    ] {
        let mut ws = srv.raw(&q).await;
        let v = util::next_frame(&mut ws, true).await.expect(&q);
        assert_eq!(v["code"], "bad_id", "{q}: {v}");
        util::expect_close(&mut ws, 4003).await;
    }
    // The longest valid ID is fine.
    srv.named(&"x".repeat(64)).await;
}

pub fn id_taken_closes_4001_cfg() -> Config {
    Config::default()
}

#[tokio::test]
async fn id_taken_closes_4001() {
    id_taken_closes_4001_on(start(id_taken_closes_4001_cfg()).await).await;
}

pub async fn id_taken_closes_4001_on(srv: Server) {
    let token = "0123456789abcdef";
    let _held = srv.client(&format!("id=a&token={token}")).await;
    let _plain = srv.named("b").await;
    for q in [
        "id=a".to_string(),
        "id=a&token=0123456789abcdeX".to_string(),
        format!("id=b&token={token}"),
    ] {
        let mut ws = srv.raw(&q).await;
        let v = util::next_frame(&mut ws, true).await.expect(&q);
        assert_eq!(v["code"], "id_taken", "{q}: {v}");
        util::expect_close(&mut ws, 4001).await;
    }
}

#[tokio::test]
async fn server_full_closes_1013_but_replacement_still_works() {
    let srv = start(Config {
        max_clients: 2,
        ..Config::default()
    })
    .await;
    let token = "0123456789abcdef";
    let mut a = srv.client(&format!("id=a&token={token}")).await;
    let _b = srv.client("").await;
    for q in ["", "id=c"] {
        let mut ws = srv.raw(q).await;
        let v = util::next_frame(&mut ws, true).await.unwrap();
        assert_eq!(v["code"], "server_full", "{v}");
        util::expect_close(&mut ws, 1013).await;
    }
    // A taken ID is id_taken even when full.
    let mut ws = srv.raw("id=a").await;
    assert_eq!(
        util::next_frame(&mut ws, true).await.unwrap()["code"],
        "id_taken"
    );
    // The replacement does not count against the limit.
    let _a2 = srv.client(&format!("id=a&token={token}")).await;
    a.expect_close(4002).await;
}

const TOO_LARGE_LIMIT: usize = 2000;

pub fn too_large_closes_1009_exact_limit_is_fine_cfg() -> Config {
    Config {
        max_message_bytes: TOO_LARGE_LIMIT,
        ..Config::default()
    }
}

#[tokio::test]
async fn too_large_closes_1009_exact_limit_is_fine() {
    too_large_closes_1009_exact_limit_is_fine_on(
        start(too_large_closes_1009_exact_limit_is_fine_cfg()).await,
    )
    .await;
}

pub async fn too_large_closes_1009_exact_limit_is_fine_on(srv: Server) {
    let limit = TOO_LARGE_LIMIT;
    let (mut a, mut b) = srv.pair("a", "b").await;
    let frame = |len: usize| {
        let head = r#"{"type":"offer","sdp":""#;
        let tail = r#""}"#;
        format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()))
    };
    a.send_text(&frame(limit)).await;
    assert_eq!(b.recv().await["type"], "offer");
    a.send_text(&frame(limit + 1)).await;
    a.expect_error("too_large").await;
    a.expect_close(1009).await;
    assert_eq!(
        b.recv().await,
        json!({"type":"peer_disconnected","peer_id":"a","reason":"left"})
    );
    // Far over the library's own limit: still too_large first.
    let mut c = srv.named("c").await;
    c.send_text(&frame(limit * 100)).await;
    c.expect_error("too_large").await;
    c.expect_close(1009).await;
    // Oversized binary: too_large as well.
    let mut d = srv.named("d").await;
    d.ws.send(Message::binary(vec![0u8; limit + 1]))
        .await
        .unwrap();
    d.expect_error("too_large").await;
    d.expect_close(1009).await;
}

pub fn flood_gets_rate_limited_then_1008_cfg() -> Config {
    Config {
        rate_limit: 1,
        rate_burst: 5,
        rate_close_after: 3,
        ..Config::default()
    }
}

#[tokio::test]
async fn flood_gets_rate_limited_then_1008() {
    flood_gets_rate_limited_then_1008_on(start(flood_gets_rate_limited_then_1008_cfg()).await)
        .await;
}

pub async fn flood_gets_rate_limited_then_1008_on(srv: Server) {
    let (mut a, mut b) = srv.pair("a", "b").await;
    for _ in 0..20 {
        a.ws.feed(Message::text(r#"{"type":"pong"}"#))
            .await
            .unwrap();
    }
    a.ws.flush().await.unwrap();
    for _ in 0..3 {
        a.expect_error("rate_limited").await;
    }
    a.expect_close(1008).await;
    assert_eq!(b.recv().await["reason"], "left");
}

#[tokio::test]
async fn default_limits_survive_a_big_flood() {
    let srv = start_default().await;
    let mut a = srv.named("a").await;
    let mut other = srv.named("other").await;
    for _ in 0..1000 {
        a.ws.feed(Message::text(r#"{"type":"pong"}"#))
            .await
            .unwrap();
    }
    a.ws.flush().await.unwrap();
    let mut limited = 0;
    loop {
        match util::next_frame(&mut a.ws, true).await {
            Ok(v) => {
                assert_eq!(v["code"], "rate_limited", "{v}");
                limited += 1;
            }
            Err(code) => {
                assert_eq!(code, Some(1008));
                break;
            }
        }
    }
    assert_eq!(limited, 100);
    // Others are unaffected.
    other.probe_unpaired().await;
}

pub fn invalid_utf8_text_is_bad_message_then_1007_cfg() -> Config {
    Config::default()
}

#[tokio::test]
async fn invalid_utf8_text_is_bad_message_then_1007() {
    invalid_utf8_text_is_bad_message_then_1007_on(
        start(invalid_utf8_text_is_bad_message_then_1007_cfg()).await,
    )
    .await;
}

pub async fn invalid_utf8_text_is_bad_message_then_1007_on(srv: Server) {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let (mut a, mut b) = srv.pair("a", "b").await;
    let bad = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    a.ws.send(Message::Frame(bad)).await.unwrap();
    a.expect_error("bad_message").await;
    // RFC 6455 requires failing the connection: 1007, the peer told `left`.
    a.expect_close(1007).await;
    assert_eq!(
        b.recv().await,
        json!({"type":"peer_disconnected","peer_id":"a","reason":"left"})
    );
}

#[tokio::test]
async fn the_limit_counts_the_reassembled_message() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let limit = 1000;
    let srv = start(Config {
        max_message_bytes: limit,
        ..Config::default()
    })
    .await;
    let mut a = srv.named("a").await;
    // Three fragments of 400 bytes: each under the limit, together over it.
    let part = |op, fin| Frame::message(vec![b' '; 400], op, fin);
    a.ws.feed(Message::Frame(part(OpCode::Data(Data::Text), false)))
        .await
        .unwrap();
    a.ws.feed(Message::Frame(part(OpCode::Data(Data::Continue), false)))
        .await
        .unwrap();
    a.ws.send(Message::Frame(part(OpCode::Data(Data::Continue), true)))
        .await
        .unwrap();
    a.expect_error("too_large").await;
    a.expect_close(1009).await;
}
