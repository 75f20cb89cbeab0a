//! Invitations in the link: a pairing whose key is proven by an invite
//! code rather than a pin (`crate::invite` has the codes and the
//! handshake).
//!
//! The joiner (`pair ID --code`) may pair with an unknown key; the inviter
//! admits an unknown peer while it has an invite that peer may use. Either
//! way the key is accepted for the handshake only: the channel is not
//! opened to users until the handshake on `p2p-invite` succeeded, and then
//! both sides pin each other (comment `invite`). A failure of any kind
//! uses the invite up and ends the pairing.

use std::time::Duration;

use p2p_proto::control::{
    DisconnectReason, ErrorBody, ErrorCode, EventKind, InviteFailure, OkBody, Path,
};
use tokio::time::Instant;

use super::state::Pinning;
use super::{Change, Core, Effect, Ending, Link, Negotiation, Reply, ReqId, Signaling, err};
use crate::invite::Code;

/// Where an invitation handshake stands on a link that needs one.
#[derive(Debug)]
pub struct InviteProgress {
    pub role: InviteRole,
    /// The handshake was asked for ([`Effect::RunInvite`]).
    pub started: bool,
    /// The user's channel opened (on this path) while the handshake ran.
    pub opened: Option<Option<Path>>,
    /// The invite the joiner named and we claimed (inviter side).
    pub number: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteRole {
    /// We pair with a code.
    Joiner(Code),
    /// We invited.
    Inviter,
}

impl InviteProgress {
    pub fn new(role: InviteRole) -> InviteProgress {
        InviteProgress {
            role,
            started: false,
            opened: None,
            number: None,
        }
    }
}

/// `p2pctl invite`'s requests.
#[derive(Debug)]
pub enum InviteEdit {
    Create {
        ttl: Duration,
        for_peer: Option<String>,
    },
    List,
    /// By code or by number.
    Cancel(String),
}

impl Core {
    pub(super) fn edit_invites(
        &mut self,
        edit: InviteEdit,
        now: Instant,
    ) -> Result<OkBody, ErrorBody> {
        let no_invite = |m: String| err(ErrorCode::NoInvite, m);
        match edit {
            InviteEdit::Create { ttl, for_peer } => self
                .invites
                .create(ttl, for_peer, now)
                .map(|invite| OkBody::Invite { invite })
                .map_err(no_invite),
            InviteEdit::List => Ok(OkBody::Invites {
                invites: self.invites.list(now),
            }),
            InviteEdit::Cancel(which) => self
                .invites
                .cancel(&which, now)
                .map(|cancelled| OkBody::InviteCancel { cancelled })
                .map_err(no_invite),
        }
    }

    /// Whether the link needs a handshake it has not finished (for tests:
    /// the shell holds every user channel until the link opens).
    #[cfg(test)]
    pub fn invite_pending(&self) -> bool {
        matches!(&self.link, Link::Connecting(c) if c.invite.is_some())
    }

    /// The inviter saw the peer open `p2p-invite`: the peer has a code, so
    /// the handshake decides, whatever else admitted it.
    pub(super) fn on_invite_channel(&mut self, fx: &mut Vec<Effect>) {
        if let Link::Connecting(c) = &mut self.link
            && !c.initiator
            && c.invite.is_none()
        {
            c.invite = Some(InviteProgress::new(InviteRole::Inviter));
        }
        self.maybe_run_invite(fx);
    }

    /// Starts the handshake once the peer's key is known.
    pub(super) fn maybe_run_invite(&mut self, fx: &mut Vec<Effect>) {
        let me = match &self.signaling {
            Signaling::Up { id, .. } => id.clone(),
            Signaling::Down { .. } => return,
        };
        let Link::Connecting(c) = &mut self.link else {
            return;
        };
        let (Some(inv), Some(identity)) = (&mut c.invite, c.identity) else {
            return;
        };
        if inv.started || c.negotiation != Negotiation::Described {
            return;
        }
        inv.started = true;
        if let InviteRole::Joiner(code) = inv.role {
            // From here whoever answers as the inviter gets its one guess,
            // whatever happens next: the code is spent here too.
            if self.spent_codes.len() >= super::SPENT_CODES {
                self.spent_codes.pop_front();
            }
            self.spent_codes.push_back(code);
        }
        fx.push(Effect::RunInvite {
            role: inv.role,
            me,
            peer: c.peer.clone(),
            peer_key: identity.fingerprint,
        });
    }

    pub(super) fn on_invite_claim(
        &mut self,
        id: ReqId,
        number: u16,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let claimed = match &mut self.link {
            Link::Connecting(c) => {
                let claimed = self.invites.claim(number, &c.peer, now);
                if let (Ok(_), Some(inv)) = (&claimed, &mut c.invite) {
                    inv.number = Some(number);
                }
                claimed
            }
            _ => Err(InviteFailure::Protocol),
        };
        fx.push(Effect::Reply {
            to: id,
            reply: Reply::Claim(claimed),
        });
    }

    /// The peer left while our handshake with it ran: wait a moment for
    /// the handshake's verdict before ending with `ending`.
    pub(super) fn wait_for_verdict(&mut self, ending: Ending, now: Instant, fx: &mut Vec<Effect>) {
        let Link::Connecting(c) = std::mem::replace(&mut self.link, Link::Idle) else {
            unreachable!("called on a connecting link")
        };
        let closing = super::Closing {
            awaiting: super::Awaiting::Notice,
            peer: c.peer,
            initiator: c.initiator,
            ending,
            described: c.negotiation == Negotiation::Described,
            until: now + super::LOSS_GRACE,
            waiter: c.waiter,
            verdict: c.invite.map(|i| i.number),
        };
        self.apply(Change::Lose(closing), fx);
    }

    pub(super) fn on_invite_done(
        &mut self,
        result: Result<(), InviteFailure>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        if let Link::Closing(c) = &mut self.link
            && let Some(number) = c.verdict.take()
        {
            // The verdict of a handshake whose peer is already gone.
            if let Some(n) = number {
                self.invites.finish(n, now);
            }
            let peer = c.peer.clone();
            let why = result.err().unwrap_or(InviteFailure::Protocol);
            fx.push(Effect::Publish(EventKind::InviteFailed {
                peer_id: peer,
                invite: number,
                reason: why,
            }));
            let e = Ending {
                reason: DisconnectReason::InviteFailed,
                error: err(ErrorCode::InviteFailed, why.explain()),
                tell_signald: false,
            };
            self.apply(Change::End(e), fx);
            return;
        }
        let Link::Connecting(c) = &mut self.link else {
            return;
        };
        let Some(inv) = c.invite.take() else { return };
        if let Some(n) = inv.number {
            self.invites.finish(n, now);
        }
        let peer = c.peer.clone();
        match result {
            Ok(()) => match c.identity {
                // Proven: both sides pin each other before the link opens.
                Some(id) => {
                    c.pinning = Some(Pinning::Invite { opened: inv.opened });
                    fx.push(Effect::Pin {
                        peer,
                        fingerprint: id.fingerprint,
                        comment: "invite",
                        first: false,
                    });
                }
                None => {
                    if let Some(path) = inv.opened {
                        self.open(path, now, fx);
                    }
                }
            },
            Err(why) => {
                tracing::warn!(%peer, ?why, "invitation handshake failed");
                fx.push(Effect::Publish(EventKind::InviteFailed {
                    peer_id: peer,
                    invite: inv.number,
                    reason: why,
                }));
                let e = Ending {
                    reason: DisconnectReason::InviteFailed,
                    error: err(ErrorCode::InviteFailed, why.explain()),
                    tell_signald: true,
                };
                self.apply(Change::End(e), fx);
            }
        }
    }
}
