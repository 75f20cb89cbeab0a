//! A test-only man in the middle: a WebSocket relay in front of signald
//! that replaces the `a=fingerprint` of every offer and answer it delivers
//! to its clients, as a malicious signald (or anyone on a `ws://` path)
//! could. Everything else passes unchanged.

use std::net::SocketAddr;
use std::sync::mpsc;

use futures_util::{SinkExt, StreamExt};
use p2p_proto::identity::Fingerprint;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// The relay; stopped on drop.
pub struct Rewriter {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Rewriter {
    /// Relays to `upstream` (`ws://HOST:PORT`, without a path: the path and
    /// query each client asked for are kept), putting `fake` in place of
    /// every fingerprint its clients are sent.
    pub fn start(upstream: &str, fake: Fingerprint) -> Rewriter {
        let upstream = upstream
            .trim_end_matches('/')
            .trim_end_matches("/ws")
            .to_string();
        let (ready_tx, ready) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                ready_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("ready");
                tokio::pin!(stopped);
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        conn = listener.accept() => {
                            let Ok((tcp, _)) = conn else { continue };
                            tokio::spawn(relay(tcp, upstream.clone(), fake));
                        }
                    }
                }
            });
        });
        let addr = ready.recv().expect("the relay started");
        Rewriter {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The URL clients use instead of signald's.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for Rewriter {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// The handshake callback's error type is tungstenite's, large by design.
#[allow(clippy::result_large_err)]
async fn relay(tcp: tokio::net::TcpStream, upstream: String, fake: Fingerprint) {
    let mut target = String::new();
    let accept = tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, resp: Response| {
        target = req.uri().to_string();
        Ok(resp)
    });
    let Ok(client) = accept.await else { return };
    let Ok((server, _)) = tokio_tungstenite::connect_async(format!("{upstream}{target}")).await
    else {
        return;
    };
    let (mut to_client, mut from_client) = client.split();
    let (mut to_server, mut from_server) = server.split();
    let up = async {
        while let Some(Ok(m)) = from_client.next().await {
            if to_server.send(m).await.is_err() {
                break;
            }
        }
        let _ = to_server.close().await;
    };
    let down = async {
        while let Some(Ok(m)) = from_server.next().await {
            let m = match m {
                Message::Text(t) => Message::text(rewrite(&t, &fake)),
                other => other,
            };
            if to_client.send(m).await.is_err() {
                break;
            }
        }
        let _ = to_client.close().await;
    };
    tokio::join!(up, down);
}

/// The frame with the fingerprint of an offer's or answer's SDP replaced.
fn rewrite(frame: &str, fake: &Fingerprint) -> String {
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(frame) else {
        return frame.to_string();
    };
    if !matches!(v["type"].as_str(), Some("offer" | "answer")) {
        return frame.to_string();
    }
    let Some(sdp) = v["sdp"].as_str() else {
        return frame.to_string();
    };
    let rewritten: Vec<String> = sdp
        .split("\r\n")
        .map(|l| match l.strip_prefix("a=fingerprint:") {
            Some(_) => format!("a=fingerprint:sha-256 {}", fake.to_sdp_hex()),
            None => l.to_string(),
        })
        .collect();
    v["sdp"] = serde_json::Value::String(rewritten.join("\r\n"));
    v.to_string()
}
