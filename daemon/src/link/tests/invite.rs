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
    let fx = t.on(Input::ChannelOpen { path: None });
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(t.state(), LinkState::Connecting);
    let fx = t.on(Input::InviteDone(Ok(())));
    assert!(fx.contains(&Effect::Expose {
        peer: "dave".into(),
        verified: true
    }));
    assert_eq!(
        answered(&mut answer).unwrap().trust,
        Some(PeerTrust::Invite)
    );
    assert_eq!(t.core.trust_store().get("dave"), Some(fp(4)));
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
    let (reply, mut code) = oneshot::channel();
    t.on(Input::InviteClaim {
        number: inv.number,
        reply,
    });
    assert_eq!(code.try_recv().unwrap().unwrap().to_string(), inv.code);
    let fx = t.on(Input::InviteDone(Ok(())));
    assert!(fx.is_empty(), "waits for the channel: {fx:?}");
    let fx = t.on(Input::ChannelOpen { path: None });
    assert!(fx.contains(&Effect::Expose {
        peer: "erin".into(),
        verified: true
    }));
    assert_eq!(t.core.trust_store().get("erin"), Some(fp(5)));
    // Used up: the next stranger is refused.
    t.unpair();
    let fx = t.server(paired("frank", false));
    assert!(
        t.core.invite_pending(),
        "an ended invite still admits, to say why"
    );
    let _ = fx;
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
    let (reply, _code) = oneshot::channel();
    t.on(Input::InviteClaim {
        number: inv.number,
        reply,
    });
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
    assert_eq!(t.core.trust_store().get("mallory"), None);
    // The right code is useless now: the claim is refused.
    t.server(paired("mallory", false));
    t.server(ServerMsg::Offer {
        sdp: sdp(6),
        from: "mallory".into(),
    });
    let (reply, mut code) = oneshot::channel();
    t.on(Input::InviteClaim {
        number: inv.number,
        reply,
    });
    assert_eq!(code.try_recv().unwrap(), Err(InviteFailure::Used));
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
    assert!(t.on(Input::ChannelOpen { path: None }).is_empty());
}
