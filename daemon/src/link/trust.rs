//! The link's trust decisions: whether a peer may pair at all, whether the
//! key in its description is the one pinned for its ID, and the edits to
//! the trust store that can end a link.
//!
//! The key is checked before the description is applied, in both roles
//! (the answerer checks the offer, the initiator the answer), so a peer
//! with the wrong key is refused before DTLS starts and before any message
//! passes; DTLS then proves the peer holds the key (the crate compares the
//! certificate with the description's fingerprint). Pins hold under every
//! policy; the policy decides only about IDs with no pin.

use p2p_proto::control::{DisconnectReason, ErrorBody, ErrorCode, PeerTrust, TrustPolicy};
use p2p_proto::identity::{Fingerprint, SdpKey, sdp_key};

use super::{Change, Core, Effect, Ending, Link, err};
use crate::trust::{FirstPin, Pins, WriteError};

/// The key a peer presented, and how far it is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIdentity {
    pub fingerprint: Fingerprint,
    pub trust: PeerTrust,
}

impl PeerIdentity {
    /// Whether the key is pinned (a guarded `send --to` may use the link).
    pub fn verified(&self) -> bool {
        self.trust != PeerTrust::Unverified
    }
}

impl Core {
    /// Whether the trust store can be used at all: a broken one refuses
    /// every pairing, under every policy (it fails closed).
    pub(super) fn store_usable(&self) -> Result<(), ErrorBody> {
        self.pins
            .check()
            .map_err(|broken| err(ErrorCode::StoreFailed, broken.to_string()))
    }

    /// Whether `peer` may pair with us at all, before anything is sent.
    pub(super) fn admits(&self, peer: &str) -> Result<(), ErrorBody> {
        self.store_usable()?;
        if self.pins.policy() == TrustPolicy::Known && self.pins.get(peer).is_none() {
            return Err(err(
                ErrorCode::NotTrusted,
                format!(
                    "{peer} is not a trusted peer (--trust known): ask {peer} for `p2pctl id` and run `p2pctl trust {peer} FINGERPRINT`, or pair with an invite code"
                ),
            ));
        }
        Ok(())
    }

    /// The identity the description `sdp` gives `peer`, or why the pairing
    /// must end. On an `invited` link an unknown key is taken for now: the
    /// handshake proves it or the link ends. `Ok(None)`: the description
    /// names the key only by sha-384 or sha-512, so it is known (and
    /// judged, [`Core::judge`]) when the channel opens, from the
    /// certificate DTLS proved, before the user's channel is read.
    pub(super) fn verify(
        &self,
        peer: &str,
        sdp: &str,
        invited: bool,
    ) -> Result<Option<PeerIdentity>, Ending> {
        let refuse = |reason, error| Ending {
            reason,
            error,
            tell_signald: true,
        };
        if let Err(error) = self.store_usable() {
            tracing::error!(%peer, "refusing the pairing: {}", error.message);
            return Err(refuse(DisconnectReason::NotTrusted, error));
        }
        let pinned = self.pins.get(peer);
        match sdp_key(sdp) {
            Ok(SdpKey::Sha256(fp)) => self.judge(peer, fp, invited).map(Some),
            Ok(SdpKey::FromDtls) if invited => Err(refuse(
                DisconnectReason::Failed,
                err(
                    ErrorCode::Failed,
                    format!(
                        "{peer}'s description names its key only by sha-384 or sha-512; an invitation needs its sha-256 fingerprint"
                    ),
                ),
            )),
            Ok(SdpKey::FromDtls)
                if pinned.is_none() && self.pins.policy() == TrustPolicy::Known =>
            {
                Err(refuse(
                    DisconnectReason::NotTrusted,
                    self.admits(peer).expect_err("no pin under known"),
                ))
            }
            Ok(SdpKey::FromDtls) => Ok(None),
            Err(why) if pinned.is_some() || self.pins.policy() != TrustPolicy::Any => {
                tracing::warn!(%peer, why = %crate::throttle::excerpt(&why, 200), "refusing a description whose key cannot be checked");
                Err(refuse(
                    DisconnectReason::IdentityMismatch,
                    err(
                        ErrorCode::IdentityMismatch,
                        format!("{peer}'s key cannot be checked: {why}"),
                    ),
                ))
            }
            Err(why) => {
                tracing::warn!(%peer, why = %crate::throttle::excerpt(&why, 200), "refusing a description with no usable key");
                Err(refuse(
                    DisconnectReason::Failed,
                    err(
                        ErrorCode::Failed,
                        format!("{peer}'s description carries no usable key"),
                    ),
                ))
            }
        }
    }

    /// Whether `peer` may have the key `fp` (its sha-256 fingerprint), and
    /// how far it is trusted: the pin decides, else the policy.
    pub(super) fn judge(
        &self,
        peer: &str,
        fp: Fingerprint,
        invited: bool,
    ) -> Result<PeerIdentity, Ending> {
        let refuse = |reason, error| Ending {
            reason,
            error,
            tell_signald: true,
        };
        match self.pins.get(peer) {
            Some(pin) if pin == fp => Ok(PeerIdentity {
                fingerprint: fp,
                trust: PeerTrust::Pinned,
            }),
            Some(pin) => {
                tracing::warn!(%peer, expected = %pin, received = %fp, "refusing a peer whose key does not match its pin");
                Err(refuse(
                    DisconnectReason::IdentityMismatch,
                    err(
                        ErrorCode::IdentityMismatch,
                        format!(
                            "{peer}'s key does not match the one pinned for it: expected {pin}, received {fp} (someone may be posing as {peer}; if {peer} rotated its key, run `p2pctl trust {peer} {fp}`)"
                        ),
                    ),
                ))
            }
            None if invited => Ok(PeerIdentity {
                fingerprint: fp,
                trust: PeerTrust::Unverified,
            }),
            None => match self.pins.policy() {
                TrustPolicy::Known => Err(refuse(
                    DisconnectReason::NotTrusted,
                    self.admits(peer).expect_err("no pin under known"),
                )),
                TrustPolicy::Tofu => Ok(PeerIdentity {
                    fingerprint: fp,
                    trust: PeerTrust::Tofu,
                }),
                TrustPolicy::Any => Ok(PeerIdentity {
                    fingerprint: fp,
                    trust: PeerTrust::Unverified,
                }),
            },
        }
    }

    /// What writing the pin of `peer`'s key `id` came to ([`Effect::Pin`]):
    /// the identity the link opens with, or why it ends. A pin that
    /// appeared meanwhile (by hand) decides; the store failing (broken, or
    /// not writable) ends the link: a key is never taken unpinned where a
    /// pin was due.
    pub(super) fn pinned(
        &self,
        peer: &str,
        id: PeerIdentity,
        result: Result<FirstPin, WriteError>,
    ) -> Result<PeerIdentity, Ending> {
        let refuse = |reason, error| Ending {
            reason,
            error,
            tell_signald: true,
        };
        match result {
            Ok(FirstPin::Added) => {
                tracing::info!(%peer, fingerprint = %id.fingerprint, trust = ?id.trust, "pinned");
                Ok(id)
            }
            Ok(FirstPin::AlreadyPinned) => Ok(PeerIdentity {
                trust: match id.trust {
                    PeerTrust::Tofu => PeerTrust::Pinned,
                    other => other,
                },
                ..id
            }),
            Ok(FirstPin::Conflict(pin)) => {
                let received = id.fingerprint;
                tracing::warn!(%peer, expected = %pin, %received, "a pin for the peer was added meanwhile and does not match");
                Err(refuse(
                    DisconnectReason::IdentityMismatch,
                    err(
                        ErrorCode::IdentityMismatch,
                        format!(
                            "{peer}'s key does not match the one pinned for it meanwhile: expected {pin}, received {received}"
                        ),
                    ),
                ))
            }
            Err(e) => {
                tracing::error!(%peer, error = %e, "could not pin the peer's key; ending the link");
                Err(refuse(
                    DisconnectReason::NotTrusted,
                    err(
                        ErrorCode::StoreFailed,
                        format!("could not pin {peer}'s key: {e}"),
                    ),
                ))
            }
        }
    }

    /// The trust store changed (a hand edit, `p2pctl trust`/`untrust`,
    /// or a pin the engine wrote): decide from the new content from now on,
    /// and end a link whose key is no longer the one pinned for its peer.
    pub(super) fn on_pins(&mut self, pins: Pins, fx: &mut Vec<Effect>) {
        if pins == self.pins {
            return;
        }
        self.pins = pins;
        if let Some(peer) = self.link.peer().map(str::to_string) {
            self.recheck(&peer, fx);
        }
    }

    /// A link to `peer` whose key is no longer the one pinned ends (an
    /// unverified link under `any` is not affected; nor is one whose pin
    /// is being written).
    fn recheck(&mut self, peer: &str, fx: &mut Vec<Effect>) {
        let presented = match &self.link {
            Link::Open(o) if o.peer == peer => o.identity,
            Link::Connecting(c) if c.peer == peer => c.identity,
            _ => return,
        };
        let Some(id) = presented else { return };
        // A first contact's key is pinned only as the channel opens.
        let unpinned_yet = id.trust == PeerTrust::Tofu && matches!(self.link, Link::Connecting(_));
        // A broken store refuses new pairings; a link whose key was checked
        // when it was sound is not ended for an edit that broke it.
        if !id.verified() || unpinned_yet || self.pins.check().is_err() {
            return;
        }
        if self.pins.get(peer) != Some(id.fingerprint) {
            tracing::warn!(%peer, "the peer's pin changed; ending the link");
            let e = Ending {
                reason: DisconnectReason::NotTrusted,
                error: err(
                    ErrorCode::NotTrusted,
                    format!("{peer}'s pin was changed or removed"),
                ),
                tell_signald: true,
            };
            self.apply(Change::End(e), fx);
        }
    }
}
