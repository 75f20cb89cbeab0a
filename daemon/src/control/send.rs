//! `send`: one message to the open data channel, waiting while its send
//! buffer is full (the backpressure a pipelining client feels).

use std::sync::atomic::Ordering;

use base64::Engine as _;
use p2p_proto::control::{ErrorCode, Reply};

use crate::engine::EngineHandle;
use crate::peer::MAX_MESSAGE_BYTES;

/// Hands one message to the open data channel, waiting while its send
/// buffer is full.
/// With `to`, only if the open channel is to that peer and verified.
pub async fn send(
    engine: &EngineHandle,
    text: Option<String>,
    data_b64: Option<String>,
    to: Option<String>,
) -> Reply {
    let payload = match (text, data_b64) {
        (Some(t), None) => Payload::Text(t),
        (None, Some(b)) => match base64::engine::general_purpose::STANDARD.decode(b) {
            Ok(bytes) => Payload::Binary(bytes),
            Err(e) => return Reply::err(ErrorCode::BadRequest, format!("data_b64: {e}")),
        },
        _ => {
            return Reply::err(
                ErrorCode::BadRequest,
                "send needs exactly one of \"text\" or \"data_b64\"",
            );
        }
    };
    let len = payload.len();
    if len > MAX_MESSAGE_BYTES {
        return Reply::err(
            ErrorCode::TooLarge,
            format!(
                "message of {len} bytes is over the data channel's limit of {MAX_MESSAGE_BYTES}"
            ),
        );
    }
    let Some(link) = engine.open_link() else {
        return Reply::err(
            ErrorCode::NotPaired,
            "no open data channel: pair first (p2pctl pair ID)",
        );
    };
    if let Some(to) = to {
        if link.peer_id() != to {
            return Reply::err(
                ErrorCode::WrongPeer,
                format!(
                    "the open channel is to {}, not {to}: nothing sent",
                    link.peer_id()
                ),
            );
        }
        if !link.verified() {
            return Reply::err(
                ErrorCode::WrongPeer,
                format!(
                    "the channel to {to} is not verified (its key is not pinned): nothing sent"
                ),
            );
        }
    }
    let sent = match payload {
        Payload::Text(t) => link.channel().send_text(&t).await,
        Payload::Binary(b) => link.channel().send(bytes::BytesMut::from(&b[..])).await,
    };
    match sent {
        Ok(()) => {
            link.sent();
            let c = engine.counters();
            c.messages_sent.fetch_add(1, Ordering::Relaxed);
            c.bytes_sent.fetch_add(len as u64, Ordering::Relaxed);
            Reply::empty()
        }
        Err(e) => Reply::err(
            ErrorCode::SendFailed,
            format!(
                "the data channel to {} would not take the message: {e}",
                link.peer_id()
            ),
        ),
    }
}

enum Payload {
    Text(String),
    Binary(Vec<u8>),
}

impl Payload {
    fn len(&self) -> usize {
        match self {
            Payload::Text(t) => t.len(),
            Payload::Binary(b) => b.len(),
        }
    }
}
