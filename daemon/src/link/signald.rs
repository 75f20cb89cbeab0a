//! What signald tells the link: pairings made, offers, answers and
//! candidates relayed from the peer, the peer's departure, and errors
//! (answers to our `pair` among them).

use p2p_proto::control::{
    DisconnectReason, ErrorBody, ErrorCode, EventKind, LinkState, PairOutcome,
};
use p2p_proto::signal::{
    ClientMsg, DisconnectReason as SigReason, ErrorCode as SigError, ServerMsg,
};
use tokio::time::Instant;

use super::{
    AtSignald, Change, Connecting, Core, Effect, Ending, InviteProgress, InviteRole, Link,
    Negotiation, err,
};

impl Core {
    pub(super) fn on_server(&mut self, m: ServerMsg, now: Instant, fx: &mut Vec<Effect>) {
        match m {
            ServerMsg::Paired { peer_id, initiator } => self.on_paired(peer_id, initiator, now, fx),
            ServerMsg::Offer { sdp, from } => match &self.link {
                Link::Connecting(c)
                    if !c.initiator
                        && c.peer == from
                        && c.negotiation == Negotiation::AwaitingOffer =>
                {
                    self.checked(from, sdp, |sdp| Effect::Answer { sdp }, fx);
                }
                Link::Open(_) => self.on_restart_offer(&from, sdp, now, fx),
                _ => tracing::debug!(%from, "ignoring an offer we are not waiting for"),
            },
            ServerMsg::Answer { sdp, from } => match &self.link {
                Link::Connecting(c)
                    if c.initiator && c.peer == from && c.negotiation == Negotiation::Offering =>
                {
                    self.checked(from, sdp, |sdp| Effect::AcceptAnswer { sdp }, fx);
                }
                Link::Open(_) => self.on_restart_answer(&from, sdp, fx),
                _ => tracing::debug!(%from, "ignoring an answer we did not ask for"),
            },
            ServerMsg::Candidate { candidate, from } => {
                let ours = matches!(self.link, Link::Connecting(_) | Link::Open(_))
                    && self.link.peer() == Some(from.as_str());
                // `null` ends the candidates; nothing waits for it.
                if let (true, Some(c)) = (ours, candidate) {
                    fx.push(Effect::AddCandidate(c));
                }
            }
            ServerMsg::PeerDisconnected { peer_id, reason } => {
                if self.link.is_paired() && self.link.peer() == Some(peer_id.as_str()) {
                    let error = self.notice_error(&peer_id, reason);
                    let e = Ending {
                        reason: reason.into(),
                        error,
                        tell_signald: false,
                    };
                    if reason != SigReason::Unpaired && self.pairing_gone(reason.into(), now, fx) {
                        // Its signaling connection ended, not (yet) the
                        // link: a network change, signald restarting, or
                        // the peer gone. `replaced` means a live peer took
                        // its ID back; after `left` or `timeout` the data
                        // path says which.
                        if matches!(reason, SigReason::Left | SigReason::Timeout) {
                            self.check_path(super::state::Suspicion::Notice(reason.into()), fx);
                        }
                    } else if matches!(self.link, Link::Open(_)) && reason == SigReason::Unpaired {
                        // It may still be sending its last messages: a p2pd
                        // unpairs only after they were acknowledged, but
                        // they can still be on their way to `tail`.
                        self.read_to_end(e, now, fx);
                    } else if let Link::Connecting(c) = &self.link
                        && c.invite.as_ref().is_some_and(|i| i.started)
                    {
                        // A side that failed the handshake unpairs at once;
                        // its verdict on the data channel may come a moment
                        // later and names the real reason.
                        self.wait_for_verdict(e, now, fx);
                    } else {
                        self.apply(Change::End(e), fx);
                    }
                }
            }
            ServerMsg::Error { code, message } => self.on_error(code, message, fx),
            // The shell takes these before they reach the core.
            ServerMsg::Welcome { .. } | ServerMsg::Ping | ServerMsg::IceServers { .. } => {}
        }
    }

    fn on_paired(&mut self, peer: String, initiator: bool, now: Instant, fx: &mut Vec<Effect>) {
        if self.paired_again(&peer, fx) {
            return;
        }
        if let Link::Open(o) = &self.link
            && matches!(o.at_signald, AtSignald::Gone { .. })
        {
            // signald lost the open link's pairing and thinks we are free:
            // we are busy, not over.
            tracing::warn!(new = %peer, current = %o.peer, "refusing a pairing while the open link is being paired again");
            fx.push(Effect::Signal(ClientMsg::Unpair));
            return;
        }
        if initiator {
            // The answer to one of our `pair` requests.
            if self.abandoned > 0 {
                self.abandoned -= 1;
                tracing::debug!(%peer, "a pairing we gave up on was made; our unpair follows it");
                return;
            }
            let ours = matches!(&self.link, Link::Requested(r) if r.peer == peer);
            if !ours {
                tracing::warn!(%peer, "signald paired us as initiator without a request; unpairing");
                fx.push(Effect::Signal(ClientMsg::Unpair));
                return;
            }
            let Link::Requested(r) = std::mem::replace(&mut self.link, Link::Idle) else {
                unreachable!("checked above")
            };
            let deadline = now + self.policy.connect_timeout;
            let waiter = if r.waiter.wait_open {
                Some(r.waiter)
            } else {
                r.waiter.answer(
                    Ok(PairOutcome {
                        peer_id: peer.clone(),
                        state: LinkState::Connecting,
                        path: None,
                        fingerprint: None,
                        trust: None,
                    }),
                    fx,
                );
                None
            };
            let invite = r
                .code
                .map(|code| InviteProgress::new(InviteRole::Joiner(code)));
            let c = Connecting {
                peer: peer.clone(),
                initiator: true,
                negotiation: Negotiation::Offering,
                ice_connected: false,
                identity: None,
                key_from_dtls: false,
                invite,
                deadline,
                waiter,
                pinning: None,
            };
            self.apply(Change::Pair(c), fx);
            fx.push(Effect::Offer {
                peer,
                invite: r.code.is_some(),
            });
            return;
        }
        // Someone paired with us. An unknown key may still come for an
        // invitation's handshake, and nothing else.
        let mut invite = None;
        let refusal =
            if !self.policy.allow_peers.is_empty() && !self.policy.allow_peers.contains(&peer) {
                tracing::warn!(%peer, "refusing a pairing from a peer not in --allow-peer");
                Some(DisconnectReason::RefusedByAllowList)
            } else if let Err(e) = self.store_usable() {
                // Not even an invitation: its pin could not be written.
                tracing::error!(%peer, "refusing a pairing: {}", e.message);
                Some(DisconnectReason::NotTrusted)
            } else if let Err(e) = self.admits(&peer) {
                if self.invites.admits(&peer, now) {
                    invite = Some(InviteProgress::new(InviteRole::Inviter));
                    None
                } else {
                    tracing::warn!(%peer, "refusing a pairing: {}", e.message);
                    Some(DisconnectReason::NotTrusted)
                }
            } else {
                None
            };
        if let Some(reason) = refusal {
            fx.push(Effect::Signal(ClientMsg::Unpair));
            fx.push(Effect::Publish(EventKind::PeerDisconnected {
                peer_id: peer,
                reason,
            }));
            return;
        }
        match &self.link {
            Link::Idle => {}
            Link::Requested(r) => {
                // Our request lost the race; signald answers it with an
                // error that is still to come.
                let e = err(
                    ErrorCode::AlreadyPaired,
                    format!("{peer} paired with us before {} could", r.peer),
                );
                self.abandoned += 1;
                self.apply(Change::Refuse(e), fx);
            }
            _ => {
                tracing::warn!(new = %peer, "signald paired us again; dropping the old link");
                let e = Ending {
                    reason: DisconnectReason::Superseded,
                    error: err(
                        ErrorCode::Failed,
                        format!("replaced by a pairing with {peer}"),
                    ),
                    tell_signald: false,
                };
                self.apply(Change::End(e), fx);
            }
        }
        let c = Connecting {
            peer,
            initiator: false,
            negotiation: Negotiation::AwaitingOffer,
            ice_connected: false,
            identity: None,
            key_from_dtls: false,
            invite,
            deadline: now + self.policy.connect_timeout,
            waiter: None,
            pinning: None,
        };
        self.apply(Change::Pair(c), fx);
    }

    fn on_error(&mut self, code: SigError, message: String, fx: &mut Vec<Effect>) {
        let answers_pair = matches!(
            code,
            SigError::UnknownPeer
                | SigError::PeerBusy
                | SigError::SelfPair
                | SigError::AlreadyPaired
        );
        if answers_pair && self.abandoned > 0 {
            self.abandoned -= 1;
            return;
        }
        if code == SigError::RateLimited && self.link.peer().is_some() {
            // signald dropped a frame this pairing needs (the pair itself,
            // an offer, a candidate): it cannot complete, so say why.
            tracing::warn!(%message, "signald rate-limited us");
            let error = err(
                ErrorCode::Failed,
                format!(
                    "signald dropped a frame of this pairing (rate limited: {message}); try again in a moment"
                ),
            );
            let change = if self.link.is_paired() {
                Change::End(Ending {
                    reason: DisconnectReason::RateLimited,
                    error,
                    tell_signald: true,
                })
            } else {
                // The dropped frame was the `pair` itself: that was its answer.
                Change::Refuse(error)
            };
            self.apply(change, fx);
            return;
        }
        if answers_pair && self.repair_refused(code) {
            return;
        }
        let Link::Requested(r) = &self.link else {
            if code != SigError::NotPaired {
                tracing::warn!(%code, %message, "error from signald");
            }
            return;
        };
        let e = match code {
            SigError::UnknownPeer => err(
                ErrorCode::UnknownPeer,
                format!("no client with ID {} is connected to signald", r.peer),
            ),
            SigError::PeerBusy => err(
                ErrorCode::PeerBusy,
                format!("{} is busy: it is paired with someone else", r.peer),
            ),
            SigError::SelfPair => err(ErrorCode::SelfPair, "cannot pair with ourselves"),
            SigError::AlreadyPaired => err(
                ErrorCode::AlreadyPaired,
                format!("signald says we are already paired: {message}"),
            ),
            _ => {
                tracing::warn!(%code, %message, "error from signald");
                return;
            }
        };
        self.apply(Change::Refuse(e), fx);
    }

    /// What a waiting `pair` is told when signald says the peer is gone.
    fn notice_error(&self, peer: &str, reason: SigReason) -> ErrorBody {
        let (open, described, ice_connected) = match &self.link {
            Link::Open(_) => (true, true, true),
            Link::Connecting(c) => (
                false,
                c.negotiation == Negotiation::Described,
                c.ice_connected,
            ),
            Link::Closing(c) => (false, c.described, false),
            _ => (false, false, false),
        };
        let joining = matches!(&self.link, Link::Connecting(c) if c.invite.as_ref().is_some_and(|i| matches!(i.role, InviteRole::Joiner(_))));
        if reason == SigReason::Unpaired && !open && !described && joining {
            // An inviter admits unknown peers only while an invite is open.
            err(
                ErrorCode::InviteFailed,
                format!(
                    "{peer} refused the pairing: it has no open invite for us (the code expired, was cancelled or was used: ask {peer} for a new one)"
                ),
            )
        } else if reason == SigReason::Unpaired && !open && !described {
            // Before any description came back the peer can only have
            // refused (e.g. its --allow-peer list).
            err(ErrorCode::Refused, format!("{peer} refused the pairing"))
        } else if reason == SigReason::Unpaired && !open && ice_connected {
            // A path was found, so what failed is above it (DTLS: e.g. a
            // certificate that is not the described one).
            err(
                ErrorCode::Failed,
                format!("the data channel to {peer} did not open ({peer} gave up first)"),
            )
        } else if reason == SigReason::Unpaired && !open {
            let mut e = self.no_path_error();
            e.message = format!("{} ({peer} gave up first)", e.message);
            e
        } else {
            err(
                ErrorCode::Failed,
                format!(
                    "{peer} went away ({}) before the channel opened",
                    reason.as_str()
                ),
            )
        }
    }

    /// Applies the peer's description (the effect `apply` makes of it) only
    /// once its key checks out; otherwise the pairing ends, nothing applied.
    fn checked(
        &mut self,
        from: String,
        sdp: String,
        apply: fn(String) -> Effect,
        fx: &mut Vec<Effect>,
    ) {
        let invited = matches!(&self.link, Link::Connecting(c) if c.invite.is_some());
        match self.verify(&from, &sdp, invited) {
            Ok(identity) => {
                if let Link::Connecting(c) = &mut self.link {
                    c.identity = identity;
                    c.key_from_dtls = identity.is_none();
                }
                fx.push(apply(sdp));
            }
            Err(ending) => self.apply(Change::End(ending), fx),
        }
    }
}
