//! Events streamed to `tail` followers, and why a link ends.

use serde::{Deserialize, Serialize};

use super::{Path, PeerTrust};
use crate::identity::Fingerprint;

/// Something that happened, streamed to `tail` followers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// A message from the peer. Text messages carry `text`; binary ones
    /// `data_b64`.
    Message {
        from: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data_b64: Option<String>,
    },
    Paired {
        peer_id: String,
        initiator: bool,
    },
    ChannelOpen {
        peer_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<Path>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fingerprint: Option<Fingerprint>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trust: Option<PeerTrust>,
    },
    /// The link to the peer ended; the daemon is ready for the next pairing.
    PeerDisconnected {
        peer_id: String,
        reason: DisconnectReason,
    },
    SignalingUp {
        id: String,
    },
    SignalingDown {
        reason: String,
    },
    /// An invitation handshake with `peer_id` failed (the invite is used
    /// up, whatever the reason); `peer_disconnected` follows.
    InviteFailed {
        peer_id: String,
        /// The invite's number, when the peer named one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        invite: Option<u16>,
        reason: InviteFailure,
    },
    /// The open link's network path went silent (a network change, a NAT
    /// that forgot us): ICE is restarting to find a new one while the
    /// channel stays open. Messages sent meanwhile wait, and arrive once
    /// `ice_restarted` comes; if it does not come within the restart bound,
    /// `peer_disconnected` (`ice_failed`) does.
    IceRestarting {
        peer_id: String,
    },
    /// ICE found a new path for the open link; nothing was lost.
    IceRestarted {
        peer_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<Path>,
    },
    /// This follower was too slow and missed `missed` events just before
    /// this one.
    Lagged {
        missed: u64,
    },
}

/// Why the link to a peer ended: `peer_disconnected.reason`.
///
/// The first four are signald's notices (`peer_disconnected` frames of the
/// signaling protocol), passed on as they came; the others are p2pd's own.
/// `docs/control.md` documents each once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    /// signald: the peer's connection to signald ended.
    Left,
    /// signald: the peer stopped answering signald's pings.
    Timeout,
    /// signald: the peer sent `unpair` (it unpaired, gave up or refused us).
    Unpaired,
    /// signald: the peer's ID was reclaimed by a new connection with its token.
    Replaced,
    /// We unpaired (`p2pctl unpair`).
    LocalUnpair,
    /// ICE or DTLS failed, or the path went silent for
    /// `--ice-disconnected-timeout`.
    IceFailed,
    /// The peer closed the data channel or the peer connection.
    ChannelClosed,
    /// Our signaling connection dropped, or a frame of the pairing could not
    /// be handed to it.
    SignalingLost,
    /// The data channel did not open within `--connect-timeout` or the
    /// `pair` request's own timeout.
    ConnectTimeout,
    /// signald dropped a frame of this pairing under its rate limit.
    RateLimited,
    /// Negotiation failed locally (an offer or answer could not be made or
    /// applied); the log says why.
    Failed,
    /// signald paired us with someone else while this link was up, or a
    /// `pair` with another peer replaced a link whose path had gone silent.
    Superseded,
    /// p2pd is shutting down.
    Shutdown,
    /// An incoming pairing from an ID that `--allow-peer` does not list;
    /// refused before any negotiation.
    RefusedByAllowList,
    /// The peer's key is not pinned and `--trust known` refuses unknown
    /// peers (or its pin was removed while the link was up).
    NotTrusted,
    /// The key in the peer's description is not the one pinned for its ID;
    /// refused before the channel opened.
    IdentityMismatch,
    /// The invitation handshake failed (see the `invite_failed` event).
    InviteFailed,
    /// The peer is gone: signald said its connection `left`, and it did not
    /// answer the consent checks on the data path that followed.
    PeerGone,
}

/// Why an invitation handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InviteFailure {
    /// The key confirmation failed: a wrong code, or someone between the
    /// two changed a key. One guess per code: the invite is used up.
    WrongCode,
    /// The invite had expired.
    Expired,
    /// The invite was cancelled.
    Cancelled,
    /// The invite was used already (by a success or a wrong guess).
    Used,
    /// The invite is for another peer ID.
    NotForYou,
    /// No invite with that number is open.
    Unknown,
    /// A step did not come within its time.
    Timeout,
    /// A malformed or unexpected handshake message.
    Protocol,
}

impl InviteFailure {
    /// What the joining side's `pair --code` says.
    pub fn explain(self) -> &'static str {
        match self {
            Self::WrongCode | Self::Used | Self::Unknown => "wrong or expired invite code",
            Self::Expired => "the invite code has expired: ask for a new one",
            Self::Cancelled => "the invite was cancelled: ask for a new one",
            Self::NotForYou => "this invite code is for another peer",
            Self::Timeout => "the invite handshake did not finish in time",
            Self::Protocol => "the peer broke the invite handshake",
        }
    }
}

impl DisconnectReason {
    /// Every reason, in the order of the documentation.
    pub const ALL: [DisconnectReason; 18] = [
        Self::Left,
        Self::Timeout,
        Self::Unpaired,
        Self::Replaced,
        Self::LocalUnpair,
        Self::IceFailed,
        Self::ChannelClosed,
        Self::SignalingLost,
        Self::ConnectTimeout,
        Self::RateLimited,
        Self::Failed,
        Self::Superseded,
        Self::Shutdown,
        Self::RefusedByAllowList,
        Self::NotTrusted,
        Self::IdentityMismatch,
        Self::InviteFailed,
        Self::PeerGone,
    ];

    /// The wire name, as in `peer_disconnected.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Left => "left",
            Self::Timeout => "timeout",
            Self::Unpaired => "unpaired",
            Self::Replaced => "replaced",
            Self::LocalUnpair => "local_unpair",
            Self::IceFailed => "ice_failed",
            Self::ChannelClosed => "channel_closed",
            Self::SignalingLost => "signaling_lost",
            Self::ConnectTimeout => "connect_timeout",
            Self::RateLimited => "rate_limited",
            Self::Failed => "failed",
            Self::Superseded => "superseded",
            Self::Shutdown => "shutdown",
            Self::RefusedByAllowList => "refused_by_allow_list",
            Self::NotTrusted => "not_trusted",
            Self::IdentityMismatch => "identity_mismatch",
            Self::InviteFailed => "invite_failed",
            Self::PeerGone => "peer_gone",
        }
    }
}

impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<crate::signal::DisconnectReason> for DisconnectReason {
    fn from(r: crate::signal::DisconnectReason) -> Self {
        use crate::signal::DisconnectReason as S;
        match r {
            S::Left => Self::Left,
            S::Timeout => Self::Timeout,
            S::Unpaired => Self::Unpaired,
            S::Replaced => Self::Replaced,
        }
    }
}

impl Event {
    /// The event as one JSON line, exactly what `serde_json::to_string`
    /// gives plus `\n`, without serde's slow path for `flatten`: the kind
    /// is always an object starting with its `event` tag, so `ts_ms` is
    /// spliced in front of it. This runs once per message per follower.
    pub fn to_line(&self) -> String {
        let kind = serde_json::to_string(&self.kind).expect("events always serialise");
        debug_assert!(kind.starts_with("{\"event\":"));
        let mut s = String::with_capacity(kind.len() + 24);
        s.push_str("{\"ts_ms\":");
        s.push_str(&self.ts_ms.to_string());
        s.push(',');
        s.push_str(&kind[1..]);
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_flat_objects() {
        let e = Event {
            ts_ms: 1,
            kind: EventKind::Message {
                from: "a".into(),
                text: Some("hi".into()),
                data_b64: None,
            },
        };
        assert_eq!(
            e.to_line(),
            "{\"ts_ms\":1,\"event\":\"message\",\"from\":\"a\",\"text\":\"hi\"}\n"
        );
        let back: Event = serde_json::from_str(e.to_line().trim()).unwrap();
        assert_eq!(back, e);
        // The fast line is the derived serialisation, for every kind.
        for kind in [
            EventKind::Lagged { missed: 3 },
            EventKind::IceRestarting {
                peer_id: "p".into(),
            },
            EventKind::IceRestarted {
                peer_id: "p".into(),
                path: None,
            },
            EventKind::PeerDisconnected {
                peer_id: "p".into(),
                reason: DisconnectReason::IceFailed,
            },
            EventKind::SignalingDown {
                reason: "x\"y".into(),
            },
            EventKind::ChannelOpen {
                peer_id: "p".into(),
                path: None,
                fingerprint: Some(Fingerprint::from_bytes([1; 32])),
                trust: Some(PeerTrust::Pinned),
            },
        ] {
            let e = Event { ts_ms: 42, kind };
            assert_eq!(e.to_line(), serde_json::to_string(&e).unwrap() + "\n");
        }
    }

    #[test]
    fn restart_events_have_their_documented_form() {
        let e = Event {
            ts_ms: 5,
            kind: EventKind::IceRestarting {
                peer_id: "bob".into(),
            },
        };
        assert_eq!(
            e.to_line(),
            "{\"ts_ms\":5,\"event\":\"ice_restarting\",\"peer_id\":\"bob\"}\n"
        );
        let e = Event {
            ts_ms: 6,
            kind: EventKind::IceRestarted {
                peer_id: "bob".into(),
                path: None,
            },
        };
        assert_eq!(
            e.to_line(),
            "{\"ts_ms\":6,\"event\":\"ice_restarted\",\"peer_id\":\"bob\"}\n"
        );
    }

    #[test]
    fn reasons_have_their_documented_names() {
        for r in DisconnectReason::ALL {
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
        let e = Event {
            ts_ms: 7,
            kind: EventKind::PeerDisconnected {
                peer_id: "bob".into(),
                reason: DisconnectReason::ConnectTimeout,
            },
        };
        assert_eq!(
            e.to_line(),
            "{\"ts_ms\":7,\"event\":\"peer_disconnected\",\"peer_id\":\"bob\",\"reason\":\"connect_timeout\"}\n"
        );
        // signald's four map onto the same names.
        for s in [
            crate::signal::DisconnectReason::Left,
            crate::signal::DisconnectReason::Timeout,
            crate::signal::DisconnectReason::Unpaired,
            crate::signal::DisconnectReason::Replaced,
        ] {
            assert_eq!(DisconnectReason::from(s).as_str(), s.as_str());
        }
    }
}
