//! ICE restarts of an open link: who offers, what is answered, and the
//! bound after which the link resets as before.

use super::*;

fn silent() -> Input {
    Input::Lost {
        reason: DisconnectReason::IceFailed,
        clean: false,
    }
}

/// Opens a link with carol, who initiated (we answer).
fn open_as_answerer(t: &mut T) {
    t.server(paired("carol", false));
    t.server(ServerMsg::Offer {
        sdp: sdp(CAROL),
        from: "carol".into(),
    });
    t.on(Input::Answered(Ok("a".into())));
    t.on(Input::ChannelOpen { path: None });
    assert_eq!(t.state(), LinkState::Open);
}

#[test]
fn the_initiator_restarts_ice_and_keeps_the_link() {
    let mut t = T::new();
    t.open_with_bob();
    let fx = t.on(silent());
    assert_eq!(
        fx,
        [
            Effect::Publish(EventKind::IceRestarting {
                peer_id: "bob".into()
            }),
            Effect::RestartIce
        ]
    );
    assert_eq!(t.state(), LinkState::Open, "send keeps working meanwhile");
    assert!(t.on(silent()).is_empty(), "one restart at a time");
    let fx = t.on(Input::Offered(Ok("restart-offer".into())));
    assert_eq!(
        fx,
        [Effect::Signal(ClientMsg::Offer {
            sdp: "restart-offer".into()
        })]
    );
    let fx = t.server(ServerMsg::Answer {
        sdp: sdp(BOB),
        from: "bob".into(),
    });
    assert_eq!(fx, [Effect::AcceptAnswer { sdp: sdp(BOB) }]);
    assert!(t.on(Input::AnswerApplied(Ok(()))).is_empty());
    let fx = t.on(Input::IceConnected);
    assert_eq!(fx, [Effect::Restarted { peer: "bob".into() }]);
    assert!(t.on(Input::IceConnected).is_empty(), "done once");
    // A later silence restarts again.
    assert!(t.on(silent()).contains(&Effect::RestartIce));
}

#[test]
fn the_answerer_waits_for_the_initiators_offer_and_answers_it() {
    let mut t = T::new();
    open_as_answerer(&mut t);
    let fx = t.on(silent());
    assert_eq!(
        fx,
        [Effect::Publish(EventKind::IceRestarting {
            peer_id: "carol".into()
        })],
        "no offer of ours: two would cross"
    );
    let fx = t.server(ServerMsg::Offer {
        sdp: sdp(CAROL),
        from: "carol".into(),
    });
    assert_eq!(fx, [Effect::Answer { sdp: sdp(CAROL) }]);
    let fx = t.on(Input::Answered(Ok("restart-answer".into())));
    assert_eq!(
        fx,
        [Effect::Signal(ClientMsg::Answer {
            sdp: "restart-answer".into()
        })]
    );
    assert_eq!(
        t.on(Input::IceConnected),
        [Effect::Restarted {
            peer: "carol".into()
        }]
    );
}

#[test]
fn a_restart_offer_the_answerer_did_not_see_coming_is_answered_too() {
    let mut t = T::new();
    open_as_answerer(&mut t);
    let fx = t.server(ServerMsg::Offer {
        sdp: sdp(CAROL),
        from: "carol".into(),
    });
    assert_eq!(
        fx,
        [
            Effect::Publish(EventKind::IceRestarting {
                peer_id: "carol".into()
            }),
            Effect::Answer { sdp: sdp(CAROL) }
        ]
    );
    // A flood of re-offers is not: one a second at most.
    assert!(
        t.server(ServerMsg::Offer {
            sdp: sdp(CAROL),
            from: "carol".into(),
        })
        .is_empty()
    );
    t.advance(Duration::from_secs(1));
    assert_eq!(
        t.server(ServerMsg::Offer {
            sdp: sdp(CAROL),
            from: "carol".into(),
        }),
        [Effect::Answer { sdp: sdp(CAROL) }]
    );
}

#[test]
fn renegotiation_with_another_key_is_ignored() {
    let mut t = T::new();
    open_as_answerer(&mut t);
    assert!(
        t.server(ServerMsg::Offer {
            sdp: sdp(BOB),
            from: "carol".into(),
        })
        .is_empty(),
        "the key the link opened with, or nothing"
    );
    let mut t = T::new();
    t.open_with_bob();
    t.on(silent());
    t.on(Input::Offered(Ok("o".into())));
    assert!(
        t.server(ServerMsg::Answer {
            sdp: sdp(CAROL),
            from: "bob".into(),
        })
        .is_empty()
    );
    assert!(
        t.server(ServerMsg::Offer {
            sdp: sdp(BOB),
            from: "bob".into(),
        })
        .is_empty(),
        "the initiator's own restart is out: the peer's offer would cross it"
    );
}

#[test]
fn a_restart_that_finds_no_path_resets_at_the_bound() {
    let mut t = T::new();
    t.open_with_bob();
    t.on(silent());
    assert!(t.advance(Duration::from_secs(9)).is_empty());
    let fx = t.advance(Duration::from_secs(1));
    assert_eq!(ended(&fx), Some(DisconnectReason::IceFailed));
    assert!(sends_unpair(&fx) && fx.contains(&Effect::Reset));
    assert_eq!(t.state(), LinkState::Idle);
}

#[test]
fn a_peer_that_unpairs_while_restarting_ends_the_link_as_before() {
    // (A closed channel: lifecycle.rs, a_loss_waits_for_signalds_reason.)
    // Restarting, then the peer unpairs: the link ends (after reading
    // what the peer sent before).
    let mut t = T::new();
    t.open_with_bob();
    t.on(silent());
    t.server(ServerMsg::PeerDisconnected {
        peer_id: "bob".into(),
        reason: SigReason::Unpaired,
    });
    assert_eq!(t.state(), LinkState::Closing);
}

#[test]
fn an_open_link_outlives_its_signaling_and_the_initiator_pairs_again() {
    let mut t = T::new();
    t.open_with_bob();
    let fx = t.on(Input::SignalingDown { why: "gone".into() });
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(t.state(), LinkState::Open);
    let fx = t.on(Input::SignalingUp {
        id: "alice".into(),
        turn: false,
    });
    assert_eq!(
        fx,
        [Effect::Signal(ClientMsg::Pair {
            peer_id: "bob".into()
        })]
    );
    // Bob is not back yet: signald says so; we ask again a second later.
    assert!(t.server(signald_error(SigError::UnknownPeer)).is_empty());
    assert!(t.advance(Duration::from_millis(500)).is_empty());
    assert_eq!(
        t.advance(Duration::from_millis(500)),
        [Effect::Signal(ClientMsg::Pair {
            peer_id: "bob".into()
        })]
    );
    // Meanwhile signald thinks we are free: carol pairs with us, and is
    // refused; the open link goes on.
    let fx = t.server(paired("carol", false));
    assert_eq!(fx, [Effect::Signal(ClientMsg::Unpair)]);
    assert_eq!(t.state(), LinkState::Open);
    let fx = t.server(paired("bob", true));
    assert!(fx.is_empty(), "the same link goes on: {fx:?}");
    assert_eq!(t.state(), LinkState::Open);
    assert!(
        t.advance(Duration::from_secs(30)).is_empty(),
        "no deadline left"
    );
}

#[test]
fn the_answerer_keeps_the_link_when_signald_reports_its_peer_gone_and_waits() {
    let mut t = T::new();
    open_as_answerer(&mut t);
    for reason in [SigReason::Replaced, SigReason::Left, SigReason::Timeout] {
        let fx = t.server(ServerMsg::PeerDisconnected {
            peer_id: "carol".into(),
            reason,
        });
        assert!(fx.is_empty(), "{reason:?}: the answerer waits: {fx:?}");
        assert_eq!(t.state(), LinkState::Open);
        assert!(t.server(paired("carol", false)).is_empty());
    }
    // Carol never comes back: the link ends with signald's reason.
    t.server(ServerMsg::PeerDisconnected {
        peer_id: "carol".into(),
        reason: SigReason::Left,
    });
    assert!(t.advance(Duration::from_secs(9)).is_empty());
    let fx = t.advance(Duration::from_secs(1));
    assert_eq!(ended(&fx), Some(DisconnectReason::Left));
    assert!(!sends_unpair(&fx), "signald holds no pairing to end");
}

#[test]
fn a_restart_without_a_pairing_makes_its_offer_once_paired_again() {
    let mut t = T::new();
    t.open_with_bob();
    // The network change takes the path and the signaling connection.
    t.on(Input::SignalingDown {
        why: "reset".into(),
    });
    let fx = t.on(silent());
    assert!(!fx.contains(&Effect::RestartIce), "no pairing to carry it");
    t.on(Input::SignalingUp {
        id: "alice".into(),
        turn: false,
    });
    let fx = t.server(paired("bob", true));
    assert_eq!(fx, [Effect::RestartIce]);
    assert_eq!(
        t.on(Input::Offered(Ok("o".into()))),
        [Effect::Signal(ClientMsg::Offer { sdp: "o".into() })]
    );
    // An unpair meanwhile drains and tells signald (paired again).
    let (fx, was) = t.unpair();
    assert!(was && sends_unpair(&fx));
}
