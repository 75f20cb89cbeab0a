//! The link's state machine driven by fake inputs at explicit instants:
//! every transition, and the defects the old shape hid.

use std::time::Duration;

use p2p_proto::control::{
    DisconnectReason, ErrorBody, ErrorCode, EventKind, InviteFailure, LinkState, OkBody,
    PairOutcome, PeerTrust, TrustPolicy,
};
use p2p_proto::identity::Fingerprint;
use p2p_proto::signal::{
    ClientMsg, DisconnectReason as SigReason, ErrorCode as SigError, ServerMsg,
};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::*;
use crate::trust::TrustStore;

type Answer = oneshot::Receiver<Result<PairOutcome, ErrorBody>>;

struct T {
    core: Core,
    now: Instant,
    _dir: tempfile::TempDir,
}

/// A fingerprint for tests, and an SDP that carries it.
fn fp(b: u8) -> Fingerprint {
    Fingerprint::from_bytes([b; 32])
}

fn sdp(b: u8) -> String {
    format!("v=0\r\na=fingerprint:sha-256 {}\r\n", fp(b).to_sdp_hex())
}

/// The peers every test knows: bob's key is fp(1), carol's fp(2).
const BOB: u8 = 1;
const CAROL: u8 = 2;

impl T {
    fn new() -> T {
        Self::with(&[], TrustPolicy::Known)
    }

    fn with_allow(allow: &[&str]) -> T {
        Self::with(allow, TrustPolicy::Known)
    }

    fn with(allow: &[&str], policy: TrustPolicy) -> T {
        let dir = tempfile::tempdir().unwrap();
        let mut store = TrustStore::open(dir.path().join("known_peers"), policy);
        store.set("bob", fp(BOB), None).unwrap();
        store.set("carol", fp(CAROL), None).unwrap();
        let mut t = T {
            core: Core::new(
                Policy {
                    allow_peers: allow.iter().map(|s| s.to_string()).collect(),
                    connect_timeout: Duration::from_secs(15),
                    server: "ws://signald/ws".into(),
                },
                store,
            ),
            now: Instant::now(),
            _dir: dir,
        };
        t.on(Input::SignalingUp {
            id: "alice".into(),
            turn: false,
        });
        t
    }

    fn on(&mut self, input: Input) -> Vec<Effect> {
        self.core.handle(input, self.now)
    }

    fn server(&mut self, m: ServerMsg) -> Vec<Effect> {
        self.on(Input::Server(m))
    }

    fn advance(&mut self, d: Duration) -> Vec<Effect> {
        self.now += d;
        self.on(Input::Tick)
    }

    fn pair(&mut self, peer: &str, wait_open: bool, timeout: Duration) -> (Vec<Effect>, Answer) {
        let (reply, rx) = oneshot::channel();
        let fx = self.on(Input::Pair {
            peer: peer.into(),
            wait_open,
            timeout,
            reply,
            code: None,
        });
        (fx, rx)
    }

    fn pair_with_code(&mut self, peer: &str, code: &str) -> (Vec<Effect>, Answer) {
        let (reply, rx) = oneshot::channel();
        let fx = self.on(Input::Pair {
            peer: peer.into(),
            wait_open: true,
            timeout: LONG,
            reply,
            code: Some(crate::invite::Code::parse(code).unwrap()),
        });
        (fx, rx)
    }

    fn invite(&mut self, for_peer: Option<&str>) -> p2p_proto::control::InviteInfo {
        let (reply, mut rx) = oneshot::channel();
        self.on(Input::InviteEdit {
            edit: InviteEdit::Create {
                ttl: Duration::from_secs(600),
                for_peer: for_peer.map(str::to_string),
            },
            reply,
        });
        match rx.try_recv().unwrap() {
            Ok(OkBody::Invite { invite }) => invite,
            other => panic!("{other:?}"),
        }
    }

    fn unpair(&mut self) -> (Vec<Effect>, bool) {
        let (reply, mut rx) = oneshot::channel();
        let fx = self.on(Input::Unpair(reply));
        (fx, rx.try_recv().expect("unpair answered at once"))
    }

    fn state(&self) -> LinkState {
        self.core.state()
    }

    /// Pairs with `bob` as initiator up to an open channel.
    fn open_with_bob(&mut self) -> Answer {
        let (_, answer) = self.pair("bob", true, Duration::from_secs(30));
        self.server(paired("bob", true));
        self.on(Input::Offered(Ok("offer-sdp".into())));
        self.server(ServerMsg::Answer {
            sdp: sdp(BOB),
            from: "bob".into(),
        });
        self.on(Input::AnswerApplied(Ok(())));
        let fx = self.on(Input::ChannelOpen { path: None });
        assert!(
            fx.contains(&Effect::Expose {
                peer: "bob".into(),
                verified: true
            }),
            "{fx:?}"
        );
        assert_eq!(self.state(), LinkState::Open);
        answer
    }
}

fn paired(peer: &str, initiator: bool) -> ServerMsg {
    ServerMsg::Paired {
        peer_id: peer.into(),
        initiator,
    }
}

fn signald_error(code: SigError) -> ServerMsg {
    ServerMsg::Error {
        code,
        message: "m".into(),
    }
}

fn events(fx: &[Effect]) -> Vec<&EventKind> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Publish(k) => Some(k),
            _ => None,
        })
        .collect()
}

fn ended(fx: &[Effect]) -> Option<DisconnectReason> {
    events(fx).into_iter().find_map(|k| match k {
        EventKind::PeerDisconnected { reason, .. } => Some(*reason),
        _ => None,
    })
}

fn sends_unpair(fx: &[Effect]) -> bool {
    fx.contains(&Effect::Signal(ClientMsg::Unpair))
}

fn answered(rx: &mut Answer) -> Result<PairOutcome, ErrorBody> {
    rx.try_recv().expect("the pair request was answered")
}

const LONG: Duration = Duration::from_secs(30);

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
    let fx = t.on(Input::ChannelOpen { path: None });
    assert_eq!(
        fx[0],
        Effect::Expose {
            peer: "bob".into(),
            verified: true
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
        why: "its queue is full".into(),
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
        why: "it has stopped".into(),
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
    t.open_with_bob();
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
fn losing_signaling_ends_the_link_without_unpair() {
    let mut t = T::new();
    t.open_with_bob();
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
    assert!(fx.contains(&Effect::Reset) && fx.contains(&Effect::Withdraw));
    let (fx, was) = t.unpair();
    assert!(!was && fx.is_empty());
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
    let fx = t.on(Input::ChannelOpen { path: None });
    assert!(fx.contains(&Effect::Expose {
        peer: "dave".into(),
        verified: true
    }));
    assert!(events(&fx).iter().any(|e| matches!(
        e,
        EventKind::ChannelOpen {
            trust: Some(PeerTrust::Tofu),
            ..
        }
    )));
    assert_eq!(t.core.trust_store().get("dave"), Some(fp(4)));
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
    let fx = t.on(Input::ChannelOpen { path: None });
    assert!(fx.contains(&Effect::Expose {
        peer: "browser".into(),
        verified: false
    }));
    assert_eq!(
        answered(&mut answer).unwrap().trust,
        Some(PeerTrust::Unverified)
    );
    assert_eq!(
        t.core.trust_store().get("browser"),
        None,
        "any pins nothing"
    );
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
    let (reply, mut rx) = oneshot::channel();
    let fx = t.on(Input::TrustEdit {
        edit: TrustEdit::Untrust { peer: "bob".into() },
        reply,
    });
    assert!(matches!(
        rx.try_recv().unwrap(),
        Ok(OkBody::Untrust { was_trusted: true })
    ));
    assert_eq!(ended(&fx), Some(DisconnectReason::NotTrusted));
    assert!(sends_unpair(&fx));
    // Pinning another peer leaves an open link alone.
    t.on(Input::TrustEdit {
        edit: TrustEdit::Trust {
            peer: "bob".into(),
            fingerprint: fp(BOB),
            comment: None,
        },
        reply: oneshot::channel().0,
    });
    t.open_with_bob();
    let fx = t.on(Input::TrustEdit {
        edit: TrustEdit::Trust {
            peer: "carol".into(),
            fingerprint: fp(3),
            comment: None,
        },
        reply: oneshot::channel().0,
    });
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(t.state(), LinkState::Open);
}

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
