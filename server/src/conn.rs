//! One client connection: the HTTP head, the upgrade, then a single task that
//! reads frames, writes its outbox, sends pings and enforces the deadline.
//!
//! All socket I/O happens in one poll function ([`poll_event`]) so that a
//! client that stops reading can never block this task's reads, timer or
//! kick: writes only move frames from the outbox while the socket accepts
//! them. Frame handling is synchronous; replies go through the outbox.
//!
//! A message over [`FRAGMENT`] bytes goes out as several frames (RFC 6455
//! 5.4; every client library reassembles them): the library copies what it
//! is given into a write buffer that never shrinks, so handing it a whole
//! 64 KiB message (384 KiB once JSON escapes control characters) would pin
//! that much per connection for as long as the connection lives.

use std::future::poll_fn;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use p2p_proto::signal::{ClientFrame, DisconnectReason, ErrorCode, ServerMsg, close_code};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, timeout};
use tracing::debug;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes, error::CapacityError};

use crate::directory::{Kick, Refusal, Relayed, Slot, Unavailable};
use crate::http::{self, Head, Reply, Route};
use crate::limits::{Refused, Ticket};
use crate::read_ahead::ReadAhead;
use crate::ws::Ws;
use crate::{Shared, id, proxy};

/// Largest frame signald writes; longer messages are fragmented.
pub const FRAGMENT: usize = 8 * 1024;

/// The library's write buffer: small writes are batched up to this.
pub const WRITE_BUFFER: usize = 8 * 1024;

/// Connections refused at accept being answered at once, at most; past
/// that a refused connection is closed without an answer.
const MAX_LINGERING: usize = 1024;

/// How long a refused connection's request is read and dropped.
const LINGER: Duration = Duration::from_secs(1);

/// A client's byte stream: plain TCP, or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

const PING: &str = r#"{"type":"ping"}"#;

/// Serves one admitted connection to its end. `ticket` counts it for its
/// client's address until then.
///
/// A connection's task is as large as the largest state its future can be
/// in, for as long as it lives. So everything up to a registered client
/// (the HTTP head, the upgrade, the registration) runs in a box of its own,
/// freed once it is done, and so does the close: the task itself holds only
/// what a registered client needs between frames.
///
/// (A block rather than an `async fn`: an `async fn` keeps a second copy
/// of each argument it moves, for the whole life of the connection.)
#[allow(clippy::manual_async_fn)]
pub fn handle<S: Io>(
    stream: S,
    peer: IpAddr,
    mut ticket: Ticket,
    srv: Arc<Shared>,
    done: Done,
) -> impl Future<Output = ()> + Send {
    async move {
        // Taken apart in the `let` itself: a value matched by `if let`
        // lives, a second copy beside its parts, until the block ends.
        let (mut ws, slot, turn) = match cold(open(stream, peer, &mut ticket, &srv)).await {
            Some(opened) => opened,
            None => return,
        };
        session(&mut ws, slot, turn, &srv).await;
        drop(ticket);
        drop(done);
    }
}

/// Held by every connection's task until it ends: shutdown waits for the
/// last one to be dropped.
pub type Done = tokio::sync::mpsc::Sender<()>;

/// Everything before a registered client: the request head, an HTTP answer
/// or the upgrade, the ID asked for, the registration. The WebSocket, the
/// client, and whether it was given TURN credentials; `None` when there is
/// nothing more to do with this connection.
async fn open<S: Io>(
    mut stream: S,
    peer: IpAddr,
    ticket: &mut Ticket,
    srv: &Shared,
) -> Option<(Ws<ReadAhead<S>>, Arc<Slot>, bool)> {
    let head = tokio::select! {
        head = read_head(&mut stream, srv) => head,
        // Shed for a newcomer (limits.rs): closed without an answer.
        _ = ticket.shed() => {
            debug!("handshake shed to make room");
            None
        }
    };
    let (buf, len) = head?;
    ticket.handshake_done();
    let req = http::parse(&buf[..len]);
    // Behind a trusted proxy the client is known only now.
    let client = proxy::client_ip(peer, &req.forwarded_for, &srv.cfg.trusted_proxies);
    if proxy::is_trusted(peer, &srv.cfg.trusted_proxies)
        && let Err(why) = ticket.attribute(client)
    {
        answer(&mut stream, refusal(why)).await;
        return None;
    }
    let res = match req.route {
        Route::Healthz => healthz(&mut stream, srv).await,
        Route::Metrics if srv.metrics_public => metrics(&mut stream, srv).await,
        Route::Metrics => {
            answer(&mut stream, Reply::NotFound).await;
            return None;
        }
        Route::Refuse(reply) => {
            answer(&mut stream, reply).await;
            return None;
        }
        Route::Upgrade {
            query,
            accept,
            bearer,
        } => {
            if let Err(why) = ticket.register() {
                answer(&mut stream, refusal(why)).await;
                return None;
            }
            // TURN credentials are an allowance of the client's address.
            let turn = srv.cfg.turn.is_some() && ticket.take_turn();
            if let Err(e) = http::accept(&mut stream, &accept).await {
                debug!("upgrade response: {e}");
                return None;
            }
            let mut ws =
                Ws::from_partially_read(ReadAhead::new(stream), buf[len..].to_vec(), srv.ws_config);
            drop(buf);
            let slot = register(&mut ws, query, bearer, client, turn, srv).await?;
            return Some((ws, slot, turn));
        }
    };
    if let Err(e) = res {
        debug!("http response: {e}");
    }
    None
}

/// Reads the request head within the handshake timeout; answers one that
/// is too large. `None`: nothing more to do with this connection.
async fn read_head<S: Io>(stream: &mut S, srv: &Shared) -> Option<(Vec<u8>, usize)> {
    match timeout(srv.cfg.handshake_timeout, http::read_head(stream)).await {
        Ok(Ok(Head::Complete { buf, len })) => Some((buf, len)),
        Ok(Ok(Head::TooLarge)) => {
            answer(stream, Reply::HeadTooLarge).await;
            None
        }
        Ok(Err(e)) => {
            debug!("request head: {e}");
            None
        }
        Err(_) => {
            debug!("request head not complete in time");
            None
        }
    }
}

/// Refuses a request, then reads and drops what the client still sends
/// for a moment: closing with unread bytes would reset the connection, and
/// a reset can make the client lose the answer it was sent.
async fn answer<S: Io>(stream: &mut S, reply: Reply) {
    if let Err(e) = http::refuse(stream, reply).await {
        debug!("http response: {e}");
        return;
    }
    let drained = timeout(LINGER, async {
        let mut sink = [0u8; 1024];
        let mut total = 0;
        while total < 64 * 1024 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    if drained.is_err() {
        debug!("refused client still sending after {LINGER:?}");
    }
}

/// `200 ok`, or with `--cluster` a `503` saying why this node cannot serve
/// (fenced, or Redis unreachable): a load balancer then sends clients to
/// another node.
async fn healthz<S: Io>(stream: &mut S, srv: &Shared) -> std::io::Result<()> {
    match srv.directory.healthy() {
        Ok(()) => http::ok(stream, "text/plain", "ok\n").await,
        Err(why) => {
            answer(stream, Reply::Unavailable(why)).await;
            Ok(())
        }
    }
}

async fn metrics<S: Io>(stream: &mut S, srv: &Shared) -> std::io::Result<()> {
    let body = srv.render_metrics();
    http::ok(stream, "text/plain; version=0.0.4; charset=utf-8", &body).await
}

/// The HTTP answer to a limit.
fn refusal(why: Refused) -> Reply {
    match why {
        Refused::ConnsPerIp => Reply::TooManyRequests("too many connections from your address\n"),
        Refused::HandshakesPerIp => {
            Reply::TooManyRequests("too many unfinished handshakes from your address\n")
        }
        Refused::RegistrationsPerIp => {
            Reply::TooManyRequests("too many new WebSocket connections from your address\n")
        }
        Refused::Handshakes => Reply::Unavailable("too many handshakes in progress; try again\n"),
    }
}

/// Answers a connection refused at accept, before its head is read: the
/// status at once (HTTP allows answering before the request is read), then
/// the request is drained as for every refusal. Over TLS there is no
/// answer: the TLS handshake is the very cost being limited.
pub async fn refuse_unread(mut stream: TcpStream, why: Refused, srv: &Shared) {
    debug!(reason = why.as_str(), "refused at accept");
    if srv.cfg.tls.is_some() {
        return;
    }
    // Each answer holds its socket for up to LINGER: bounded, so that a
    // flood of refused connections cannot pile up.
    if srv.lingering.fetch_add(1, Ordering::Relaxed) < MAX_LINGERING {
        answer(&mut stream, refusal(why)).await;
    }
    srv.lingering.fetch_sub(1, Ordering::Relaxed);
}

/// One connection to `--metrics-listen`: `/metrics` and `/healthz` only.
pub async fn serve_metrics(mut stream: TcpStream, srv: &Shared) {
    let Some((buf, len)) = read_head(&mut stream, srv).await else {
        return;
    };
    let res = match http::parse(&buf[..len]).route {
        Route::Healthz => healthz(&mut stream, srv).await,
        Route::Metrics => metrics(&mut stream, srv).await,
        Route::Refuse(Reply::MethodNotAllowed) => {
            return answer(&mut stream, Reply::MethodNotAllowed).await;
        }
        Route::Refuse(_) | Route::Upgrade { .. } => {
            return answer(&mut stream, Reply::NotFound).await;
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
    /// A cluster node could not carry out its request (Redis unreachable).
    Unavailable,
}

/// Registers the client under the ID it asked for, or refuses it.
async fn register<S: Io>(
    ws: &mut Ws<S>,
    query: Option<String>,
    bearer: Result<Option<String>, &'static str>,
    client: IpAddr,
    turn: bool,
    srv: &Shared,
) -> Option<Arc<Slot>> {
    let ask = match id::parse_ask(query.as_deref(), bearer) {
        Ok(ask) => ask,
        Err(msg) => {
            refuse(ws, srv, ErrorCode::BadId, msg, close_code::BAD_ID).await;
            return None;
        }
    };
    let registered = srv
        .directory
        .register(ask.id, ask.token, client, |id| srv.welcome(id, turn))
        .await;
    let (code, msg, close_with) = match registered {
        Ok(slot) => {
            debug!(id = %slot.id(), "registered");
            return Some(slot);
        }
        Err(Refusal::IdTaken) => (
            ErrorCode::IdTaken,
            "this ID is held by another connection",
            close_code::ID_TAKEN,
        ),
        Err(Refusal::ServerFull) => (
            ErrorCode::ServerFull,
            "the server has reached its client limit",
            close_code::TRY_AGAIN_LATER,
        ),
        Err(Refusal::ShuttingDown) => {
            close(ws, close_code::GOING_AWAY, "server shutting down", srv).await;
            return None;
        }
        Err(Refusal::Unavailable) => (
            ErrorCode::ServerFull,
            "this node cannot reach the cluster's state (Redis); try again",
            close_code::TRY_AGAIN_LATER,
        ),
    };
    refuse(ws, srv, code, msg, close_with).await;
    None
}

impl Ending {
    /// The close code and reason the client gets, and what its peer is told.
    fn close(&self) -> (u16, &'static str, DisconnectReason) {
        match self {
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
            Ending::Kicked(Kick::Evicted) => (
                close_code::POLICY,
                "not reading (server buffer budget)",
                DisconnectReason::Left,
            ),
            Ending::Kicked(Kick::Shutdown | Kick::Own) => (
                close_code::GOING_AWAY,
                "server shutting down",
                DisconnectReason::Left,
            ),
            Ending::Kicked(Kick::Unavailable) | Ending::Unavailable => (
                close_code::TRY_AGAIN_LATER,
                "cluster unavailable",
                DisconnectReason::Left,
            ),
        }
    }
}

/// A registered client, to its end and its close.
async fn session<S: Io>(ws: &mut Ws<S>, slot: Arc<Slot>, turn: bool, srv: &Shared) {
    let mut out = Writer::default();
    let ending = drive(ws, &slot, &mut out, turn, srv).await;
    cold(close_session(ws, slot, out, ending, srv)).await;
}

/// Tells the directory the client is gone, then closes its WebSocket as
/// `ending` says.
async fn close_session<S: Io>(
    ws: &mut Ws<S>,
    slot: Arc<Slot>,
    mut out: Writer,
    ending: Ending,
    srv: &Shared,
) {
    let (code, text, reason) = ending.close();
    // The peer is told now, before any close handshake with this client.
    srv.directory.remove(&slot, reason).await;
    if matches!(ending, Ending::Timeout) {
        srv.directory.metrics().timed_out();
    }
    debug!(id = %slot.id(), code, reason = ?reason, "closing");
    match ending {
        // The close handshake already ran or the socket is gone.
        Ending::Left => finish(ws, srv).await,
        // Whatever is queued would never be read (and is already freed).
        Ending::Kicked(Kick::SlowReader | Kick::Evicted | Kick::Unavailable) => {
            close(ws, code, text, srv).await
        }
        _ => {
            flush_outbox(ws, &slot, &mut out, srv).await;
            close(ws, code, text, srv).await;
        }
    }
}

/// A step a connection takes once (the handshake, a refusal, the close),
/// allocated only while it runs: a connection's task is as large as the
/// largest state its future can be in, for as long as it lives, and the
/// idle state that most connections spend their life in is the smallest.
fn cold<'a, T>(
    f: impl Future<Output = T> + Send + 'a,
) -> Pin<Box<dyn Future<Output = T> + Send + 'a>> {
    Box::pin(f)
}

/// Sends one error frame, then closes: the upgrade could not be honoured.
async fn refuse<S: Io>(ws: &mut Ws<S>, srv: &Shared, code: ErrorCode, msg: &str, close_with: u16) {
    srv.directory.metrics().error(code);
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
async fn flush_outbox<S: Io>(ws: &mut Ws<S>, slot: &Slot, out: &mut Writer, srv: &Shared) {
    let res = timeout(srv.cfg.close_grace, async {
        while let Some(msg) = out.next(slot) {
            ws.feed(msg).await?;
        }
        ws.flush().await?;
        out.flushed(slot);
        Ok::<(), WsError>(())
    })
    .await;
    if !matches!(res, Ok(Ok(()))) {
        debug!("outbox not flushed before close");
    }
}

/// Moves frames from the outbox to the library, a message at a time, and
/// tells the outbox when what it took has reached the socket.
#[derive(Default)]
struct Writer {
    /// The rest of a message being sent in pieces.
    part: Option<Fragments>,
    /// Bytes of whole messages handed to the library, not yet flushed.
    handed: usize,
}

impl Writer {
    /// The next frame to hand to the library, if any.
    fn next(&mut self, slot: &Slot) -> Option<Message> {
        if let Some(part) = &mut self.part {
            let (msg, last) = part.next();
            if last {
                self.handed += part.data.len();
                self.part = None;
            }
            return Some(msg);
        }
        let frame = slot.pop()?;
        if frame.len() <= FRAGMENT {
            self.handed += frame.len();
            return Some(Message::Text(frame));
        }
        self.part = Some(Fragments {
            data: frame.into(),
            sent: 0,
        });
        self.next(slot)
    }

    /// The library's buffer is written to the socket.
    fn flushed(&mut self, slot: &Slot) {
        if self.handed > 0 {
            slot.written(self.handed);
            self.handed = 0;
        }
    }
}

/// A text message cut into frames of at most [`FRAGMENT`] bytes, each cut
/// at a character boundary (the message is UTF-8; some clients check each
/// frame on its own).
struct Fragments {
    data: Bytes,
    sent: usize,
}

impl Fragments {
    /// The next frame, and whether it is the last.
    fn next(&mut self) -> (Message, bool) {
        let mut end = (self.sent + FRAGMENT).min(self.data.len());
        // A UTF-8 continuation byte is 0b10xx_xxxx: back up to a char start.
        while end < self.data.len() && end > self.sent + 1 && self.data[end] & 0xC0 == 0x80 {
            end -= 1;
        }
        let opcode = if self.sent == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let last = end == self.data.len();
        let frame = Frame::message(self.data.slice(self.sent..end), opcode, last);
        self.sent = end;
        (Message::Frame(frame), last)
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
/// Serves a registered client to its end. `turn`: it was given TURN
/// credentials, renewed at half their lifetime while it stays.
async fn drive<S: Io>(
    ws: &mut Ws<S>,
    slot: &Arc<Slot>,
    out: &mut Writer,
    turn: bool,
    srv: &Shared,
) -> Ending {
    let cfg = &srv.cfg;
    let dir = &srv.directory;
    let start = Instant::now();
    // Checked at ping times: the configuration keeps the lifetime at four
    // ping intervals or more, so a renewal is never late.
    let mut renew_at = match (&cfg.turn, turn) {
        (Some(t), true) => Some(start + t.ttl / 2),
        _ => None,
    };
    let mut last_seen = start;
    let mut next_ping = srv.ping_slot(start + cfg.ping_interval);
    let timer = tokio::time::sleep_until(next_ping.min(start + cfg.ping_timeout));
    tokio::pin!(timer);
    let mut bucket = Bucket::new(cfg.rate_limit, cfg.rate_burst, start);
    let mut bytes = Bucket::new(cfg.rate_limit_bytes, cfg.rate_burst_bytes, start);
    let mut dropped: u32 = 0;
    loop {
        // What the frame asks for that may wait; a block of its own, so
        // that the frame is gone while it waits (the task is sized for the
        // largest state it can wait in).
        let req = {
            let ev = poll_fn(|cx| poll_event(ws, slot, out, timer.as_mut(), cx)).await;
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
                        dir.send_own(slot, Utf8Bytes::from_static(PING));
                        next_ping = srv.ping_slot(now + cfg.ping_interval);
                    }
                    if let (Some(at), Some(t)) = (renew_at, &cfg.turn)
                        && now >= at
                    {
                        dir.send_own(slot, srv.ice_servers_frame(slot.id()));
                        renew_at = Some(now + t.ttl / 2);
                    }
                    timer.as_mut().reset(next_ping.min(deadline));
                    continue;
                }
                Event::ReadError(WsError::Capacity(CapacityError::MessageTooLong { .. })) => {
                    too_large(slot, srv);
                    return Ending::TooLarge;
                }
                Event::ReadError(WsError::Utf8(_)) => {
                    dir.send_error(slot, ErrorCode::BadMessage, "text frame is not UTF-8");
                    return Ending::BadUtf8;
                }
                Event::ReadError(e) => {
                    debug!(id = %slot.id(), "read: {e}");
                    return Ending::Left;
                }
                Event::Frame(msg) => msg,
            };
            let now = Instant::now();
            last_seen = now;
            if let Message::Close(_) = msg {
                return Ending::Left;
            }
            // A frame dropped by either limit: its error, and the close once
            // too many were dropped.
            let mut drop_frame = |why: String| {
                dropped += 1;
                dir.send_error(slot, ErrorCode::RateLimited, why);
                dropped >= cfg.rate_close_after
            };
            if !bucket.take(now, 1) {
                let why = format!(
                    "over {} frames/s (burst {}); frame dropped",
                    cfg.rate_limit, cfg.rate_burst
                );
                if drop_frame(why) {
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
                    // The sender pays for its bursts, not its peer's queue.
                    if !bytes.take(now, text.len()) {
                        let why = format!(
                            "over {} bytes/s (burst {}); frame dropped",
                            cfg.rate_limit_bytes, cfg.rate_burst_bytes
                        );
                        if drop_frame(why) {
                            return Ending::RateLimited;
                        }
                        continue;
                    }
                    match on_text(&text, slot, srv) {
                        Ok(req) => req,
                        Err(Unavailable) => return Ending::Unavailable,
                    }
                }
                Message::Binary(b) => {
                    if b.len() > cfg.max_message_bytes {
                        too_large(slot, srv);
                        return Ending::TooLarge;
                    }
                    dir.send_error(slot, ErrorCode::BadMessage, "binary frames are not allowed");
                    None
                }
                // WebSocket-level pings are answered by the library; like every
                // frame they count as liveness.
                Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => None,
            }
        };
        if let Some(req) = req
            && cold(request(req, slot, srv)).await.is_err()
        {
            return Ending::Unavailable;
        }
    }
}

fn too_large(slot: &Arc<Slot>, srv: &Shared) {
    let msg = format!(
        "message over the limit of {} bytes",
        srv.cfg.max_message_bytes
    );
    srv.directory.send_error(slot, ErrorCode::TooLarge, msg);
}

/// What a client asked for that may wait on the directory (a cluster node
/// asks Redis): carried out in a box of its own, so that the connection's
/// task is not sized for it.
enum Request {
    Pair(String),
    Unpair,
}

/// Handles one text frame from the client, but for the requests that may
/// wait, which it returns. `Err`: a cluster node could not carry it out;
/// the connection then ends with 1013.
fn on_text(text: &str, slot: &Arc<Slot>, srv: &Shared) -> Result<Option<Request>, Unavailable> {
    let dir = &srv.directory;
    let msg = match ClientFrame::parse(text) {
        Ok(msg) => msg,
        Err(e) => {
            dir.send_error(slot, e.code(), e.to_string());
            return Ok(None);
        }
    };
    let out = match msg {
        ClientFrame::Pong => return Ok(None),
        ClientFrame::Pair { peer_id } => {
            return Ok(Some(Request::Pair(peer_id.as_str().to_string())));
        }
        ClientFrame::Unpair => return Ok(Some(Request::Unpair)),
        // Written in an allocation of its exact size: what is counted
        // against the outbox bounds is what is held.
        ClientFrame::Relay(frame) => frame.to_json(slot.id()),
    };
    if let Relayed::NotPaired = dir.relay(slot, out.into())? {
        dir.send_error(slot, ErrorCode::NotPaired, "not paired: nothing relayed");
    }
    Ok(None)
}

/// Carries out a `pair` or `unpair`; a refusal is an error frame.
async fn request(req: Request, slot: &Arc<Slot>, srv: &Shared) -> Result<(), Unavailable> {
    let dir = &srv.directory;
    match req {
        Request::Pair(peer_id) => {
            if let Err(code) = dir.pair(slot, &peer_id).await? {
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
                dir.send_error(slot, code, text);
            }
        }
        Request::Unpair => {
            if let Err(code) = dir.unpair(slot).await? {
                dir.send_error(slot, code, "not paired");
            }
        }
    }
    Ok(())
}

/// One step of the connection: moves queued frames to the socket, then
/// reports a kick, the timer, or the next incoming frame.
fn poll_event<S: Io>(
    ws: &mut Ws<S>,
    slot: &Slot,
    out: &mut Writer,
    timer: Pin<&mut Sleep>,
    cx: &mut Context<'_>,
) -> Poll<Event> {
    slot.register(cx);
    if let Some(k) = slot.ended() {
        return Poll::Ready(Event::Kicked(k));
    }
    // Write while the socket takes it; a full socket leaves frames queued in
    // the outbox, whose bound then drops this client.
    loop {
        match ws.poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Poll::Ready(Event::Closed),
            Poll::Pending => break,
        }
        let Some(msg) = out.next(slot) else { break };
        if ws.start_send(cx, msg).is_err() {
            return Poll::Ready(Event::Closed);
        }
    }
    match ws.poll_flush(cx) {
        Poll::Ready(Ok(())) => out.flushed(slot),
        Poll::Ready(Err(_)) => return Poll::Ready(Event::Closed),
        Poll::Pending => {}
    }
    if timer.poll(cx).is_ready() {
        return Poll::Ready(Event::Timer);
    }
    match ws.poll_next(cx) {
        Poll::Ready(Some(Ok(msg))) => Poll::Ready(Event::Frame(msg)),
        Poll::Ready(Some(Err(e))) => Poll::Ready(Event::ReadError(e)),
        Poll::Ready(None) => Poll::Ready(Event::Closed),
        Poll::Pending => Poll::Pending,
    }
}

/// Token bucket: `rate` tokens per second, at most `burst` saved up; a
/// frame takes one (the frame limit) or its length (the byte budget).
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

    fn take(&mut self, now: Instant, amount: usize) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        let amount = amount as f64;
        if self.tokens >= amount {
            self.tokens -= amount;
            true
        } else {
            false
        }
    }
}
