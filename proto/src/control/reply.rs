//! Replies of the daemon: `{"ok":true, ...payload}` or `{"ok":false,"error":{...}}`.

use serde::{Deserialize, Serialize};

use super::{ForwardInfo, LinkState, Path, PeerTrust, ServiceInfo, Status, StreamInfo};
use crate::identity::Fingerprint;

/// Error codes of failed replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not a request object.
    BadRequest,
    /// `cmd` names no request.
    UnknownCommand,
    /// The line is longer than [`MAX_LINE_BYTES`](super::MAX_LINE_BYTES).
    LineTooLong,
    /// No signaling connection right now.
    NotConnected,
    /// `send` or `unpair`-dependent request with no open data channel.
    NotPaired,
    /// `pair` while a pairing exists or is under way.
    AlreadyPaired,
    /// signald knows no client with that ID.
    UnknownPeer,
    /// The peer is paired with someone else.
    PeerBusy,
    /// Asked to pair with ourselves.
    SelfPair,
    /// The peer ended the pairing before the channel opened.
    Refused,
    /// The channel did not open in time.
    Timeout,
    /// The pairing broke down before the channel opened (ICE/DTLS failure,
    /// signaling lost, ...): the message says why.
    Failed,
    /// A message above the data channel's maximum message size.
    TooLarge,
    /// The data channel would not take the message (it closed meanwhile).
    SendFailed,
    /// The daemon is shutting down.
    ShuttingDown,
    /// The peer's key is not pinned and `--trust known` refuses unknown
    /// peers: the message says how to trust it.
    NotTrusted,
    /// The peer's key is not the one pinned for its ID; the message names
    /// both fingerprints.
    IdentityMismatch,
    /// `send --to ID` while the open channel is to another peer, or to an
    /// unverified one.
    WrongPeer,
    /// The trust store or the key could not be read or written.
    StoreFailed,
    /// The invitation handshake failed (wrong or expired code, ...): the
    /// message says which.
    InviteFailed,
    /// An invitation could not be made or found (too many open, no such
    /// code).
    NoInvite,
    /// A stream to a service the peer does not expose (or one whose
    /// `accept` is not waiting).
    NoSuchService,
    /// The service does not list us, or it refuses peers whose key is not
    /// verified.
    NotAllowed,
    /// `connect`/`forward` to a peer whose key is not verified (pinned
    /// only now, or not at all), without `allow_unverified`.
    Unverified,
    /// The serving side could not reach the service's target.
    TargetUnreachable,
    /// The peer does not serve streams (not p2pd, or an older one).
    StreamsUnsupported,
    /// A cap on streams, accepts or forwarded connections is reached.
    Busy,
    /// The stream broke after it opened: the link was lost, or the far
    /// side aborted (its program died, its target reset the connection).
    StreamFailed,
}

/// The error object of a failed reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// A reply line. Success carries the request's own payload fields flattened
/// beside `"ok": true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    Err {
        ok: False,
        error: ErrorBody,
    },
    Ok {
        ok: True,
        #[serde(flatten)]
        body: OkBody,
    },
}

/// `true` as a type, so that `ok` decides between the reply variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct True;
/// `false` as a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct False;

macro_rules! bool_const {
    ($ty:ident, $val:expr) => {
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bool($val)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if bool::deserialize(d)? == $val {
                    Ok($ty)
                } else {
                    Err(serde::de::Error::custom(concat!(
                        "expected ",
                        stringify!($val)
                    )))
                }
            }
        }
    };
}
bool_const!(True, true);
bool_const!(False, false);

/// Payloads of successful replies, one per request kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OkBody {
    Status {
        status: Box<Status>,
    },
    Pair {
        pair: PairOutcome,
    },
    Unpair {
        was_paired: bool,
    },
    /// `id` and `rotate_id`.
    Identity {
        identity: IdentityInfo,
    },
    /// `trust`: the pin now in force, and the one it replaced.
    Trust {
        trusted: Pin,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaced: Option<Fingerprint>,
    },
    /// `untrust`.
    Untrust {
        was_trusted: bool,
    },
    /// `trust_list`.
    TrustList {
        peers: Vec<Pin>,
    },
    /// `invite`.
    Invite {
        invite: InviteInfo,
    },
    /// `invite_list`.
    Invites {
        invites: Vec<InviteInfo>,
    },
    /// `invite_cancel`: the number of the invite cancelled.
    InviteCancel {
        cancelled: u16,
    },
    /// `expose`: the service as now served.
    Exposed {
        exposed: ServiceInfo,
    },
    /// `unexpose`.
    Unexposed {
        was_exposed: bool,
    },
    /// `expose_list`.
    Services {
        services: Vec<ServiceInfo>,
    },
    /// `connect` and `accept`: the stream is open; the connection carries
    /// its bytes from now on.
    Stream {
        stream: StreamInfo,
    },
    /// `forward`: listening.
    Forward {
        forward: ForwardInfo,
    },
    /// `send`, `tail` (before its events) and anything else with no payload.
    Empty {},
}

/// What `pair` achieved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairOutcome {
    pub peer_id: String,
    /// `requested` with `wait: false`; `open` once the channel is open.
    pub state: LinkState,
    /// The selected ICE path, once open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Path>,
    /// The peer's key fingerprint and how far it is trusted, once open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Fingerprint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<PeerTrust>,
}

/// Our identity, for `p2pctl id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityInfo {
    /// Our ID at signald (`null` before the first welcome without `--id`).
    pub id: Option<String>,
    pub fingerprint: Fingerprint,
    /// `ID@fingerprint`, what a peer passes to `p2pctl trust`.
    pub token: Option<String>,
}

/// An open invitation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteInfo {
    /// `N-word-word`: what the other side passes to `p2pctl pair --code`.
    pub code: String,
    /// Its number (the `N`), which is not secret.
    pub number: u16,
    /// Milliseconds left until it expires.
    pub expires_in_ms: u64,
    /// Only this peer ID may use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_peer: Option<String>,
}

/// One entry of the trust store (`known_peers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub id: String,
    pub fingerprint: Fingerprint,
    /// When it was pinned, RFC 3339 UTC (`2026-12-01T21:34:44Z`).
    pub added: String,
    /// Free text; `tofu` or `invite` when p2pd pinned it itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl Reply {
    pub fn ok(body: OkBody) -> Self {
        Reply::Ok { ok: True, body }
    }
    pub fn empty() -> Self {
        Reply::ok(OkBody::Empty {})
    }
    pub fn err(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
        }
        .into()
    }
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("replies always serialise");
        s.push('\n');
        s
    }
}

impl From<ErrorBody> for Reply {
    fn from(error: ErrorBody) -> Self {
        Reply::Err { ok: False, error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_have_the_documented_shape() {
        assert_eq!(Reply::empty().to_line(), "{\"ok\":true}\n");
        assert_eq!(
            Reply::err(ErrorCode::NotPaired, "x").to_line(),
            "{\"ok\":false,\"error\":{\"code\":\"not_paired\",\"message\":\"x\"}}\n"
        );
        let r: Reply = serde_json::from_str(r#"{"ok":true,"was_paired":true}"#).unwrap();
        assert_eq!(r, Reply::ok(OkBody::Unpair { was_paired: true }));
        let r: Reply =
            serde_json::from_str(r#"{"ok":false,"error":{"code":"timeout","message":"m"}}"#)
                .unwrap();
        assert!(matches!(r, Reply::Err { .. }));
        for (code, name) in [
            (ErrorCode::BadRequest, "bad_request"),
            (ErrorCode::ShuttingDown, "shutting_down"),
            (ErrorCode::NoSuchService, "no_such_service"),
            (ErrorCode::NotAllowed, "not_allowed"),
            (ErrorCode::Unverified, "unverified"),
            (ErrorCode::TargetUnreachable, "target_unreachable"),
            (ErrorCode::StreamsUnsupported, "streams_unsupported"),
            (ErrorCode::Busy, "busy"),
            (ErrorCode::StreamFailed, "stream_failed"),
        ] {
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{name}\""));
        }
    }

    #[test]
    fn stream_replies_have_the_documented_shape() {
        let stream = crate::control::StreamInfo {
            id: 3,
            peer_id: "bob".into(),
            service: "ssh".into(),
            direction: crate::control::StreamDirection::Out,
            local: "control".into(),
            age_ms: 5,
            bytes_in: 1,
            bytes_out: 2,
        };
        let line = Reply::ok(OkBody::Stream { stream }).to_line();
        assert_eq!(
            line,
            "{\"ok\":true,\"stream\":{\"id\":3,\"peer_id\":\"bob\",\"service\":\"ssh\",\"direction\":\"out\",\"local\":\"control\",\"age_ms\":5,\"bytes_in\":1,\"bytes_out\":2}}\n"
        );
        let back: Reply = serde_json::from_str(line.trim_end()).unwrap();
        assert!(matches!(
            back,
            Reply::Ok {
                body: OkBody::Stream { .. },
                ..
            }
        ));
        let r: Reply = serde_json::from_str(r#"{"ok":true,"was_exposed":false}"#).unwrap();
        assert_eq!(r, Reply::ok(OkBody::Unexposed { was_exposed: false }));
    }
}
