//! The JSON-lines protocol of p2pd's control socket.
//!
//! One [`Request`] object per line from the client; one [`Reply`] object per
//! line from the daemon, in request order. `tail` answers `ok` and then
//! streams [`Event`] lines until the client hangs up. `docs/control.md` is
//! the prose version of this file; `status` and events never change shape
//! incompatibly within one [`CONTROL_VERSION`].

use serde::{Deserialize, Serialize};

/// Version of this protocol, reported by `status`.
pub const CONTROL_VERSION: u32 = 1;

/// Longest request line the daemon reads (a 64 KiB message, JSON-escaped,
/// fits with room to spare). Longer lines get `line_too_long`.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// A request from a control client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// The daemon's state as a [`Status`].
    Status,
    /// Pair with `peer_id`. With `wait` the reply comes once the data channel
    /// is open (or the attempt failed); `timeout_ms` bounds that wait.
    Pair {
        peer_id: String,
        #[serde(default)]
        wait: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// End the current pairing (a no-op reply `was_paired: false` if none).
    Unpair,
    /// Hand one message to the data channel. Exactly one of `text` (UTF-8)
    /// or `data_b64` (binary, standard base64) is set.
    Send {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data_b64: Option<String>,
    },
    /// Replay up to `replay` messages from history, then (with `follow`)
    /// stream every new event.
    Tail {
        #[serde(default)]
        replay: usize,
        #[serde(default = "yes")]
        follow: bool,
    },
}

fn yes() -> bool {
    true
}

/// Error codes of failed replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not a request object.
    BadRequest,
    /// `cmd` names no request.
    UnknownCommand,
    /// The line is longer than [`MAX_LINE_BYTES`].
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

/// State of the signaling connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    Connecting,
    Connected,
    /// Waiting before the next reconnect attempt.
    Disconnected,
}

/// State of the link to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// No peer; a fresh peer connection waits for the next pairing.
    Idle,
    /// `pair` was sent; signald has not answered yet.
    Requested,
    /// Paired; offer/answer and ICE under way.
    Connecting,
    /// The data channel is open.
    Open,
}

/// The selected ICE candidate pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Path {
    /// `host`, `srflx`, `prflx` or `relay`.
    pub local_type: String,
    pub local_address: String,
    pub remote_type: String,
    pub remote_address: String,
    /// Round-trip time ICE measured, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
}

/// `status`: the daemon's whole state. Stable: fields are only added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// [`CONTROL_VERSION`].
    pub control_version: u32,
    /// The daemon's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Our ID at signald (the one asked for, until a `welcome` says otherwise;
    /// `null` before the first welcome when no `--id` was given).
    pub id: Option<String>,
    pub pid: u32,
    pub uptime_ms: u64,
    pub server: StatusServer,
    /// `null` when idle.
    pub peer: Option<StatusPeer>,
    pub link: LinkState,
    /// The peer connection's states, as the W3C names them (`new`,
    /// `checking`, `connected`, ...), `null` when there is none.
    pub ice_connection_state: Option<String>,
    pub peer_connection_state: Option<String>,
    /// `connecting`, `open`, `closing`, `closed`, or `null` with no channel.
    pub data_channel_state: Option<String>,
    pub counters: Counters,
}

/// Signaling half of [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusServer {
    pub url: String,
    pub state: ServerState,
    /// Milliseconds since the state last changed.
    pub since_ms: u64,
    /// Successful connections after the first one.
    pub reconnects: u64,
    /// Why the last connection attempt or connection failed.
    pub last_error: Option<String>,
    /// Ping timings the `welcome` gave.
    pub ping_interval_ms: Option<u64>,
    pub ping_timeout_ms: Option<u64>,
    /// ICE server URLs in use (welcome's plus `--ice-server`), no credentials.
    pub ice_servers: Vec<String>,
}

/// Peer half of [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusPeer {
    pub id: String,
    /// Whether we made the offer and the channel.
    pub initiator: Option<bool>,
    /// Milliseconds since the data channel opened.
    pub open_for_ms: Option<u64>,
    /// The selected ICE path, once connected.
    pub path: Option<Path>,
}

/// Counters since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub messages_sent: u64,
    pub bytes_sent: u64,
    pub messages_received: u64,
    pub bytes_received: u64,
    /// Pairings whose data channel opened.
    pub pairings: u64,
    /// Peer connections torn down and rebuilt.
    pub resets: u64,
    /// Connected `tail` followers right now.
    pub subscribers: u64,
    /// Events that slow followers missed (each was told how many).
    pub missed_by_subscribers: u64,
    /// Requests answered with an error.
    pub control_errors: u64,
}

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
    },
    /// The link to the peer ended; the daemon is ready for the next pairing.
    /// `reason` is signald's (`left`, `timeout`, `unpaired`, `replaced`) or
    /// a local one (`local_unpair`, `ice_failed`, `channel_closed`,
    /// `signaling_lost`, `refused_by_allow_list`, `failed`).
    PeerDisconnected {
        peer_id: String,
        reason: String,
    },
    SignalingUp {
        id: String,
    },
    SignalingDown {
        reason: String,
    },
    /// This follower was too slow and missed `missed` events just before
    /// this one.
    Lagged {
        missed: u64,
    },
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

/// Where the daemon listens unless told otherwise (`$P2PD_SOCKET` is read
/// by the programs' flag parsers before this):
/// `$XDG_RUNTIME_DIR/p2pd/p2pd.sock`, else `/tmp/p2pd-$UID/p2pd.sock`.
pub fn default_socket_path() -> std::path::PathBuf {
    socket_path_in(std::env::var_os("XDG_RUNTIME_DIR").map(Into::into))
}

fn socket_path_in(runtime_dir: Option<std::path::PathBuf>) -> std::path::PathBuf {
    match runtime_dir.filter(|d| d.is_absolute()) {
        Some(d) => d.join("p2pd").join("p2pd.sock"),
        None => {
            // SAFETY: getuid has no preconditions and cannot fail.
            let uid = unsafe { libc::getuid() };
            format!("/tmp/p2pd-{uid}/p2pd.sock").into()
        }
    }
}

/// Parses one request line, telling unknown commands from malformed lines.
pub fn parse_request(line: &str) -> Result<Request, ErrorBody> {
    // The hot path (a stream of `send`s) parses once; only a failure pays
    // for the second look that classifies it.
    serde_json::from_str(line).map_err(|full| classify_bad_request(line, full))
}

fn classify_bad_request(line: &str, full: serde_json::Error) -> ErrorBody {
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        cmd: std::borrow::Cow<'a, str>,
    }
    const CMDS: [&str; 5] = ["status", "pair", "unpair", "send", "tail"];
    match serde_json::from_str::<Head>(line) {
        Err(e) => ErrorBody {
            code: ErrorCode::BadRequest,
            message: format!("expected a JSON object with a string \"cmd\": {e}"),
        },
        Ok(head) if !CMDS.contains(&head.cmd.as_ref()) => ErrorBody {
            code: ErrorCode::UnknownCommand,
            message: format!(
                "unknown command {:?} (known: {})",
                head.cmd,
                CMDS.join(", ")
            ),
        },
        Ok(head) => ErrorBody {
            code: ErrorCode::BadRequest,
            message: format!("bad {:?} request: {full}", head.cmd),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_fallbacks() {
        assert_eq!(
            socket_path_in(Some("/run/user/7".into())),
            std::path::PathBuf::from("/run/user/7/p2pd/p2pd.sock")
        );
        let p = socket_path_in(None);
        assert!(p.starts_with("/tmp") && p.ends_with("p2pd.sock"), "{p:?}");
        // A relative XDG_RUNTIME_DIR is invalid per the XDG spec: ignored.
        assert!(socket_path_in(Some("rel".into())).starts_with("/tmp"));
    }

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Status,
            Request::Unpair,
            Request::Pair {
                peer_id: "b".into(),
                wait: true,
                timeout_ms: Some(5),
            },
            Request::Send {
                text: Some("hi".into()),
                data_b64: None,
            },
            Request::Tail {
                replay: 3,
                follow: false,
            },
        ] {
            let line = serde_json::to_string(&r).unwrap();
            assert_eq!(parse_request(&line), Ok(r));
        }
        assert_eq!(
            parse_request(r#"{"cmd":"tail"}"#),
            Ok(Request::Tail {
                replay: 0,
                follow: true
            })
        );
    }

    #[test]
    fn bad_and_unknown_requests() {
        assert_eq!(
            parse_request("nope").unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            parse_request(r#"{"cmd":"pair"}"#).unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            parse_request(r#"{"cmd":"reboot"}"#).unwrap_err().code,
            ErrorCode::UnknownCommand
        );
    }

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
        ] {
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{name}\""));
        }
    }

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
            EventKind::SignalingDown {
                reason: "x\"y".into(),
            },
            EventKind::ChannelOpen {
                peer_id: "p".into(),
                path: None,
            },
        ] {
            let e = Event { ts_ms: 42, kind };
            assert_eq!(e.to_line(), serde_json::to_string(&e).unwrap() + "\n");
        }
    }
}
