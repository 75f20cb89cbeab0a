//! The link's state machine driven by fake inputs at explicit instants:
//! every transition, and the defects the old shape hid. This file is the
//! harness; the cases are in `lifecycle.rs`, `trust.rs` and `invite.rs`.

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
        let now = Instant::now();
        let mut store = TrustStore::open(dir.path().join("known_peers"), policy);
        store.set("bob", fp(BOB), None).unwrap();
        store.set("carol", fp(CAROL), None).unwrap();
        let mut t = T {
            core: Core::new(
                Policy {
                    allow_peers: allow.iter().map(|s| s.to_string()).collect(),
                    connect_timeout: Duration::from_secs(15),
                    drain_timeout: DRAIN,
                    restart_timeout: Duration::from_secs(10),
                    server: "ws://signald/ws".into(),
                },
                store,
                now,
            ),
            now,
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

    /// `unpair`, with the drain an open link asks for done at once (as
    /// the engine reports it); the effects of both steps.
    fn unpair(&mut self) -> (Vec<Effect>, bool) {
        let (reply, mut rx) = oneshot::channel();
        let mut fx = self.on(Input::Unpair(reply));
        if fx.contains(&Effect::Drain) {
            fx.extend(self.on(Input::Drained));
        }
        (fx, rx.try_recv().expect("unpair answered"))
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
        let fx = self.on(Input::ChannelOpen {
            path: None,
            certificate: None,
        });
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
/// The drain timeout of every test's policy.
const DRAIN: Duration = Duration::from_secs(5);

mod invite;
mod lifecycle;
mod restart;
mod trust;
