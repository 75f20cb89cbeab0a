//! Requests a control client sends, one JSON object per line.

use serde::{Deserialize, Serialize};

use super::{ErrorBody, ErrorCode, Target};
use crate::identity::Fingerprint;

/// A request from a control client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// The daemon's state as a [`Status`](super::Status).
    Status,
    /// Pair with `peer_id`. With `wait` the reply comes once the data channel
    /// is open (or the attempt failed); `timeout_ms` bounds that wait.
    Pair {
        peer_id: String,
        #[serde(default)]
        wait: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
        /// An invite code from the peer (`p2pctl invite` there): pair with
        /// an unknown key, proven by the code, and pin it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
    /// End the current pairing (a no-op reply `was_paired: false` if none).
    Unpair,
    /// Hand one message to the data channel. Exactly one of `text` (UTF-8)
    /// or `data_b64` (binary, standard base64) is set. With `to`, only if
    /// the open channel is to that peer ID and its key is verified.
    Send {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data_b64: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
    /// Our ID and key fingerprint.
    Id,
    /// Make a new key (and so a new fingerprint); every peer must trust the
    /// new one. The open link, if any, keeps the old key until it ends.
    RotateId,
    /// Pin `fingerprint` as the key of `peer_id` (replacing any pin).
    Trust {
        peer_id: String,
        fingerprint: Fingerprint,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
    /// Remove the pin of `peer_id`.
    Untrust { peer_id: String },
    /// Every pinned peer.
    TrustList,
    /// Open an invitation: a one-time code valid for `ttl_ms` (default 10
    /// minutes), only for `for_peer` if given.
    Invite {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        for_peer: Option<String>,
    },
    /// The open invitations.
    InviteList,
    /// Cancel an open invitation, by its code or its number.
    InviteCancel { code: String },
    /// Replay up to `replay` messages from history, then (with `follow`)
    /// stream every new event.
    Tail {
        #[serde(default)]
        replay: usize,
        #[serde(default = "yes")]
        follow: bool,
    },
    /// Serve streams to `name` from the listed peers by connecting to
    /// `target`, until `unexpose` or the daemon exits.
    Expose {
        name: String,
        target: Target,
        peers: Vec<String>,
        /// Peers whose key is not verified may open streams too.
        #[serde(default)]
        allow_unverified: bool,
    },
    /// Stop serving `name` (open streams carry on).
    Unexpose { name: String },
    /// The exposed services.
    ExposeList,
    /// Open a stream to `peer_id`'s service `service` (pairing first when
    /// idle); once answered `ok` the connection carries the stream.
    Connect {
        peer_id: String,
        service: String,
        #[serde(default)]
        allow_unverified: bool,
        /// Bounds the pairing and the open handshake.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Wait for one stream from `peer_id` to `service`; once answered `ok`
    /// the connection carries it.
    Accept {
        service: String,
        peer_id: String,
        #[serde(default)]
        allow_unverified: bool,
        /// How long to wait for the stream (default: no limit).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Listen on `listen` (`[ADDR:]PORT`) and open a stream to `peer_id`'s
    /// `service` per accepted connection, as long as this control
    /// connection stays open.
    Forward {
        listen: String,
        peer_id: String,
        service: String,
        #[serde(default)]
        allow_unverified: bool,
    },
}

fn yes() -> bool {
    true
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
    const CMDS: [&str; 19] = [
        "status",
        "pair",
        "unpair",
        "send",
        "tail",
        "id",
        "rotate_id",
        "trust",
        "untrust",
        "trust_list",
        "invite",
        "invite_list",
        "invite_cancel",
        "expose",
        "unexpose",
        "expose_list",
        "connect",
        "accept",
        "forward",
    ];
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
    fn requests_round_trip() {
        for r in [
            Request::Status,
            Request::Unpair,
            Request::Pair {
                peer_id: "b".into(),
                wait: true,
                timeout_ms: Some(5),
                code: Some("7-maple-otter".into()),
            },
            Request::Invite {
                ttl_ms: Some(1000),
                for_peer: Some("b".into()),
            },
            Request::InviteList,
            Request::InviteCancel { code: "7".into() },
            Request::Send {
                text: Some("hi".into()),
                data_b64: None,
                to: Some("bob".into()),
            },
            Request::Trust {
                peer_id: "bob".into(),
                fingerprint: Fingerprint::from_bytes([7; 32]),
                comment: None,
            },
            Request::Untrust {
                peer_id: "bob".into(),
            },
            Request::TrustList,
            Request::Id,
            Request::RotateId,
            Request::Tail {
                replay: 3,
                follow: false,
            },
            Request::Expose {
                name: "ssh".into(),
                target: Target::parse("tcp:[::1]:22").unwrap(),
                peers: vec!["alice".into()],
                allow_unverified: false,
            },
            Request::Unexpose { name: "ssh".into() },
            Request::ExposeList,
            Request::Connect {
                peer_id: "b".into(),
                service: "ssh".into(),
                allow_unverified: true,
                timeout_ms: Some(5),
            },
            Request::Accept {
                service: "ssh".into(),
                peer_id: "b".into(),
                allow_unverified: false,
                timeout_ms: None,
            },
            Request::Forward {
                listen: "127.0.0.1:2222".into(),
                peer_id: "b".into(),
                service: "ssh".into(),
                allow_unverified: false,
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
        // So is a target.
        assert_eq!(
            parse_request(r#"{"cmd":"expose","name":"x","target":"tcp:::1:22","peers":["a"]}"#)
                .unwrap_err()
                .code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            parse_request(r#"{"cmd":"connect","peer_id":"b","service":"ssh"}"#),
            Ok(Request::Connect {
                peer_id: "b".into(),
                service: "ssh".into(),
                allow_unverified: false,
                timeout_ms: None
            })
        );
        // A fingerprint is checked where it is parsed.
        assert_eq!(
            parse_request(r#"{"cmd":"trust","peer_id":"b","fingerprint":"sha256:short"}"#)
                .unwrap_err()
                .code,
            ErrorCode::BadRequest
        );
    }
}
