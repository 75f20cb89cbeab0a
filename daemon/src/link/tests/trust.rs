//! Keys checked in both roles, the policies, and edits of the store.

use super::*;

#[test]
fn known_refuses_an_unknown_peer_both_ways() {
    let mut t = T::new();
    let (fx, mut answer) = t.pair("mallory", true, LONG);
    assert!(fx.is_empty(), "nothing is sent for an unknown peer: {fx:?}");
    let e = answered(&mut answer).unwrap_err();
    assert_eq!(e.code, ErrorCode::NotTrusted);
    assert!(e.message.contains("p2pctl trust mallory"), "{e:?}");
    let fx = t.server(paired("mallory", false));
    assert!(sends_unpair(&fx));
    assert_eq!(ended(&fx), Some(DisconnectReason::NotTrusted));
    assert_eq!(t.state(), LinkState::Idle);
}

#[test]
fn the_answerer_refuses_an_offer_with_the_wrong_key() {
    let mut t = T::new();
    t.server(paired("bob", false));
    let fx = t.server(ServerMsg::Offer {
        sdp: sdp(9),
        from: "bob".into(),
    });
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Answer { .. })),
        "the offer must not be applied: {fx:?}"
    );
    assert!(sends_unpair(&fx));
    assert_eq!(ended(&fx), Some(DisconnectReason::IdentityMismatch));
}

#[test]
fn the_initiator_refuses_an_answer_with_the_wrong_key() {
    let mut t = T::new();
    let (_, mut answer) = t.pair("bob", true, LONG);
    t.server(paired("bob", true));
    t.on(Input::Offered(Ok("o".into())));
    let fx = t.server(ServerMsg::Answer {
        sdp: sdp(9),
        from: "bob".into(),
    });
    assert!(!fx.iter().any(|e| matches!(e, Effect::AcceptAnswer { .. })));
    assert_eq!(ended(&fx), Some(DisconnectReason::IdentityMismatch));
    let e = answered(&mut answer).unwrap_err();
    assert_eq!(e.code, ErrorCode::IdentityMismatch);
    assert!(
        e.message.contains(&fp(BOB).to_string()) && e.message.contains(&fp(9).to_string()),
        "names the expected and the received key: {e:?}"
    );
    // A description without a usable key is refused too.
    let mut t = T::new();
    t.server(paired("bob", false));
    let fx = t.server(ServerMsg::Offer {
        sdp: "v=0\r\n".into(),
        from: "bob".into(),
    });
    assert_eq!(ended(&fx), Some(DisconnectReason::IdentityMismatch));
}

#[test]
fn tofu_pins_the_first_key_and_refuses_a_changed_one() {
    let mut t = T::with(&[], TrustPolicy::Tofu);
    t.server(paired("dave", false));
    t.server(ServerMsg::Offer {
        sdp: sdp(4),
        from: "dave".into(),
    });
    t.on(Input::Answered(Ok("a".into())));
    let fx = t.on(Input::ChannelOpen {
        path: None,
        certificate: None,
    });
    assert!(fx.contains(&Effect::Expose {
        peer: "dave".into(),
        trust: PeerTrust::Tofu
    }));
    assert!(events(&fx).iter().any(|e| matches!(
        e,
        EventKind::ChannelOpen {
            trust: Some(PeerTrust::Tofu),
            ..
        }
    )));
    assert_eq!(t.pinned("dave"), Some(fp(4)));
    t.unpair();
    t.server(paired("dave", false));
    let fx = t.server(ServerMsg::Offer {
        sdp: sdp(5),
        from: "dave".into(),
    });
    assert_eq!(ended(&fx), Some(DisconnectReason::IdentityMismatch));
}

#[test]
fn any_accepts_unknown_peers_unverified_but_holds_pins() {
    let mut t = T::with(&[], TrustPolicy::Any);
    let (_, mut answer) = t.pair("browser", true, LONG);
    t.server(paired("browser", true));
    t.on(Input::Offered(Ok("o".into())));
    t.server(ServerMsg::Answer {
        sdp: sdp(7),
        from: "browser".into(),
    });
    t.on(Input::AnswerApplied(Ok(())));
    let fx = t.on(Input::ChannelOpen {
        path: None,
        certificate: None,
    });
    assert!(fx.contains(&Effect::Expose {
        peer: "browser".into(),
        trust: PeerTrust::Unverified
    }));
    assert_eq!(
        answered(&mut answer).unwrap().trust,
        Some(PeerTrust::Unverified)
    );
    assert_eq!(t.pinned("browser"), None, "any pins nothing");
    t.unpair();
    // bob's pin holds even under any.
    t.server(paired("bob", false));
    let fx = t.server(ServerMsg::Offer {
        sdp: sdp(9),
        from: "bob".into(),
    });
    assert_eq!(ended(&fx), Some(DisconnectReason::IdentityMismatch));
}

#[test]
fn removing_the_open_peers_pin_ends_the_link() {
    let mut t = T::new();
    t.open_with_bob();
    let fx = t.edit_pins(|pins| pins.retain(|p| p.id != "bob"));
    assert_eq!(ended(&fx), Some(DisconnectReason::NotTrusted));
    assert!(sends_unpair(&fx));
    // Pinning another peer, or the same key again, leaves an open link
    // alone.
    t.edit_pins(|pins| pins.push(pin("bob", fp(BOB))));
    t.open_with_bob();
    let fx = t.edit_pins(|pins| pins.push(pin("dave", fp(3))));
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(t.state(), LinkState::Open);
    // Another key for the open peer ends it.
    let fx = t.edit_pins(|pins| {
        pins.retain(|p| p.id != "bob");
        pins.push(pin("bob", fp(9)));
    });
    assert_eq!(ended(&fx), Some(DisconnectReason::NotTrusted));
}

/// A store broken by a hand edit refuses new pairings, and does not end
/// the open link whose key was checked when it was sound.
#[test]
fn a_store_broken_meanwhile_refuses_pairings_and_keeps_the_open_link() {
    let mut t = T::new();
    t.open_with_bob();
    let broken = crate::trust::Broken {
        file: "known_peers".into(),
        problems: vec!["line 3: expected ID FINGERPRINT ADDED [COMMENT]".into()],
    };
    let fx = t.on(Input::Pins(Pins::broken(TrustPolicy::Known, broken)));
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(t.state(), LinkState::Open);
    t.unpair();
    let (_, mut answer) = t.pair("carol", true, LONG);
    let e = answered(&mut answer).unwrap_err();
    assert_eq!(e.code, ErrorCode::StoreFailed);
    assert!(e.message.contains("line 3"), "{e:?}");
}

/// A description naming the key only by sha-384 (no sha-256 line).
fn sdp_384_only() -> String {
    format!("v=0\r\na=fingerprint:sha-384 {}\r\n", ["AB"; 48].join(":"))
}

/// The key comes with DTLS: the offer is answered, and the certificate DTLS
/// proved is judged when the channel opens, before anything is exposed.
#[test]
fn a_key_named_only_by_sha384_is_judged_from_the_dtls_certificate() {
    // Pinned: the certificate must be the pinned key.
    for (certificate, opens) in [(Some(fp(BOB)), true), (Some(fp(9)), false), (None, false)] {
        let mut t = T::new();
        t.server(paired("bob", false));
        let fx = t.server(ServerMsg::Offer {
            sdp: sdp_384_only(),
            from: "bob".into(),
        });
        assert_eq!(
            fx,
            [Effect::Answer {
                sdp: sdp_384_only()
            }],
            "answered; the key is judged later"
        );
        t.on(Input::Answered(Ok("a".into())));
        let fx = t.on(Input::ChannelOpen {
            path: None,
            certificate,
        });
        let exposed = fx.iter().any(|e| matches!(e, Effect::Expose { .. }));
        assert_eq!(exposed, opens, "{certificate:?}: {fx:?}");
        if opens {
            assert_eq!(t.state(), LinkState::Open);
            assert_eq!(t.core.link().identity().unwrap().trust, PeerTrust::Pinned);
        } else {
            assert_eq!(ended(&fx), Some(DisconnectReason::IdentityMismatch));
        }
    }
    // Unknown under tofu: pinned from the certificate.
    let mut t = T::with(&[], TrustPolicy::Tofu);
    t.server(paired("dave", false));
    t.server(ServerMsg::Offer {
        sdp: sdp_384_only(),
        from: "dave".into(),
    });
    t.on(Input::Answered(Ok("a".into())));
    let fx = t.on(Input::ChannelOpen {
        path: None,
        certificate: Some(fp(4)),
    });
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Expose {
            trust: PeerTrust::Tofu,
            ..
        }
    )));
    assert_eq!(t.pinned("dave"), Some(fp(4)));
    // Unknown under known: refused before anything is applied.
    let mut t = T::new();
    let inv = t.invite(None);
    let _ = inv;
    t.server(paired("erin", false));
    let fx = t.server(ServerMsg::Offer {
        sdp: sdp_384_only(),
        from: "erin".into(),
    });
    assert!(ended(&fx).is_some(), "an invitation needs sha-256: {fx:?}");
    assert!(!fx.iter().any(|e| matches!(e, Effect::Answer { .. })));
}
