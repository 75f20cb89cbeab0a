//! An open link lives exactly as long as its peer: ICE restarts when its
//! path goes silent, checks of the path when signald says the peer went
//! away, and the pairing at signald made again after it was lost.
//!
//! When the path goes silent, new ICE credentials and candidates go
//! through signald while DTLS, SCTP and the data channel stay up, and what
//! was sent meanwhile is delivered once a new path is found. Only when no
//! path is found within the bound (`--ice-restart-timeout`) does the link
//! end. Whichever side notices the silence offers (a move only one side
//! sees must not wait for the bound); when offers cross, the original
//! initiator's stands and the answerer answers it.
//!
//! An offer is made once per restart, and one that is out is never
//! replaced by another: an offer lost with a pairing is sent again, the
//! same, once signald pairs the two again, and the same offer seen again
//! is answered with the same answer. Two different offers in flight
//! would let an answer to the first be applied over the second, leaving
//! each side checking with credentials the other does not hold.
//!
//! signald's view is never enough to end a link. Its pairing ends with a
//! network change, a signald restart or outage, or the peer's death, and
//! only the data path tells these apart: after `left` or `timeout` the
//! shell checks whether the peer still answers consent checks
//! ([`Effect::CheckPath`], `crate::consent`). An answer keeps the link; no
//! answer after `left` ends it at once (`peer_gone`); no answer after
//! `timeout` makes it lost (an ICE restart until the bound, which a `pair`
//! with another peer may cut short). While the pairing is gone, the
//! initiator asks signald to make it again whenever both are connected,
//! at growing intervals, for as long as the link lives.

use std::time::Duration;

use p2p_proto::control::{DisconnectReason, EventKind};
use p2p_proto::identity::{Fingerprint, SdpKey, sdp_key};
use tokio::time::Instant;

use p2p_proto::signal::{ClientMsg, ErrorCode as SigError};

use p2p_proto::control::ErrorCode;

use super::state::Suspicion;
use super::{
    AnsweredOffer, AtSignald, Change, Core, Effect, Ending, Link, OurOffer, PathCheck, Probe,
    Restart, Signaling, err,
};

/// A peer's restart offers are taken at most this often: each one costs
/// us a new ICE generation (gathering, checks).
pub(super) const MIN_OFFER_INTERVAL: Duration = Duration::from_secs(1);

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
        // Without a pairing at signald the offer could not reach the
        // peer: it is made once the pairing is back.
        let offer = matches!(o.at_signald, AtSignald::Paired);
        o.restart = Some(Restart {
            since: now,
            deadline,
            answered: None,
            deferred: None,
            ours: if offer {
                OurOffer::Made { sent: true }
            } else {
                OurOffer::Wanted
            },
        });
        fx.push(Effect::Publish(EventKind::IceRestarting {
            peer_id: o.peer.clone(),
        }));
        if offer {
            fx.push(Effect::RestartIce);
        }
        true
    }

    /// signald no longer holds the open link's pairing (`reason`: its
    /// notice, or our own signaling connection lost). The link goes on:
    /// its path, not signald, says whether the peer is there. False when
    /// the link is not open, for the caller to end it as before.
    pub(super) fn pairing_gone(
        &mut self,
        reason: DisconnectReason,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> bool {
        let Link::Open(o) = &mut self.link else {
            return false;
        };
        if let Some(Restart {
            ours: OurOffer::Made { sent },
            ..
        }) = &mut o.restart
        {
            // An offer of ours may have gone with the pairing (or never
            // left): it is sent again once the pairing is back.
            *sent = false;
        }
        match &mut o.at_signald {
            AtSignald::Paired => {
                tracing::info!(peer = %o.peer, %reason, "the pairing ended at signald; keeping the channel and pairing again");
                o.at_signald = AtSignald::Gone {
                    reason,
                    asked: None,
                    asks: 0,
                    pending: false,
                };
            }
            AtSignald::Gone {
                reason: why,
                pending,
                ..
            } => {
                // Our own connection dropped: the frames of that session,
                // answers included, are gone with it.
                if reason == DisconnectReason::SignalingLost {
                    *pending = false;
                } else {
                    *why = reason;
                }
            }
        }
        self.ask_to_pair_again(now, fx);
        true
    }

    /// signald says the open link's peer left or went silent there, or our
    /// data stopped being acknowledged: check the data path at once (one
    /// check at a time; an ICE restart under way looks for a path anyway).
    pub(super) fn check_path(&mut self, why: Suspicion, fx: &mut Vec<Effect>) {
        let Link::Open(o) = &mut self.link else {
            return;
        };
        const LEFT: Suspicion = Suspicion::Notice(DisconnectReason::Left);
        match &mut o.probe {
            Some(p) => {
                // `left` decides more than the rest: keep the stronger.
                if why == LEFT {
                    p.why = why;
                }
            }
            // An ICE restart under way looks for a path anyway.
            None if matches!(why, Suspicion::Stalled | Suspicion::NetworkChanged)
                && o.restart.is_some() => {}
            None => {
                // A stall is suspected at the end of every steady flow of
                // messages: routine, not worth the log unless it is real.
                if why == Suspicion::Stalled {
                    tracing::debug!(peer = %o.peer, ?why, "checking whether the peer still answers on the data path");
                } else {
                    tracing::info!(peer = %o.peer, ?why, "checking whether the peer still answers on the data path");
                }
                o.probe = Some(Probe { why });
                fx.push(Effect::CheckPath { quick: why != LEFT });
            }
        }
    }

    /// What the check of the data path found. An answer keeps the link
    /// (the peer is there, only not at signald). Silence after `left`
    /// means the peer is gone: the link ends now. Silence after `timeout`
    /// (a frozen process, or a network change on its side) makes the link
    /// lost: the restart logic looks for a path until its bound, and a
    /// `pair` with another peer may replace it meanwhile.
    pub(super) fn on_path_checked(
        &mut self,
        result: PathCheck,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let Link::Open(o) = &mut self.link else {
            return;
        };
        let Some(probe) = o.probe.take() else {
            tracing::debug!(?result, "ignoring a path check nobody asked for");
            return;
        };
        match (result, probe.why) {
            (PathCheck::Answered, Suspicion::Stalled) => {
                tracing::debug!(peer = %o.peer, "the peer answers on the data path; keeping the link");
            }
            (PathCheck::Answered, why) => {
                tracing::info!(peer = %o.peer, ?why, "the peer answers on the data path; keeping the link");
            }
            (PathCheck::Silent, Suspicion::Notice(DisconnectReason::Left)) => {
                tracing::info!(peer = %o.peer, "the peer left signald and does not answer on the data path: it is gone");
                let e = Ending {
                    reason: DisconnectReason::PeerGone,
                    error: err(
                        ErrorCode::Failed,
                        format!("{} is gone (it left signald and stopped answering)", o.peer),
                    ),
                    tell_signald: false,
                };
                self.apply(Change::End(e), fx);
            }
            (PathCheck::Silent, why) => {
                tracing::info!(peer = %o.peer, ?why, "the peer does not answer on the data path; the link is lost");
                self.restart(now, fx);
            }
        }
    }

    /// The initiator of an open link whose pairing signald lost asks for
    /// it again, at growing intervals ([`super::repair_interval`]).
    pub(super) fn ask_to_pair_again(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if !matches!(self.signaling, Signaling::Up { .. }) {
            return;
        }
        let Link::Open(o) = &mut self.link else {
            return;
        };
        let AtSignald::Gone {
            asked,
            asks,
            pending,
            ..
        } = &mut o.at_signald
        else {
            return;
        };
        let due = match asked {
            Some(at) => now >= *at + super::repair_interval(*asks),
            None => true,
        };
        if !o.initiator || *pending || !due {
            return;
        }
        *asked = Some(now);
        *asks = asks.saturating_add(1);
        *pending = true;
        fx.push(Effect::Signal(ClientMsg::Pair {
            peer_id: o.peer.clone(),
        }));
    }

    /// signald paired us with the peer of our open link again: the link
    /// goes on, and a restart under way goes on through the new pairing:
    /// an offer of ours is sent again (the same one), one waiting for the
    /// pairing is made, and the initiator of a restart whose offer was
    /// answered makes a new one (candidates trickled while the pairing was
    /// gone are lost). False for any other pairing.
    pub(super) fn paired_again(&mut self, peer: &str, fx: &mut Vec<Effect>) -> bool {
        let Link::Open(o) = &mut self.link else {
            return false;
        };
        if o.peer != peer || matches!(o.at_signald, AtSignald::Paired) {
            return false;
        }
        tracing::info!(%peer, "paired again at signald; the channel went on");
        o.at_signald = AtSignald::Paired;
        let Some(r) = &mut o.restart else {
            return true;
        };
        match r.ours {
            OurOffer::Made { sent: true } => {}
            OurOffer::Made { sent: false } => {
                tracing::debug!(%peer, "sending our restart offer again on the new pairing");
                r.ours = OurOffer::Made { sent: true };
                fx.push(Effect::ResendOffer);
            }
            OurOffer::Wanted => {
                r.ours = OurOffer::Made { sent: true };
                fx.push(Effect::RestartIce);
            }
            // The answerer waits for the initiator's, so that the two do
            // not cross.
            OurOffer::None if o.initiator => {
                r.ours = OurOffer::Made { sent: true };
                fx.push(Effect::RestartIce);
            }
            OurOffer::None => {}
        }
        true
    }

    /// signald refused our request to pair again (the peer is not back
    /// yet, or not free yet): the next try comes at the retry tick. True
    /// when the error was the answer to such a request.
    pub(super) fn repair_refused(&mut self, code: SigError) -> bool {
        let Link::Open(o) = &mut self.link else {
            return false;
        };
        let AtSignald::Gone { pending, asks, .. } = &mut o.at_signald else {
            return false;
        };
        if !*pending {
            return false;
        }
        *pending = false;
        tracing::debug!(%code, next_in = ?super::repair_interval(*asks), "signald cannot pair us again yet; retrying");
        true
    }

    /// An offer from the peer of the open link: its restart, a restart
    /// offer seen before, or one that comes too soon after the last.
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
        let ufrag = ice_ufrag(&sdp);
        if let Some(seen) = &o.answered_offer
            && ufrag == Some(seen.ufrag.as_str())
        {
            // The offer we answered, again: the peer sent it again on a
            // new pairing (our answer may be lost), or it came late.
            match &seen.answer {
                Some(answer) => {
                    tracing::debug!(peer = %from, "a restart offer we answered came again; answering it the same");
                    fx.push(Effect::Signal(ClientMsg::Answer {
                        sdp: answer.clone(),
                    }));
                }
                None => {
                    tracing::debug!(peer = %from, "a restart offer we are answering came again");
                }
            }
            return;
        }
        let answered_offer = ufrag.map(|u| AnsweredOffer {
            ufrag: u.to_owned(),
            answer: None,
        });
        match &mut o.restart {
            // Glare: the original initiator's offer stands; the peer
            // answers ours.
            Some(Restart {
                ours: OurOffer::Made { .. },
                ..
            }) if o.initiator => {
                tracing::debug!(peer = %from, "ignoring the peer's restart offer: ours is out and stands");
            }
            Some(Restart {
                answered: Some(at),
                deferred,
                ..
            }) if now - *at < MIN_OFFER_INTERVAL => {
                tracing::debug!(peer = %from, "a new restart offer within a second of the last; answering it at the end of that second");
                *deferred = Some(sdp);
            }
            Some(r) => {
                if r.ours != OurOffer::None {
                    // Glare: the answerer gives its own offer up (the
                    // shell rolls it back) and answers the initiator's.
                    tracing::debug!(peer = %from, "our restart offer crossed the initiator's; answering theirs");
                    r.ours = OurOffer::None;
                }
                r.answered = Some(now);
                r.deferred = None;
                o.answered_offer = answered_offer;
                fx.push(Effect::Answer { sdp });
            }
            None => {
                tracing::info!(peer = %from, "the peer restarts ICE");
                o.restart = Some(Restart {
                    since: now,
                    deadline,
                    answered: Some(now),
                    deferred: None,
                    ours: OurOffer::None,
                });
                o.answered_offer = answered_offer;
                fx.push(Effect::Publish(EventKind::IceRestarting {
                    peer_id: o.peer.clone(),
                }));
                fx.push(Effect::Answer { sdp });
            }
        }
    }

    /// A restart offer of the peer's that came too soon after the last is
    /// answered once the interval is over.
    pub(super) fn answer_deferred_offer(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let Link::Open(o) = &mut self.link else {
            return;
        };
        let Some(r) = &mut o.restart else { return };
        if r.answered.is_some_and(|at| now - at < MIN_OFFER_INTERVAL) {
            return;
        }
        if let Some(sdp) = r.deferred.take() {
            let peer = o.peer.clone();
            self.on_restart_offer(&peer, sdp, now, fx);
        }
    }

    /// The answer to our restart offer.
    pub(super) fn on_restart_answer(&mut self, from: &str, sdp: String, fx: &mut Vec<Effect>) {
        let Link::Open(o) = &mut self.link else {
            return;
        };
        let key = o.identity.map(|i| i.fingerprint);
        let Some(r) = o
            .restart
            .as_mut()
            .filter(|r| o.peer == from && matches!(r.ours, OurOffer::Made { .. }))
        else {
            tracing::debug!(%from, "ignoring an answer we did not ask for");
            return;
        };
        if !same_key(key, &sdp) {
            tracing::warn!(peer = %from, "ignoring a restart answer that carries another key");
            return;
        }
        // One answer per offer: the same answer again (to our offer sent
        // again) is not applied twice.
        r.ours = OurOffer::None;
        fx.push(Effect::AcceptAnswer { sdp });
    }

    /// No path within the bound: the link ends. Its reason is signald's
    /// (or `signaling_lost`) when the pairing there was gone too, since
    /// that is why no restart could be made; else `ice_failed`.
    pub(super) fn restart_timed_out(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let Link::Open(o) = &self.link else { return };
        if o.restart.as_ref().is_none_or(|r| r.deadline > now) {
            return;
        }
        let (reason, paired) = match o.at_signald {
            AtSignald::Paired => (DisconnectReason::IceFailed, true),
            AtSignald::Gone { reason, .. } => (reason, false),
        };
        let e = Ending {
            reason,
            error: self.no_path_error(),
            tell_signald: paired,
        };
        self.apply(Change::End(e), fx);
    }
}

/// A description's ICE username fragment (its first: we make one media
/// section, and a restart changes them all).
pub(crate) fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
}

/// Whether a renegotiation carries the key the link was opened with (the
/// DTLS session does not change, so another key can only be a forgery).
/// A description that names the key only by sha-384 or sha-512 cannot be
/// compared with the sha-256 we hold; an ICE restart does not start DTLS
/// again, so the certificate DTLS proved stays the link's key either way.
fn same_key(opened_with: Option<Fingerprint>, sdp: &str) -> bool {
    match (opened_with, sdp_key(sdp)) {
        (Some(fp), Ok(SdpKey::Sha256(seen))) => seen == fp,
        (Some(_), Ok(SdpKey::FromDtls)) => true,
        (Some(_), Err(_)) => false,
        // `--trust any` accepted a description without a readable key.
        (None, _) => true,
    }
}
