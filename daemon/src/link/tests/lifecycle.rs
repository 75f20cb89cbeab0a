//! Pairing, opening, losing and ending a link.

use super::*;

#[test]
fn initiator_goes_requested_connecting_open() {
    let mut t = T::new();
    let (fx, mut answer) = t.pair("bob", true, LONG);
    assert_eq!(
        fx,
        [Effect::Signal(ClientMsg::Pair {
            peer_id: "bob".into()
        })]
    );
    assert_eq!(t.state(), LinkState::Requested);
    let fx = t.server(paired("bob", true));
    assert_eq!(
        fx,
        [
            Effect::Publish(EventKind::Paired {
                peer_id: "bob".into(),
                initiator: true
            }),
            Effect::Offer {
                peer: "bob".into(),
                invite: false
            }
        ]
    );
    assert_eq!(t.state(), LinkState::Connecting);
    let fx = t.on(Input::Offered(Ok("o".into())));
    assert_eq!(fx, [Effect::Signal(ClientMsg::Offer { sdp: "o".into() })]);
    // An answer from anyone else is ignored.
    let fx = t.server(ServerMsg::Answer {
        sdp: sdp(BOB),
        from: "mallory".into(),
    });
    assert!(fx.is_empty());
    let fx = t.server(ServerMsg::Answer {
        sdp: sdp(BOB),
        from: "bob".into(),
    });
    assert_eq!(fx, [Effect::AcceptAnswer { sdp: sdp(BOB) }]);
    assert!(t.on(Input::AnswerApplied(Ok(()))).is_empty());
    assert!(answer.try_recv().is_err(), "not answered before the open");
    let fx = t.on(Input::ChannelOpen {
        path: None,
        certificate: None,
    });
    assert_eq!(
        fx[0],
        Effect::Expose {
            peer: "bob".into(),
            trust: PeerTrust::Pinned
        }
    );
    assert!(matches!(events(&fx)[..], [EventKind::ChannelOpen { .. }]));
    let open = answered(&mut answer).unwrap();
    assert_eq!(open.state, LinkState::Open);
    assert_eq!(open.fingerprint, Some(fp(BOB)));
    assert_eq!(open.trust, Some(PeerTrust::Pinned));
    assert_eq!(t.core.deadline(), None, "an open link has no deadline");
}

#[test]
fn answerer_answers_only_the_peer_it_is_paired_with() {
    let mut t = T::new();
    let fx = t.server(paired("carol", false));
    assert!(matches!(
        events(&fx)[..],
        [EventKind::Paired {
            initiator: false,
            ..
        }]
    ));
    assert_eq!(t.core.answering(), Some("carol"));
    assert!(
        t.server(ServerMsg::Offer {
            sdp: "x".into(),
            from: "mallory".into()
        })
        .is_empty()
    );
    let fx = t.server(ServerMsg::Offer {
        sdp: sdp(CAROL),
        from: "carol".into(),
    });
    assert_eq!(fx, [Effect::Answer { sdp: sdp(CAROL) }]);
    let fx = t.on(Input::Answered(Ok("a".into())));
    assert_eq!(fx, [Effect::Signal(ClientMsg::Answer { sdp: "a".into() })]);
    // A second offer after answering is not answered again.
    assert!(
        t.server(ServerMsg::Offer {
            sdp: sdp(CAROL),
            from: "carol".into()
        })
        .is_empty()
    );
}

#[test]
fn no_wait_is_answered_once_paired() {
    let mut t = T::new();
    let (_, mut answer) = t.pair("bob", false, LONG);
    t.server(paired("bob", true));
    assert_eq!(answered(&mut answer).unwrap().state, LinkState::Connecting);
}

#[test]
fn late_paired_after_a_pair_timeout_does_not_revive_the_request() {
    let mut t = T::new();
    let (_, mut answer) = t.pair("bob", true, Duration::from_millis(1));
    let fx = t.advance(Duration::from_millis(2));
    assert_eq!(answered(&mut answer).unwrap_err().code, ErrorCode::Timeout);
    assert!(
        sends_unpair(&fx),
        "the abandoned request is unpaired: {fx:?}"
    );
    assert_eq!(t.state(), LinkState::Idle);
    // signald's answer to the abandoned request arrives late.
    let fx = t.server(paired("bob", true));
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(t.state(), LinkState::Idle);
    // And a new pairing works at once.
    let (fx, _) = t.pair("carol", true, LONG);
    assert_eq!(
        fx,
        [Effect::Signal(ClientMsg::Pair {
            peer_id: "carol".into()
        })]
    );
    t.server(paired("carol", true));
    assert_eq!(t.state(), LinkState::Connecting);
}

#[test]
fn late_paired_after_no_wait_raced_by_unpair_is_ignored() {
    let mut t = T::new();
    let (_, mut answer) = t.pair("bob", false, LONG);
    let (fx, was) = t.unpair();
    assert!(was);
    assert!(sends_unpair(&fx));
    assert_eq!(answered(&mut answer).unwrap_err().code, ErrorCode::Failed);
    assert!(t.server(paired("bob", true)).is_empty());
    assert_eq!(t.state(), LinkState::Idle);
}

#[test]
fn an_abandoned_requests_refusal_does_not_fail_the_next_request() {
    let mut t = T::new();
    let (_, _) = t.pair("bob", true, Duration::from_millis(1));
    t.advance(Duration::from_millis(2));
    let (_, mut answer) = t.pair("carol", true, LONG);
    // The answer to bob's request; carol's request stands.
    assert!(t.server(signald_error(SigError::PeerBusy)).is_empty());
    assert_eq!(t.state(), LinkState::Requested);
    assert!(answer.try_recv().is_err());
    t.server(signald_error(SigError::UnknownPeer));
    assert_eq!(
        answered(&mut answer).unwrap_err().code,
        ErrorCode::UnknownPeer
    );
}

#[test]
fn an_unrequested_initiator_pairing_is_unpaired() {
    let mut t = T::new();
    let fx = t.server(paired("bob", true));
    assert_eq!(fx, [Effect::Signal(ClientMsg::Unpair)]);
    assert_eq!(t.state(), LinkState::Idle);
}

#[test]
fn a_frame_signaling_would_not_take_fails_the_link_at_once() {
    let mut t = T::new();
    let (_, mut answer) = t.pair("bob", true, LONG);
    t.server(paired("bob", true));
    t.on(Input::Offered(Ok("o".into())));
    let fx = t.on(Input::SignalFailed {
        what: "offer",
        why: SignalError::QueueFull,
    });
    let e = answered(&mut answer).unwrap_err();
    assert_eq!(e.code, ErrorCode::Failed);
    assert!(
        e.message.contains("offer") && e.message.contains("queue is full"),
        "{e:?}"
    );
    assert_eq!(ended(&fx), Some(DisconnectReason::SignalingLost));
    assert!(fx.contains(&Effect::Reset));
    assert_eq!(t.state(), LinkState::Idle);

    // The pair request itself not leaving: refused, no pairing to end.
    let (_, mut answer) = t.pair("bob", true, LONG);
    let fx = t.on(Input::SignalFailed {
        what: "pair request",
        why: SignalError::Stopped,
    });
    assert_eq!(
        answered(&mut answer).unwrap_err().code,
        ErrorCode::NotConnected
    );
    assert!(
        ended(&fx).is_none() && !fx.contains(&Effect::Reset),
        "{fx:?}"
    );
}

#[test]
fn the_allow_list_refusal_is_published() {
    let mut t = T::with_allow(&["bob"]);
    let fx = t.server(paired("mallory", false));
    assert!(sends_unpair(&fx));
    assert_eq!(ended(&fx), Some(DisconnectReason::RefusedByAllowList));
    assert_eq!(t.state(), LinkState::Idle);
    t.server(paired("bob", false));
    assert_eq!(t.state(), LinkState::Connecting);
}

#[test]
fn a_loss_waits_for_signalds_reason() {
    let mut t = T::new();
    t.open_with_bob();
    let fx = t.on(Input::Lost {
        reason: DisconnectReason::ChannelClosed,
        clean: true,
    });
    assert_eq!(fx, [Effect::Withdraw]);
    assert_eq!(t.state(), LinkState::Closing);
    let fx = t.server(ServerMsg::PeerDisconnected {
        peer_id: "bob".into(),
        reason: SigReason::Unpaired,
    });
    assert_eq!(ended(&fx), Some(DisconnectReason::Unpaired));
    assert!(!sends_unpair(&fx), "signald ended it already");
    assert!(fx.contains(&Effect::Reset));
    assert_eq!(t.state(), LinkState::Idle);
}

#[test]
fn a_loss_without_a_notice_ends_after_the_grace() {
    let mut t = T::new();
    // (An open link restarts ICE instead: restart.rs.)
    t.pair("bob", true, LONG);
    t.server(paired("bob", true));
    t.on(Input::Lost {
        reason: DisconnectReason::IceFailed,
        clean: false,
    });
    assert!(t.advance(LOSS_GRACE / 2).is_empty());
    let fx = t.advance(LOSS_GRACE);
    assert_eq!(ended(&fx), Some(DisconnectReason::IceFailed));
    assert!(
        sends_unpair(&fx),
        "after an ICE failure signald must be told"
    );

    // A clean close: the peer told signald; we must not unpair.
    t.open_with_bob();
    t.on(Input::Lost {
        reason: DisconnectReason::ChannelClosed,
        clean: true,
    });
    let fx = t.advance(LOSS_GRACE);
    assert_eq!(ended(&fx), Some(DisconnectReason::ChannelClosed));
    assert!(!sends_unpair(&fx));
}

#[test]
fn connect_timeout_without_ice_says_no_path() {
    let mut t = T::new();
    let (_, mut answer) = t.pair("bob", true, Duration::from_secs(60));
    t.server(paired("bob", true));
    t.on(Input::Offered(Ok("o".into())));
    assert!(t.advance(Duration::from_secs(14)).is_empty());
    let fx = t.advance(Duration::from_secs(1));
    assert_eq!(ended(&fx), Some(DisconnectReason::ConnectTimeout));
    assert!(sends_unpair(&fx));
    let e = answered(&mut answer).unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout);
    assert!(e.message.contains("no network path"), "{e:?}");
}

#[test]
fn the_pair_requests_own_timeout_ends_the_attempt() {
    let mut t = T::new();
    let (_, mut answer) = t.pair("bob", true, Duration::from_secs(2));
    t.server(paired("bob", true));
    t.on(Input::IceConnected);
    let fx = t.advance(Duration::from_secs(2));
    assert_eq!(ended(&fx), Some(DisconnectReason::ConnectTimeout));
    let e = answered(&mut answer).unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout);
    assert!(e.message.contains("did not open within 2s"), "{e:?}");
}

#[test]
fn a_peer_that_unpairs_before_answering_refused() {
    let mut t = T::new();
    let (_, mut answer) = t.pair("bob", true, LONG);
    t.server(paired("bob", true));
    t.on(Input::Offered(Ok("o".into())));
    t.server(ServerMsg::PeerDisconnected {
        peer_id: "bob".into(),
        reason: SigReason::Unpaired,
    });
    assert_eq!(answered(&mut answer).unwrap_err().code, ErrorCode::Refused);
}

/// The peer's giving up says what failed as our own timeout would: no
/// path if ICE never connected, the channel if it did (then DTLS failed,
/// e.g. on a forged fingerprint; "no path" would send the user to look
/// for a TURN relay).
#[test]
fn a_peer_that_gives_up_after_answering_says_what_failed() {
    for ice in [false, true] {
        let mut t = T::new();
        let (_, mut answer) = t.pair("bob", true, LONG);
        t.server(paired("bob", true));
        t.on(Input::Offered(Ok("o".into())));
        t.server(ServerMsg::Answer {
            sdp: sdp(BOB),
            from: "bob".into(),
        });
        t.on(Input::AnswerApplied(Ok(())));
        if ice {
            t.on(Input::IceConnected);
        }
        t.server(ServerMsg::PeerDisconnected {
            peer_id: "bob".into(),
            reason: SigReason::Unpaired,
        });
        let e = answered(&mut answer).unwrap_err();
        let expected = match ice {
            true => "the data channel to bob did not open (bob gave up first)",
            false => "no network path",
        };
        assert!(e.message.contains(expected), "ice {ice}: {e:?}");
    }
}

#[test]
fn signalds_refusals_answer_the_request() {
    for (code, ours) in [
        (SigError::UnknownPeer, ErrorCode::UnknownPeer),
        (SigError::PeerBusy, ErrorCode::PeerBusy),
        (SigError::SelfPair, ErrorCode::SelfPair),
        (SigError::AlreadyPaired, ErrorCode::AlreadyPaired),
    ] {
        let mut t = T::new();
        let (_, mut answer) = t.pair("bob", true, LONG);
        let fx = t.server(signald_error(code));
        assert!(fx.is_empty(), "{fx:?}");
        assert_eq!(answered(&mut answer).unwrap_err().code, ours);
        assert_eq!(t.state(), LinkState::Idle);
    }
}

#[test]
fn an_incoming_pairing_wins_over_our_request() {
    let mut t = T::new();
    let (_, mut answer) = t.pair("bob", true, LONG);
    t.server(paired("carol", false));
    assert_eq!(
        answered(&mut answer).unwrap_err().code,
        ErrorCode::AlreadyPaired
    );
    assert_eq!(t.core.answering(), Some("carol"));
    // signald's answer to our request comes later and changes nothing.
    assert!(t.server(signald_error(SigError::AlreadyPaired)).is_empty());
    assert_eq!(t.core.answering(), Some("carol"));
}

#[test]
fn losing_signaling_ends_a_connecting_link_without_unpair() {
    let mut t = T::new();
    // (An open link survives it: restart.rs.)
    t.pair("bob", true, LONG);
    t.server(paired("bob", true));
    let fx = t.on(Input::SignalingDown { why: "gone".into() });
    assert_eq!(ended(&fx), Some(DisconnectReason::SignalingLost));
    assert!(!sends_unpair(&fx));
    let (_, mut answer) = t.pair("bob", true, LONG);
    assert_eq!(
        answered(&mut answer).unwrap_err().code,
        ErrorCode::NotConnected
    );
}

#[test]
fn local_unpair_tells_signald_and_resets() {
    let mut t = T::new();
    t.open_with_bob();
    let (fx, was) = t.unpair();
    assert!(was);
    assert!(sends_unpair(&fx));
    assert_eq!(ended(&fx), Some(DisconnectReason::LocalUnpair));
    assert!(fx.contains(&Effect::ResetAfterDrain) && fx.contains(&Effect::Withdraw));
    let (fx, was) = t.unpair();
    assert!(!was && fx.is_empty());
}

#[test]
fn unpairing_an_open_link_drains_before_telling_anyone() {
    let mut t = T::new();
    t.open_with_bob();
    let (fx, mut rx) = t.ask_unpair();
    // `send` stops and the channel drains; signald and the peer hear
    // nothing yet, and the `unpair` is not answered.
    assert_eq!(fx, [Effect::Withdraw, Effect::Drain]);
    assert_eq!(t.state(), LinkState::Closing);
    assert!(rx.try_recv().is_err());
    // A second `unpair` waits for the same drain.
    let (fx2, mut rx2) = t.ask_unpair();
    assert!(fx2.is_empty());
    // A pairing cannot start meanwhile.
    let (_, mut answer) = t.pair("carol", true, LONG);
    assert_eq!(
        answered(&mut answer).unwrap_err().code,
        ErrorCode::AlreadyPaired
    );

    let fx = t.on(Input::Drained);
    assert!(sends_unpair(&fx));
    assert_eq!(ended(&fx), Some(DisconnectReason::LocalUnpair));
    assert!(fx.contains(&Effect::ResetAfterDrain));
    assert_eq!((rx.try_recv(), rx2.try_recv()), (Ok(true), Ok(true)));
    assert_eq!(t.state(), LinkState::Idle);
    assert!(t.on(Input::Drained).is_empty(), "a late report is ignored");
}

#[test]
fn a_drain_that_never_finishes_ends_at_the_drain_timeout() {
    let mut t = T::new();
    t.open_with_bob();
    let (_, mut rx) = t.ask_unpair();
    assert!(t.advance(DRAIN - Duration::from_millis(1)).is_empty());
    let fx = t.advance(Duration::from_millis(1));
    assert!(sends_unpair(&fx));
    assert_eq!(ended(&fx), Some(DisconnectReason::LocalUnpair));
    assert_eq!(rx.try_recv(), Ok(true));
}

#[test]
fn a_connection_lost_while_draining_ends_at_once() {
    let mut t = T::new();
    t.open_with_bob();
    let (_, mut rx) = t.ask_unpair();
    let fx = t.on(Input::Lost {
        reason: DisconnectReason::IceFailed,
        clean: false,
    });
    assert_eq!(ended(&fx), Some(DisconnectReason::LocalUnpair));
    assert!(sends_unpair(&fx));
    assert_eq!(rx.try_recv(), Ok(true));
}

#[test]
fn shutdown_drains_an_open_link_and_then_says_unpair() {
    let mut t = T::new();
    t.open_with_bob();
    let fx = t.on(Input::Shutdown);
    assert_eq!(fx, [Effect::Withdraw, Effect::Drain]);
    assert!(
        t.on(Input::Shutdown).is_empty(),
        "a second signal waits too"
    );
    let fx = t.on(Input::Drained);
    assert!(sends_unpair(&fx), "so that the peer reads to the end");
    assert_eq!(ended(&fx), Some(DisconnectReason::Shutdown));
    assert_eq!(t.state(), LinkState::Idle);

    // Not open: nothing to drain, and signald hears of it from the
    // connection closing.
    t.pair("bob", true, LONG);
    t.server(paired("bob", true));
    let fx = t.on(Input::Shutdown);
    assert!(!fx.contains(&Effect::Drain) && !sends_unpair(&fx));
    assert_eq!(ended(&fx), Some(DisconnectReason::Shutdown));
}

#[test]
fn a_peer_that_unpairs_is_read_to_the_end_of_its_channel() {
    let mut t = T::new();
    t.open_with_bob();
    let fx = t.server(ServerMsg::PeerDisconnected {
        peer_id: "bob".into(),
        reason: SigReason::Unpaired,
    });
    assert_eq!(
        fx,
        [Effect::Withdraw],
        "no reset while its last messages arrive"
    );
    assert_eq!(t.state(), LinkState::Closing);
    let fx = t.on(Input::Lost {
        reason: DisconnectReason::ChannelClosed,
        clean: true,
    });
    assert_eq!(ended(&fx), Some(DisconnectReason::Unpaired));
    assert!(!sends_unpair(&fx) && fx.contains(&Effect::Reset));

    // A peer whose channel never closes (not a p2pd) costs the drain
    // timeout, no more.
    t.open_with_bob();
    t.server(ServerMsg::PeerDisconnected {
        peer_id: "bob".into(),
        reason: SigReason::Unpaired,
    });
    let fx = t.advance(DRAIN);
    assert_eq!(ended(&fx), Some(DisconnectReason::Unpaired));
}

#[test]
fn pair_is_checked_before_anything_is_sent() {
    let mut t = T::new();
    for (peer, code) in [
        ("not valid!", ErrorCode::BadRequest),
        ("alice", ErrorCode::SelfPair),
    ] {
        let (fx, mut answer) = t.pair(peer, true, LONG);
        assert!(fx.is_empty());
        assert_eq!(answered(&mut answer).unwrap_err().code, code);
    }
    t.pair("bob", true, LONG);
    let (fx, mut answer) = t.pair("carol", true, LONG);
    assert!(fx.is_empty());
    assert_eq!(
        answered(&mut answer).unwrap_err().code,
        ErrorCode::AlreadyPaired
    );
}

#[test]
fn rate_limiting_fails_the_pairing_with_that_reason() {
    let mut t = T::new();
    let (_, mut answer) = t.pair("bob", true, LONG);
    t.server(paired("bob", true));
    let fx = t.server(signald_error(SigError::RateLimited));
    assert_eq!(ended(&fx), Some(DisconnectReason::RateLimited));
    assert!(
        answered(&mut answer)
            .unwrap_err()
            .message
            .contains("rate limited")
    );

    // The dropped frame was the pair request: that is its answer.
    let (_, mut answer) = t.pair("bob", true, LONG);
    let fx = t.server(signald_error(SigError::RateLimited));
    assert!(ended(&fx).is_none());
    assert!(
        answered(&mut answer)
            .unwrap_err()
            .message
            .contains("rate limited")
    );
    let (_, _) = t.pair("bob", true, LONG);
    t.server(paired("bob", true));
    assert_eq!(
        t.state(),
        LinkState::Connecting,
        "no answer was left pending"
    );
}

#[test]
fn remote_candidates_only_from_the_peer_while_paired() {
    let mut t = T::new();
    let c = p2p_proto::signal::CandidateInit {
        candidate: "candidate:1 1 udp 1 127.0.0.1 5000 typ host".into(),
        sdp_mid: Some("0".into()),
        sdp_mline_index: Some(0),
        username_fragment: None,
    };
    let from = |who: &str| ServerMsg::Candidate {
        candidate: Some(c.clone()),
        from: who.into(),
    };
    assert!(t.server(from("bob")).is_empty(), "idle: ignored");
    t.server(paired("bob", false));
    assert!(t.server(from("mallory")).is_empty());
    assert_eq!(t.server(from("bob")), [Effect::AddCandidate(c.clone())]);
    assert!(
        t.server(ServerMsg::Candidate {
            candidate: None,
            from: "bob".into()
        })
        .is_empty()
    );
}
