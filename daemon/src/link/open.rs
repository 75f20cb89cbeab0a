//! The data channel opens: the key judged from the DTLS certificate when
//! the description named it only by sha-384/512, the invitation handshake
//! waited for when one runs, the first contact pinned under `tofu`, and
//! the link made [`Open`]. The generic step of every pairing, invited or
//! not.

use p2p_proto::control::{DisconnectReason, ErrorCode, Path};
use p2p_proto::identity::Fingerprint;
use tokio::time::Instant;

use super::{AtSignald, Change, Core, Effect, Ending, Link, Open, err};

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

    /// Connecting → Open, with the first-contact pin when the policy
    /// makes one: the one place a link opens.
    pub(super) fn open(&mut self, path: Option<Path>, now: Instant, fx: &mut Vec<Effect>) {
        let Link::Connecting(c) = &self.link else {
            return;
        };
        let (peer, initiator, identity) = (c.peer.clone(), c.initiator, c.identity);
        let identity = match identity.map(|id| self.pin_first_contact(&peer, id)) {
            Some(Err(ending)) => {
                self.apply(Change::End(ending), fx);
                return;
            }
            Some(Ok(id)) => Some(id),
            None => None,
        };
        let open = Open {
            peer,
            initiator,
            since: now,
            identity,
            restart: None,
            at_signald: AtSignald::Paired,
            probe: None,
        };
        self.apply(Change::Open(open, path), fx);
    }
}
