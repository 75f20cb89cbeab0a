//! What `signald-load` and the cluster load send: the frames of each
//! server's protocol, and the relay window that keeps a fixed number of
//! them in flight per pair.
//!
//! Two protocols: signald's (docs/protocol.md), and the PeerJS server's
//! (`peer` on npm), which `signald-bench --peerjs` measures side by side.
//! PeerJS has no pairing: a frame names its destination (`dst`) and the
//! server adds `src`. Nor does it ping: a client sends `HEARTBEAT` within
//! `--alive_timeout`, or is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const PING: &str = r#"{"type":"ping"}"#;
pub const PONG: &str = r#"{"type":"pong"}"#;

/// A PeerJS client's keepalive.
pub const HEARTBEAT: &str = r#"{"type":"HEARTBEAT"}"#;

/// The candidate line a browser sends, in both protocols.
const LINE: &str = "candidate:842163049 1 udp 1677729535 192.0.2.10 51234 typ srflx raddr 10.0.0.5 rport 51234 generation 0 ufrag Ab3d network-cost 999";

/// A candidate as a browser sends it to signald, about 230 bytes of JSON,
/// with `stamp` in `sdpMid`.
pub fn candidate(stamp: u64) -> String {
    Proto::Signald.candidate("", stamp)
}

/// Which server the load speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    Signald,
    Peerjs,
}

impl Proto {
    /// The query that connects as `id` (PeerJS always needs one).
    pub fn query(self, id: Option<&str>) -> Option<String> {
        match (self, id) {
            (Proto::Signald, None) => None,
            (Proto::Signald, Some(id)) => Some(format!("id={id}")),
            // Any token will do for a new ID.
            (Proto::Peerjs, Some(id)) => Some(format!("key=peerjs&id={id}&token=bench-token")),
            (Proto::Peerjs, None) => unreachable!("a PeerJS client names its own ID"),
        }
    }

    /// How the server's first frame starts.
    pub fn greeting(self) -> &'static str {
        match self {
            Proto::Signald => r#"{"type":"welcome""#,
            Proto::Peerjs => r#"{"type":"OPEN""#,
        }
    }

    /// A candidate for peer `to`, as that protocol's browser client sends
    /// it (about 230 bytes for signald, 290 for PeerJS), with `stamp` in
    /// `sdpMid`.
    pub fn candidate(self, to: &str, stamp: u64) -> String {
        let c = json!({"candidate":LINE,"sdpMid":stamp.to_string(),"sdpMLineIndex":0,
                       "usernameFragment":"Ab3d"});
        match self {
            Proto::Signald => json!({"type":"candidate","candidate":c}),
            Proto::Peerjs => json!({"type":"CANDIDATE","dst":to,
                                    "payload":{"candidate":c,"type":"data","connectionId":"dc_bench"}}),
        }
        .to_string()
    }

    /// Whether a frame from the server is a relayed candidate.
    pub fn is_candidate(self, text: &str) -> bool {
        match self {
            Proto::Signald => text.starts_with(r#"{"type":"candidate""#),
            Proto::Peerjs => text.starts_with(r#"{"type":"CANDIDATE""#),
        }
    }

    /// The stamp of a relayed candidate.
    pub fn stamp(self, v: &Value) -> Option<u64> {
        let c = match self {
            Proto::Signald => &v["candidate"],
            Proto::Peerjs => &v["payload"]["candidate"],
        };
        c["sdpMid"].as_str()?.parse().ok()
    }

    /// What a client sends unasked to stay connected, and how often.
    pub fn keepalive(self) -> Option<(&'static str, Duration)> {
        match self {
            Proto::Signald => None,
            Proto::Peerjs => Some((HEARTBEAT, Duration::from_secs(5))),
        }
    }

    /// The answer a frame from the server needs, if any (signald's ping).
    pub fn reply(self, text: &str) -> Option<&'static str> {
        (self == Proto::Signald && text == PING).then_some(PONG)
    }
}

/// One side of a relay pair: its connection and the frame it sends.
pub struct Side {
    pub ws: Ws,
    pub frame: String,
}

/// Starts relaying on every pair: the first of each sends `window`
/// candidates, and every candidate received is answered with one, so the
/// window stays. Returns the count of candidates received so far.
pub fn relay_window(pairs: Vec<(Side, Side)>, window: usize, proto: Proto) -> Arc<AtomicU64> {
    let received = Arc::new(AtomicU64::new(0));
    for (a, b) in pairs {
        for (side, initial) in [(a, window), (b, 0)] {
            let received = received.clone();
            tokio::spawn(async move {
                let Side { mut ws, frame } = side;
                for _ in 0..initial {
                    ws.feed(Message::text(frame.clone())).await?;
                }
                ws.flush().await?;
                let (alive, every) = proto.keepalive().unwrap_or(("", Duration::from_secs(3600)));
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    let msg = tokio::select! {
                        msg = ws.next() => msg,
                        _ = tick.tick() => {
                            ws.send(Message::text(alive)).await?;
                            continue;
                        }
                    };
                    let Some(msg) = msg else { break };
                    if let Message::Text(t) = msg? {
                        if proto.is_candidate(&t) {
                            received.fetch_add(1, Ordering::Relaxed);
                            ws.send(Message::text(frame.clone())).await?;
                        } else if let Some(r) = proto.reply(&t) {
                            ws.send(Message::text(r)).await?;
                        }
                    }
                }
                anyhow::Ok(())
            });
        }
    }
    received
}
