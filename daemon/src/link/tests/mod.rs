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
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use tokio::time::Instant;

use super::*;
use crate::trust::{FirstPin, Pins};

/// The answers the core gave, by request: [`T::on`] takes every
/// [`Effect::Reply`] out of the effects and files it here, as the engine
/// hands it to whoever asked.
type Mailbox = Rc<RefCell<HashMap<ReqId, Reply>>>;

/// No answer yet.
#[derive(Debug, PartialEq)]
struct Empty;

/// The answer to one request, once the core gave it.
struct Pending<A> {
    id: ReqId,
    mailbox: Mailbox,
    pick: fn(Reply) -> A,
}

impl<A> Pending<A> {
    fn try_recv(&mut self) -> Result<A, Empty> {
        let reply = self.mailbox.borrow_mut().remove(&self.id).ok_or(Empty)?;
        Ok((self.pick)(reply))
    }
}

type Answer = Pending<Result<PairOutcome, ErrorBody>>;

struct T {
    core: Core,
    now: Instant,
    mailbox: Mailbox,
    next_id: u64,
    /// The trust store as the shell keeps it: [`Effect::Pin`] is carried
    /// out here, and the result fed back, as the engine does.
    policy: TrustPolicy,
    pins: Vec<p2p_proto::control::Pin>,
}

fn pin(id: &str, fingerprint: Fingerprint) -> p2p_proto::control::Pin {
    p2p_proto::control::Pin {
        id: id.into(),
        fingerprint,
        added: "2026-12-01T00:00:00Z".into(),
        comment: None,
    }
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
        let now = Instant::now();
        let pins = vec![pin("bob", fp(BOB)), pin("carol", fp(CAROL))];
        let mut t = T {
            core: Core::new(
                Policy {
                    allow_peers: allow.iter().map(|s| s.to_string()).collect(),
                    connect_timeout: Duration::from_secs(15),
                    drain_timeout: DRAIN,
                    restart_timeout: Duration::from_secs(10),
                    server: "ws://signald/ws".into(),
                },
                Pins::new(policy, pins.clone()),
                now,
            ),
            now,
            mailbox: Mailbox::default(),
            next_id: 0,
            policy,
            pins,
        };
        t.on(Input::SignalingUp {
            id: "alice".into(),
            turn: false,
        });
        t
    }

    fn on(&mut self, input: Input) -> Vec<Effect> {
        let fx = self.core.handle(input, self.now);
        let mut out = Vec::new();
        for e in fx {
            match e {
                Effect::Reply { to, reply } => {
                    let old = self.mailbox.borrow_mut().insert(to, reply);
                    assert!(old.is_none(), "{to:?} answered twice");
                }
                Effect::Pin {
                    peer,
                    fingerprint,
                    comment,
                    first,
                } => {
                    // Seen by the test, and carried out as the engine does.
                    out.push(Effect::Pin {
                        peer: peer.clone(),
                        fingerprint,
                        comment,
                        first,
                    });
                    let result = self.write_pin(&peer, fingerprint, first);
                    let pins = Pins::new(self.policy, self.pins.clone());
                    out.extend(self.on(Input::Pinned { result, pins }));
                }
                other => out.push(other),
            }
        }
        out
    }

    /// The shell's side of [`Effect::Pin`].
    fn write_pin(
        &mut self,
        peer: &str,
        fingerprint: Fingerprint,
        first: bool,
    ) -> Result<FirstPin, crate::trust::WriteError> {
        match self.pinned(peer) {
            Some(p) if first && p == fingerprint => return Ok(FirstPin::AlreadyPinned),
            Some(p) if first => return Ok(FirstPin::Conflict(p)),
            _ => {}
        }
        self.pins.retain(|p| p.id != peer);
        self.pins.push(pin(peer, fingerprint));
        Ok(FirstPin::Added)
    }

    /// The key pinned for `id` in the shell's store.
    fn pinned(&self, id: &str) -> Option<Fingerprint> {
        self.pins.iter().find(|p| p.id == id).map(|p| p.fingerprint)
    }

    /// An edit of the store by hand (or `p2pctl trust`): the core hears of
    /// it with the next input, this one.
    fn edit_pins(&mut self, edit: impl FnOnce(&mut Vec<p2p_proto::control::Pin>)) -> Vec<Effect> {
        edit(&mut self.pins);
        self.on(Input::Pins(Pins::new(self.policy, self.pins.clone())))
    }

    /// A request number, as the engine makes them.
    fn next(&mut self) -> ReqId {
        self.next_id += 1;
        ReqId(self.next_id)
    }

    /// Hands `verb` to the core; its effects, and its answer to come.
    fn ask<A>(&mut self, verb: Verb, pick: fn(Reply) -> A) -> (Vec<Effect>, Pending<A>) {
        let id = self.next();
        let fx = self.on(Input::Verb { id, verb });
        let pending = Pending {
            id,
            mailbox: self.mailbox.clone(),
            pick,
        };
        (fx, pending)
    }

    /// `unpair`, answered later when an open link drains.
    fn ask_unpair(&mut self) -> (Vec<Effect>, Pending<bool>) {
        self.ask(Verb::Unpair, |r| match r {
            Reply::Unpair(was) => was,
            other => panic!("{other:?}"),
        })
    }

    /// The handshake's claim of invite `number`.
    fn claim(&mut self, number: u16) -> Pending<Result<crate::invite::Code, InviteFailure>> {
        let id = self.next();
        self.on(Input::InviteClaim { id, number });
        Pending {
            id,
            mailbox: self.mailbox.clone(),
            pick: |r| match r {
                Reply::Claim(c) => c,
                other => panic!("{other:?}"),
            },
        }
    }

    fn server(&mut self, m: ServerMsg) -> Vec<Effect> {
        self.on(Input::Server(m))
    }

    fn advance(&mut self, d: Duration) -> Vec<Effect> {
        self.now += d;
        self.on(Input::Tick)
    }

    fn pair(&mut self, peer: &str, wait_open: bool, timeout: Duration) -> (Vec<Effect>, Answer) {
        self.pair_verb(Verb::Pair {
            peer: peer.into(),
            wait_open,
            timeout,
            code: None,
        })
    }

    fn pair_with_code(&mut self, peer: &str, code: &str) -> (Vec<Effect>, Answer) {
        self.pair_verb(Verb::Pair {
            peer: peer.into(),
            wait_open: true,
            timeout: LONG,
            code: Some(crate::invite::Code::parse(code).unwrap()),
        })
    }

    fn pair_verb(&mut self, verb: Verb) -> (Vec<Effect>, Answer) {
        self.ask(verb, |r| match r {
            Reply::Pair(outcome) => outcome,
            other => panic!("{other:?}"),
        })
    }

    /// An edit of the invites or the trust store, answered at once.
    fn edit(&mut self, verb: Verb) -> Result<OkBody, ErrorBody> {
        let (_, mut answer) = self.ask(verb, |r| match r {
            Reply::Body(body) => body,
            other => panic!("{other:?}"),
        });
        answer.try_recv().expect("answered at once")
    }

    fn invite(&mut self, for_peer: Option<&str>) -> p2p_proto::control::InviteInfo {
        let edit = InviteEdit::Create {
            ttl: Duration::from_secs(600),
            for_peer: for_peer.map(str::to_string),
        };
        match self.edit(Verb::Invite(edit)) {
            Ok(OkBody::Invite { invite }) => invite,
            other => panic!("{other:?}"),
        }
    }

    /// `unpair`, with the drain an open link asks for done at once (as
    /// the engine reports it); the effects of both steps.
    fn unpair(&mut self) -> (Vec<Effect>, bool) {
        let (mut fx, mut rx) = self.ask_unpair();
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
                trust: PeerTrust::Pinned
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
