//! The data channel opens: the key judged from the DTLS certificate when
//! the description named it only by sha-384/512, the invitation handshake
//! waited for when one runs, the first contact pinned under `tofu`, and
//! the link made [`Open`]. The generic step of every pairing, invited or
//! not.

use p2p_proto::control::{DisconnectReason, ErrorCode, Path};
use p2p_proto::identity::Fingerprint;
use tokio::time::Instant;

use p2p_proto::control::PeerTrust;

use super::state::Pinning;
use super::{AtSignald, Change, Core, Effect, Ending, Link, Open, PeerIdentity, err};
use crate::trust::{FirstPin, WriteError};

impl Core {
    /// The user's channel opened: the link is open, unless a handshake is
    /// still to finish (then it opens when the handshake does).
    pub(super) fn on_channel_open(
        &mut self,
        path: Option<Path>,
        certificate: Option<Fingerprint>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let Link::Connecting(c) = &mut self.link else {
            return;
        };
        if c.key_from_dtls {
            // The key is the certificate DTLS proved: judged now, before
            // the user's channel is read (it is held until the link opens).
            let peer = c.peer.clone();
            let judged = match certificate {
                Some(fp) => self.judge(&peer, fp, false),
                None => Err(Ending {
                    reason: DisconnectReason::IdentityMismatch,
                    error: err(
                        ErrorCode::IdentityMismatch,
                        format!("{peer}'s certificate could not be read after DTLS"),
                    ),
                    tell_signald: true,
                }),
            };
            match judged {
                Ok(id) => {
                    if let Link::Connecting(c) = &mut self.link {
                        c.identity = Some(id);
                        c.key_from_dtls = false;
                    }
                }
                Err(ending) => {
                    self.apply(Change::End(ending), fx);
                    return;
                }
            }
        }
        let Link::Connecting(c) = &mut self.link else {
            return;
        };
        if let Some(inv) = &mut c.invite {
            inv.opened = Some(path);
            return;
        }
        self.open(path, now, fx);
    }

    /// Connecting → Open; under `tofu` the first contact's key is pinned
    /// first ([`Effect::Pin`], then [`Core::on_pinned`]).
    pub(super) fn open(&mut self, path: Option<Path>, now: Instant, fx: &mut Vec<Effect>) {
        let Link::Connecting(c) = &mut self.link else {
            return;
        };
        match (&mut c.pinning, c.identity) {
            // The invite's pin is being written: the link opens after it.
            (Some(Pinning::Invite { opened }), _) => {
                *opened = Some(path);
                return;
            }
            (Some(Pinning::FirstContact { .. }), _) => return,
            (None, Some(id)) if id.trust == PeerTrust::Tofu => {
                c.pinning = Some(Pinning::FirstContact { path });
                fx.push(Effect::Pin {
                    peer: c.peer.clone(),
                    fingerprint: id.fingerprint,
                    comment: "tofu",
                    first: true,
                });
                return;
            }
            (None, _) => {}
        }
        self.finish_open(path, now, fx);
    }

    /// The engine wrote (or could not write) the pin the link waited for.
    pub(super) fn on_pinned(
        &mut self,
        result: Result<FirstPin, WriteError>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let Link::Connecting(c) = &mut self.link else {
            return;
        };
        let (Some(pinning), Some(id)) = (c.pinning.take(), c.identity) else {
            return;
        };
        let peer = c.peer.clone();
        let id = match pinning {
            Pinning::FirstContact { .. } => id,
            Pinning::Invite { .. } => PeerIdentity {
                trust: PeerTrust::Invite,
                ..id
            },
        };
        match self.pinned(&peer, id, result) {
            Err(ending) => self.apply(Change::End(ending), fx),
            Ok(id) => {
                if let Link::Connecting(c) = &mut self.link {
                    c.identity = Some(id);
                }
                match pinning {
                    Pinning::FirstContact { path } | Pinning::Invite { opened: Some(path) } => {
                        self.finish_open(path, now, fx)
                    }
                    // The channel is not open yet: it opens the link.
                    Pinning::Invite { opened: None } => {}
                }
            }
        }
    }

    /// Connecting → Open: the one place a link opens.
    fn finish_open(&mut self, path: Option<Path>, now: Instant, fx: &mut Vec<Effect>) {
        let Link::Connecting(c) = &self.link else {
            return;
        };
        let open = Open {
            peer: c.peer.clone(),
            initiator: c.initiator,
            since: now,
            identity: c.identity,
            restart: None,
            at_signald: AtSignald::Paired,
            probe: None,
            answered_offer: None,
        };
        self.apply(Change::Open(open, path), fx);
    }
}
