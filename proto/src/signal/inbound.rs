//! A client frame as signald reads it, on its hot path: parsed in one pass,
//! borrowing from the frame's text, and the frame relayed to the peer
//! written straight from it.
//!
//! [`ClientMsg`] is the frame as a value (what clients build and send);
//! this is the same frame seen by the server, which relays most of what it
//! reads. Building owned values, then a [`ServerMsg`](super::ServerMsg), then serialising it
//! again cost an allocation per string and a second escaping pass per
//! frame; here a string without escapes stays a slice of the frame, and
//! one with nothing that needs an escape is written out again as it is. What
//! [`Relayable::to_json`] writes is byte for byte what
//! [`ServerMsg::to_json`](super::ServerMsg::to_json) writes for the same frame (a property test holds
//! the two together).
//!
//! Members that come before `type` (every client we know writes `type`
//! first, but a serialiser that sorts keys puts `candidate` and `sdp`
//! before it) are read as the one type that has them reads them; only if
//! that fails is the frame read again, keeping them as text until the
//! type says what they should be. A frame that might nest too deeply, and one
//! that is not a JSON object with a string `type`, goes the general way
//! ([`general`]), which reads it twice and words the error; the outcome is
//! the same either way (a property test holds the two together).
//!
//! The same parse, keeping `from` as well, reads a relayed frame back
//! where a cluster node gets it from another through Redis
//! ([`Relayable::parse_relayed`]): what came through Redis is checked as
//! if a client had sent it, without building a [`ServerMsg`](super::ServerMsg).

use std::borrow::Cow;
use std::fmt;
use std::io::Write;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::{CandidateInit, ClientMsg, MAX_DEPTH, ParseError, ServerMsg, too_deep};

/// A client frame, borrowing from its text where it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    Pong,
    Pair {
        peer_id: Text<'a>,
    },
    Unpair,
    /// An offer, an answer or a candidate: for the peer.
    Relay(Relayable<'a>),
}

/// A frame signald relays to the client's peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relayable<'a> {
    Offer { sdp: Text<'a> },
    Answer { sdp: Text<'a> },
    Candidate { candidate: Option<Candidate<'a>> },
}

/// [`CandidateInit`], borrowing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Candidate<'a> {
    #[serde(borrow)]
    candidate: Text<'a>,
    #[serde(rename = "sdpMid", default, borrow)]
    sdp_mid: Option<Text<'a>>,
    #[serde(rename = "sdpMLineIndex", default)]
    sdp_mline_index: Option<u16>,
    #[serde(rename = "usernameFragment", default, borrow)]
    username_fragment: Option<Text<'a>>,
}

/// A JSON string member, kept as the frame had it where it can be written
/// out again as it is.
#[derive(Debug, Clone)]
pub struct Text<'a>(Repr<'a>);

#[derive(Debug, Clone)]
enum Repr<'a> {
    /// Nothing in it needs an escape (no `"`, no `\`, no control
    /// character): written between quotes as it is. Only [`Text::new`]
    /// makes one, and it checks.
    Plain(&'a str),
    /// Written escaped, as serde_json escapes strings.
    Escaped(Cow<'a, str>),
}

impl<'a> Text<'a> {
    fn new(s: Cow<'a, str>) -> Text<'a> {
        match s {
            // One pass that the compiler vectorises (no early exit).
            Cow::Borrowed(b) if b.bytes().fold(true, |ok, c| ok & (escaped_len(c) == 1)) => {
                Text(Repr::Plain(b))
            }
            s => Text(Repr::Escaped(s)),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Plain(s) => s,
            Repr::Escaped(s) => s,
        }
    }

    fn into_owned(self) -> String {
        match self.0 {
            Repr::Plain(s) => s.to_string(),
            Repr::Escaped(s) => s.into_owned(),
        }
    }

    /// Bytes it takes written as a JSON string, quotes and escapes
    /// included.
    fn written_len(&self) -> usize {
        match &self.0 {
            Repr::Plain(s) => s.len() + 2,
            Repr::Escaped(s) => s.bytes().map(escaped_len).sum::<usize>() + 2,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match &self.0 {
            Repr::Plain(s) => {
                out.push(b'"');
                out.extend_from_slice(s.as_bytes());
                out.push(b'"');
            }
            Repr::Escaped(s) => {
                serde_json::to_writer(out, s.as_ref()).expect("a string always serialises")
            }
        }
    }
}

impl PartialEq for Text<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text<'_> {}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text::new(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text::new(Cow::Owned(s.to_string())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Text<'de>, E> {
                Ok(Text::new(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'a> ClientFrame<'a> {
    /// Parses one text frame, telling a malformed frame from an unknown
    /// type; the outcome [`ClientMsg::parse`] gives, which is this.
    pub fn parse(text: &'a str) -> Result<ClientFrame<'a>, ParseError> {
        if !may_be_too_deep(text) {
            one_pass(text, None)
        } else {
            general(text).map(ClientFrame::from)
        }
    }

    pub fn into_owned(self) -> ClientMsg {
        match self {
            ClientFrame::Pong => ClientMsg::Pong,
            ClientFrame::Pair { peer_id } => ClientMsg::Pair {
                peer_id: peer_id.into_owned(),
            },
            ClientFrame::Unpair => ClientMsg::Unpair,
            ClientFrame::Relay(Relayable::Offer { sdp }) => ClientMsg::Offer {
                sdp: sdp.into_owned(),
            },
            ClientFrame::Relay(Relayable::Answer { sdp }) => ClientMsg::Answer {
                sdp: sdp.into_owned(),
            },
            ClientFrame::Relay(Relayable::Candidate { candidate }) => ClientMsg::Candidate {
                candidate: candidate.map(|c| CandidateInit {
                    candidate: c.candidate.into_owned(),
                    sdp_mid: c.sdp_mid.map(Text::into_owned),
                    sdp_mline_index: c.sdp_mline_index,
                    username_fragment: c.username_fragment.map(Text::into_owned),
                }),
            },
        }
    }
}

impl From<ClientMsg> for ClientFrame<'_> {
    fn from(m: ClientMsg) -> Self {
        match m {
            ClientMsg::Pong => ClientFrame::Pong,
            ClientMsg::Pair { peer_id } => ClientFrame::Pair {
                peer_id: Text::new(Cow::Owned(peer_id)),
            },
            ClientMsg::Unpair => ClientFrame::Unpair,
            ClientMsg::Offer { sdp } => ClientFrame::Relay(Relayable::Offer {
                sdp: Text::new(Cow::Owned(sdp)),
            }),
            ClientMsg::Answer { sdp } => ClientFrame::Relay(Relayable::Answer {
                sdp: Text::new(Cow::Owned(sdp)),
            }),
            ClientMsg::Candidate { candidate } => ClientFrame::Relay(Relayable::Candidate {
                candidate: candidate.map(|c| Candidate {
                    candidate: Text::new(Cow::Owned(c.candidate)),
                    sdp_mid: c.sdp_mid.map(|s| Text::new(Cow::Owned(s))),
                    sdp_mline_index: c.sdp_mline_index,
                    username_fragment: c.username_fragment.map(|s| Text::new(Cow::Owned(s))),
                }),
            }),
        }
    }
}

impl<'a> Relayable<'a> {
    /// `text` as a frame relayed between cluster nodes: an `offer`,
    /// `answer` or `candidate` server frame with one string `from` (what
    /// [`to_json`](Self::to_json) writes). The frame and its `from`; `None`
    /// for anything else, exactly where reading it as a [`ServerMsg`]
    /// would not give one of those three (a property test holds the two
    /// together).
    pub fn parse_relayed(text: &'a str) -> Option<(Relayable<'a>, Text<'a>)> {
        let mut from = Sender::default();
        let fast = (!may_be_too_deep(text))
            .then(|| one_pass(text, Some(&mut from)))
            .and_then(Result::ok);
        match (fast, from) {
            (
                Some(ClientFrame::Relay(frame)),
                Sender {
                    text: Some(from),
                    twice: false,
                },
            ) => Some((frame, from)),
            // A frame the one pass did not take (or took as something
            // else) may still be one serde reads: deep nesting and syntax
            // errors go the general way, as for a client's.
            _ => Self::parse_relayed_general(text),
        }
    }

    /// [`parse_relayed`](Self::parse_relayed) through [`ServerMsg`].
    pub(crate) fn parse_relayed_general(text: &str) -> Option<(Relayable<'a>, Text<'a>)> {
        let (msg, from) = match serde_json::from_str::<ServerMsg>(text).ok()? {
            ServerMsg::Offer { sdp, from } => (ClientMsg::Offer { sdp }, from),
            ServerMsg::Answer { sdp, from } => (ClientMsg::Answer { sdp }, from),
            ServerMsg::Candidate { candidate, from } => (ClientMsg::Candidate { candidate }, from),
            _ => return None,
        };
        match ClientFrame::from(msg) {
            ClientFrame::Relay(frame) => Some((frame, Text::new(Cow::Owned(from)))),
            _ => unreachable!("an offer, an answer or a candidate is relayable"),
        }
    }
}

impl Relayable<'_> {
    /// The frame the peer gets: what [`ServerMsg::to_json`](super::ServerMsg::to_json) writes for the
    /// same message from `from`, in one allocation of the exact size.
    pub fn to_json(&self, from: &str) -> String {
        let from = Text::new(Cow::Borrowed(from));
        let len = self.written_len() + FROM.len() + from.written_len() + 1;
        let mut out = Vec::with_capacity(len);
        match self {
            Relayable::Offer { sdp } => {
                out.extend_from_slice(OFFER);
                sdp.write(&mut out);
            }
            Relayable::Answer { sdp } => {
                out.extend_from_slice(ANSWER);
                sdp.write(&mut out);
            }
            Relayable::Candidate { candidate: None } => out.extend_from_slice(NO_CANDIDATE),
            Relayable::Candidate { candidate: Some(c) } => {
                out.extend_from_slice(CANDIDATE);
                c.candidate.write(&mut out);
                out.extend_from_slice(SDP_MID);
                write_opt(&mut out, c.sdp_mid.as_ref());
                out.extend_from_slice(SDP_MLINE_INDEX);
                match c.sdp_mline_index {
                    Some(i) => write!(out, "{i}").expect("writing to a Vec"),
                    None => out.extend_from_slice(NULL),
                }
                out.extend_from_slice(USERNAME_FRAGMENT);
                write_opt(&mut out, c.username_fragment.as_ref());
                out.push(b'}');
            }
        }
        out.extend_from_slice(FROM);
        from.write(&mut out);
        out.push(b'}');
        debug_assert_eq!(out.len(), len, "the length is computed exactly");
        String::from_utf8(out).expect("JSON written from UTF-8 strings")
    }

    /// What [`to_json`](Self::to_json) writes before `from`.
    fn written_len(&self) -> usize {
        fn opt(t: Option<&Text>) -> usize {
            t.map_or(NULL.len(), Text::written_len)
        }
        match self {
            Relayable::Offer { sdp } => OFFER.len() + sdp.written_len(),
            Relayable::Answer { sdp } => ANSWER.len() + sdp.written_len(),
            Relayable::Candidate { candidate: None } => NO_CANDIDATE.len(),
            Relayable::Candidate { candidate: Some(c) } => {
                let index = match c.sdp_mline_index {
                    Some(i) => i.checked_ilog10().unwrap_or(0) as usize + 1,
                    None => NULL.len(),
                };
                CANDIDATE.len()
                    + c.candidate.written_len()
                    + SDP_MID.len()
                    + opt(c.sdp_mid.as_ref())
                    + SDP_MLINE_INDEX.len()
                    + index
                    + USERNAME_FRAGMENT.len()
                    + opt(c.username_fragment.as_ref())
                    + 1
            }
        }
    }

    /// As the server message it stands for (tests hold the two writers
    /// together with this).
    #[cfg(test)]
    pub(crate) fn to_server_msg(&self, from: &str) -> ServerMsg {
        let from = from.to_string();
        match ClientFrame::Relay(self.clone()).into_owned() {
            ClientMsg::Offer { sdp } => ServerMsg::Offer { sdp, from },
            ClientMsg::Answer { sdp } => ServerMsg::Answer { sdp, from },
            ClientMsg::Candidate { candidate } => ServerMsg::Candidate { candidate, from },
            _ => unreachable!("a relayable frame is an offer, an answer or a candidate"),
        }
    }
}

// The fixed parts of a relayed frame, in serde's order for `ServerMsg`.
const OFFER: &[u8] = br#"{"type":"offer","sdp":"#;
const ANSWER: &[u8] = br#"{"type":"answer","sdp":"#;
const NO_CANDIDATE: &[u8] = br#"{"type":"candidate","candidate":null"#;
const CANDIDATE: &[u8] = br#"{"type":"candidate","candidate":{"candidate":"#;
const SDP_MID: &[u8] = br#","sdpMid":"#;
const SDP_MLINE_INDEX: &[u8] = br#","sdpMLineIndex":"#;
const USERNAME_FRAGMENT: &[u8] = br#","usernameFragment":"#;
const FROM: &[u8] = br#","from":"#;
const NULL: &[u8] = b"null";

fn write_opt(out: &mut Vec<u8>, t: Option<&Text>) {
    match t {
        Some(t) => t.write(out),
        None => out.extend_from_slice(NULL),
    }
}

/// What serde_json writes for this byte of a string: itself, a
/// two-character escape, or `\u00XX`.
fn escaped_len(b: u8) -> usize {
    match b {
        b'"' | b'\\' | b'\x08' | b'\t' | b'\n' | b'\x0c' | b'\r' => 2,
        0..0x20 => 6,
        _ => 1,
    }
}

/// Whether the frame could nest deeper than [`MAX_DEPTH`]: not if it has
/// no more opening brackets than that, in strings or not (a count the
/// compiler vectorises, where the exact walk goes a byte at a time).
fn may_be_too_deep(text: &str) -> bool {
    // Byte-wide counts over chunks that cannot overflow one.
    let opening: usize = text
        .as_bytes()
        .chunks(255)
        .map(|c| {
            let n = c
                .iter()
                .fold(0u8, |n, &b| n + u8::from(b == b'{' || b == b'['));
            usize::from(n)
        })
        .sum::<usize>();
    opening > MAX_DEPTH
}

/// The frame's type in one pass, then its members as that type reads
/// them; other members are skipped, and `from` is kept in `from` if given.
///
/// A member before `type` is read at once as the one type that has it
/// reads it (an `sdp` as a string, a `candidate` as a candidate). Should
/// that fail (the member may belong to no type of this frame, and then
/// it is only skipped), the frame is read again with such members kept
/// as text until the type is known, so that what is accepted and every
/// error stay as they were.
fn one_pass<'a>(
    text: &'a str,
    mut from: Option<&mut Sender<'a>>,
) -> Result<ClientFrame<'a>, ParseError> {
    let mut missed = false;
    let (mut res, mut ty) = read_frame(text, from.as_deref_mut(), Some(&mut missed));
    if missed {
        if let Some(from) = from.as_deref_mut() {
            *from = Sender::default();
        }
        (res, ty) = read_frame(text, from, None);
    }
    match (res, ty) {
        (Ok(Some(frame)), _) => Ok(frame),
        (Ok(None), Some(ty)) => Err(ParseError::UnknownType(ty.into_owned())),
        (Err(e), Some(ty)) if !e.is_syntax() && !e.is_eof() => Err(ParseError::BadMessage(
            format!("bad {:?} message: {e}", ty.as_str()),
        )),
        (Ok(None), None) | (Err(_), _) => general(text).map(ClientFrame::from),
    }
}

/// One read of [`one_pass`]: the frame (`None` for an unknown type) and
/// its type, if it got that far. With `speculate`, members before `type`
/// are read as their type would read them, and a failure to read one
/// sets it.
#[allow(clippy::type_complexity)]
fn read_frame<'a>(
    text: &'a str,
    from: Option<&mut Sender<'a>>,
    speculate: Option<&mut bool>,
) -> (
    Result<Option<ClientFrame<'a>>, serde_json::Error>,
    Option<Text<'a>>,
) {
    let mut de = serde_json::Deserializer::from_str(text);
    let mut ty: Option<Text> = None;
    let res = de.deserialize_map(Frame {
        ty: &mut ty,
        from,
        speculate,
    });
    let res = res.and_then(|frame| de.end().map(|()| frame));
    (res, ty)
}

/// The map visitor of [`one_pass`]: `None` for an unknown type. The type
/// is left in `ty`, for the caller's error message; with `from`, that
/// member is read as a string and kept there (a client's `from` is just
/// an unknown member). With `speculate`, see [`read_frame`].
struct Frame<'t, 'a> {
    ty: &'t mut Option<Text<'a>>,
    from: Option<&'t mut Sender<'a>>,
    speculate: Option<&'t mut bool>,
}

/// A member seen before `type`: read already, or kept as text.
enum Early<'a> {
    Read(Value<'a>),
    Raw(&'a RawValue),
}

/// A relayed frame's `from`, and whether it came twice.
#[derive(Default)]
struct Sender<'a> {
    text: Option<Text<'a>>,
    twice: bool,
}

impl<'de> Visitor<'de> for Frame<'_, 'de> {
    type Value = Option<ClientFrame<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object with a string \"type\"")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut kind: Option<Kind> = None;
        let mut got: Option<ClientFrame<'de>> = None;
        // Members seen before `type` (read, or kept as written), and
        // whether each came twice: which one counts depends on the type.
        let mut early: [(Option<Early<'de>>, bool); 3] = [const { (None, false) }; 3];
        while let Some(key) = map.next_key::<Key>()? {
            match (key, kind) {
                (Key::Type, _) if self.ty.is_some() => {
                    return Err(de::Error::duplicate_field("type"));
                }
                (Key::Type, _) => {
                    let ty: Text = map.next_value()?;
                    kind = Kind::of(ty.as_str());
                    *self.ty = Some(ty);
                    if kind.is_none() {
                        // Not a client type: the rest is only checked.
                        while let Some(key) = map.next_key::<Key>()? {
                            if key == Key::Type {
                                return Err(de::Error::duplicate_field("type"));
                            }
                            map.next_value::<IgnoredAny>()?;
                        }
                        return Ok(None);
                    }
                }
                (Key::From, _) => match self.from.as_deref_mut() {
                    Some(from) => {
                        from.twice |= from.text.is_some();
                        from.text = Some(map.next_value()?);
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                },
                (Key::Other, _) => {
                    map.next_value::<IgnoredAny>()?;
                }
                (_, None) => {
                    let value = match self.speculate.as_deref_mut() {
                        Some(missed) => match map.next_value_seed(Member(key.kind())) {
                            Ok(v) => Early::Read(v),
                            Err(e) => {
                                *missed = true;
                                return Err(e);
                            }
                        },
                        None => Early::Raw(map.next_value()?),
                    };
                    let (seen, twice) = &mut early[key.early()];
                    *twice |= seen.is_some();
                    *seen = Some(value);
                }
                (_, Some(k)) if k.member() != Some(key) => {
                    map.next_value::<IgnoredAny>()?;
                }
                (_, Some(k)) => {
                    if got.is_some() {
                        return Err(de::Error::duplicate_field(key.name()));
                    }
                    got = Some(k.read(map.next_value_seed(Member(k))?));
                }
            }
        }
        let Some(kind) = kind else {
            return Err(de::Error::missing_field("type"));
        };
        let Some(member) = kind.member() else {
            return Ok(Some(match kind {
                Kind::Pong => ClientFrame::Pong,
                _ => ClientFrame::Unpair,
            }));
        };
        match (std::mem::take(&mut early[member.early()]), got) {
            ((Some(_), true), _) | ((Some(_), _), Some(_)) => {
                Err(de::Error::duplicate_field(member.name()))
            }
            ((Some(Early::Read(value)), false), None) => Ok(Some(kind.read(value))),
            ((Some(Early::Raw(raw)), false), None) => {
                let mut de = serde_json::Deserializer::from_str(raw.get());
                let value = Member(kind)
                    .deserialize(&mut de)
                    .map_err(de::Error::custom)?;
                Ok(Some(kind.read(value)))
            }
            ((None, _), Some(frame)) => Ok(Some(frame)),
            ((None, _), None) => Err(de::Error::missing_field(member.name())),
        }
    }
}

/// The value of a type's one member.
enum Value<'a> {
    Text(Text<'a>),
    Candidate(Option<Candidate<'a>>),
}

/// Reads the member of type `.0`.
struct Member(Kind);

impl<'de> DeserializeSeed<'de> for Member {
    type Value = Value<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value<'de>, D::Error> {
        match self.0 {
            Kind::Candidate => Option::<Candidate>::deserialize(d).map(Value::Candidate),
            _ => Text::deserialize(d).map(Value::Text),
        }
    }
}

/// The client types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pong,
    Pair,
    Unpair,
    Offer,
    Answer,
    Candidate,
}

impl Kind {
    fn of(ty: &str) -> Option<Kind> {
        Some(match ty {
            "pong" => Kind::Pong,
            "pair" => Kind::Pair,
            "unpair" => Kind::Unpair,
            "offer" => Kind::Offer,
            "answer" => Kind::Answer,
            "candidate" => Kind::Candidate,
            _ => return None,
        })
    }

    /// The one member the type reads.
    fn member(self) -> Option<Key> {
        match self {
            Kind::Pong | Kind::Unpair => None,
            Kind::Pair => Some(Key::PeerId),
            Kind::Offer | Kind::Answer => Some(Key::Sdp),
            Kind::Candidate => Some(Key::Candidate),
        }
    }

    /// The frame, from its member's value.
    fn read(self, v: Value<'_>) -> ClientFrame<'_> {
        match (self, v) {
            (Kind::Pair, Value::Text(peer_id)) => ClientFrame::Pair { peer_id },
            (Kind::Offer, Value::Text(sdp)) => ClientFrame::Relay(Relayable::Offer { sdp }),
            (Kind::Answer, Value::Text(sdp)) => ClientFrame::Relay(Relayable::Answer { sdp }),
            (Kind::Candidate, Value::Candidate(candidate)) => {
                ClientFrame::Relay(Relayable::Candidate { candidate })
            }
            _ => unreachable!("`Member` reads what the type holds"),
        }
    }
}

/// A member name, as far as client frames care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Type,
    PeerId,
    Sdp,
    Candidate,
    /// Read only in a relayed frame; a client's is an unknown member.
    From,
    Other,
}

impl Key {
    fn name(self) -> &'static str {
        match self {
            Key::Type => "type",
            Key::PeerId => "peer_id",
            Key::Sdp => "sdp",
            Key::Candidate => "candidate",
            Key::From => "from",
            Key::Other => "",
        }
    }

    /// Where a member seen before `type` is kept.
    fn early(self) -> usize {
        match self {
            Key::PeerId => 0,
            Key::Sdp => 1,
            _ => 2,
        }
    }

    /// A type that reads this member, and so how it reads it (every type
    /// with the member reads it alike: `sdp` is a string in an offer and
    /// in an answer).
    fn kind(self) -> Kind {
        match self {
            Key::PeerId => Kind::Pair,
            Key::Sdp => Kind::Offer,
            _ => Kind::Candidate,
        }
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
                Ok(match s {
                    "type" => Key::Type,
                    "peer_id" => Key::PeerId,
                    "sdp" => Key::Sdp,
                    "candidate" => Key::Candidate,
                    "from" => Key::From,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

impl<'de> DeserializeSeed<'de> for Frame<'_, 'de> {
    type Value = Option<ClientFrame<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

/// Any frame, in two passes: its `type`, then its members into a struct
/// of that type's own (other members, `type` among them, are skipped as a
/// derived enum would skip them; the enum's own derive buffers the whole
/// frame first to find its tag).
pub(crate) fn general(text: &str) -> Result<ClientMsg, ParseError> {
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(rename = "type", borrow)]
        ty: Cow<'a, str>,
    }
    let head: Head = serde_json::from_str(text).map_err(|e| {
        ParseError::BadMessage(format!(
            "expected a JSON object with a string \"type\": {e}"
        ))
    })?;
    #[derive(Deserialize)]
    struct Empty {}
    #[derive(Deserialize)]
    struct Pair {
        peer_id: String,
    }
    #[derive(Deserialize)]
    struct Sdp {
        sdp: String,
    }
    #[derive(Deserialize)]
    struct Candidate {
        #[serde(deserialize_with = "super::required_nullable")]
        candidate: Option<CandidateInit>,
    }
    fn body<'a, T: Deserialize<'a>>(text: &'a str, ty: &str) -> Result<T, ParseError> {
        serde_json::from_str(text)
            .map_err(|e| ParseError::BadMessage(format!("bad {ty:?} message: {e}")))
    }
    let ty = head.ty.as_ref();
    if too_deep(text) {
        return Err(ParseError::BadMessage(format!(
            "bad {ty:?} message: nested deeper than {MAX_DEPTH} levels"
        )));
    }
    Ok(match ty {
        "pong" => body::<Empty>(text, ty).map(|_| ClientMsg::Pong)?,
        "pair" => ClientMsg::Pair {
            peer_id: body::<Pair>(text, ty)?.peer_id,
        },
        "unpair" => body::<Empty>(text, ty).map(|_| ClientMsg::Unpair)?,
        "offer" => ClientMsg::Offer {
            sdp: body::<Sdp>(text, ty)?.sdp,
        },
        "answer" => ClientMsg::Answer {
            sdp: body::<Sdp>(text, ty)?.sdp,
        },
        "candidate" => ClientMsg::Candidate {
            candidate: body::<Candidate>(text, ty)?.candidate,
        },
        _ => return Err(ParseError::UnknownType(head.ty.into_owned())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as nodes write it is read in the one pass, its strings
    /// left in the frame; the property test compares outcomes only.
    #[test]
    fn a_relayed_frame_as_nodes_write_it_takes_the_one_pass() {
        let msg = ServerMsg::Candidate {
            candidate: Some(CandidateInit {
                candidate: "candidate:1 1 udp 2122260223 10.0.0.1 5000 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_mline_index: Some(0),
                username_fragment: None,
            }),
            from: "alice".into(),
        };
        let text = msg.to_json();
        let (frame, from) = Relayable::parse_relayed(&text).expect("a relayed candidate");
        assert!(matches!(from.0, Repr::Plain("alice")));
        assert_eq!(frame.to_json(from.as_str()), text);
        let Relayable::Candidate { candidate: Some(c) } = frame else {
            panic!("a candidate");
        };
        assert!(matches!(c.candidate.0, Repr::Plain(_)));
    }

    /// Keys sorted (`candidate`, `sdp` before `type`): the member is read
    /// once, in the first pass; one that no type of the frame reads, in a
    /// shape it cannot have, sends the frame to the second pass, which
    /// skips it.
    #[test]
    fn a_member_before_type_is_read_in_the_first_pass() {
        fn first_pass(text: &str) -> (Option<ClientFrame<'_>>, bool) {
            let mut missed = false;
            let (res, _) = read_frame(text, None, Some(&mut missed));
            (res.ok().flatten(), missed)
        }
        let sorted = r#"{"candidate":{"candidate":"candidate:1 1 udp 1 10.0.0.1 5000 typ host","sdpMid":"0"},"type":"candidate"}"#;
        let (frame, missed) = first_pass(sorted);
        assert!(!missed);
        let Some(ClientFrame::Relay(Relayable::Candidate { candidate: Some(c) })) = frame else {
            panic!("a candidate: {frame:?}");
        };
        assert_eq!(
            c.candidate.as_str(),
            "candidate:1 1 udp 1 10.0.0.1 5000 typ host"
        );
        let (frame, missed) = first_pass(r#"{"sdp":"v=0","type":"answer"}"#);
        assert!(!missed);
        assert!(matches!(
            frame,
            Some(ClientFrame::Relay(Relayable::Answer { sdp })) if sdp.as_str() == "v=0"
        ));

        let foreign = r#"{"candidate":5,"type":"offer","sdp":"v=0"}"#;
        assert!(first_pass(foreign).1, "a candidate cannot be 5");
        assert!(matches!(
            ClientFrame::parse(foreign),
            Ok(ClientFrame::Relay(Relayable::Offer { sdp })) if sdp.as_str() == "v=0"
        ));
    }
}
