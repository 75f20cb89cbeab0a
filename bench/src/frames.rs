//! What `signald-load` and the cluster load send: the frames, and the
//! relay window that keeps a fixed number of them in flight per pair.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const PING: &str = r#"{"type":"ping"}"#;
pub const PONG: &str = r#"{"type":"pong"}"#;

/// A candidate as a browser sends it, about 230 bytes of JSON, with
/// `stamp` in `sdpMid`.
pub fn candidate(stamp: u64) -> String {
    json!({"type":"candidate","candidate":{
        "candidate":"candidate:842163049 1 udp 1677729535 192.0.2.10 51234 typ srflx raddr 10.0.0.5 rport 51234 generation 0 ufrag Ab3d network-cost 999",
        "sdpMid":stamp.to_string(),"sdpMLineIndex":0,"usernameFragment":"Ab3d"}})
    .to_string()
}

/// Starts relaying on every pair: the first of each sends `window`
/// candidates, and every candidate received is answered with one, so the
/// window stays. Returns the count of candidates received so far.
pub fn relay_window(pairs: Vec<(Ws, Ws)>, window: usize) -> Arc<AtomicU64> {
    let received = Arc::new(AtomicU64::new(0));
    let frame = candidate(0);
    for (a, b) in pairs {
        for (mut ws, initial) in [(a, window), (b, 0)] {
            let (received, frame) = (received.clone(), frame.clone());
            tokio::spawn(async move {
                for _ in 0..initial {
                    ws.feed(Message::text(frame.clone())).await?;
                }
                ws.flush().await?;
                while let Some(msg) = ws.next().await {
                    if let Message::Text(t) = msg?
                        && t.starts_with(r#"{"type":"candidate""#)
                    {
                        received.fetch_add(1, Ordering::Relaxed);
                        ws.send(Message::text(frame.clone())).await?;
                    }
                }
                anyhow::Ok(())
            });
        }
    }
    received
}
