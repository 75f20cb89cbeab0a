//! ICE restarts of an open link: when its path goes silent, new ICE
//! credentials and candidates go through signald while DTLS, SCTP and the
//! data channel stay up, and what was sent meanwhile is delivered once a
//! new path is found. Only when no path is found within the bound
//! (`--ice-restart-timeout`) does the link reset, as before.
//!
//! The original initiator makes the restart offer; the answerer waits for
//! it (and answers a peer's restart offer whenever one comes, as browsers
//! may send them). So two offers never cross, at the price that a silence
//! only the answerer notices ends in a reset at the bound.
//!
//! A network change usually breaks the signaling connection too, and
//! signald then ends the pairing (telling the peer `left`, `timeout` or
//! `replaced`). An open link does not end with it: the initiator asks
//! signald to pair the two again as soon as it can (every
//! [`REPAIR_RETRY`] while the peer is not back), the restart's offer
//! waits for that, and the link ends only if the pairing is not made
//! again within the same bound. A signald restart costs open links
//! nothing for the same reason.

use std::time::Duration;

use p2p_proto::control::{DisconnectReason, EventKind};
use p2p_proto::identity::Fingerprint;
use tokio::time::Instant;

use p2p_proto::signal::{ClientMsg, ErrorCode as SigError};

use super::{AtSignald, Change, Core, Effect, Ending, Link, REPAIR_RETRY, Restart, Signaling};

/// A peer's restart offers are taken at most this often: each one costs
/// us a new ICE generation (gathering, checks).
const MIN_OFFER_INTERVAL: Duration = Duration::from_secs(1);

impl Core {
    /// The open link's path went silent: restart ICE rather than reset.
    /// False when the link is not open, for the caller to end it as
    /// before.
    pub(super) fn restart(&mut self, now: Instant, fx: &mut Vec<Effect>) -> bool {
        let deadline = now + self.policy.restart_timeout;
        let Link::Open(o) = &mut self.link else {
            return false;
        };
        if o.restart.is_some() {
            // Already restarting: the bound decides.
            return true;
        }
        tracing::info!(peer = %o.peer, initiator = o.initiator, "the path went silent; restarting ICE");
        o.restart = Some(Restart {
            since: now,
            deadline,
            answered: None,
        });
        fx.push(Effect::Publish(EventKind::IceRestarting {
            peer_id: o.peer.clone(),
        }));
        // Without a pairing at signald the offer could not reach the
        // peer: it is made once the pairing is back.
        if o.initiator && matches!(o.at_signald, AtSignald::Paired) {
            fx.push(Effect::RestartIce);
        }
        true
    }

    /// signald no longer holds the open link's pairing (`reason`: its
    /// notice, or our own signaling connection lost). False when the link
    /// is not open, for the caller to end it as before.
    pub(super) fn pairing_gone(
        &mut self,
        reason: DisconnectReason,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> bool {
        let deadline = now + self.policy.restart_timeout;
        let Link::Open(o) = &mut self.link else {
            return false;
        };
        if let AtSignald::Paired = o.at_signald {
            tracing::info!(peer = %o.peer, %reason, "the pairing ended at signald; keeping the channel and pairing again");
            o.at_signald = AtSignald::Gone {
                reason,
                deadline,
                asked: None,
            };
        }
        self.ask_to_pair_again(now, fx);
        true
    }

    /// The initiator of an open link whose pairing signald lost asks for
    /// it again (at most every [`REPAIR_RETRY`]).
    pub(super) fn ask_to_pair_again(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if !matches!(self.signaling, Signaling::Up { .. }) {
            return;
        }
        let Link::Open(o) = &mut self.link else {
            return;
        };
        let AtSignald::Gone { asked, .. } = &mut o.at_signald else {
            return;
        };
        if !o.initiator || asked.is_some_and(|at| now < at + REPAIR_RETRY) {
            return;
        }
        *asked = Some(now);
        fx.push(Effect::Signal(ClientMsg::Pair {
            peer_id: o.peer.clone(),
        }));
    }

    /// signald paired us with the peer of our open link again: the link
    /// goes on (and a restart waiting for the pairing makes its offer).
    /// False for any other pairing.
    pub(super) fn paired_again(&mut self, peer: &str, fx: &mut Vec<Effect>) -> bool {
        let Link::Open(o) = &mut self.link else {
            return false;
        };
        if o.peer != peer || matches!(o.at_signald, AtSignald::Paired) {
            return false;
        }
        tracing::info!(%peer, "paired again at signald; the channel went on");
        o.at_signald = AtSignald::Paired;
        if o.initiator && o.restart.is_some() {
            fx.push(Effect::RestartIce);
        }
        true
    }

    /// signald refused our request to pair again (the peer is not back
    /// yet, or not free yet): the next try comes at the retry tick. True
    /// when the error was the answer to such a request.
    pub(super) fn repair_refused(&mut self, code: SigError) -> bool {
        let asking = matches!(
            &self.link,
            Link::Open(o) if matches!(o.at_signald, AtSignald::Gone { asked: Some(_), .. })
        );
        if asking {
            tracing::debug!(%code, "signald cannot pair us again yet; retrying");
        }
        asking
    }

    /// The pairing did not come back in time: the link ends with the
    /// reason signald gave; otherwise ask again when the retry is due.
    pub(super) fn repair_due(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let Link::Open(o) = &self.link else { return };
        let AtSignald::Gone {
            reason, deadline, ..
        } = &o.at_signald
        else {
            return;
        };
        if *deadline <= now {
            let e = Ending {
                reason: *reason,
                error: self.no_path_error(),
                tell_signald: false,
            };
            self.apply(Change::End(e), fx);
        } else {
            self.ask_to_pair_again(now, fx);
        }
    }

    /// An offer from the peer of the open link: its restart.
    pub(super) fn on_restart_offer(
        &mut self,
        from: &str,
        sdp: String,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let deadline = now + self.policy.restart_timeout;
        let Link::Open(o) = &mut self.link else {
            return;
        };
        if o.peer != from {
            tracing::debug!(%from, "ignoring an offer from a peer we are not paired with");
            return;
        }
        if !same_key(o.identity.map(|i| i.fingerprint), &sdp) {
            tracing::warn!(peer = %from, "ignoring a restart offer that carries another key");
            return;
        }
        match &mut o.restart {
            // Ours is out; the peer answers it (it never offers first).
            Some(_) if o.initiator => {
                tracing::debug!(peer = %from, "ignoring the peer's restart offer: ours is out");
            }
            Some(Restart {
                answered: Some(at), ..
            }) if now - *at < MIN_OFFER_INTERVAL => {
                tracing::debug!(peer = %from, "ignoring a second restart offer within a second");
            }
            Some(r) => {
                r.answered = Some(now);
                fx.push(Effect::Answer { sdp });
            }
            None => {
                tracing::info!(peer = %from, "the peer restarts ICE");
                o.restart = Some(Restart {
                    since: now,
                    deadline,
                    answered: Some(now),
                });
                fx.push(Effect::Publish(EventKind::IceRestarting {
                    peer_id: o.peer.clone(),
                }));
                fx.push(Effect::Answer { sdp });
            }
        }
    }

    /// The answer to our restart offer.
    pub(super) fn on_restart_answer(&mut self, from: &str, sdp: String, fx: &mut Vec<Effect>) {
        let Link::Open(o) = &self.link else { return };
        if o.peer != from || !o.initiator || o.restart.is_none() {
            tracing::debug!(%from, "ignoring an answer we did not ask for");
            return;
        }
        if !same_key(o.identity.map(|i| i.fingerprint), &sdp) {
            tracing::warn!(peer = %from, "ignoring a restart answer that carries another key");
            return;
        }
        fx.push(Effect::AcceptAnswer { sdp });
    }

    /// No path within the bound: end the link the way a lost one ends.
    pub(super) fn restart_timed_out(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let due = matches!(&self.link, Link::Open(o) if o.restart.as_ref().is_some_and(|r| r.deadline <= now));
        if due {
            let e = Ending {
                reason: DisconnectReason::IceFailed,
                error: self.no_path_error(),
                tell_signald: true,
            };
            self.apply(Change::End(e), fx);
        }
    }
}

/// Whether a renegotiation carries the key the link was opened with (the
/// DTLS session does not change, so another key can only be a forgery).
fn same_key(opened_with: Option<Fingerprint>, sdp: &str) -> bool {
    match opened_with {
        Some(fp) => Fingerprint::from_sdp(sdp).is_ok_and(|seen| seen == fp),
        // `--trust any` accepted a description without a readable key.
        None => true,
    }
}
