//! What travels inside a stream's data channel: binary messages, each a
//! one-byte kind and its body (docs/protocol.md, "Streams").
//!
//! A data channel's close resets both directions at once (RFC 8831 §6.7),
//! so a direction's end (`End`) and an abort (`Abort`) are messages of
//! their own, and the close only follows once both ends were exchanged.
//! SCTP has one receive window for the whole association; `Credit` gives
//! each stream its own, so that a stopped reader holds only its stream.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use p2p_proto::control::{ErrorBody, ErrorCode};
use webrtc::data_channel::{DataChannel, DataChannelEvent};

/// The channel's label; the DCEP protocol names the version.
pub const LABEL: &str = "p2p-stream";
pub const PROTOCOL: &str = "p2p-stream/1";

/// Largest payload of one `Data` message: the kind byte and the payload
/// fill the channel's largest message (64 KiB).
pub const MAX_DATA: usize = crate::peer::MAX_MESSAGE_BYTES - 1;

const DATA: u8 = 0;
const OPEN: u8 = 1;
const ACCEPT: u8 = 2;
const REFUSE: u8 = 3;
const CREDIT: u8 = 4;
const END: u8 = 5;
const ABORT: u8 = 6;

/// One message of a stream's channel.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Bytes of the stream.
    Data(Bytes),
    /// The opener's first message: the service it asks for, and how many
    /// bytes it lets the acceptor send before any `Credit`.
    Open { service: String, window: u32 },
    /// The acceptor's yes, with its own window.
    Accept { window: u32 },
    /// The acceptor's no; the channel closes after it.
    Refuse(ErrorBody),
    /// The receiver read this many more bytes: the sender may send them.
    Credit(u32),
    /// The sender's direction ended cleanly (its input reached EOF).
    End,
    /// The stream failed on the sender's side (its local end went away or
    /// reset, or a rule was broken); the reason is for people.
    Abort(String),
}

impl Frame {
    /// The message for this frame. A `Data` frame is better made in place
    /// with [`data_buffer`], which saves a copy.
    pub fn encode(&self) -> BytesMut {
        let mut b = BytesMut::new();
        match self {
            Frame::Data(d) => {
                b.put_u8(DATA);
                b.put_slice(d);
            }
            Frame::Open { service, window } => {
                b.put_u8(OPEN);
                b.put_u32(*window);
                b.put_slice(service.as_bytes());
            }
            Frame::Accept { window } => {
                b.put_u8(ACCEPT);
                b.put_u32(*window);
            }
            Frame::Refuse(e) => {
                b.put_u8(REFUSE);
                b.put_slice(&serde_json::to_vec(e).expect("an error body always serialises"));
            }
            Frame::Credit(n) => {
                b.put_u8(CREDIT);
                b.put_u32(*n);
            }
            Frame::End => b.put_u8(END),
            Frame::Abort(why) => {
                b.put_u8(ABORT);
                b.put_slice(why.as_bytes());
            }
        }
        b
    }

    /// Reads one message; a malformed one is an error the stream aborts on.
    pub fn decode(mut m: BytesMut) -> Result<Frame, String> {
        if m.is_empty() {
            return Err("an empty stream message".into());
        }
        let kind = m.get_u8();
        let u32_only = |m: &BytesMut| match m.len() {
            4 => Ok(u32::from_be_bytes([m[0], m[1], m[2], m[3]])),
            n => Err(format!("a stream message of kind {kind} with {n} bytes")),
        };
        Ok(match kind {
            DATA if m.is_empty() => return Err("an empty data message".into()),
            DATA => Frame::Data(m.freeze()),
            OPEN if m.len() >= 4 => {
                let window = m.get_u32();
                let service = String::from_utf8(m.to_vec())
                    .map_err(|_| "a service name that is not UTF-8".to_string())?;
                Frame::Open { service, window }
            }
            ACCEPT => Frame::Accept {
                window: u32_only(&m)?,
            },
            REFUSE => Frame::Refuse(serde_json::from_slice(&m).unwrap_or_else(|_| ErrorBody {
                code: ErrorCode::Failed,
                message: String::from_utf8_lossy(&m).into_owned(),
            })),
            CREDIT => Frame::Credit(u32_only(&m)?),
            END if m.is_empty() => Frame::End,
            ABORT => Frame::Abort(String::from_utf8_lossy(&m).into_owned()),
            _ => return Err(format!("an unknown stream message of kind {kind}")),
        })
    }
}

/// The next message on a stream's channel, decoded (other events are
/// skipped); `None` once the channel closed. Cancel-safe: what it skips
/// carries nothing.
pub async fn next(dc: &Arc<dyn DataChannel>) -> Option<Result<Frame, String>> {
    loop {
        match dc.poll().await? {
            DataChannelEvent::OnMessage(m) => return Some(Frame::decode(m.data)),
            DataChannelEvent::OnClose => return None,
            _ => {}
        }
    }
}

/// A buffer to read up to [`MAX_DATA`] bytes into, its kind byte already
/// in place: the bytes read go to the channel as they are.
pub fn data_buffer() -> BytesMut {
    let mut b = BytesMut::with_capacity(MAX_DATA + 1);
    b.put_u8(DATA);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_documented_bytes_and_read_back() {
        let refuse = ErrorBody {
            code: ErrorCode::NoSuchService,
            message: "m".into(),
        };
        for (frame, bytes) in [
            (Frame::Data(Bytes::from_static(b"hi")), b"\0hi".to_vec()),
            (
                Frame::Open {
                    service: "ssh".into(),
                    window: 0x0102_0304,
                },
                b"\x01\x01\x02\x03\x04ssh".to_vec(),
            ),
            (Frame::Accept { window: 65536 }, b"\x02\0\x01\0\0".to_vec()),
            (
                Frame::Refuse(refuse),
                b"\x03{\"code\":\"no_such_service\",\"message\":\"m\"}".to_vec(),
            ),
            (Frame::Credit(7), b"\x04\0\0\0\x07".to_vec()),
            (Frame::End, b"\x05".to_vec()),
            (Frame::Abort("gone".into()), b"\x06gone".to_vec()),
        ] {
            assert_eq!(frame.encode().to_vec(), bytes, "{frame:?}");
            assert_eq!(Frame::decode(BytesMut::from(&bytes[..])), Ok(frame));
        }
    }

    #[test]
    fn malformed_messages_are_errors() {
        for bad in [
            &b""[..],
            b"\0",
            b"\x01\0\0",
            b"\x02\0\0\0",
            b"\x04\0\0\0\0\0",
            b"\x05x",
            b"\x09",
        ] {
            assert!(Frame::decode(BytesMut::from(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_data_buffer_is_a_data_frame() {
        let mut b = data_buffer();
        b.put_slice(b"abc");
        assert_eq!(
            Frame::decode(b),
            Ok(Frame::Data(Bytes::from_static(b"abc")))
        );
    }
}
