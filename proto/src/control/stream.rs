//! Byte streams on the control socket: the types of `expose`, `connect`,
//! `accept` and `forward`, the targets a service names, and the framing a
//! control connection switches to once a stream is open (see
//! `docs/control.md`, "Streams").
//!
//! Why framing and not raw bytes: the client must tell the daemon "my input
//! ended" apart from "I died" (a killed `p2pctl` closes its socket just as
//! one whose stdin ended would), and the daemon must tell the client how
//! the far end ended, clean or aborted, and why. Each chunk carries a
//! 5-byte header; that is all the framing costs.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::ErrorBody;

/// Whether `name` may name a service: 1-64 of `A-Z a-z 0-9 _ - .`, not
/// starting with `.` or `-`.
pub fn valid_service(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// [`valid_service`], with the one message that says what a name is.
pub fn check_service(name: &str) -> Result<(), String> {
    match valid_service(name) {
        true => Ok(()),
        false => Err(format!(
            "{name:?} is not a valid service name (1-64 of A-Z a-z 0-9 _ - ., not starting with . or -)"
        )),
    }
}

/// What an exposed service reaches on the serving side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `tcp:HOST:PORT`; an IPv6 literal in brackets (`tcp:[::1]:22`).
    Tcp { host: String, port: u16 },
    /// `unix:PATH`, an absolute path.
    Unix(std::path::PathBuf),
}

impl Target {
    /// Parses `tcp:HOST:PORT` or `unix:/PATH`, saying what is wrong.
    pub fn parse(s: &str) -> Result<Target, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("{s:?}: a unix: target needs an absolute path"));
            }
            if path.len() > 107 {
                return Err(format!("{s:?}: a unix socket path has at most 107 bytes"));
            }
            return Ok(Target::Unix(path.into()));
        }
        let Some(rest) = s.strip_prefix("tcp:") else {
            return Err(format!(
                "{s:?}: a target is tcp:HOST:PORT (tcp:[::1]:22 for IPv6) or unix:/PATH"
            ));
        };
        let (host, port) = split_host_port(rest).ok_or_else(|| {
            format!("{s:?}: expected tcp:HOST:PORT (an IPv6 address in brackets: tcp:[::1]:22)")
        })?;
        Ok(Target::Tcp { host, port })
    }
}

/// `HOST:PORT` or `[V6]:PORT`: the host (without brackets) and the port.
/// A bare IPv6 address without brackets is refused: its last group would
/// read as the port.
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        (host, port)
    } else {
        let (host, port) = s.rsplit_once(':')?;
        if host.is_empty() || host.contains(':') {
            return None;
        }
        (host, port)
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((host.to_string(), port.parse().ok().filter(|p| *p != 0)?))
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Target::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Target::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An exposed service, as `expose --list` and `status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    pub target: Target,
    /// The peer IDs that may open streams to it.
    pub peers: Vec<String>,
    /// Peers whose key is not verified may open streams too (opt-in).
    #[serde(default)]
    pub allow_unverified: bool,
    /// Given as a p2pd option (it lasts as long as the daemon), rather
    /// than by `p2pctl expose`.
    #[serde(default)]
    pub configured: bool,
    /// Streams open to it now.
    #[serde(default)]
    pub open_streams: usize,
}

/// An `accept` waiting for its stream, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptInfo {
    pub service: String,
    pub peer_id: String,
    #[serde(default)]
    pub allow_unverified: bool,
}

/// Which side opened a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamDirection {
    /// We opened it (`connect`, `forward`).
    Out,
    /// The peer opened it (to a service, or to an `accept`).
    In,
}

/// An open stream, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// A number unique within this daemon's life.
    pub id: u64,
    pub peer_id: String,
    pub service: String,
    pub direction: StreamDirection,
    /// What our end is: `control` (a `connect` or `accept` client), the
    /// service's target, or `forward ADDR:PORT`.
    pub local: String,
    pub age_ms: u64,
    /// Bytes received from the peer and sent to it.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A forward: a local listener whose connections each open a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardInfo {
    /// The address it listens on.
    pub listen: String,
    pub peer_id: String,
    pub service: String,
    #[serde(default)]
    pub allow_unverified: bool,
    /// Given as a p2pd option rather than by `p2pctl forward`.
    #[serde(default)]
    pub configured: bool,
    /// Connections it has open now, and accepted in all.
    pub open_connections: usize,
    pub connections: u64,
}

/// The framing of a control connection after `connect` or `accept` was
/// answered `ok`: both directions carry chunks, each a one-byte tag and a
/// 32-bit big-endian length, then that many bytes.
pub mod pipe {
    /// Bytes of the stream (at most [`MAX_CHUNK`]).
    pub const DATA: u8 = b'd';
    /// This direction ended cleanly (length 0): the writer's input is done.
    /// A connection that closes without it is an abort.
    pub const END: u8 = b'e';
    /// Daemon to client only: the stream failed; the payload is an
    /// `ErrorBody` as JSON. Nothing follows.
    pub const ERROR: u8 = b'x';
    /// Daemon to client only (length 0): both directions ended cleanly and
    /// the peer's stack acknowledged everything we sent. Nothing follows.
    pub const DONE: u8 = b'c';
    /// Largest chunk either side sends.
    pub const MAX_CHUNK: usize = 256 * 1024;
    /// Header bytes before each chunk's payload.
    pub const HEADER: usize = 5;

    /// The header of a chunk.
    pub fn header(tag: u8, len: usize) -> [u8; HEADER] {
        let n = (len as u32).to_be_bytes();
        [tag, n[0], n[1], n[2], n[3]]
    }

    /// A chunk header's tag and length, if the tag is one this side may
    /// receive and the length fits.
    pub fn parse_header(h: [u8; HEADER], from_daemon: bool) -> Result<(u8, usize), String> {
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        let ok = match h[0] {
            DATA => len <= MAX_CHUNK,
            END | DONE => len == 0 && (h[0] == END || from_daemon),
            ERROR => from_daemon && len <= 64 * 1024,
            _ => false,
        };
        match ok {
            true => Ok((h[0], len)),
            false => Err(format!(
                "bad stream chunk header (tag {:#04x}, length {len})",
                h[0]
            )),
        }
    }
}

/// The error of a stream that failed after it opened, as the `x` chunk
/// carries it.
pub fn error_chunk(e: &ErrorBody) -> Vec<u8> {
    let body = serde_json::to_vec(e).expect("an error body always serialises");
    let mut out = pipe::header(pipe::ERROR, body.len()).to_vec();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print_back() {
        for (s, t) in [
            (
                "tcp:127.0.0.1:22",
                Target::Tcp {
                    host: "127.0.0.1".into(),
                    port: 22,
                },
            ),
            (
                "tcp:[::1]:2222",
                Target::Tcp {
                    host: "::1".into(),
                    port: 2222,
                },
            ),
            (
                "tcp:db.internal:5432",
                Target::Tcp {
                    host: "db.internal".into(),
                    port: 5432,
                },
            ),
            (
                "unix:/run/a b,c.sock",
                Target::Unix("/run/a b,c.sock".into()),
            ),
        ] {
            assert_eq!(Target::parse(s), Ok(t.clone()), "{s}");
            assert_eq!(t.to_string(), s);
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("{s:?}"));
        }
        for bad in [
            "tcp:::1:22",
            "tcp:127.0.0.1",
            "tcp:127.0.0.1:0",
            "tcp:127.0.0.1:65536",
            "tcp:[::1]22",
            "tcp:[nope]:22",
            "tcp::22",
            "unix:relative",
            "udp:1.2.3.4:5",
            "127.0.0.1:22",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_names() {
        for good in ["ssh", "db.primary", "a_b-c", &"x".repeat(64)] {
            assert!(valid_service(good), "{good}");
        }
        for bad in ["", ".hidden", "-x", "a/b", "a b", "a:b", &"x".repeat(65)] {
            assert!(!valid_service(bad), "{bad}");
        }
    }

    #[test]
    fn chunk_headers() {
        assert_eq!(pipe::header(pipe::DATA, 258), [b'd', 0, 0, 1, 2]);
        assert_eq!(
            pipe::parse_header([b'd', 0, 0, 1, 2], false),
            Ok((pipe::DATA, 258))
        );
        assert!(pipe::parse_header(pipe::header(pipe::DATA, pipe::MAX_CHUNK + 1), true).is_err());
        assert!(pipe::parse_header(pipe::header(pipe::END, 1), true).is_err());
        // The client may not claim the stream is done, nor fail it.
        assert!(pipe::parse_header(pipe::header(pipe::DONE, 0), false).is_err());
        assert!(pipe::parse_header(pipe::header(pipe::ERROR, 3), false).is_err());
        assert!(pipe::parse_header([b'?', 0, 0, 0, 0], true).is_err());
    }

    #[test]
    fn status_entries_have_the_documented_shape() {
        let s = ServiceInfo {
            name: "ssh".into(),
            target: Target::parse("tcp:[::1]:22").unwrap(),
            peers: vec!["alice".into()],
            allow_unverified: false,
            configured: true,
            open_streams: 1,
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"name":"ssh","target":"tcp:[::1]:22","peers":["alice"],"allow_unverified":false,"configured":true,"open_streams":1}"#
        );
    }
}
