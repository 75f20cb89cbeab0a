//! Frames of the signaling protocol (v1) between signald and its clients.
//!
//! Every WebSocket text frame carries one JSON object tagged by `type`. The
//! two directions have their own enums so that a server-only type sent by a
//! client is an `unknown_type`, never silently accepted. `docs/protocol.md`
//! is the prose version of this file.

use serde::{Deserialize, Serialize};

mod inbound;

#[cfg(test)]
pub(crate) use inbound::general;
pub use inbound::{Candidate, ClientFrame, Relayable, Text};

/// Version number sent in `welcome.protocol`.
pub const PROTOCOL_VERSION: u32 = 1;

/// An ID is 1..=64 characters of `[A-Za-z0-9_-]`.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// [`valid_id`], with the one message that says what an ID is.
pub fn check_id(id: &str) -> Result<(), String> {
    match valid_id(id) {
        true => Ok(()),
        false => Err(format!(
            "{id:?} is not a valid peer ID (1-64 of A-Z a-z 0-9 _ -)"
        )),
    }
}

/// A token is 16..=128 printable ASCII characters without space (`[!-~]`).
pub fn valid_token(token: &str) -> bool {
    (16..=128).contains(&token.len()) && token.bytes().all(|b| (b'!'..=b'~').contains(&b))
}

/// An `RTCIceServer` as a browser takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl IceServer {
    /// Parses the command-line form `URL[,username,credential]`.
    pub fn parse_flag(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(',').collect();
        let url = parts[0].trim();
        let scheme_ok = ["stun:", "stuns:", "turn:", "turns:"]
            .iter()
            .any(|p| url.starts_with(p));
        if !scheme_ok || url.len() <= 5 {
            return Err(format!(
                "{url:?} is not an ICE server URL (stun:, stuns:, turn: or turns:)"
            ));
        }
        match parts.len() {
            1 => Ok(IceServer {
                urls: vec![url.to_string()],
                username: None,
                credential: None,
            }),
            3 => Ok(IceServer {
                urls: vec![url.to_string()],
                username: Some(parts[1].to_string()),
                credential: Some(parts[2].to_string()),
            }),
            _ => Err(format!(
                "expected URL or URL,username,credential, got {} comma-separated parts",
                parts.len()
            )),
        }
    }
}

/// `RTCIceCandidateInit`, as `RTCIceCandidate.toJSON()` gives it.
///
/// Only these four members are relayed. Absent optional members are relayed
/// as `null`, which every WebRTC stack reads the same as absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateInit {
    /// The candidate line, usually with its `candidate:` prefix.
    pub candidate: String,
    #[serde(rename = "sdpMid", default)]
    pub sdp_mid: Option<String>,
    #[serde(rename = "sdpMLineIndex", default)]
    pub sdp_mline_index: Option<u16>,
    #[serde(rename = "usernameFragment", default)]
    pub username_fragment: Option<String>,
}

/// Why a pairing ended, as told to the side that remains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    /// The peer's socket closed.
    Left,
    /// The peer missed pings and was dropped.
    Timeout,
    /// The peer sent `unpair`.
    Unpaired,
    /// The peer's ID was reclaimed by a new connection with its token.
    Replaced,
}

impl DisconnectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Left => "left",
            Self::Timeout => "timeout",
            Self::Unpaired => "unpaired",
            Self::Replaced => "replaced",
        }
    }
}

/// Machine-readable error codes of `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadMessage,
    UnknownType,
    TooLarge,
    RateLimited,
    SelfPair,
    UnknownPeer,
    PeerBusy,
    AlreadyPaired,
    NotPaired,
    BadId,
    IdTaken,
    ServerFull,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        Self::BadMessage,
        Self::UnknownType,
        Self::TooLarge,
        Self::RateLimited,
        Self::SelfPair,
        Self::UnknownPeer,
        Self::PeerBusy,
        Self::AlreadyPaired,
        Self::NotPaired,
        Self::BadId,
        Self::IdTaken,
        Self::ServerFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadMessage => "bad_message",
            Self::UnknownType => "unknown_type",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::SelfPair => "self_pair",
            Self::UnknownPeer => "unknown_peer",
            Self::PeerBusy => "peer_busy",
            Self::AlreadyPaired => "already_paired",
            Self::NotPaired => "not_paired",
            Self::BadId => "bad_id",
            Self::IdTaken => "id_taken",
            Self::ServerFull => "server_full",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes used by signald.
pub mod close_code {
    /// SIGTERM/SIGINT: the server is going away.
    pub const GOING_AWAY: u16 = 1001;
    /// Too many rate-limited frames.
    pub const POLICY: u16 = 1008;
    /// A message over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The client limit is reached.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The client missed pings.
    pub const TIMEOUT: u16 = 4000;
    /// The requested ID is held by someone else.
    pub const ID_TAKEN: u16 = 4001;
    /// A new connection reclaimed this ID with its token.
    pub const REPLACED: u16 = 4002;
    /// The requested ID or token is malformed.
    pub const BAD_ID: u16 = 4003;
}

/// A frame from signald to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    Welcome {
        id: String,
        ping_interval_ms: u64,
        ping_timeout_ms: u64,
        ice_servers: Vec<IceServer>,
        protocol: u32,
    },
    Ping,
    Paired {
        peer_id: String,
        initiator: bool,
    },
    Offer {
        sdp: String,
        from: String,
    },
    Answer {
        sdp: String,
        from: String,
    },
    Candidate {
        #[serde(deserialize_with = "required_nullable")]
        candidate: Option<CandidateInit>,
        from: String,
    },
    PeerDisconnected {
        peer_id: String,
        reason: DisconnectReason,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    /// Fresh TURN credentials for a connected client, replacing the
    /// welcome's `ice_servers` for every gathering from now on (an
    /// extension: older clients ignore it).
    IceServers {
        ice_servers: Vec<IceServer>,
    },
}

/// A frame from a client to signald.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    Pong,
    Pair {
        peer_id: String,
    },
    Unpair,
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    Candidate {
        /// `null` marks the end of candidates; the member itself is required.
        #[serde(deserialize_with = "required_nullable")]
        candidate: Option<CandidateInit>,
    },
}

/// Types a client may send, in the order of the contract's table.
pub const CLIENT_TYPES: [&str; 6] = ["pong", "pair", "unpair", "offer", "answer", "candidate"];

/// Why a client frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON, not an object, `type` missing or not a string, or a listed
    /// field missing or of the wrong type.
    #[error("{0}")]
    BadMessage(String),
    /// `type` names no client-to-server message.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
}

impl ParseError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadMessage(_) => ErrorCode::BadMessage,
            Self::UnknownType(_) => ErrorCode::UnknownType,
        }
    }
}

impl ClientMsg {
    /// Parses one text frame, telling a malformed frame from an unknown type
    /// (signald reads frames as [`ClientFrame`]s; this is the same parse).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        ClientFrame::parse(text).map(ClientFrame::into_owned)
    }
}

impl ServerMsg {
    /// Serialises to the JSON text of one frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialise")
    }
}

/// The deepest nesting a client frame may have, its own object counted:
/// what serde_json's recursion limit lets through when it builds a value.
/// Members a message does not use are skipped without that limit, so it is
/// checked on its own.
const MAX_DEPTH: usize = 127;

/// Whether `text` nests arrays and objects deeper than [`MAX_DEPTH`]
/// (brackets inside strings do not count).
fn too_deep(text: &str) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Makes an `Option` field required while still accepting `null`.
fn required_nullable<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_client_type() {
        assert_eq!(ClientMsg::parse(r#"{"type":"pong"}"#), Ok(ClientMsg::Pong));
        assert_eq!(
            ClientMsg::parse(r#"{"type":"pair","peer_id":"b","extra":1}"#),
            Ok(ClientMsg::Pair {
                peer_id: "b".into()
            })
        );
        assert_eq!(
            ClientMsg::parse(r#"{"type":"candidate","candidate":null}"#),
            Ok(ClientMsg::Candidate { candidate: None })
        );
        let c = ClientMsg::parse(
            r#"{"type":"candidate","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":null,"x":2}}"#,
        )
        .unwrap();
        let ClientMsg::Candidate { candidate: Some(c) } = c else {
            panic!("not a candidate: {c:?}")
        };
        assert_eq!(c.sdp_mid.as_deref(), Some("0"));
        assert_eq!(c.sdp_mline_index, Some(0));
    }

    #[test]
    fn tells_bad_from_unknown() {
        for bad in [
            "nope",
            "[]",
            "{}",
            r#"{"type":5}"#,
            r#"{"type":"pair"}"#,
            r#"{"type":"pair","peer_id":7}"#,
            r#"{"type":"candidate"}"#,
            r#"{"type":"candidate","candidate":{"sdpMid":"0"}}"#,
            r#"{"type":"candidate","candidate":{"candidate":"c","sdpMLineIndex":70000}}"#,
        ] {
            assert_eq!(
                ClientMsg::parse(bad).map_err(|e| e.code()),
                Err(ErrorCode::BadMessage),
                "{bad}"
            );
        }
        for unknown in [r#"{"type":"welcome"}"#, r#"{"type":"hello"}"#] {
            assert_eq!(
                ClientMsg::parse(unknown).map_err(|e| e.code()),
                Err(ErrorCode::UnknownType),
                "{unknown}"
            );
        }
    }

    #[test]
    fn nesting_is_limited_where_serde_json_limits_a_value() {
        let nested = |n: usize| {
            format!(
                r#"{{"type":"pong","x":{}"[[{{"{}}}"#,
                "[".repeat(n - 1),
                "]".repeat(n - 1)
            )
        };
        for n in [2, 100, MAX_DEPTH] {
            let text = nested(n);
            assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
            assert_eq!(ClientMsg::parse(&text), Ok(ClientMsg::Pong), "depth {n}");
        }
        let text = nested(MAX_DEPTH + 1);
        assert!(serde_json::from_str::<serde_json::Value>(&text).is_err());
        assert_eq!(
            ClientMsg::parse(&text).map_err(|e| e.code()),
            Err(ErrorCode::BadMessage)
        );
    }

    #[test]
    fn deep_nesting_is_bad_message_not_a_crash() {
        let deep = format!(
            r#"{{"type":"pong","x":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(
            ClientMsg::parse(&deep).map_err(|e| e.code()),
            Err(ErrorCode::BadMessage)
        );
    }

    #[test]
    fn server_frames_serialise_as_the_contract_says() {
        let m = ServerMsg::Candidate {
            candidate: None,
            from: "a".into(),
        };
        assert_eq!(
            m.to_json(),
            r#"{"type":"candidate","candidate":null,"from":"a"}"#
        );
        let m = ServerMsg::PeerDisconnected {
            peer_id: "a".into(),
            reason: DisconnectReason::Timeout,
        };
        assert_eq!(
            m.to_json(),
            r#"{"type":"peer_disconnected","peer_id":"a","reason":"timeout"}"#
        );
        let m = ServerMsg::Error {
            code: ErrorCode::PeerBusy,
            message: "x".into(),
        };
        assert_eq!(
            m.to_json(),
            r#"{"type":"error","code":"peer_busy","message":"x"}"#
        );
        let m = ServerMsg::IceServers {
            ice_servers: vec![IceServer {
                urls: vec!["turn:192.0.2.1:3478".into()],
                username: Some("1700000600:alice".into()),
                credential: Some("c2VjcmV0".into()),
            }],
        };
        assert_eq!(
            m.to_json(),
            r#"{"type":"ice_servers","ice_servers":[{"urls":["turn:192.0.2.1:3478"],"username":"1700000600:alice","credential":"c2VjcmV0"}]}"#
        );
        for code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_string(&code).unwrap(),
                format!("\"{}\"", code.as_str())
            );
        }
    }

    #[test]
    fn ids_and_tokens() {
        assert!(valid_id("a"));
        assert!(valid_id(&"x".repeat(64)));
        assert!(!valid_id(""));
        assert!(!valid_id(&"x".repeat(65)));
        assert!(!valid_id("a b"));
        assert!(!valid_id("é"));
        assert!(valid_token("0123456789abcdef"));
        assert!(!valid_token("0123456789abcde"));
        assert!(!valid_token("0123456789abcdef "));
        assert!(!valid_token(&"x".repeat(129)));
    }

    #[test]
    fn ice_server_flag() {
        let s = IceServer::parse_flag("turn:127.0.0.1:3478,u,p").unwrap();
        assert_eq!(s.username.as_deref(), Some("u"));
        assert!(IceServer::parse_flag("http://x").is_err());
        assert!(IceServer::parse_flag("stun:x,u").is_err());
    }
}
