//! A typed, blocking client of p2pd's control socket, built on the types
//! of `p2p_proto::control` (the same ones the daemon and p2pctl use).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use p2p_proto::control::{
    ErrorBody, Event, EventKind, IdentityInfo, OkBody, PairOutcome, Reply, Request, Status,
};

use crate::proc::WAIT;

/// One connection; requests may be pipelined with [`write`](Self::write)
/// and [`read_reply`](Self::read_reply).
pub struct Control {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Control {
    pub fn connect(path: &Path) -> std::io::Result<Control> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(WAIT))?;
        s.set_write_timeout(Some(WAIT))?;
        Ok(Control {
            r: BufReader::with_capacity(1 << 20, s.try_clone()?),
            w: s,
        })
    }

    /// Writes one request line without waiting for its reply.
    pub fn write(&mut self, req: &Request) {
        let mut line = serde_json::to_vec(req).expect("requests serialise");
        line.push(b'\n');
        self.w
            .write_all(&line)
            .expect("writing to the control socket");
    }

    /// Reads the next reply line.
    pub fn read_reply(&mut self) -> Reply {
        let line = read_line(&mut self.r).expect("p2pd closed the control connection");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad reply {line:?}: {e}"))
    }

    /// One request, its reply as a `Result`.
    pub fn call(&mut self, req: &Request) -> Result<OkBody, ErrorBody> {
        self.write(req);
        match self.read_reply() {
            Reply::Ok { body, .. } => Ok(body),
            Reply::Err { error, .. } => Err(error),
        }
    }

    pub fn status(&mut self) -> Status {
        match self.call(&Request::Status) {
            Ok(OkBody::Status { status }) => *status,
            other => panic!("status answered {other:?}"),
        }
    }

    pub fn send_text(&mut self, text: &str) -> Result<(), ErrorBody> {
        self.call(&Request::Send {
            text: Some(text.to_string()),
            data_b64: None,
            to: None,
        })
        .map(|_| ())
    }

    /// `pair` with `wait: true`.
    pub fn pair(&mut self, peer: &str, timeout_ms: u64) -> Result<PairOutcome, ErrorBody> {
        match self.call(&Request::Pair {
            peer_id: peer.to_string(),
            wait: true,
            timeout_ms: Some(timeout_ms),
            code: None,
        })? {
            OkBody::Pair { pair } => Ok(pair),
            other => panic!("pair answered {other:?}"),
        }
    }

    /// `id`: our `ID@fingerprint` token.
    pub fn identity(&mut self) -> IdentityInfo {
        match self.call(&Request::Id) {
            Ok(OkBody::Identity { identity }) => identity,
            other => panic!("id answered {other:?}"),
        }
    }

    /// `trust` the peer's token (as `id` gives it).
    pub fn trust(&mut self, token: &str) -> Result<OkBody, ErrorBody> {
        let (peer_id, fingerprint) = p2p_proto::identity::parse_token(token).expect("a token");
        self.call(&Request::Trust {
            peer_id,
            fingerprint,
            comment: None,
        })
    }

    /// `unpair`; whether there was a pairing.
    pub fn unpair(&mut self) -> bool {
        match self.call(&Request::Unpair) {
            Ok(OkBody::Unpair { was_paired }) => was_paired,
            other => panic!("unpair answered {other:?}"),
        }
    }
}

/// A `tail` connection: events, typed.
pub struct Follower {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Follower {
    /// Subscribes with `replay` messages from history, then follows.
    pub fn start(path: &Path, replay: usize) -> Follower {
        let mut c = Control::connect(path).expect("connecting the control socket");
        if let Err(e) = c.call(&Request::Tail {
            replay,
            follow: true,
        }) {
            panic!("tail refused: {e:?}");
        }
        Follower { r: c.r, w: c.w }
    }

    /// The next event, `None` once the daemon (or [`closer`](Self::closer))
    /// ended the stream.
    pub fn next_event(&mut self) -> Option<Event> {
        let line = read_line(&mut self.r)?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad event {line:?}: {e}")))
    }

    /// The next message's text, skipping other events; `None` at the end.
    /// A `lagged` event fails the test: nothing may be missed.
    pub fn next_text(&mut self) -> Option<String> {
        loop {
            match self.next_event()?.kind {
                EventKind::Message { text, .. } => return Some(text.expect("a text message")),
                EventKind::Lagged { missed } => panic!("follower lagged, missed {missed}"),
                _ => {}
            }
        }
    }

    /// A handle that ends this stream from another thread (`shutdown`).
    pub fn closer(&self) -> UnixStream {
        self.w.try_clone().expect("cloning the socket")
    }
}

/// One line without its newline; `None` at EOF or on a read error (a shut
/// down socket, a timeout).
fn read_line(r: &mut BufReader<UnixStream>) -> Option<String> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => {
            line.truncate(line.trim_end_matches('\n').len());
            Some(line)
        }
    }
}
