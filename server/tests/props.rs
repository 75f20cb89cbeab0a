//! Property test of the server's frame handling through a real connection:
//! whatever text or binary frame a client sends, it gets exactly the answer
//! the contract gives for what `ClientMsg::parse` makes of that frame, and
//! the connection stays usable. The parser itself belongs to proto; this
//! checks that signald's dispatch around it (rate limit, size, binary vs
//! text, pairing state) never loses, doubles or misnames an answer.

use futures_util::SinkExt;
use p2p_proto::signal::ClientMsg;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{Value, json};
use signald::Config;
use tokio_tungstenite::tungstenite::Message;

use crate::util::start;

/// One frame from the client.
#[derive(Debug, Clone)]
enum Input {
    Text(String),
    Binary(Vec<u8>),
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (0u64..70_000).prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,16}".prop_map(Value::from),
        Just(Value::from("a")),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects shaped like client frames: a known type (or not), the members
/// the types take, with right and wrong kinds of values, and extra ones.
fn message() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        Just(json!("pong")),
        Just(json!("pair")),
        Just(json!("unpair")),
        Just(json!("offer")),
        Just(json!("answer")),
        Just(json!("candidate")),
        Just(json!("welcome")),
        Just(json!("ping")),
        scalar(),
    ];
    let candidate = prop_oneof![
        Just(Value::Null),
        value(),
        (
            "\\PC{0,20}",
            scalar(),
            prop_oneof![(0i64..70_000).prop_map(Value::from), scalar()],
            scalar(),
        )
            .prop_map(|(c, mid, idx, frag)| {
                json!({"candidate": c, "sdpMid": mid, "sdpMLineIndex": idx, "usernameFragment": frag})
            }),
    ];
    (
        proptest::option::of(kind),
        proptest::option::of(value()),
        proptest::option::of(value()),
        proptest::option::of(candidate),
        btree_map("[a-z]{1,6}", value(), 0..3),
    )
        .prop_map(|(kind, peer_id, sdp, candidate, extra)| {
            let mut m: serde_json::Map<String, Value> = extra.into_iter().collect();
            for (k, v) in [
                ("type", kind),
                ("peer_id", peer_id),
                ("sdp", sdp),
                ("candidate", candidate),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            Value::Object(m)
        })
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        4 => message().prop_map(|v| Input::Text(v.to_string())),
        // Cut short, or with something after it.
        1 => (message(), any::<prop::sample::Index>()).prop_map(|(v, at)| {
            let s = v.to_string();
            let mut cut = at.index(s.len() + 1);
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            Input::Text(s[..cut].to_string())
        }),
        1 => (message(), "\\PC{1,8}").prop_map(|(v, tail)| Input::Text(format!("{v}{tail}"))),
        1 => "\\PC{0,64}".prop_map(Input::Text),
        1 => vec(any::<u8>(), 0..64).prop_map(Input::Binary),
    ]
}

/// The error codes the contract gives for `input` from an unpaired client
/// named `a` that is alone on the server (no reply: none).
fn expected(input: &Input) -> Vec<String> {
    let code = |c: p2p_proto::signal::ErrorCode| vec![c.as_str().to_string()];
    match input {
        Input::Binary(_) => vec!["bad_message".into()],
        Input::Text(t) => match ClientMsg::parse(t) {
            Err(e) => code(e.code()),
            Ok(ClientMsg::Pong) => vec![],
            Ok(ClientMsg::Pair { peer_id }) if peer_id == "a" => vec!["self_pair".into()],
            Ok(ClientMsg::Pair { .. }) => vec!["unknown_peer".into()],
            Ok(_) => vec!["not_paired".into()],
        },
    }
}

#[test]
fn every_frame_gets_the_answer_its_parse_calls_for() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (srv, a) = rt.block_on(async {
        let srv = start(Config {
            rate_limit: 1_000_000,
            rate_burst: 1_000_000,
            rate_limit_bytes: u32::MAX,
            rate_burst_bytes: u32::MAX,
            ..Config::default()
        })
        .await;
        let a = srv.named("a").await;
        (srv, a)
    });
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    // The runner takes an `Fn`: the one client is lent to each case.
    let a = std::cell::Cell::new(Some(a));
    let probe = json!({"type":"unpair"}).to_string();
    runner
        .run(&input(), |input| {
            let mut want = expected(&input);
            let Some(mut c) = a.take() else {
                // A case that panicked (a frame never came) kept it.
                return Err(TestCaseError::fail("an earlier case lost the connection"));
            };
            let got = rt.block_on(async {
                let msg = match &input {
                    Input::Text(t) => Message::text(t.clone()),
                    Input::Binary(b) => Message::binary(b.clone()),
                };
                c.ws.feed(msg).await.unwrap();
                // `unpair` while unpaired: one `not_paired` after the
                // answers to the input, if any.
                c.ws.send(Message::text(probe.clone())).await.unwrap();
                let mut got = Vec::new();
                for _ in 0..=want.len() {
                    got.push(c.recv().await);
                }
                got
            });
            a.set(Some(c));
            for v in &got {
                prop_assert_eq!(&v["type"], "error", "{} for {:?}", v, input);
            }
            let got: Vec<&str> = got
                .iter()
                .map(|v| v["code"].as_str().unwrap_or("?"))
                .collect();
            want.push("not_paired".into());
            prop_assert_eq!(got, want, "for {:?}", input);
            Ok(())
        })
        .unwrap();
    drop(srv);
}
