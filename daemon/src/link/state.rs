//! The link's states. Each variant carries exactly what that state needs
//! (the peer, the role, the deadline, the waiting `pair` request, how far
//! negotiation got), so that no combination that cannot happen can be
//! written down: an open link has no deadline, an idle one no peer.

use p2p_proto::control::{DisconnectReason, ErrorBody, LinkState, PairOutcome, Path};
use tokio::time::Instant;

use super::{Effect, InviteProgress, PeerIdentity, Reply, ReqId};
use crate::invite::Code;

/// A `pair` request waiting for its answer.
#[derive(Debug)]
pub struct Waiter {
    /// Answer once the channel is open (`wait: true`), else once paired.
    pub wait_open: bool,
    /// The request it answers.
    pub id: ReqId,
    /// The request's own timeout (`timeout_ms`), and when it passes.
    pub timeout: std::time::Duration,
    pub deadline: Instant,
}

impl Waiter {
    /// The answer leaves as an effect; the shell hands it to whoever asked.
    pub fn answer(self, r: Result<PairOutcome, ErrorBody>, fx: &mut Vec<Effect>) {
        fx.push(Effect::Reply {
            to: self.id,
            reply: Reply::Pair(r),
        });
    }
}

// One value per daemon: boxing the larger states would only add an
// allocation to every transition.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Link {
    /// No peer; a fresh peer connection waits for the next pairing.
    Idle,
    /// We sent signald `pair`; its answer has not come.
    Requested(Requested),
    /// Paired at signald; offer/answer and ICE under way.
    Connecting(Connecting),
    /// The data channel is open.
    Open(Open),
    /// The link is ending and waits, bounded, for one thing first (see
    /// [`Awaiting`]) before resetting.
    Closing(Closing),
}

#[derive(Debug)]
pub struct Requested {
    pub peer: String,
    pub waiter: Waiter,
    /// The peer's invite code, when pairing by invitation.
    pub code: Option<Code>,
}

#[derive(Debug)]
pub struct Connecting {
    pub peer: String,
    pub initiator: bool,
    pub negotiation: Negotiation,
    /// Whether ICE reached connected (a timeout then is not "no path").
    pub ice_connected: bool,
    /// The peer's key, once its description was checked.
    pub identity: Option<PeerIdentity>,
    /// The description named the key only by sha-384 or sha-512: it is
    /// judged when the channel opens, from the certificate DTLS proved.
    pub key_from_dtls: bool,
    /// An invitation handshake this link must pass before it opens.
    pub invite: Option<InviteProgress>,
    /// `--connect-timeout` from the pairing.
    pub deadline: Instant,
    /// A `pair --wait` request, answered once the channel opens.
    pub waiter: Option<Waiter>,
    /// A pin the engine is writing before the link can go on.
    pub pinning: Option<Pinning>,
}

/// Why the link waits for [`super::Effect::Pin`]'s result.
#[derive(Debug)]
pub enum Pinning {
    /// First contact under `tofu`: the channel is open on `path`, and the
    /// link opens once the key is pinned.
    FirstContact { path: Option<Path> },
    /// The invitation handshake proved the key; the channel opened on
    /// `opened` (`None`: not yet).
    Invite { opened: Option<Option<Path>> },
}

/// How far the offer/answer exchange got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiation {
    /// The initiator is making or has sent its offer; no answer yet.
    Offering,
    /// The answerer waits for the offer.
    AwaitingOffer,
    /// The peer's description is applied on our side.
    Described,
}

#[derive(Debug)]
pub struct Open {
    pub peer: String,
    pub initiator: bool,
    pub since: Instant,
    /// The peer's key as checked (`None` only if `--trust any` accepted a
    /// description whose key could not be read).
    pub identity: Option<PeerIdentity>,
    /// An ICE restart under way, when the path went silent.
    pub restart: Option<Restart>,
    /// Whether signald still holds the pairing.
    pub at_signald: AtSignald,
    /// A check of the data path under way: signald said the peer's
    /// signaling connection ended (`left`) or went silent (`timeout`), and
    /// only the path can say whether the peer itself is still there.
    pub probe: Option<Probe>,
    /// The peer's last restart offer we answered, kept after its restart
    /// ends: the same offer again (made again after a re-pairing, or late)
    /// is answered with the same answer, not taken as a new restart.
    pub answered_offer: Option<AnsweredOffer>,
}

/// A restart offer of the peer's we answered, known by its ICE username
/// fragment (a restart always brings a new one).
#[derive(Debug)]
pub struct AnsweredOffer {
    pub ufrag: String,
    /// Our answer, once the shell made it.
    pub answer: Option<String>,
}

/// A check of whether the peer still answers on the data path, asked for
/// with [`super::Effect::CheckPath`] and answered by
/// [`super::Input::PathChecked`].
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    /// What started it: with no answer, signald's `left` ends the link at
    /// once (`peer_gone`), anything else makes it lost (an ICE restart
    /// until `--ice-restart-timeout`).
    pub why: Suspicion,
}

/// Why the path is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suspicion {
    /// signald's notice that the peer's signaling connection ended
    /// (`left`) or went silent (`timeout`).
    Notice(DisconnectReason),
    /// Our data is in flight and nothing has come back for a few round
    /// trips (the shell's watch of the data flow, `crate::stall`).
    Stalled,
    /// The host's addresses or default routes changed (`crate::netwatch`).
    NetworkChanged,
}

/// The pairing at signald, as an open link sees it. A network change, or
/// signald restarting or going away, ends the pairing there (and signald
/// tells the peer) while the channel itself lives on: the link never ends
/// for that alone, only when its path goes silent (see `restart.rs`).
#[derive(Debug)]
pub enum AtSignald {
    Paired,
    /// Ended at signald for `reason`. The initiator asks signald to pair
    /// the two again (last at `asked`, then after a growing interval: see
    /// [`super::repair_interval`]); `asks` counts the tries, and `pending`
    /// says that signald's answer to the last one is still to come.
    Gone {
        reason: DisconnectReason,
        asked: Option<Instant>,
        asks: u32,
        pending: bool,
    },
}

/// An ICE restart of an open link: new credentials and candidates through
/// signald while DTLS, SCTP and the channel stay up. Whichever side
/// notices the silence offers; when offers cross, the original
/// initiator's stands (see `restart.rs`).
#[derive(Debug)]
pub struct Restart {
    pub since: Instant,
    /// When it gives up and the link resets (`ice_failed`).
    pub deadline: Instant,
    /// When we last answered a restart offer of the peer's.
    pub answered: Option<Instant>,
    /// A new restart offer of the peer's that came too soon after the last
    /// one we answered: answered once the interval is over (the latest
    /// only: each replaces the peer's one before).
    pub deferred: Option<String>,
    pub ours: OurOffer,
}

/// Our own offer in a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OurOffer {
    /// None out: none needed, ours answered, or ours given up for the
    /// peer's.
    None,
    /// To be made once signald holds the pairing again.
    Wanted,
    /// Made (or being made): the shell holds it as its pending local
    /// description until an answer comes. `sent`: it went out on the
    /// pairing signald holds now (a new pairing gets the same offer
    /// again, not a new one: a second offer would cross the peer's answer
    /// to the first).
    Made { sent: bool },
}

#[derive(Debug)]
pub struct Closing {
    pub peer: String,
    pub initiator: bool,
    /// What the link waits for before it ends.
    pub awaiting: Awaiting,
    /// How the link ends (unless, awaiting the notice, the notice names
    /// another reason).
    pub ending: Ending,
    /// Whether the peer's description had been applied (a notice that the
    /// peer unpaired then means it gave up, not that it refused).
    pub described: bool,
    pub until: Instant,
    pub waiter: Option<Waiter>,
    /// A handshake still running when the peer left (`Some`, with the
    /// invite it claimed, on the inviter's side): its verdict, if it comes
    /// before `until`, names why the pairing ended.
    pub verdict: Option<Option<u16>>,
}

/// What an ending link waits for, until [`Closing::until`] at most.
#[derive(Debug)]
pub enum Awaiting {
    /// The connection broke: signald's notice, which names the real
    /// reason (or an invitation handshake's verdict, see `verdict`).
    Notice,
    /// We end it (`unpair`, SIGTERM): what `send` accepted is still on its
    /// way. The `unpair` requests are answered once it has left.
    Drain { unpairs: Vec<ReqId> },
    /// The peer unpaired: its last messages are still arriving, and its
    /// channel closes after them.
    ChannelEnd,
}

/// How a pairing ends: the event's reason, what a waiting `pair` is told,
/// and whether signald must be told (`unpair`).
#[derive(Debug, Clone)]
pub struct Ending {
    pub reason: DisconnectReason,
    pub error: ErrorBody,
    /// False when signald already knows (its notice, the peer closing
    /// cleanly, our signaling gone): a late `unpair` of ours could end the
    /// next pairing signald made for us, since its frames carry no pairing
    /// identity.
    pub tell_signald: bool,
}

impl Link {
    /// The peer, in every state but idle.
    pub fn peer(&self) -> Option<&str> {
        match self {
            Link::Idle => None,
            Link::Requested(r) => Some(&r.peer),
            Link::Connecting(c) => Some(&c.peer),
            Link::Open(o) => Some(&o.peer),
            Link::Closing(c) => Some(&c.peer),
        }
    }

    /// Whether we made the offer; unknown while the request is pending.
    pub fn initiator(&self) -> Option<bool> {
        match self {
            Link::Idle | Link::Requested(_) => None,
            Link::Connecting(c) => Some(c.initiator),
            Link::Open(o) => Some(o.initiator),
            Link::Closing(c) => Some(c.initiator),
        }
    }

    /// An open link whose path went silent: an ICE restart is looking for
    /// a new one, and a `pair` with another peer may replace the link.
    pub fn is_lost(&self) -> bool {
        matches!(self, Link::Open(o) if o.restart.is_some())
    }

    /// Whether the path of the open link answers: `None` while a check is
    /// under way or when the link is not open.
    pub fn reachable(&self) -> Option<bool> {
        match self {
            Link::Open(o) if o.probe.is_some() => None,
            Link::Open(o) => Some(o.restart.is_none()),
            _ => None,
        }
    }

    /// Whether signald holds the pairing (false only for an open link
    /// whose pairing ended there).
    pub fn paired_at_signald(&self) -> bool {
        !matches!(self, Link::Open(o) if matches!(o.at_signald, AtSignald::Gone { .. }))
    }

    /// Whether signald has paired us (a pairing exists to be ended).
    pub fn is_paired(&self) -> bool {
        matches!(self, Link::Connecting(_) | Link::Open(_) | Link::Closing(_))
    }

    /// The peer's key, once checked.
    pub fn identity(&self) -> Option<PeerIdentity> {
        match self {
            Link::Connecting(c) => c.identity,
            Link::Open(o) => o.identity,
            _ => None,
        }
    }

    pub fn state(&self) -> LinkState {
        match self {
            Link::Idle => LinkState::Idle,
            Link::Requested(_) => LinkState::Requested,
            Link::Connecting(_) => LinkState::Connecting,
            Link::Open(_) => LinkState::Open,
            Link::Closing(_) => LinkState::Closing,
        }
    }

    /// The next moment something is due, if any.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Link::Idle => None,
            Link::Open(o) => {
                let gone = match &o.at_signald {
                    AtSignald::Gone {
                        asked: Some(at),
                        asks,
                        ..
                    } if o.initiator => Some(*at + super::repair_interval(*asks)),
                    _ => None,
                };
                // A peer's offer that came too soon is answered once the
                // interval is over.
                let deferred = o.restart.as_ref().and_then(|r| {
                    r.deferred.as_ref()?;
                    Some(r.answered? + super::restart::MIN_OFFER_INTERVAL)
                });
                [o.restart.as_ref().map(|r| r.deadline), gone, deferred]
                    .into_iter()
                    .flatten()
                    .min()
            }
            Link::Requested(r) => Some(r.waiter.deadline),
            Link::Connecting(c) => Some(match &c.waiter {
                Some(w) => c.deadline.min(w.deadline),
                None => c.deadline,
            }),
            Link::Closing(c) => Some(c.until),
        }
    }

    /// The invite claimed by a handshake not finished on this link.
    pub fn claimed_invite(&self) -> Option<u16> {
        match self {
            Link::Connecting(c) => c.invite.as_ref().and_then(|i| i.number),
            Link::Closing(c) => c.verdict.flatten(),
            _ => None,
        }
    }

    /// Takes the waiting `pair` request out of whatever state holds it.
    pub fn take_waiter(self) -> Option<Waiter> {
        match self {
            Link::Idle | Link::Open(_) => None,
            Link::Requested(r) => Some(r.waiter),
            Link::Connecting(c) => c.waiter,
            Link::Closing(c) => c.waiter,
        }
    }
}
