//! How links end: a connection lost (and the grace for signald's notice),
//! deadlines, local failures, and the messages that tell a person why.

use std::time::Duration;

use p2p_proto::control::{DisconnectReason, ErrorBody, ErrorCode};
use tokio::time::Instant;

use super::{
    Awaiting, Change, Closing, Connecting, Core, Effect, Ending, LOSS_GRACE, Link, Negotiation,
    NegotiationError, SignalError, Signaling, Step, err,
};

impl Core {
    pub(super) fn on_signal_failed(
        &mut self,
        what: &'static str,
        why: SignalError,
        fx: &mut Vec<Effect>,
    ) {
        tracing::warn!(what, %why, "a frame for signald could not be queued");
        if let Link::Requested(_) = &self.link {
            // The `pair` itself never left: no answer will come.
            let e = err(
                ErrorCode::NotConnected,
                format!("the signaling connection would not take the {what}: {why}"),
            );
            self.apply(Change::Refuse(e), fx);
        } else if self.link.is_paired() {
            let e = Ending {
                reason: DisconnectReason::SignalingLost,
                error: err(
                    ErrorCode::Failed,
                    format!("the signaling connection would not take the {what}: {why}"),
                ),
                tell_signald: false,
            };
            self.apply(Change::End(e), fx);
        }
    }

    pub(super) fn on_lost(
        &mut self,
        reason: DisconnectReason,
        clean: bool,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        if let Link::Closing(c) = &self.link
            && !matches!(c.awaiting, Awaiting::Notice)
        {
            // Draining, or reading the peer's last messages: with the
            // connection gone there is nothing more to wait for.
            let e = c.ending.clone();
            self.apply(Change::End(e), fx);
            return;
        }
        // A silent path (not a close) of an open link: restart ICE.
        if !clean && reason == DisconnectReason::IceFailed && self.restart(now, fx) {
            return;
        }
        let (peer, initiator, described, waiter, invite) =
            match std::mem::replace(&mut self.link, Link::Idle) {
                Link::Connecting(c) => (
                    c.peer,
                    c.initiator,
                    c.negotiation == Negotiation::Described,
                    c.waiter,
                    // A lost connection brings no verdict: only the claim.
                    c.invite.and_then(|i| i.number).map(Some),
                ),
                Link::Open(o) => (o.peer, o.initiator, true, None, None),
                other => {
                    self.link = other;
                    return;
                }
            };
        let c = Closing {
            awaiting: Awaiting::Notice,
            ending: Ending {
                reason,
                error: self.no_path_error(),
                // The peer closing cleanly tells signald itself.
                tell_signald: !clean,
            },
            peer,
            initiator,
            described,
            until: now + LOSS_GRACE,
            waiter,
            verdict: invite,
        };
        self.apply(Change::Lose(c), fx);
    }

    pub(super) fn on_tick(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let ending = match &self.link {
            Link::Requested(r) if r.waiter.deadline <= now => Some(Ending {
                reason: DisconnectReason::ConnectTimeout,
                error: err(
                    ErrorCode::Timeout,
                    format!("signald did not answer the pairing with {} in time", r.peer),
                ),
                tell_signald: true,
            }),
            Link::Connecting(c) if c.deadline <= now => {
                Some(self.timeout(c, self.policy.connect_timeout))
            }
            Link::Connecting(c) => match &c.waiter {
                Some(w) if w.deadline <= now => Some(self.timeout(c, w.timeout)),
                _ => None,
            },
            Link::Closing(c) if c.until <= now => Some(c.ending.clone()),
            Link::Open(_) => {
                self.answer_deferred_offer(now, fx);
                self.restart_timed_out(now, fx);
                self.ask_to_pair_again(now, fx);
                None
            }
            _ => None,
        };
        if let Some(e) = ending {
            self.apply(Change::End(e), fx);
        }
    }

    /// Why a pairing timed out: no path, if ICE never connected.
    pub(super) fn timeout(&self, c: &Connecting, limit: Duration) -> Ending {
        let error = if c.ice_connected {
            err(
                ErrorCode::Timeout,
                format!(
                    "the data channel to {} did not open within {}",
                    c.peer,
                    humantime::format_duration(limit)
                ),
            )
        } else {
            ErrorBody {
                code: ErrorCode::Timeout,
                ..self.no_path_error()
            }
        };
        Ending {
            reason: DisconnectReason::ConnectTimeout,
            error,
            tell_signald: true,
        }
    }

    /// A local failure of the pairing under way (or of an open link's
    /// renegotiation) at `step`.
    pub(super) fn fail(&mut self, step: Step, e: NegotiationError, fx: &mut Vec<Effect>) {
        if self.link.is_paired() {
            let why = format!("{}: {e}", step.describe());
            tracing::warn!(%why, "negotiation failed");
            let e = Ending {
                reason: DisconnectReason::Failed,
                error: err(ErrorCode::Failed, why),
                tell_signald: true,
            };
            self.apply(Change::End(e), fx);
        }
    }

    /// The reason a person can act on when ICE finds no path.
    pub(super) fn no_path_error(&self) -> ErrorBody {
        let turn = matches!(self.signaling, Signaling::Up { turn: true, .. });
        let message = if turn {
            "no network path to the peer, not even through the TURN relay: check that the relay is reachable from both sides"
        } else {
            "no network path to the peer: both sides are behind NATs that need a TURN relay; none is configured"
        };
        err(ErrorCode::Failed, message)
    }
}
