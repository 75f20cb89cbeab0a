//! One client connection: the HTTP head, the upgrade, then a single task that
//! reads frames, writes its outbox, sends pings and enforces the deadline.
//!
//! All socket I/O happens in one poll function ([`poll_event`]) so that a
//! client that stops reading can never block this task's reads, timer or
//! kick: writes only move frames from the outbox while the socket accepts
//! them. Frame handling is synchronous; replies go through the outbox.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use futures_util::{SinkExt, StreamExt};
use p2p_proto::signal::{ClientMsg, DisconnectReason, ErrorCode, ServerMsg, close_code};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes, error::CapacityError};
use tracing::debug;

use crate::http::{self, Route};
use crate::registry::{Kick, Refusal, Relayed, Slot};
use crate::{Shared, id};

/// A client's byte stream: plain TCP, or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

type Ws<S> = WebSocketStream<S>;

const PING: &str = r#"{"type":"ping"}"#;

/// Serves one accepted TCP connection to its end.
pub async fn handle<S: Io>(mut stream: S, srv: Arc<Shared>) {
    let route = match timeout(srv.cfg.handshake_timeout, http::read_route(&mut stream)).await {
        Ok(Ok(route)) => route,
        Ok(Err(e)) => {
            debug!("request head: {e}");
            return;
        }
        Err(_) => {
            debug!("request head not complete in time");
            return;
        }
    };
    let res = match route {
        Route::Healthz => http::respond(&mut stream, "200 OK", "text/plain", "ok\n").await,
        Route::Metrics => {
            let body = srv.reg.render_metrics();
            http::respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
            )
            .await
        }
        Route::Refuse(status, body) => {
            http::respond(&mut stream, status, "text/plain; charset=utf-8", body).await
        }
        Route::Upgrade { query, rest } => {
            let ws = WebSocketStream::from_partially_read(
                stream,
                rest,
                Role::Server,
                Some(srv.ws_config),
            )
            .await;
            session(ws, query, &srv).await;
            return;
        }
    };
    if let Err(e) = res {
        debug!("http response: {e}");
    }
}

/// How a registered client's connection ended.
enum Ending {
    /// The client closed, or its socket failed.
    Left,
    /// Silent for longer than the ping timeout.
    Timeout,
    /// A message over the size limit (`too_large` already queued).
    TooLarge,
    /// Too many frames dropped by the rate limit (`rate_limited` queued).
    RateLimited,
    /// A text frame that is not UTF-8 (`bad_message` queued). RFC 6455
    /// requires failing the connection, and the library ends the stream.
    BadUtf8,
    /// Someone else ended it.
    Kicked(Kick),
}

async fn session<S: Io>(mut ws: Ws<S>, query: Option<String>, srv: &Shared) {
    let ask = match id::parse_query(query.as_deref()) {
        Ok(ask) => ask,
        Err(msg) => {
            return refuse(&mut ws, srv, ErrorCode::BadId, msg, close_code::BAD_ID).await;
        }
    };
    let slot = match srv.reg.register(ask.id, ask.token, |id| srv.welcome(id)) {
        Ok(slot) => slot,
        Err(Refusal::IdTaken) => {
            let msg = "this ID is held by another connection";
            return refuse(&mut ws, srv, ErrorCode::IdTaken, msg, close_code::ID_TAKEN).await;
        }
        Err(Refusal::ServerFull) => {
            let msg = "the server has reached its client limit";
            let code = close_code::TRY_AGAIN_LATER;
            return refuse(&mut ws, srv, ErrorCode::ServerFull, msg, code).await;
        }
        Err(Refusal::ShuttingDown) => {
            return close(&mut ws, close_code::GOING_AWAY, "server shutting down", srv).await;
        }
    };
    debug!(id = %slot.id, "registered");
    let ending = drive(&mut ws, &slot, srv).await;
    let (code, text, reason) = match ending {
        Ending::Left => (1000, "", DisconnectReason::Left),
        Ending::Timeout => (
            close_code::TIMEOUT,
            "ping timeout",
            DisconnectReason::Timeout,
        ),
        Ending::TooLarge => (
            close_code::TOO_BIG,
            "message too large",
            DisconnectReason::Left,
        ),
        Ending::RateLimited => (close_code::POLICY, "rate limit", DisconnectReason::Left),
        Ending::BadUtf8 => (1007, "text frame is not UTF-8", DisconnectReason::Left),
        Ending::Kicked(Kick::Replaced) => {
            (close_code::REPLACED, "replaced", DisconnectReason::Replaced)
        }
        Ending::Kicked(Kick::SlowReader) => {
            (close_code::POLICY, "not reading", DisconnectReason::Left)
        }
        Ending::Kicked(Kick::Shutdown | Kick::Own) => (
            close_code::GOING_AWAY,
            "server shutting down",
            DisconnectReason::Left,
        ),
    };
    // The peer is told now, before any close handshake with this client.
    srv.reg.remove(&slot, reason, Kick::Own);
    if matches!(ending, Ending::Timeout) {
        srv.reg.metrics.timeouts.fetch_add(1, Ordering::Relaxed);
    }
    debug!(id = %slot.id, code, reason = ?reason, "closing");
    match ending {
        // The close handshake already ran or the socket is gone.
        Ending::Left => finish(&mut ws, srv).await,
        // Whatever is queued would never be read.
        Ending::Kicked(Kick::SlowReader) => close(&mut ws, code, text, srv).await,
        _ => {
            flush_outbox(&mut ws, &slot, srv).await;
            close(&mut ws, code, text, srv).await;
        }
    }
}

/// Sends one error frame, then closes: the upgrade could not be honoured.
async fn refuse<S: Io>(ws: &mut Ws<S>, srv: &Shared, code: ErrorCode, msg: &str, close_with: u16) {
    srv.reg.metrics.error(code);
    let frame = ServerMsg::Error {
        code,
        message: msg.to_string(),
    };
    let sent = timeout(srv.cfg.close_grace, ws.send(Message::text(frame.to_json()))).await;
    if matches!(sent, Ok(Ok(()))) {
        close(ws, close_with, msg, srv).await;
    }
}

/// Writes what is still queued for the client, within the close grace.
async fn flush_outbox<S: Io>(ws: &mut Ws<S>, slot: &Slot, srv: &Shared) {
    let res = timeout(srv.cfg.close_grace, async {
        while let Some(frame) = slot.pop() {
            ws.feed(Message::Text(frame)).await?;
        }
        ws.flush().await
    })
    .await;
    if !matches!(res, Ok(Ok(()))) {
        debug!("outbox not flushed before close");
    }
}

/// Sends a close frame and waits (bounded) for the client's reply.
async fn close<S: Io>(ws: &mut Ws<S>, code: u16, reason: &str, srv: &Shared) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    match timeout(srv.cfg.close_grace, ws.close(Some(frame))).await {
        Ok(Ok(())) => finish(ws, srv).await,
        _ => debug!("close frame not sent"),
    }
}

/// Reads until the close handshake completes or the grace runs out.
async fn finish<S: Io>(ws: &mut Ws<S>, srv: &Shared) {
    let drained = timeout(srv.cfg.close_grace, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    if drained.is_err() {
        debug!("client did not complete the close handshake");
    }
}

/// What woke the connection task.
enum Event {
    Frame(Message),
    ReadError(WsError),
    Closed,
    Timer,
    Kicked(Kick),
}

/// Runs the registered client until it ends.
async fn drive<S: Io>(ws: &mut Ws<S>, slot: &Arc<Slot>, srv: &Shared) -> Ending {
    let cfg = &srv.cfg;
    let reg = &srv.reg;
    let start = Instant::now();
    let mut last_seen = start;
    let mut next_ping = srv.ping_slot(start + cfg.ping_interval);
    let timer = tokio::time::sleep_until(next_ping.min(start + cfg.ping_timeout));
    tokio::pin!(timer);
    let mut bucket = Bucket::new(cfg.rate_limit, cfg.rate_burst, start);
    let mut dropped: u32 = 0;
    loop {
        let ev = poll_fn(|cx| poll_event(ws, slot, timer.as_mut(), cx)).await;
        let msg = match ev {
            Event::Kicked(k) => return Ending::Kicked(k),
            Event::Closed => return Ending::Left,
            Event::Timer => {
                // The timer is only reset here: a frame moves the deadline
                // later, and the next wake-up recomputes it.
                let now = Instant::now();
                let deadline = last_seen + cfg.ping_timeout;
                if now >= deadline {
                    return Ending::Timeout;
                }
                if now >= next_ping {
                    reg.send_own(slot, Utf8Bytes::from_static(PING));
                    next_ping = srv.ping_slot(now + cfg.ping_interval);
                }
                timer.as_mut().reset(next_ping.min(deadline));
                continue;
            }
            Event::ReadError(WsError::Capacity(CapacityError::MessageTooLong { .. })) => {
                too_large(slot, srv);
                return Ending::TooLarge;
            }
            Event::ReadError(WsError::Utf8(_)) => {
                reg.send_error(slot, ErrorCode::BadMessage, "text frame is not UTF-8");
                return Ending::BadUtf8;
            }
            Event::ReadError(e) => {
                debug!(id = %slot.id, "read: {e}");
                return Ending::Left;
            }
            Event::Frame(msg) => msg,
        };
        let now = Instant::now();
        last_seen = now;
        if let Message::Close(_) = msg {
            return Ending::Left;
        }
        if !bucket.take(now) {
            dropped += 1;
            reg.send_error(
                slot,
                ErrorCode::RateLimited,
                format!(
                    "over {} frames/s (burst {}); frame dropped",
                    cfg.rate_limit, cfg.rate_burst
                ),
            );
            if dropped >= cfg.rate_close_after {
                return Ending::RateLimited;
            }
            continue;
        }
        match msg {
            Message::Text(text) => {
                if text.len() > cfg.max_message_bytes {
                    too_large(slot, srv);
                    return Ending::TooLarge;
                }
                on_text(&text, slot, srv);
            }
            Message::Binary(b) => {
                if b.len() > cfg.max_message_bytes {
                    too_large(slot, srv);
                    return Ending::TooLarge;
                }
                reg.send_error(slot, ErrorCode::BadMessage, "binary frames are not allowed");
            }
            // WebSocket-level pings are answered by the library; like every
            // frame they count as liveness.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {}
        }
    }
}

fn too_large(slot: &Arc<Slot>, srv: &Shared) {
    let msg = format!(
        "message over the limit of {} bytes",
        srv.cfg.max_message_bytes
    );
    srv.reg.send_error(slot, ErrorCode::TooLarge, msg);
}

/// Handles one text frame from the client.
fn on_text(text: &str, slot: &Arc<Slot>, srv: &Shared) {
    let reg = &srv.reg;
    let msg = match ClientMsg::parse(text) {
        Ok(msg) => msg,
        Err(e) => return reg.send_error(slot, e.code(), e.to_string()),
    };
    let from = || slot.id.to_string();
    let out = match msg {
        ClientMsg::Pong => return,
        ClientMsg::Pair { peer_id } => {
            if let Err(code) = reg.pair(slot, &peer_id) {
                let text = match code {
                    ErrorCode::SelfPair => "cannot pair with yourself".to_string(),
                    ErrorCode::AlreadyPaired => format!(
                        "already paired with {}; unpair first",
                        slot.peer_id().as_deref().unwrap_or("?")
                    ),
                    ErrorCode::UnknownPeer => format!("no client with ID {peer_id:?}"),
                    ErrorCode::PeerBusy => format!("{peer_id} is paired with someone else"),
                    other => other.to_string(),
                };
                reg.send_error(slot, code, text);
            }
            return;
        }
        ClientMsg::Unpair => {
            if let Err(code) = reg.unpair(slot) {
                reg.send_error(slot, code, "not paired");
            }
            return;
        }
        ClientMsg::Offer { sdp } => ServerMsg::Offer { sdp, from: from() },
        ClientMsg::Answer { sdp } => ServerMsg::Answer { sdp, from: from() },
        ClientMsg::Candidate { candidate } => ServerMsg::Candidate {
            candidate,
            from: from(),
        },
    };
    if let Relayed::NotPaired = reg.relay(slot, out.to_json().into()) {
        reg.send_error(slot, ErrorCode::NotPaired, "not paired: nothing relayed");
    }
}

/// One step of the connection: moves queued frames to the socket, then
/// reports a kick, the timer, or the next incoming frame.
fn poll_event<S: Io>(
    ws: &mut Ws<S>,
    slot: &Slot,
    timer: Pin<&mut Sleep>,
    cx: &mut Context<'_>,
) -> Poll<Event> {
    slot.waker.register(cx.waker());
    if let Some(k) = slot.ended() {
        return Poll::Ready(Event::Kicked(k));
    }
    // Write while the socket takes it; a full socket leaves frames queued in
    // the outbox, whose bound then drops this client.
    loop {
        match ws.poll_ready_unpin(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Poll::Ready(Event::Closed),
            Poll::Pending => break,
        }
        let Some(frame) = slot.pop() else { break };
        if ws.start_send_unpin(Message::Text(frame)).is_err() {
            return Poll::Ready(Event::Closed);
        }
    }
    if let Poll::Ready(Err(_)) = ws.poll_flush_unpin(cx) {
        return Poll::Ready(Event::Closed);
    }
    if timer.poll(cx).is_ready() {
        return Poll::Ready(Event::Timer);
    }
    match ws.poll_next_unpin(cx) {
        Poll::Ready(Some(Ok(msg))) => Poll::Ready(Event::Frame(msg)),
        Poll::Ready(Some(Err(e))) => Poll::Ready(Event::ReadError(e)),
        Poll::Ready(None) => Poll::Ready(Event::Closed),
        Poll::Pending => Poll::Pending,
    }
}

/// Token bucket: `rate` frames per second, at most `burst` in a row.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self {
            tokens: burst as f64,
            rate: rate as f64,
            burst: burst as f64,
            last: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
