//! The verbs of the control socket that the link decides ([`Verb`]), each
//! answered with exactly one [`Effect::Reply`]: at once, or (a `pair` that
//! waits, an `unpair` that drains) when the link gets there.

use p2p_proto::control::{DisconnectReason, ErrorCode};
use tokio::time::Instant;

use super::{
    Awaiting, Change, Closing, Core, Effect, Ending, Link, Reply, ReqId, Requested, Verb, Waiter,
    err,
};

impl Core {
    pub(super) fn on_verb(&mut self, id: ReqId, verb: Verb, now: Instant, fx: &mut Vec<Effect>) {
        match verb {
            Verb::Pair {
                peer,
                wait_open,
                timeout,
                code,
            } => {
                if let Err(e) = self.check_pair(&peer, code.as_ref()) {
                    return fx.push(Effect::Reply {
                        to: id,
                        reply: Reply::Pair(Err(e)),
                    });
                }
                if let Some(lost) = self.link.peer().map(str::to_string) {
                    // The open link's path is silent: the user moves on.
                    tracing::info!(%lost, new = %peer, "a pairing with another peer replaces the lost link");
                    let e = Ending {
                        reason: DisconnectReason::Superseded,
                        error: err(
                            ErrorCode::Failed,
                            format!("replaced by a pairing with {peer}"),
                        ),
                        tell_signald: self.link.paired_at_signald(),
                    };
                    self.apply(Change::End(e), fx);
                }
                let waiter = Waiter {
                    wait_open,
                    id,
                    timeout,
                    deadline: now + timeout,
                };
                self.apply(Change::Request(Requested { peer, waiter, code }), fx);
            }
            Verb::Unpair => self.unpair(id, now, fx),
            Verb::Invite(edit) => {
                let result = self.edit_invites(edit, now);
                fx.push(Effect::Reply {
                    to: id,
                    reply: Reply::Body(result),
                });
            }
        }
    }

    /// `unpair`: an open link drains first (the answer comes once it has);
    /// any other pairing or request ends now.
    fn unpair(&mut self, id: ReqId, now: Instant, fx: &mut Vec<Effect>) {
        let ending = match &mut self.link {
            Link::Idle => None,
            Link::Open(_) => {
                let e = Ending {
                    reason: DisconnectReason::LocalUnpair,
                    error: err(ErrorCode::Failed, "unpaired locally"),
                    tell_signald: true,
                };
                return self.drain(e, Some(id), now, fx);
            }
            Link::Closing(Closing {
                awaiting: Awaiting::Drain { unpairs },
                ..
            }) => {
                // Answered with the first, once the drain is done.
                return unpairs.push(id);
            }
            // Already ending: end now, as it would have.
            Link::Closing(c) => Some(c.ending.clone()),
            _ => Some(Ending {
                reason: DisconnectReason::LocalUnpair,
                error: err(
                    ErrorCode::Failed,
                    "unpaired locally before the channel opened",
                ),
                tell_signald: true,
            }),
        };
        fx.push(Effect::Reply {
            to: id,
            reply: Reply::Unpair(ending.is_some()),
        });
        if let Some(e) = ending {
            self.apply(Change::End(e), fx);
        }
    }
}
