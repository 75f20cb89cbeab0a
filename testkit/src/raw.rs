//! A raw signaling client: speaks signald's frames directly, as a browser
//! or an attacker would, without any of p2pd's manners.

use std::net::TcpStream;

use tokio_tungstenite::tungstenite::stream::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{Message, WebSocket};

use crate::proc::WAIT;

pub struct RawClient {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    id: String,
}

impl RawClient {
    /// Connects to `url` as `id` and reads the welcome.
    pub fn connect(url: &str, id: &str) -> RawClient {
        let (ws, _) = tokio_tungstenite::tungstenite::connect(format!("{url}?id={id}"))
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(WAIT)).expect("a read timeout");
        }
        let mut c = RawClient {
            ws,
            id: id.to_string(),
        };
        let w = c.recv();
        assert_eq!(w["type"], "welcome", "{w}");
        c
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn send(&mut self, frame: serde_json::Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .expect("sending a frame");
    }

    /// Queues a frame without flushing (for floods), flushed by the next
    /// [`send`](Self::send) or [`flush`](Self::flush).
    pub fn feed(&mut self, frame: serde_json::Value) {
        self.ws
            .write(Message::text(frame.to_string()))
            .expect("queuing a frame");
    }

    pub fn flush(&mut self) {
        self.ws.flush().expect("flushing");
    }

    /// The next frame other than `ping` (each ping is answered).
    pub fn recv(&mut self) -> serde_json::Value {
        loop {
            match self.ws.read().expect("reading a frame") {
                Message::Text(t) => {
                    let v: serde_json::Value = serde_json::from_str(&t).expect("JSON");
                    if v["type"] == "ping" {
                        self.send(serde_json::json!({"type": "pong"}));
                        continue;
                    }
                    return v;
                }
                Message::Close(f) => panic!("closed by signald: {f:?}"),
                _ => {}
            }
        }
    }

    /// Skips frames until one of `type` arrives.
    pub fn wait(&mut self, kind: &str) -> serde_json::Value {
        loop {
            let v = self.recv();
            if v["type"] == kind {
                return v;
            }
        }
    }
}
