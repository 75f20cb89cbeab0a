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
    t.on(Input::ChannelOpen {
        path: None,
        certificate: None,
    });
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

/// Issue 19: a move only the answerer sees was repaired only at the
/// bound, as only the initiator offered. Now the side that notices offers.
#[test]
fn the_answerer_that_notices_first_offers_the_restart() {
    let mut t = T::new();
    open_as_answerer(&mut t);
    let fx = t.on(silent());
    assert_eq!(
        fx,
        [
            Effect::Publish(EventKind::IceRestarting {
                peer_id: "carol".into()
            }),
            Effect::RestartIce
        ]
    );
    let fx = t.on(Input::Offered(Ok("answerer-offer".into())));
    assert_eq!(
        fx,
        [Effect::Signal(ClientMsg::Offer {
            sdp: "answerer-offer".into()
        })]
    );
    let fx = t.server(ServerMsg::Answer {
        sdp: sdp(CAROL),
        from: "carol".into(),
    });
    assert_eq!(fx, [Effect::AcceptAnswer { sdp: sdp(CAROL) }]);
    assert!(t.on(Input::AnswerApplied(Ok(()))).is_empty());
    assert_eq!(
        t.on(Input::IceConnected),
        [Effect::Restarted {
            peer: "carol".into()
        }]
    );
}

/// Both sides noticed: the offers cross at signald. The original
/// initiator's stands: the answerer gives its own up and answers, and a
/// late answer to the offer it gave up is ignored.
#[test]
fn crossing_restart_offers_the_answerer_yields() {
    let mut t = T::new();
    open_as_answerer(&mut t);
    t.on(silent());
    t.on(Input::Offered(Ok("answerer-offer".into())));
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
    let late = t.server(ServerMsg::Answer {
        sdp: sdp(CAROL),
        from: "carol".into(),
    });
    assert!(late.is_empty(), "{late:?}");
    assert_eq!(
        t.on(Input::IceConnected),
        [Effect::Restarted {
            peer: "carol".into()
        }]
    );
}

/// The same crossing seen from the initiator: its offer stands, the
/// peer's is ignored.
#[test]
fn crossing_restart_offers_the_initiators_offer_stands() {
    let mut t = T::new();
    t.open_with_bob();
    t.on(silent());
    t.on(Input::Offered(Ok("initiator-offer".into())));
    let fx = t.server(ServerMsg::Offer {
        sdp: sdp(BOB),
        from: "bob".into(),
    });
    assert!(fx.is_empty(), "{fx:?}");
    let fx = t.server(ServerMsg::Answer {
        sdp: sdp(BOB),
        from: "bob".into(),
    });
    assert_eq!(fx, [Effect::AcceptAnswer { sdp: sdp(BOB) }]);
}

/// A restart description of `key`'s with ICE credentials `ufrag`.
fn restart_sdp(key: u8, ufrag: &str) -> String {
    format!("{}a=ice-ufrag:{ufrag}\r\n", sdp(key))
}

/// A restart description of ours (the core does not read our own key).
fn own_sdp(ufrag: &str) -> String {
    format!("v=0\r\na=ice-ufrag:{ufrag}\r\n")
}

fn offer_from(t: &mut T, peer: &str, sdp: &str) -> Vec<Effect> {
    t.server(ServerMsg::Offer {
        sdp: sdp.into(),
        from: peer.into(),
    })
}

fn answer_from(t: &mut T, peer: &str, sdp: &str) -> Vec<Effect> {
    t.server(ServerMsg::Answer {
        sdp: sdp.into(),
        from: peer.into(),
    })
}

fn signal_answer(sdp: &str) -> Effect {
    Effect::Signal(ClientMsg::Answer { sdp: sdp.into() })
}

#[test]
fn a_restart_offer_the_answerer_did_not_see_coming_is_answered_too() {
    let mut t = T::new();
    open_as_answerer(&mut t);
    let r1 = restart_sdp(CAROL, "r1");
    assert_eq!(
        offer_from(&mut t, "carol", &r1),
        [
            Effect::Publish(EventKind::IceRestarting {
                peer_id: "carol".into()
            }),
            Effect::Answer { sdp: r1.clone() }
        ]
    );
    assert_eq!(
        t.on(Input::Answered(Ok("a1".into()))),
        [signal_answer("a1")]
    );
    // The same offer again (sent again on a new pairing) gets the same
    // answer: no new ICE generation.
    assert_eq!(offer_from(&mut t, "carol", &r1), [signal_answer("a1")]);
    // A new one within a second is answered at the end of that second,
    // not dropped; a flood of them costs one answer a second, the latest.
    let r2 = restart_sdp(CAROL, "r2");
    assert!(offer_from(&mut t, "carol", &r2).is_empty());
    let r3 = restart_sdp(CAROL, "r3");
    assert!(offer_from(&mut t, "carol", &r3).is_empty());
    assert_eq!(t.core.deadline(), Some(t.now + Duration::from_secs(1)));
    assert!(t.advance(Duration::from_millis(999)).is_empty());
    assert_eq!(
        t.advance(Duration::from_millis(1)),
        [Effect::Answer { sdp: r3.clone() }]
    );
    assert!(offer_from(&mut t, "carol", &restart_sdp(CAROL, "r4")).is_empty());
    // The path comes back before that second is over: the offer held is
    // answered then (carol still waits for it), as a restart of its own.
    let fx = t.on(Input::IceConnected);
    assert_eq!(
        fx,
        [
            Effect::Restarted {
                peer: "carol".into()
            },
            Effect::Publish(EventKind::IceRestarting {
                peer_id: "carol".into()
            }),
            Effect::Answer {
                sdp: restart_sdp(CAROL, "r4")
            }
        ]
    );
}

/// Seen in the NAT lab: the answerer's restart offer (1) was still on its
/// way when signald paired the two again, and the answerer then made a
/// second offer (2) for the new pairing. The initiator answered 1 and
/// dropped 2 as too soon; the answerer applied the answer to 1 over its
/// offer 2, and every check failed on credentials until the bound. Now
/// the offer that is out is sent again, the same, and an answer applies
/// once.
#[test]
fn an_offer_out_when_signald_pairs_again_is_sent_again_not_replaced() {
    let mut t = T::new();
    open_as_answerer(&mut t);
    assert!(t.on(silent()).contains(&Effect::RestartIce));
    let o1 = own_sdp("o1");
    assert_eq!(
        t.on(Input::Offered(Ok(o1.clone()))),
        [Effect::Signal(ClientMsg::Offer { sdp: o1.clone() })]
    );
    // carol came back to signald with its ID and asked for the pairing.
    gone(&mut t, "carol", SigReason::Replaced);
    assert_eq!(t.server(paired("carol", false)), [Effect::ResendOffer]);
    // The shell sends the same offer, with the candidates gathered since.
    let o1_again = format!("{o1}a=candidate:1 1 udp 1 10.0.0.1 5000 typ host\r\n");
    assert_eq!(
        t.on(Input::Offered(Ok(o1_again.clone()))),
        [Effect::Signal(ClientMsg::Offer { sdp: o1_again })]
    );
    // carol answers offer 1 as it came first, then the same offer again
    // with the same answer: applied once.
    let a1 = restart_sdp(CAROL, "a1");
    assert_eq!(
        answer_from(&mut t, "carol", &a1),
        [Effect::AcceptAnswer { sdp: a1.clone() }]
    );
    assert!(answer_from(&mut t, "carol", &a1).is_empty());
    assert!(t.on(Input::AnswerApplied(Ok(()))).is_empty());
    assert_eq!(
        t.on(Input::IceConnected),
        [Effect::Restarted {
            peer: "carol".into()
        }]
    );
    assert_eq!(t.state(), LinkState::Open);
}

/// The same story from the initiator's side: the peer's offer, seen twice
/// (on both pairings, or late after the restart found its path), is
/// answered twice with one answer, and starts no second restart.
#[test]
fn the_same_restart_offer_twice_is_one_restart() {
    let mut t = T::new();
    t.open_with_bob();
    t.on(Input::SignalingDown {
        why: "reset".into(),
    });
    t.on(Input::SignalingUp {
        id: "alice".into(),
        turn: false,
    });
    assert!(
        t.server(paired("bob", true)).is_empty(),
        "no restart of ours"
    );
    let o1 = restart_sdp(BOB, "o1");
    let fx = offer_from(&mut t, "bob", &o1);
    assert_eq!(fx.last(), Some(&Effect::Answer { sdp: o1.clone() }));
    assert_eq!(
        t.on(Input::Answered(Ok("a1".into()))),
        [signal_answer("a1")]
    );
    assert_eq!(offer_from(&mut t, "bob", &o1), [signal_answer("a1")]);
    assert_eq!(
        t.on(Input::IceConnected),
        [Effect::Restarted { peer: "bob".into() }]
    );
    // Late: still the same answer, and no restart waiting for a path that
    // is already there (it would end the link at the bound).
    t.advance(Duration::from_secs(5));
    assert_eq!(offer_from(&mut t, "bob", &o1), [signal_answer("a1")]);
    assert_eq!(t.core.deadline(), None);
    t.advance(Duration::from_secs(60));
    assert_eq!(t.state(), LinkState::Open);
}

/// A restart whose offer was answered but found no path yet, when signald
/// pairs the two again: candidates trickled meanwhile are lost, so the
/// initiator makes a new offer; the answerer waits for it (two new
/// offers would cross).
#[test]
fn paired_again_mid_restart_the_initiator_offers_anew_and_the_answerer_waits() {
    let mut t = T::new();
    t.open_with_bob();
    t.on(silent());
    t.on(Input::Offered(Ok(own_sdp("o1"))));
    answer_from(&mut t, "bob", &restart_sdp(BOB, "a1"));
    t.on(Input::AnswerApplied(Ok(())));
    gone(&mut t, "bob", SigReason::Timeout);
    t.on(Input::PathChecked(PathCheck::Silent));
    assert_eq!(t.server(paired("bob", true)), [Effect::RestartIce]);

    let mut t = T::new();
    open_as_answerer(&mut t);
    t.on(silent());
    t.on(Input::Offered(Ok(own_sdp("o1"))));
    answer_from(&mut t, "carol", &restart_sdp(CAROL, "a1"));
    t.on(Input::AnswerApplied(Ok(())));
    gone(&mut t, "carol", SigReason::Replaced);
    assert!(t.server(paired("carol", false)).is_empty());
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

fn gone(t: &mut T, peer: &str, reason: SigReason) -> Vec<Effect> {
    t.server(ServerMsg::PeerDisconnected {
        peer_id: peer.into(),
        reason,
    })
}

#[test]
fn signalds_notices_keep_the_link_and_left_or_timeout_check_the_path() {
    let mut t = T::new();
    open_as_answerer(&mut t);
    let fx = gone(&mut t, "carol", SigReason::Replaced);
    assert!(fx.is_empty(), "a live peer took its ID back: {fx:?}");
    assert_eq!(t.state(), LinkState::Open);
    assert!(t.server(paired("carol", false)).is_empty());
    for reason in [SigReason::Left, SigReason::Timeout] {
        let fx = gone(&mut t, "carol", reason);
        let quick = reason != SigReason::Left;
        assert_eq!(fx, [Effect::CheckPath { quick }], "{reason:?}");
        assert_eq!(t.core.link().reachable(), None, "being checked");
        assert!(t.on(Input::PathChecked(PathCheck::Answered)).is_empty());
        assert_eq!(t.state(), LinkState::Open);
        assert_eq!(t.core.link().reachable(), Some(true));
        assert!(!t.core.link().paired_at_signald());
    }
    // Answered: the peer is there, only not at signald; no bound applies.
    assert!(t.advance(Duration::from_secs(600)).is_empty());
    assert_eq!(t.state(), LinkState::Open);
}

#[test]
fn a_peer_that_left_and_does_not_answer_is_gone_at_once() {
    for initiator in [true, false] {
        let mut t = T::new();
        let peer = if initiator {
            t.open_with_bob();
            "bob"
        } else {
            open_as_answerer(&mut t);
            "carol"
        };
        assert!(
            gone(&mut t, peer, SigReason::Left).contains(&Effect::CheckPath { quick: false }),
            "silence would end the link: the careful pace"
        );
        let fx = t.on(Input::PathChecked(PathCheck::Silent));
        assert_eq!(ended(&fx), Some(DisconnectReason::PeerGone), "{fx:?}");
        assert!(fx.contains(&Effect::Reset));
        // signald ended the pairing itself; only the initiator's request
        // to pair again, still unanswered, gets an unpair after it.
        assert_eq!(sends_unpair(&fx), initiator);
        assert_eq!(t.state(), LinkState::Idle, "ready for the next pairing");
    }
}

#[test]
fn a_silent_peer_after_timeout_is_lost_and_another_pairing_replaces_it() {
    let mut t = T::new();
    t.open_with_bob();
    let fx = gone(&mut t, "bob", SigReason::Timeout);
    assert_eq!(
        fx,
        [
            Effect::Signal(ClientMsg::Pair {
                peer_id: "bob".into()
            }),
            Effect::CheckPath { quick: true }
        ]
    );
    // The initiator asked signald to pair again; bob is not there.
    let fx = t.on(Input::PathChecked(PathCheck::Silent));
    assert_eq!(
        events(&fx),
        [&EventKind::IceRestarting {
            peer_id: "bob".into()
        }]
    );
    assert_eq!(t.state(), LinkState::Open, "lost, not ended");
    assert_eq!(t.core.link().reachable(), Some(false));
    assert!(t.server(signald_error(SigError::UnknownPeer)).is_empty());
    // Pairing bob again is still refused; carol replaces the lost link.
    let (_, mut again) = t.pair("bob", false, LONG);
    assert_eq!(
        answered(&mut again).unwrap_err().code,
        ErrorCode::AlreadyPaired
    );
    let (fx, _carol) = t.pair("carol", true, LONG);
    assert_eq!(ended(&fx), Some(DisconnectReason::Superseded), "{fx:?}");
    assert!(!sends_unpair(&fx), "signald holds no pairing of ours");
    let pair_at = fx
        .iter()
        .position(|e| {
            *e == Effect::Signal(ClientMsg::Pair {
                peer_id: "carol".into(),
            })
        })
        .expect("carol asked for");
    let reset_at = fx.iter().position(|e| *e == Effect::Reset).unwrap();
    assert!(reset_at < pair_at, "a fresh connection first: {fx:?}");
    assert_eq!(t.state(), LinkState::Requested);
}

#[test]
fn a_lost_link_ends_at_the_bound_with_signalds_reason() {
    let mut t = T::new();
    open_as_answerer(&mut t);
    gone(&mut t, "carol", SigReason::Timeout);
    t.on(Input::PathChecked(PathCheck::Silent));
    assert!(t.advance(Duration::from_secs(9)).is_empty());
    let fx = t.advance(Duration::from_secs(1));
    assert_eq!(ended(&fx), Some(DisconnectReason::Timeout));
    assert!(!sends_unpair(&fx), "signald holds no pairing to end");
}

#[test]
fn a_request_to_pair_again_still_unanswered_is_unpaired_when_the_link_ends() {
    let mut t = T::new();
    t.open_with_bob();
    let fx = gone(&mut t, "bob", SigReason::Left);
    assert!(
        fx.contains(&Effect::Signal(ClientMsg::Pair {
            peer_id: "bob".into()
        })),
        "{fx:?}"
    );
    let fx = t.on(Input::PathChecked(PathCheck::Silent));
    assert!(sends_unpair(&fx), "in case signald pairs the two after all");
    // signald's late answer to that request is not taken for the next one.
    let (_, mut carol) = t.pair("carol", false, LONG);
    assert!(t.server(signald_error(SigError::UnknownPeer)).is_empty());
    assert_eq!(t.state(), LinkState::Requested);
    t.server(paired("carol", true));
    assert!(answered(&mut carol).is_ok());
}

#[test]
fn requests_to_pair_again_back_off() {
    let mut t = T::new();
    t.open_with_bob();
    gone(&mut t, "bob", SigReason::Replaced);
    let mut gaps = Vec::new();
    let mut last = t.now;
    for _ in 0..400 {
        let fx = t.advance(Duration::from_millis(250));
        if fx.contains(&Effect::Signal(ClientMsg::Pair {
            peer_id: "bob".into(),
        })) {
            gaps.push((t.now - last).as_secs());
            last = t.now;
        }
        t.server(signald_error(SigError::UnknownPeer));
    }
    assert_eq!(gaps[..7], [1, 2, 4, 8, 16, 30, 30], "{gaps:?}");
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

/// A peer that cannot restart ICE (aiortc 1.4 answers with its old
/// credentials) ends the link at once, with the shell's typed reason in
/// the message rather than after the restart bound.
#[test]
fn a_peer_that_cannot_restart_ice_ends_the_link_at_once_and_says_why() {
    let mut t = T::new();
    t.open_with_bob();
    t.on(silent());
    t.on(Input::Offered(Ok("restart-offer".into())));
    t.server(ServerMsg::Answer {
        sdp: sdp(BOB),
        from: "bob".into(),
    });
    let fx = t.on(Input::AnswerApplied(Err(NegotiationError::NoIceRestart)));
    assert_eq!(ended(&fx), Some(DisconnectReason::Failed), "{fx:?}");
    assert_eq!(t.state(), LinkState::Idle);
}

/// The answerer's restart offer was lost with the pairing at signald (its
/// own signaling connection broke in the same move): once paired again,
/// it sends it again.
#[test]
fn a_restart_offer_lost_with_the_pairing_is_made_again_when_paired_again() {
    let mut t = T::new();
    open_as_answerer(&mut t);
    let fx = t.on(silent());
    assert!(fx.contains(&Effect::RestartIce), "{fx:?}");
    t.on(Input::SignalingDown {
        why: "connection reset".into(),
    });
    // The offer made meanwhile has no pairing to go to.
    assert!(t.on(Input::Offered(Ok("lost".into()))).is_empty());
    t.on(Input::SignalingUp {
        id: "alice".into(),
        turn: false,
    });
    // The same offer, from the shell's pending description.
    let fx = t.server(paired("carol", false));
    assert_eq!(fx, [Effect::ResendOffer]);
    let fx = t.on(Input::Offered(Ok("again".into())));
    assert_eq!(
        fx,
        [Effect::Signal(ClientMsg::Offer {
            sdp: "again".into()
        })]
    );
}

/// Issue 19: a path that stops answering while our data is in flight is
/// checked at once (not after ICE's 5 s), and restarted when silent; a
/// check that is answered keeps the link as it is.
#[test]
fn a_stalled_data_flow_checks_the_path_and_restarts_when_silent() {
    let mut t = T::new();
    t.open_with_bob();
    assert_eq!(t.on(Input::Stalled), [Effect::CheckPath { quick: true }]);
    assert!(t.on(Input::Stalled).is_empty(), "one check at a time");
    assert!(t.on(Input::PathChecked(PathCheck::Answered)).is_empty());
    assert_eq!(t.state(), LinkState::Open);
    assert_eq!(t.on(Input::Stalled), [Effect::CheckPath { quick: true }]);
    let fx = t.on(Input::PathChecked(PathCheck::Silent));
    assert_eq!(
        fx,
        [
            Effect::Publish(EventKind::IceRestarting {
                peer_id: "bob".into()
            }),
            Effect::RestartIce
        ]
    );
    assert!(
        t.on(Input::Stalled).is_empty(),
        "a restart under way looks for a path anyway"
    );
}
