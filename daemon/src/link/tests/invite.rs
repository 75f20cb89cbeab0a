//! Links proven by an invitation's handshake.

use super::*;

#[test]
fn the_joiner_pairs_an_unknown_key_with_a_code_and_opens_only_after_the_handshake() {
    let mut t = T::new();
    let (fx, mut answer) = t.pair_with_code("dave", "4-oak-elk");
    assert_eq!(fx.len(), 1, "the pair request goes out: {fx:?}");
    let fx = t.server(paired("dave", true));
    assert!(fx.contains(&Effect::Offer {
        peer: "dave".into(),
        invite: true
    }));
    t.on(Input::Offered(Ok("o".into())));
    t.server(ServerMsg::Answer {
        sdp: sdp(4),
        from: "dave".into(),
    });
    let fx = t.on(Input::AnswerApplied(Ok(())));
    assert!(
        matches!(&fx[..], [Effect::RunInvite { role: InviteRole::Joiner(_), peer, peer_key, .. }]
            if peer == "dave" && *peer_key == fp(4)),
        "{fx:?}"
    );
    // The channel opens first: still nothing for users.
    let fx = t.on(Input::ChannelOpen {
        path: None,
        certificate: None,
    });
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(t.state(), LinkState::Connecting);
    let fx = t.on(Input::InviteDone(Ok(())));
    assert!(fx.contains(&Effect::Expose {
        peer: "dave".into(),
        trust: PeerTrust::Invite
    }));
    assert_eq!(
        answered(&mut answer).unwrap().trust,
        Some(PeerTrust::Invite)
    );
    assert_eq!(t.pinned("dave"), Some(fp(4)));
}

#[test]
fn the_inviter_admits_an_unknown_peer_only_while_an_invite_is_open() {
    let mut t = T::new();
    let fx = t.server(paired("erin", false));
    assert_eq!(
        ended(&fx),
        Some(DisconnectReason::NotTrusted),
        "no invite yet"
    );
    let inv = t.invite(None);
    t.server(paired("erin", false));
    assert!(t.core.invite_pending());
    let fx = t.server(ServerMsg::Offer {
        sdp: sdp(5),
        from: "erin".into(),
    });
    assert!(fx.contains(&Effect::Answer { sdp: sdp(5) }), "{fx:?}");
    let fx = t.on(Input::Answered(Ok("a".into())));
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::RunInvite {
            role: InviteRole::Inviter,
            ..
        }
    )));
    let mut code = t.claim(inv.number);
    assert_eq!(code.try_recv().unwrap().unwrap().to_string(), inv.code);
    let fx = t.on(Input::InviteDone(Ok(())));
    assert_eq!(
        fx,
        [Effect::Pin {
            peer: "erin".into(),
            fingerprint: fp(5),
            comment: "invite",
            first: false
        }],
        "the proven key is pinned; then the link waits for the channel"
    );
    assert_eq!(t.pinned("erin"), Some(fp(5)));
    let fx = t.on(Input::ChannelOpen {
        path: None,
        certificate: None,
    });
    assert!(fx.contains(&Effect::Expose {
        peer: "erin".into(),
        trust: PeerTrust::Invite
    }));
    // Used up: the next stranger is refused before any negotiation (no
    // connection, no candidates of ours).
    t.unpair();
    let fx = t.server(paired("frank", false));
    assert_eq!(ended(&fx), Some(DisconnectReason::NotTrusted), "{fx:?}");
    assert!(sends_unpair(&fx));
    assert_eq!(t.state(), LinkState::Idle);
}

#[test]
fn a_failed_handshake_uses_the_invite_up_and_says_so() {
    let mut t = T::new();
    let inv = t.invite(None);
    t.server(paired("mallory", false));
    t.server(ServerMsg::Offer {
        sdp: sdp(6),
        from: "mallory".into(),
    });
    t.on(Input::Answered(Ok("a".into())));
    t.claim(inv.number);
    let fx = t.on(Input::InviteDone(Err(InviteFailure::WrongCode)));
    assert!(events(&fx).iter().any(|e| matches!(
        e,
        EventKind::InviteFailed {
            reason: InviteFailure::WrongCode,
            ..
        }
    )));
    assert_eq!(ended(&fx), Some(DisconnectReason::InviteFailed));
    assert!(sends_unpair(&fx));
    assert_eq!(t.pinned("mallory"), None);
    // The right code is useless now: mallory is not even admitted.
    let fx = t.server(paired("mallory", false));
    assert_eq!(ended(&fx), Some(DisconnectReason::NotTrusted), "{fx:?}");
}

#[test]
fn an_invite_channel_from_a_pinned_peer_still_holds_the_link_for_the_handshake() {
    let mut t = T::new();
    t.server(paired("bob", false));
    t.server(ServerMsg::Offer {
        sdp: sdp(BOB),
        from: "bob".into(),
    });
    t.on(Input::Answered(Ok("a".into())));
    let fx = t.on(Input::InviteChannel);
    assert!(
        fx.iter().any(|e| matches!(e, Effect::RunInvite { .. })),
        "{fx:?}"
    );
    assert!(
        t.on(Input::ChannelOpen {
            path: None,
            certificate: None,
        })
        .is_empty()
    );
}

/// Runs a joiner's pairing with `code` up to its handshake's start.
fn join_until_the_handshake(t: &mut T, code: &str) -> Answer {
    let (_, answer) = t.pair_with_code("dave", code);
    t.server(paired("dave", true));
    t.on(Input::Offered(Ok("o".into())));
    t.server(ServerMsg::Answer {
        sdp: sdp(4),
        from: "dave".into(),
    });
    let fx = t.on(Input::AnswerApplied(Ok(())));
    assert!(
        fx.iter().any(|e| matches!(e, Effect::RunInvite { .. })),
        "{fx:?}"
    );
    answer
}

#[test]
fn a_handshake_that_began_spends_the_code_at_the_joiner_too() {
    let mut t = T::new();
    let mut answer = join_until_the_handshake(&mut t, "4-oak-elk");
    let fx = t.on(Input::InviteDone(Err(InviteFailure::WrongCode)));
    assert_eq!(ended(&fx), Some(DisconnectReason::InviteFailed));
    assert_eq!(
        answered(&mut answer).unwrap_err().code,
        ErrorCode::InviteFailed
    );
    // The same code again fails here at once: nothing goes to signald, so
    // whoever answered as dave gets no second guess.
    let (fx, mut again) = t.pair_with_code("dave", "4-oak-elk");
    assert!(fx.is_empty(), "{fx:?}");
    let e = answered(&mut again).unwrap_err();
    assert_eq!(e.code, ErrorCode::InviteFailed);
    assert!(
        e.message.contains("ask dave for a new code"),
        "{}",
        e.message
    );
    // Another code is fine.
    let (fx, _) = t.pair_with_code("dave", "4-oak-fig");
    assert!(asks_to_pair(&fx, "dave"), "{fx:?}");
}

#[test]
fn a_failure_before_the_handshake_does_not_spend_the_code() {
    let mut t = T::new();
    let (_, mut answer) = t.pair_with_code("dave", "4-oak-elk");
    t.server(signald_error(SigError::UnknownPeer));
    assert_eq!(
        answered(&mut answer).unwrap_err().code,
        ErrorCode::UnknownPeer
    );
    let (_, mut answer) = t.pair_with_code("dave", "4-oak-elk");
    t.server(paired("dave", true));
    t.on(Input::Offered(Ok("o".into())));
    // No path: the pairing times out before any handshake.
    t.advance(Duration::from_secs(31));
    assert!(answered(&mut answer).is_err());
    let (fx, _) = t.pair_with_code("dave", "4-oak-elk");
    assert!(asks_to_pair(&fx, "dave"), "still usable: {fx:?}");
}

/// A joiner refused before any description came back was refused by an
/// inviter with no open invite: `pair --code` says so.
#[test]
fn a_joiner_refused_at_once_is_told_there_is_no_open_invite() {
    let mut t = T::new();
    let (_, mut answer) = t.pair_with_code("dave", "4-oak-elk");
    t.server(paired("dave", true));
    t.server(ServerMsg::PeerDisconnected {
        peer_id: "dave".into(),
        reason: SigReason::Unpaired,
    });
    let e = answered(&mut answer).unwrap_err();
    assert_eq!(e.code, ErrorCode::InviteFailed);
    assert!(e.message.contains("no open invite"), "{}", e.message);
}

/// Whether the effects send signald `pair` with `peer`.
fn asks_to_pair(fx: &[Effect], peer: &str) -> bool {
    fx.contains(&Effect::Signal(ClientMsg::Pair {
        peer_id: peer.into(),
    }))
}
