//! The link to the peer as one state machine, without I/O.
//!
//! [`Core::handle`] takes one [`Input`] (a control request, a frame from
//! signald, something the peer connection reported, the clock) and returns
//! the [`Effect`]s the engine must carry out: frames to send, offers to
//! make, events to publish, the connection to reset. Results of effects
//! that can fail come back as inputs. Every change of state goes through
//! `Core::apply`, which also emits what goes with it (the event, the
//! answer to a waiting `pair`, the `unpair` to signald), so no transition
//! can forget one. Unit tests drive the core with fake inputs and explicit
//! instants (`tests/`), with no runtime, socket or file.
//!
//! The core touches nothing outside itself. A request that needs an answer
//! comes with a [`ReqId`] and is answered by one [`Effect::Reply`]; the
//! trust store arrives as [`Pins`] snapshots and is written through
//! [`Effect::Pin`]; time is the instant each input is handed with. Errors
//! that come back from the shell are typed ([`NegotiationError`],
//! [`SignalError`], [`WriteError`]). The shell sees the link only through
//! [`View`].
//!
//! signald answers every `pair` with exactly one frame (`paired` with
//! `initiator: true`, or an error), in order. A request we abandon before
//! its answer (a timeout, a local `unpair`) is followed by our `unpair`, so
//! its late `paired` must be ignored rather than revive the link:
//! [`Core`] counts those answers still to come.

mod ending;
mod invite;
mod open;
mod restart;
mod signald;
mod state;
#[cfg(test)]
mod tests;
mod trust;
mod verbs;

use std::time::Duration;

use p2p_proto::control::{
    DisconnectReason, ErrorBody, ErrorCode, EventKind, InviteFailure, LinkState, PairOutcome, Path,
    PeerTrust,
};
use p2p_proto::signal::{CandidateInit, ClientMsg, ServerMsg};
use tokio::time::Instant;

pub use invite::{InviteEdit, InviteProgress, InviteRole};
pub(crate) use restart::ice_ufrag;
use state::{
    AnsweredOffer, AtSignald, Awaiting, Closing, Connecting, Ending, Link, Negotiation, Open,
    OurOffer, Probe, Requested, Restart, Waiter,
};
pub use trust::PeerIdentity;

use crate::invite::{Code, Invites};
use crate::trust::{FirstPin, Pins, WriteError};

/// How long a broken connection waits for signald to say why.
pub const LOSS_GRACE: Duration = Duration::from_millis(250);
/// How soon the initiator of an open link asks signald again to pair it
/// with its peer while the peer is not back yet; the interval doubles with
/// each refusal up to [`REPAIR_RETRY_MAX`].
pub const REPAIR_RETRY: Duration = Duration::from_secs(1);
/// The longest interval between two such requests: a peer that never
/// comes back to signald (a browser that keeps its connection but not its
/// WebSocket) costs signald one frame every 30 s, not one a second.
pub const REPAIR_RETRY_MAX: Duration = Duration::from_secs(30);

/// The wait before the next request to pair again, after `asks` of them.
pub fn repair_interval(asks: u32) -> Duration {
    REPAIR_RETRY
        .saturating_mul(1 << asks.saturating_sub(1).min(5))
        .min(REPAIR_RETRY_MAX)
}

/// Why the shell could not make or apply a description
/// ([`Effect::Offer`], [`Effect::Answer`], [`Effect::AcceptAnswer`],
/// [`Effect::RestartIce`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    /// No peer connection could be built for the pairing.
    #[error("no peer connection could be built (see the log)")]
    NoConnection,
    /// The peer answered our ICE restart with its old ICE credentials: it
    /// cannot restart ICE (aiortc 1.4), so no check of our new generation
    /// can succeed.
    #[error(
        "the peer answered our ICE restart with its old ICE credentials: it cannot restart ICE, so the link cannot move to a new path"
    )]
    NoIceRestart,
    /// The WebRTC stack refused; its words.
    #[error("{0}")]
    Stack(String),
}

/// Which step of the negotiation failed, for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Offer,
    Answer,
    ApplyAnswer,
}

impl Step {
    fn describe(self) -> &'static str {
        match self {
            Step::Offer => "making the offer",
            Step::Answer => "answering the offer",
            Step::ApplyAnswer => "applying the answer",
        }
    }
}

/// Why a frame could not be handed to the signaling connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error("its queue is full")]
    QueueFull,
    #[error("it has stopped")]
    Stopped,
}

/// What a check of the data path found ([`Effect::CheckPath`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathCheck {
    /// The peer answered a consent check sent after the check began.
    Answered,
    /// Several consent checks went unanswered.
    Silent,
}

/// A request that needs an answer: the core answers it with one
/// [`Effect::Reply`] naming it, and the shell, which made the number up,
/// knows who asked. Nothing of the shell's (a channel, a socket) enters
/// the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReqId(pub u64);

/// A verb of the control socket that the link decides: the one type it
/// has from the socket (`control/`) through the engine to here. Adding
/// one is a variant here, its parsing in `control/`, and its handling in
/// [`Core::handle`]. (`status`, `id`, `trust`, `send` and `tail` take
/// their own paths: the link learns of a trust edit as new [`Pins`].)
#[derive(Debug)]
pub enum Verb {
    /// `pair`: ask signald to pair us with `peer`.
    Pair {
        peer: String,
        wait_open: bool,
        timeout: Duration,
        /// The peer's invite code: pair with its key unknown, proven by the code.
        code: Option<Code>,
    },
    /// `unpair`; answered with whether there was a pairing (or request).
    Unpair,
    /// `invite`: make, list or cancel invites.
    Invite(InviteEdit),
}

/// The answer to a [`Verb`] (or to an invite claim).
#[derive(Debug, PartialEq)]
pub enum Reply {
    Pair(Result<PairOutcome, ErrorBody>),
    Unpair(bool),
    /// `invite`.
    Body(Result<p2p_proto::control::OkBody, ErrorBody>),
    /// The invitation handshake's claim of an invite.
    Claim(Result<Code, InviteFailure>),
}

/// What the core is told.
#[derive(Debug)]
pub enum Input {
    /// A verb from the control socket, answered with [`Effect::Reply`].
    Verb {
        id: ReqId,
        verb: Verb,
    },
    /// Welcomed by signald as `id`; `turn` says whether a TURN server is
    /// configured (for the message when no path is found).
    SignalingUp {
        id: String,
        turn: bool,
    },
    SignalingDown {
        why: String,
    },
    /// A frame from signald (never `welcome` or `ping`).
    Server(ServerMsg),
    /// A frame the core asked for could not be handed to the signaling
    /// connection (its queue is full or it is gone).
    SignalFailed {
        what: &'static str,
        why: SignalError,
    },
    /// Results of [`Effect::Offer`] and [`Effect::RestartIce`],
    /// [`Effect::Answer`], [`Effect::AcceptAnswer`].
    Offered(Result<String, NegotiationError>),
    Answered(Result<String, NegotiationError>),
    AnswerApplied(Result<(), NegotiationError>),
    /// A local candidate to trickle (`None`: gathering is complete).
    LocalCandidate(Option<CandidateInit>),
    /// ICE reached connected or completed.
    IceConnected,
    /// The connection broke. `clean` when the peer closed it (it tells
    /// signald itself).
    Lost {
        reason: DisconnectReason,
        clean: bool,
    },
    /// The data channel opened on this path.
    ChannelOpen {
        path: Option<Path>,
        /// The sha-256 of the certificate the peer's DTLS presented, when
        /// it could be read.
        certificate: Option<p2p_proto::identity::Fingerprint>,
    },
    /// The result of [`Effect::CheckPath`].
    PathChecked(PathCheck),
    /// Our data has been in flight for a few round trips with nothing
    /// received on the path: it may have gone silent (a network change).
    Stalled,
    /// The host's own addresses or default routes changed: the path may
    /// have moved with them.
    NetworkChanged,
    /// Time passed; deadlines up to `now` are due.
    Tick,
    /// The peer opened `p2p-invite`: it pairs with an invite code.
    InviteChannel,
    /// The handshake asks for the code of the invite the peer named;
    /// answered with [`Reply::Claim`].
    InviteClaim {
        id: ReqId,
        number: u16,
    },
    /// How the handshake ended.
    InviteDone(Result<(), p2p_proto::control::InviteFailure>),
    /// The trust store's content changed (read again after a hand edit,
    /// or written by the engine): decide from this from now on.
    Pins(Pins),
    /// The result of [`Effect::Pin`], and the store's content after it.
    Pinned {
        result: Result<FirstPin, WriteError>,
        pins: Pins,
    },
    /// The daemon is stopping.
    Shutdown,
    /// What [`Effect::Drain`] waited for has left (or the wait gave up).
    Drained,
}

/// What the engine must do.
#[derive(Debug, PartialEq)]
pub enum Effect {
    /// The answer to request `to`.
    Reply {
        to: ReqId,
        reply: Reply,
    },
    Signal(ClientMsg),
    Publish(EventKind),
    /// Create the channel (and `p2p-invite` first, with `invite`) and the
    /// offer; answer with [`Input::Offered`].
    Offer {
        peer: String,
        invite: bool,
    },
    /// Run the invitation handshake with `peer`, whose key is `peer_key`;
    /// answer with [`Input::InviteDone`].
    RunInvite {
        role: InviteRole,
        me: String,
        peer: String,
        peer_key: p2p_proto::identity::Fingerprint,
    },
    /// Apply the offer and make the answer; answer with [`Input::Answered`].
    Answer {
        sdp: String,
    },
    /// Apply the answer; answer with [`Input::AnswerApplied`].
    AcceptAnswer {
        sdp: String,
    },
    AddCandidate(CandidateInit),
    /// The channel to `peer` is open: `send` may use it. `trust` says how
    /// far its key is trusted: a guarded `send --to` needs it pinned,
    /// streams need it pinned before this pairing or proven by an invite.
    Expose {
        peer: String,
        trust: PeerTrust,
    },
    /// The channel is going: `send` fails from now on.
    Withdraw,
    /// Wait until the peer has acknowledged everything `send` accepted
    /// (bounded by the drain timeout), then close the channel so the peer
    /// reads to its end; answer with [`Input::Drained`].
    Drain,
    /// Close the peer connection and build a fresh one.
    Reset,
    /// As [`Effect::Reset`], for a connection that drained: the peer may
    /// still be reading what its SCTP stack acknowledged, and closing ours
    /// (an ABORT) would throw that away. So the old connection is closed
    /// once the peer closed it, or after the drain timeout; a fresh one is
    /// built at once.
    ResetAfterDrain,
    /// Make an ICE restart offer on the open connection; answer with
    /// [`Input::Offered`].
    RestartIce,
    /// The restart offer made before (the connection's pending local
    /// description, with the candidates gathered since), for a new
    /// pairing at signald; a new restart offer if none is pending.
    /// Answer with [`Input::Offered`].
    ResendOffer,
    /// The restart found a path: count it and publish `ice_restarted`.
    Restarted {
        peer: String,
    },
    /// Find out whether the peer still answers on the data path (consent
    /// checks, which every ICE stack answers by itself); answer with
    /// [`Input::PathChecked`]. `quick` when silence would only restart
    /// ICE (which costs the link nothing): fewer round trips of patience
    /// than when it would end the link.
    CheckPath {
        quick: bool,
    },
    /// Pin `fingerprint` for `peer` in the trust store (comment
    /// `comment`); with `first`, only if no pin for `peer` exists by now
    /// (first contact never overwrites a pin added meanwhile). Answer with
    /// [`Input::Pinned`].
    Pin {
        peer: String,
        fingerprint: p2p_proto::identity::Fingerprint,
        comment: &'static str,
        first: bool,
    },
}

/// What the core knows of the signaling connection.
#[derive(Debug)]
enum Signaling {
    Down { why: String },
    Up { id: String, turn: bool },
}

/// Fixed settings of the link.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Incoming pairings are refused from IDs not listed (empty: any).
    pub allow_peers: Vec<String>,
    /// Longest a pairing may take to open its channel.
    pub connect_timeout: Duration,
    /// Longest an ending link waits for data in flight (`Awaiting`).
    pub drain_timeout: Duration,
    /// Longest an ICE restart may take before the link resets.
    pub restart_timeout: Duration,
    /// signald's URL, for messages.
    pub server: String,
}

/// A read-only view of the link, for the shell and `status`.
#[derive(Clone, Copy)]
pub struct View<'a>(&'a Link);

impl View<'_> {
    pub fn state(&self) -> LinkState {
        self.0.state()
    }

    /// The peer, in every state but idle.
    pub fn peer(&self) -> Option<&str> {
        self.0.peer()
    }

    /// Whether we made the offer; unknown while the request is pending.
    pub fn initiator(&self) -> Option<bool> {
        self.0.initiator()
    }

    /// Whether signald has paired us (a pairing exists to be ended).
    pub fn is_paired(&self) -> bool {
        self.0.is_paired()
    }

    /// When the channel opened, while it is open.
    pub fn open_since(&self) -> Option<Instant> {
        match self.0 {
            Link::Open(o) => Some(o.since),
            _ => None,
        }
    }

    /// An ICE restart of the open link is under way.
    pub fn restarting(&self) -> bool {
        self.0.is_lost()
    }

    /// Whether signald holds the pairing (false only for an open link
    /// whose pairing ended there).
    pub fn paired_at_signald(&self) -> bool {
        self.0.paired_at_signald()
    }

    /// Whether the open link's path answers; `None` while a check is
    /// under way or when no link is open.
    pub fn reachable(&self) -> Option<bool> {
        self.0.reachable()
    }

    /// The peer's key, once checked.
    pub fn identity(&self) -> Option<PeerIdentity> {
        self.0.identity()
    }
}

/// One change of state; [`Core::apply`] is the only place that makes it.
enum Change {
    Request(Requested),
    Pair(Connecting),
    Open(Open, Option<Path>),
    Lose(Closing),
    /// A pairing ends (or a pending request is abandoned) for this reason.
    End(Ending),
    /// A pending request is refused by signald: no pairing was made.
    Refuse(ErrorBody),
}

pub struct Core {
    link: Link,
    signaling: Signaling,
    /// Answers to abandoned `pair` requests still to come from signald.
    abandoned: usize,
    policy: Policy,
    /// Which key each known peer must present, as the engine last read
    /// the trust store (the core never touches the file).
    pins: Pins,
    /// The instant the input being handled was given at: every change
    /// happens then (no clock is read inside the core).
    now: Instant,
    /// Our open invitations (memory only).
    invites: Invites,
    /// Codes we began a handshake with as the joiner: each one gave
    /// whoever answered as the inviter its one guess, so it is never sent
    /// again (the most recent [`SPENT_CODES`]).
    spent_codes: std::collections::VecDeque<Code>,
}

/// Spent invite codes remembered (a code is one of 141,376 per number:
/// forgetting an old one costs nothing).
const SPENT_CODES: usize = 64;

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
    ErrorBody {
        code,
        message: message.into(),
    }
}

impl Core {
    pub fn new(policy: Policy, pins: Pins, now: Instant) -> Core {
        Core {
            now,
            link: Link::Idle,
            signaling: Signaling::Down {
                why: "connecting".into(),
            },
            abandoned: 0,
            policy,
            pins,
            invites: Invites::default(),
            spent_codes: Default::default(),
        }
    }

    /// Our ID while signald has us registered; `None` while the
    /// signaling connection is down. The one record of whether it is up.
    pub fn signald_id(&self) -> Option<&str> {
        match &self.signaling {
            Signaling::Up { id, .. } => Some(id),
            Signaling::Down { .. } => None,
        }
    }

    /// What the shell and `status` may know of the link: read-only, so
    /// the states stay the core's own.
    pub fn link(&self) -> View<'_> {
        View(&self.link)
    }

    pub fn state(&self) -> LinkState {
        self.link.state()
    }

    /// The next deadline, for the engine's timer.
    pub fn deadline(&self) -> Option<Instant> {
        self.link.deadline()
    }

    /// The peer whose incoming data channel we take, if we are answering.
    pub fn answering(&self) -> Option<&str> {
        match &self.link {
            Link::Connecting(c) if !c.initiator => Some(&c.peer),
            _ => None,
        }
    }

    /// Handles one input at `now`; returns what to do.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Effect> {
        self.now = now;
        let mut fx = Vec::new();
        match input {
            Input::Verb { id, verb } => self.on_verb(id, verb, now, &mut fx),
            Input::SignalingUp { id, turn } => {
                self.signaling = Signaling::Up { id, turn };
                self.ask_to_pair_again(now, &mut fx);
            }
            Input::SignalingDown { why } => {
                if let Signaling::Down { why: old } = &mut self.signaling {
                    // Another failed attempt to reconnect: nothing of ours
                    // was at signald since the connection dropped.
                    *old = why;
                    return fx;
                }
                let error = err(
                    ErrorCode::Failed,
                    format!("lost the signaling connection: {why}"),
                );
                self.signaling = Signaling::Down { why };
                if self.pairing_gone(DisconnectReason::SignalingLost, now, &mut fx) {
                    // The channel does not need signald; the pairing is
                    // made again once signald is back.
                } else if self.link.peer().is_some() {
                    let e = Ending {
                        reason: DisconnectReason::SignalingLost,
                        error,
                        tell_signald: false,
                    };
                    self.apply(Change::End(e), &mut fx);
                }
                // Frames of the old session are gone, answers included.
                self.abandoned = 0;
            }
            Input::Server(m) => self.on_server(m, now, &mut fx),
            Input::SignalFailed { what, why } => self.on_signal_failed(what, why, &mut fx),
            Input::Offered(r) => match r {
                Ok(sdp)
                    if matches!(
                        &self.link,
                        Link::Connecting(_)
                            | Link::Open(Open {
                                restart: Some(Restart {
                                    ours: OurOffer::Made { sent: true },
                                    ..
                                }),
                                at_signald: AtSignald::Paired,
                                ..
                            })
                    ) =>
                {
                    fx.push(Effect::Signal(ClientMsg::Offer { sdp }));
                }
                Ok(_) => {}
                Err(e) => self.fail(Step::Offer, e, &mut fx),
            },
            Input::Answered(r) => match r {
                Ok(sdp) => {
                    match &mut self.link {
                        Link::Connecting(c) => {
                            c.negotiation = Negotiation::Described;
                            fx.push(Effect::Signal(ClientMsg::Answer { sdp }));
                        }
                        // The answer to the peer's restart offer, kept
                        // for the same offer made again.
                        Link::Open(o) => {
                            if let Some(a) = &mut o.answered_offer {
                                a.answer.get_or_insert_with(|| sdp.clone());
                            }
                            fx.push(Effect::Signal(ClientMsg::Answer { sdp }))
                        }
                        _ => {}
                    }
                    self.maybe_run_invite(&mut fx);
                }
                Err(e) => self.fail(Step::Answer, e, &mut fx),
            },
            Input::AnswerApplied(r) => match r {
                Ok(()) => {
                    if let Link::Connecting(c) = &mut self.link {
                        c.negotiation = Negotiation::Described;
                    }
                    self.maybe_run_invite(&mut fx);
                }
                Err(e) => self.fail(Step::ApplyAnswer, e, &mut fx),
            },
            Input::LocalCandidate(candidate) => {
                if matches!(self.link, Link::Connecting(_) | Link::Open(_)) {
                    fx.push(Effect::Signal(ClientMsg::Candidate { candidate }));
                }
            }
            Input::IceConnected => match &mut self.link {
                Link::Connecting(c) => c.ice_connected = true,
                Link::Open(o) => {
                    if let Some(r) = o.restart.take() {
                        tracing::info!(peer = %o.peer, took = ?now - r.since, "ICE restart found a new path");
                        let peer = o.peer.clone();
                        fx.push(Effect::Restarted { peer: peer.clone() });
                        // The peer's newer offer, held for its second, is
                        // still waiting for an answer on its side.
                        if let Some(sdp) = r.deferred {
                            self.on_restart_offer(&peer, sdp, now, &mut fx);
                        }
                    }
                }
                _ => {}
            },
            Input::Lost { reason, clean } => self.on_lost(reason, clean, now, &mut fx),
            Input::PathChecked(result) => self.on_path_checked(result, now, &mut fx),
            Input::Stalled => self.check_path(state::Suspicion::Stalled, &mut fx),
            Input::NetworkChanged => self.check_path(state::Suspicion::NetworkChanged, &mut fx),
            Input::ChannelOpen { path, certificate } => {
                self.on_channel_open(path, certificate, now, &mut fx)
            }
            Input::InviteChannel => self.on_invite_channel(&mut fx),
            Input::InviteClaim { id, number } => self.on_invite_claim(id, number, now, &mut fx),
            Input::InviteDone(result) => self.on_invite_done(result, now, &mut fx),
            Input::Pins(pins) => self.on_pins(pins, &mut fx),
            Input::Pinned { result, pins } => {
                self.pins = pins;
                self.on_pinned(result, now, &mut fx);
            }
            Input::Tick => self.on_tick(now, &mut fx),
            Input::Shutdown => {
                let e = Ending {
                    reason: DisconnectReason::Shutdown,
                    error: err(ErrorCode::ShuttingDown, "p2pd is shutting down"),
                    // Our connection to signald closes next and signald
                    // tells the peer; only after a drain do we say
                    // `unpair` first (the peer then reads to the end).
                    tell_signald: false,
                };
                match &self.link {
                    Link::Open(_) => {
                        let e = Ending {
                            tell_signald: true,
                            ..e
                        };
                        self.drain(e, None, now, &mut fx);
                    }
                    // Already draining: that goes on, then we stop.
                    Link::Closing(Closing {
                        awaiting: Awaiting::Drain { .. },
                        ..
                    }) => {}
                    _ if self.link.peer().is_some() => self.apply(Change::End(e), &mut fx),
                    _ => {}
                }
            }
            Input::Drained => {
                if let Link::Closing(Closing {
                    awaiting: Awaiting::Drain { .. },
                    ending,
                    ..
                }) = &self.link
                {
                    let e = ending.clone();
                    self.apply(Change::End(e), &mut fx);
                }
            }
        }
        fx
    }

    /// Ends the open link the graceful way: `send` stops at once, the
    /// channel drains (bounded), and only then does `ending` happen.
    fn drain(&mut self, ending: Ending, unpair: Option<ReqId>, now: Instant, fx: &mut Vec<Effect>) {
        let awaiting = Awaiting::Drain {
            unpairs: unpair.into_iter().collect(),
        };
        self.close_open(awaiting, ending, now, fx);
        fx.push(Effect::Drain);
    }

    /// The peer unpaired an open link: read what it sent before leaving
    /// (its channel closes after the last message), bounded.
    fn read_to_end(&mut self, ending: Ending, now: Instant, fx: &mut Vec<Effect>) {
        self.close_open(Awaiting::ChannelEnd, ending, now, fx);
    }

    /// The open link goes `Closing`, awaiting `awaiting` for at most the
    /// drain timeout, then `ending`.
    fn close_open(
        &mut self,
        awaiting: Awaiting,
        ending: Ending,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let Link::Open(o) = std::mem::replace(&mut self.link, Link::Idle) else {
            unreachable!("called on an open link")
        };
        let ending = Ending {
            // signald may hold no pairing to end.
            tell_signald: ending.tell_signald && matches!(o.at_signald, AtSignald::Paired),
            ..ending
        };
        let c = Closing {
            peer: o.peer,
            initiator: o.initiator,
            awaiting,
            ending,
            described: true,
            until: now + self.policy.drain_timeout,
            waiter: None,
            verdict: None,
        };
        self.apply(Change::Lose(c), fx);
    }

    /// With `code` the peer's key need not be pinned: the code proves it.
    fn check_pair(&mut self, peer: &str, code: Option<&Code>) -> Result<(), ErrorBody> {
        let id = match &self.signaling {
            Signaling::Down { why } => {
                return Err(err(
                    ErrorCode::NotConnected,
                    format!("not connected to signald at {}: {why}", self.policy.server),
                ));
            }
            Signaling::Up { id, .. } => id,
        };
        p2p_proto::signal::check_id(peer).map_err(|m| err(ErrorCode::BadRequest, m))?;
        if id == peer {
            return Err(err(ErrorCode::SelfPair, "cannot pair with ourselves"));
        }
        if let Some(current) = self.link.peer()
            && !(self.link.is_lost() && current != peer)
        {
            return Err(err(
                ErrorCode::AlreadyPaired,
                format!("already paired with {current}; run `p2pctl unpair` first"),
            ));
        }
        if let Some(code) = code {
            if self.spent_codes.contains(code) {
                return Err(err(
                    ErrorCode::InviteFailed,
                    format!(
                        "the invite code {code} was used already (a handshake with it began, which spends it): ask {peer} for a new code"
                    ),
                ));
            }
            // The code proves the key, which is then pinned: the store
            // must be usable all the same.
            return self.store_usable();
        }
        self.admits(peer)
    }

    /// The one place the link changes state, with what goes with each
    /// change: the frame to signald, the event, the answer to a waiting
    /// `pair`, the effects on the connection.
    fn apply(&mut self, change: Change, fx: &mut Vec<Effect>) {
        match change {
            Change::Request(r) => {
                fx.push(Effect::Signal(ClientMsg::Pair {
                    peer_id: r.peer.clone(),
                }));
                self.link = Link::Requested(r);
            }
            Change::Pair(c) => {
                fx.push(Effect::Publish(EventKind::Paired {
                    peer_id: c.peer.clone(),
                    initiator: c.initiator,
                }));
                self.link = Link::Connecting(c);
            }
            Change::Open(o, path) => {
                let old = std::mem::replace(&mut self.link, Link::Idle);
                let fingerprint = o.identity.map(|i| i.fingerprint);
                let trust = o.identity.map(|i| i.trust);
                tracing::info!(peer = %o.peer, ?path, ?fingerprint, ?trust, "data channel open");
                fx.push(Effect::Expose {
                    peer: o.peer.clone(),
                    trust: o.identity.map_or(PeerTrust::Unverified, |i| i.trust),
                });
                fx.push(Effect::Publish(EventKind::ChannelOpen {
                    peer_id: o.peer.clone(),
                    path: path.clone(),
                    fingerprint,
                    trust,
                }));
                if let Some(w) = old.take_waiter() {
                    w.answer(
                        Ok(PairOutcome {
                            peer_id: o.peer.clone(),
                            state: LinkState::Open,
                            path,
                            fingerprint,
                            trust,
                        }),
                        fx,
                    );
                }
                self.link = Link::Open(o);
            }
            Change::Lose(c) => {
                fx.push(Effect::Withdraw);
                self.link = Link::Closing(c);
            }
            Change::Refuse(e) => {
                if let Some(w) = std::mem::replace(&mut self.link, Link::Idle).take_waiter() {
                    w.answer(Err(e), fx);
                }
            }
            Change::End(e) => {
                let mut old = std::mem::replace(&mut self.link, Link::Idle);
                let drained = if let Link::Closing(Closing {
                    awaiting: Awaiting::Drain { unpairs },
                    ..
                }) = &mut old
                {
                    for id in unpairs.drain(..) {
                        fx.push(Effect::Reply {
                            to: id,
                            reply: Reply::Unpair(true),
                        });
                    }
                    true
                } else {
                    false
                };
                let paired = old.is_paired();
                let peer = old.peer().map(str::to_string);
                if let (Some(number), Some(peer_id)) = (old.claimed_invite(), &peer) {
                    // The handshake never finished: the invite is used up
                    // all the same, and the inviter hears of it.
                    self.invites.finish(number, self.now);
                    let reason = match e.reason {
                        DisconnectReason::ConnectTimeout => InviteFailure::Timeout,
                        _ => InviteFailure::Protocol,
                    };
                    fx.push(Effect::Publish(EventKind::InviteFailed {
                        peer_id: peer_id.clone(),
                        invite: Some(number),
                        reason,
                    }));
                }
                // A request whose answer is still to come (ours, or the
                // initiator's request to pair an open link again): our
                // unpair follows it, and its answer is ignored.
                let unanswered = match &old {
                    Link::Requested(_) => true,
                    Link::Open(o) => matches!(o.at_signald, AtSignald::Gone { pending: true, .. }),
                    _ => false,
                };
                if unanswered {
                    self.abandoned += 1;
                }
                if (e.tell_signald || unanswered) && matches!(self.signaling, Signaling::Up { .. })
                {
                    fx.push(Effect::Signal(ClientMsg::Unpair));
                }
                if let Some(w) = old.take_waiter() {
                    w.answer(Err(e.error.clone()), fx);
                }
                if paired {
                    if let Some(peer_id) = peer {
                        tracing::info!(peer = %peer_id, reason = %e.reason, "link ended");
                        fx.push(Effect::Withdraw);
                        fx.push(Effect::Publish(EventKind::PeerDisconnected {
                            peer_id,
                            reason: e.reason,
                        }));
                    }
                    fx.push(match drained {
                        true => Effect::ResetAfterDrain,
                        false => Effect::Reset,
                    });
                }
            }
        }
    }
}
