//! Property tests of every parser here that reads outside input: control
//! requests (any local client), fingerprints and ID tokens (typed by
//! people, carried in a peer's SDP), signaling frames (from signald or a
//! client), and the capped line reader (both ends of the control socket).
//! A bounded number of cases runs in the normal test run (`PROPTEST_CASES`
//! raises it).

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::control::{Request, parse_request};
use crate::identity::{Fingerprint, parse_token, token};
use crate::lines::{LineRead, read_line_capped};
use crate::signal::{ClientFrame, ClientMsg, Relayable, ServerMsg, Text, general, valid_id};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn fingerprint() -> impl Strategy<Value = Fingerprint> {
    any::<[u8; 32]>().prop_map(Fingerprint::from_bytes)
}

fn id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,64}"
}

/// JSON values of a few levels, with the keys requests use, so that
/// malformed requests get close to real ones.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        prop::sample::select(vec!["status", "pair", "send", "tail", "trust", "invite"])
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "cmd",
                    "peer_id",
                    "text",
                    "data_b64",
                    "to",
                    "wait",
                    "timeout_ms",
                    "code",
                    "fingerprint",
                    "replay",
                    "follow",
                    "ttl_ms",
                    "x",
                ])
                .prop_map(str::to_string),
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn request() -> impl Strategy<Value = Request> {
    let opt = |s: &'static str| proptest::option::of(s);
    prop_oneof![
        Just(Request::Status),
        Just(Request::Unpair),
        Just(Request::Id),
        Just(Request::TrustList),
        (
            id(),
            any::<bool>(),
            proptest::option::of(any::<u64>()),
            opt("[a-z0-9-]{0,20}")
        )
            .prop_map(|(peer_id, wait, timeout_ms, code)| Request::Pair {
                peer_id,
                wait,
                timeout_ms,
                code
            }),
        ("\\PC{0,40}", proptest::option::of(id())).prop_map(|(t, to)| Request::Send {
            text: Some(t),
            data_b64: None,
            to
        }),
        (id(), fingerprint(), opt("\\PC{0,20}")).prop_map(|(peer_id, fingerprint, comment)| {
            Request::Trust {
                peer_id,
                fingerprint,
                comment,
            }
        }),
        (any::<usize>(), any::<bool>())
            .prop_map(|(replay, follow)| Request::Tail { replay, follow }),
    ]
}

/// A JSON string of any text: as serde_json writes it (so a string that
/// needs no escape has none), or with every `a` escaped as well.
fn json_str() -> impl Strategy<Value = String> {
    let text = prop_oneof![
        "[a-z0-9: .-]{0,40}",
        "\\PC{0,40}",
        any::<String>(),
        prop::sample::select(vec!["a\"b", "\\", "\n\t\u{1}", "é€😀", "\u{7f}"])
            .prop_map(str::to_string),
    ];
    (text, any::<bool>()).prop_map(|(t, escape_more)| {
        let s = serde_json::to_string(&t).unwrap();
        match escape_more {
            true => s.replace('a', "\\u0061"),
            false => s,
        }
    })
}

/// A member's value as JSON text: mostly what the member should hold,
/// sometimes something else.
fn member_value() -> impl Strategy<Value = String> {
    let index = prop_oneof![
        Just("null".to_string()),
        (0u32..70_000).prop_map(|i| i.to_string()),
        Just("-1".to_string()),
        Just("1.5".to_string()),
    ];
    let field = prop_oneof![
        json_str().prop_map(|v| ("candidate", v)),
        prop_oneof![json_str(), Just("null".to_string())].prop_map(|v| ("sdpMid", v)),
        index.prop_map(|v| ("sdpMLineIndex", v)),
        prop_oneof![json_str(), Just("null".to_string())].prop_map(|v| ("usernameFragment", v)),
        json_str().prop_map(|v| ("x", v)),
    ];
    let candidate = prop::collection::vec(field, 0..6).prop_map(|fields| {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(","))
    });
    prop_oneof![
        4 => json_str(),
        3 => candidate,
        1 => Just("null".to_string()),
        1 => value().prop_map(|v| v.to_string()),
    ]
}

/// Client frames as text, member by member (so that members can repeat
/// and come in any order), with the names and types clients use.
fn client_frame() -> impl Strategy<Value = String> {
    frame(&["type", "peer_id", "sdp", "candidate", "x", "s\\u0064p"])
}

/// Relayed frames as one node reads them from another: client frames with
/// a `from` (mostly one string, sometimes none, two or another value) and
/// also the server's own types.
fn relayed_frame() -> impl Strategy<Value = String> {
    let from = prop_oneof![
        8 => json_str(),
        1 => Just("null".to_string()),
        1 => Just("5".to_string()),
    ];
    (
        frame(&["type", "sdp", "candidate", "from", "x", "fr\\u006fm"]),
        prop::option::weighted(0.9, from),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(text, from, at)| {
            let Some(from) = from else { return text };
            // After one of the frame's commas or its opening brace.
            let places: Vec<usize> = text
                .char_indices()
                .filter(|&(i, c)| c == ',' || (c == '{' && i == 0))
                .map(|(i, _)| i + 1)
                .collect();
            let at = places[at.index(places.len())];
            let sep = if text[at..].starts_with('}') { "" } else { "," };
            format!("{}\"from\":{from}{sep}{}", &text[..at], &text[at..])
        })
}

/// Frames as text, member by member, with names from `keys`.
fn frame(keys: &[&'static str]) -> impl Strategy<Value = String> {
    let ty = prop::sample::select(vec![
        "\"pong\"",
        "\"pair\"",
        "\"unpair\"",
        "\"offer\"",
        "\"answer\"",
        "\"candidate\"",
        "\"paired\"",
        "\"c\\u0061ndidate\"",
        "5",
        "null",
    ])
    .prop_map(str::to_string);
    let key = prop::sample::select(keys.to_vec());
    let member = prop_oneof![
        1 => ty.clone().prop_map(|v| ("type".to_string(), v)),
        6 => (key, member_value()).prop_map(|(k, v)| (k.to_string(), v)),
    ];
    (
        any::<bool>(),
        ty,
        prop::collection::vec(member, 0..4),
        prop::sample::select(vec!["", " ", "x", "}", "\n"]),
    )
        .prop_map(|(type_first, ty, members, tail)| {
            let mut body: Vec<String> = members
                .iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            let at = if type_first { 0 } else { body.len() };
            body.insert(at, format!("\"type\":{ty}"));
            format!("{{{}}}{tail}", body.join(","))
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_line_gets_a_request_or_an_error_never_a_panic(line in "\\PC{0,200}") {
        let _ = parse_request(&line);
    }

    #[test]
    fn malformed_requests_get_errors_that_name_a_code(v in value()) {
        if let Err(e) = parse_request(&v.to_string()) {
            let code = serde_json::to_value(e.code).unwrap();
            prop_assert!(code.is_string());
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn every_request_reads_back_as_itself(r in request()) {
        let line = serde_json::to_string(&r).unwrap();
        prop_assert!(!line.contains('\n'), "one request, one line");
        prop_assert_eq!(parse_request(&line).unwrap(), r);
    }

    #[test]
    fn fingerprints_read_back_in_both_written_forms(fp in fingerprint()) {
        prop_assert_eq!(Fingerprint::parse(&fp.to_string()).unwrap(), fp);
        prop_assert_eq!(Fingerprint::parse(&fp.to_sdp_hex()).unwrap(), fp);
        let lower = fp.to_sdp_hex().to_lowercase();
        prop_assert_eq!(Fingerprint::parse(&format!("  {lower}\n")).unwrap(), fp);
    }

    #[test]
    fn fingerprint_parsing_never_panics(s in "\\PC{0,120}") {
        let _ = Fingerprint::parse(&s);
        let _ = Fingerprint::from_sdp(&s);
        let _ = parse_token(&s);
    }

    #[test]
    fn a_fingerprint_with_one_character_changed_is_never_the_same_key(
        fp in fingerprint(),
        at in 7usize..50,
        c in "[A-Za-z0-9_=+/-]",
    ) {
        let written = fp.to_string();
        let mut s = written.clone();
        s.replace_range(at..at + 1, &c);
        if s != written
            && let Ok(other) = Fingerprint::parse(&s)
        {
            prop_assert_ne!(other, fp, "{} read as {}", s, written);
        }
    }

    #[test]
    fn tokens_read_back(peer in id(), fp in fingerprint()) {
        prop_assert_eq!(parse_token(&token(&peer, &fp)).unwrap(), (peer, fp));
    }

    #[test]
    fn tokens_with_bad_ids_are_refused(peer in "\\PC{0,70}", fp in fingerprint()) {
        prop_assume!(!valid_id(&peer) && !peer.contains('@') && peer.trim() == peer);
        prop_assert!(parse_token(&token(&peer, &fp)).is_err());
    }

    /// An SDP of random lines around its fingerprint lines: the key is
    /// found when every line agrees, and refused when any disagrees.
    #[test]
    fn the_sdp_fingerprint_is_found_only_when_every_line_agrees(
        fp in fingerprint(),
        other in fingerprint(),
        noise in prop::collection::vec("[a-z]=\\PC{0,30}", 0..12),
        copies in 1usize..4,
        disagree in any::<bool>(),
    ) {
        let mut lines: Vec<String> = noise.into_iter().filter(|l| !l.starts_with("a=fingerprint")).collect();
        for i in 0..copies {
            let at = (i * 7) % (lines.len() + 1);
            lines.insert(at, format!("a=fingerprint:sha-256 {}", fp.to_sdp_hex()));
        }
        if disagree && other != fp {
            lines.push(format!("a=fingerprint:sha-256 {}", other.to_sdp_hex()));
        }
        let sdp = lines.join("\r\n");
        match Fingerprint::from_sdp(&sdp) {
            Ok(found) => {
                prop_assert!(!disagree || other == fp);
                prop_assert_eq!(found, fp);
            }
            Err(_) => prop_assert!(disagree && other != fp),
        }
    }

    #[test]
    fn signaling_frames_never_panic(text in "\\PC{0,200}", v in value()) {
        let _ = ClientMsg::parse(&text);
        let _ = ClientMsg::parse(&v.to_string());
        let _ = serde_json::from_str::<ServerMsg>(&text);
        let _ = serde_json::from_str::<ServerMsg>(&v.to_string());
    }

    #[test]
    fn server_frames_with_any_peer_id_parse_and_keep_it(peer in "\\PC{0,80}") {
        // The type system takes any string; p2pd's `well_formed` is what
        // refuses invalid IDs, so the string must arrive intact.
        let f = json!({"type": "paired", "peer_id": peer, "initiator": true}).to_string();
        match serde_json::from_str::<ServerMsg>(&f).unwrap() {
            ServerMsg::Paired { peer_id, .. } => prop_assert_eq!(peer_id, peer),
            other => prop_assert!(false, "{:?}", other),
        }
    }

    /// The capped reader against the obvious model (split on `\n`, a
    /// final unterminated piece counts), for every way the bytes can be
    /// chunked by the buffer under it.
    #[test]
    fn the_capped_reader_matches_splitting_on_newlines(
        input in prop::collection::vec(prop_oneof![Just(b'\n'), Just(b'a'), any::<u8>()], 0..200),
        cap in 0usize..24,
        chunk in 1usize..17,
    ) {
        let mut expected = Vec::new();
        let mut pieces: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
        if input.last() == Some(&b'\n') || input.is_empty() {
            pieces.pop();
        }
        for p in pieces {
            expected.push(if p.len() > cap { None } else { Some(p.to_vec()) });
        }
        let got = tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
            let mut r = tokio::io::BufReader::with_capacity(chunk, &input[..]);
            let mut buf = Vec::new();
            let mut got = Vec::new();
            loop {
                match read_line_capped(&mut r, &mut buf, cap).await.unwrap() {
                    LineRead::Eof => break,
                    LineRead::TooLong => {
                        assert!(buf.is_empty(), "nothing of a long line is kept");
                        got.push(None);
                    }
                    LineRead::Line => {
                        assert!(buf.len() <= cap);
                        got.push(Some(buf.clone()));
                    }
                }
            }
            got
        });
        prop_assert_eq!(got, expected);
    }
}

proptest! {
    // Many cases: a frame that repeats its type's member is a few in a
    // thousand of what `client_frame` makes.
    #![proptest_config(ProptestConfig { cases: config().cases * 32, ..config() })]

    /// signald's one-pass parse against the general one, which reads the
    /// frame as the contract's table says: the same message or the same
    /// error code, whatever the members' order, repeats or escapes.
    #[test]
    fn the_one_pass_parse_agrees_with_the_general_one(text in client_frame()) {
        let fast = ClientFrame::parse(&text).map(ClientFrame::into_owned);
        match (fast, general(&text)) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b, "{}", text),
            (Err(a), Err(b)) => prop_assert_eq!(a.code(), b.code(), "{} / {} / {}", text, a, b),
            (a, b) => prop_assert!(false, "{}: one pass {:?}, general {:?}", text, a, b),
        }
    }

    /// What signald relays, written straight from the frame, is byte for
    /// byte the server message serde writes, in an allocation of exactly
    /// its size.
    #[test]
    fn relayed_frames_are_what_serde_writes(text in client_frame(), from in "[A-Za-z0-9_-]{1,64}|\\PC{1,8}") {
        if let Ok(ClientFrame::Relay(r)) = ClientFrame::parse(&text) {
            let ours = r.to_json(&from);
            prop_assert_eq!(&ours, &r.to_server_msg(&from).to_json());
            prop_assert_eq!(ours.capacity(), ours.len());
        }
    }

    /// What a node reads back from another through Redis is taken exactly
    /// where serde would read it as a relayed `ServerMsg`, with the same
    /// content and sender.
    #[test]
    fn a_relayed_frame_is_read_back_as_serde_reads_it(text in relayed_frame()) {
        let fast = Relayable::parse_relayed(&text);
        let general = Relayable::parse_relayed_general(&text);
        let show = |r: &Option<(Relayable, Text)>| {
            r.as_ref().map(|(f, from)| (f.to_json(from.as_str()), from.as_str().to_string()))
        };
        prop_assert_eq!(show(&fast), show(&general), "{}", text);
    }
}
