//! The link to signald: one task owns the WebSocket, reconnects forever with
//! capped exponential backoff and jitter, answers pings, and declares the
//! server dead when nothing arrives for the `ping_timeout_ms` its welcome
//! gave. The engine sees only [`SigEvent`]s and sends [`ClientMsg`]s.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use p2p_proto::signal::{ClientMsg, IceServer, ServerMsg, close_code, valid_id};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::throttle::{Throttle, excerpt};

/// How long a connection attempt (TCP, upgrade and welcome) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First reconnect delay; doubles up to the configured maximum.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// How long p2pd waits before taking its ID back after another connection
/// with our ID and token replaced ours (most likely a second p2pd with the
/// same `--id` and state): long enough that two such daemons do not
/// flap every second, whatever `--reconnect-max` says.
const AFTER_REPLACED: Duration = Duration::from_secs(10);

/// What the engine hears from the signaling task.
#[derive(Debug)]
pub enum SigEvent {
    /// Connected and welcomed.
    Up {
        id: String,
        ping_interval_ms: u64,
        ping_timeout_ms: u64,
        ice_servers: Vec<IceServer>,
    },
    /// A frame from signald (never `welcome`, `ping` or `ice_servers`).
    Msg(ServerMsg),
    /// Fresh TURN credentials: the welcome's `ice_servers`, replaced.
    IceServers(Vec<IceServer>),
    /// A liveness check ([`Liveness::check`]) got no frame in time; the
    /// connection is kept until the engine says otherwise.
    Unanswered,
    /// The connection ended or an attempt failed; a retry is scheduled.
    Down { reason: String, retry_in: Duration },
}

pub struct SigConfig {
    pub server: String,
    pub id: Option<String>,
    pub token: Option<String>,
    pub reconnect_max: Duration,
    /// For `wss://` servers.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Starts the signaling task. Outgoing frames queued while disconnected are
/// dropped at the next connect: they belonged to a session that is over.
///
/// `stopping` says the daemon is stopping: from then on no new connection
/// is made (a stopping daemon never registers again), while a connected
/// session stays up for the engine's last frames (a drained link's
/// `unpair`) until `shutdown`.
///
/// The returned [`Liveness`] checks the connection on demand (see there).
pub fn start(
    cfg: SigConfig,
    events: mpsc::Sender<SigEvent>,
    stopping: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
) -> (
    mpsc::Sender<ClientMsg>,
    Liveness,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(1024);
    let live = Liveness::default();
    let task = tokio::spawn(run(cfg, events, rx, live.clone(), stopping, shutdown));
    (tx, live, task)
}

/// The engine's say over the signaling connection. When the data path goes
/// silent our network may have changed, and then the WebSocket is most
/// likely dead too, silently, until signald's ping timeout (45 s by
/// default). [`Liveness::check`] sends a WebSocket ping, which signald
/// answers at once; no frame within [`CHECK_TIMEOUT`] is reported as
/// [`SigEvent::Unanswered`], and nothing more: a busy signald or machine
/// may be slow, and a needless reconnect would end the pairing at signald
/// (a browser peer may then close its connection). Only when the path
/// turns out silent too does the engine call [`Liveness::reconnect`].
#[derive(Clone, Default)]
pub struct Liveness {
    check: Arc<Notify>,
    reconnect: Arc<Notify>,
}

impl Liveness {
    /// Pings signald now (unless a check is under way).
    pub fn check(&self) {
        self.check.notify_one();
    }

    /// Drops the connection and makes a new one at once.
    pub fn reconnect(&self) {
        self.reconnect.notify_one();
    }
}

/// How long a liveness check of the signaling connection waits for any
/// frame from signald (its pong, usually) before it is reported
/// unanswered. A WebSocket ping costs signald a few bytes.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(300);

/// The upgrade URL: the server URL plus the `id` query parameter. The
/// token goes in an `Authorization: Bearer` header instead (see
/// `connect`): reverse proxies log request lines, not that header.
pub fn connect_url(server: &str, id: Option<&str>) -> String {
    let mut url = server.to_string();
    if let Some(id) = id {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("id=");
        url.push_str(&percent_encode(id));
    }
    url
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Capped exponential backoff with "equal jitter": half fixed, half random,
/// so that many daemons restarted together do not reconnect in lockstep.
fn backoff(attempt: u32, max: Duration) -> Duration {
    let exp = BACKOFF_START.saturating_mul(1u32 << attempt.min(16));
    let d = exp.min(max);
    let mut r = [0u8; 4];
    let frac = match getrandom::fill(&mut r) {
        Ok(()) => u32::from_le_bytes(r) as f64 / u32::MAX as f64,
        Err(_) => 0.5,
    };
    d / 2 + d.mul_f64(frac / 2.0)
}

async fn run(
    cfg: SigConfig,
    events: mpsc::Sender<SigEvent>,
    mut out: mpsc::Receiver<ClientMsg>,
    live: Liveness,
    mut stopping: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let url = connect_url(&cfg.server, cfg.id.as_deref());
    let mut attempt = 0u32;
    loop {
        if *shutdown.borrow() || *stopping.borrow() {
            return;
        }
        // (why, whether to wait before taking our ID back)
        let attempt_connect = timeout(
            CONNECT_TIMEOUT,
            connect(&url, cfg.token.as_deref(), cfg.tls.as_ref()),
        );
        let connected = tokio::select! {
            r = attempt_connect => r,
            // An attempt under way is dropped: no registration after stop.
            _ = stopping.changed() => return,
        };
        // (why, whether to wait before taking our ID back, whether to
        // try again at once)
        let (reason, replaced, at_once) = match connected {
            Err(_) => (
                format!("no welcome from {} within {CONNECT_TIMEOUT:?}", cfg.server),
                false,
                false,
            ),
            Ok(Err(e)) => (e, false, false),
            Ok(Ok((ws, welcome))) => {
                attempt = 0;
                while out.try_recv().is_ok() {}
                let ServerMsg::Welcome {
                    id,
                    ping_interval_ms,
                    ping_timeout_ms,
                    ice_servers,
                    ..
                } = welcome
                else {
                    unreachable!("connect returns a welcome")
                };
                tracing::info!(%id, server = %cfg.server, "signaling connected");
                if events
                    .send(SigEvent::Up {
                        id,
                        ping_interval_ms,
                        ping_timeout_ms,
                        ice_servers,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                let timeout = Duration::from_millis(ping_timeout_ms.max(1));
                match session(ws, timeout, &events, &mut out, &live, &mut shutdown).await {
                    // Another connection took our ID with our token: most
                    // likely a second p2pd with the same --id. Retrying at
                    // once would take it back and start a tug of war, so
                    // wait a while and say so.
                    Ended::Replaced => (
                        format!(
                            "replaced at signald by another connection with our ID and token (a second p2pd with --id {}?)",
                            cfg.id.as_deref().unwrap_or("?")
                        ),
                        true,
                        false,
                    ),
                    Ended::Other(reason) => (reason, false, false),
                    // Our network changed, most likely: the new one may
                    // well reach signald at once.
                    Ended::CheckFailed => (
                        format!(
                            "signald did not answer a liveness check within {} ms while the data path was silent",
                            CHECK_TIMEOUT.as_millis()
                        ),
                        false,
                        true,
                    ),
                }
            }
        };
        if *shutdown.borrow() {
            return;
        }
        let retry_in = if replaced {
            AFTER_REPLACED.max(cfg.reconnect_max)
        } else if at_once {
            Duration::ZERO
        } else {
            backoff(attempt, cfg.reconnect_max)
        };
        attempt = attempt.saturating_add(1);
        tracing::warn!(%reason, ?retry_in, "signaling down");
        if events
            .send(SigEvent::Down { reason, retry_in })
            .await
            .is_err()
        {
            return;
        }
        tokio::select! {
            _ = sleep(retry_in) => {}
            _ = shutdown.changed() => return,
            _ = stopping.changed() => return,
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(
    url: &str,
    token: Option<&str>,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(Ws, ServerMsg), String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    let config = WebSocketConfig::default()
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let connector = tls.map(|t| tokio_tungstenite::Connector::Rustls(t.clone()));
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("cannot connect to {}: {e}", redact(url)))?;
    if let Some(token) = token {
        // A token is printable ASCII (checked when it was read).
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "the token cannot be sent in a header".to_string())?;
        request.headers_mut().insert("Authorization", value);
    }
    let (mut ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, connector)
            .await
            .map_err(
                |e| match crate::tls::explain(&e, crate::tls::host_of(url)) {
                    Some(plain) => plain,
                    None => format!("cannot connect to {}: {e}", redact(url)),
                },
            )?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                // signald's words reach the log and status escaped and cut.
                return match serde_json::from_str::<ServerMsg>(&t) {
                    Ok(w @ ServerMsg::Welcome { .. }) => Ok((ws, w)),
                    Ok(ServerMsg::Error { code, message }) => Err(format!(
                        "signald refused us: {code}: {}",
                        excerpt(&message, 200)
                    )),
                    _ => Err(format!(
                        "expected a welcome from signald, got {}",
                        excerpt(&t, 200)
                    )),
                };
            }
            Some(Ok(Message::Close(Some(cf)))) => {
                return Err(format!(
                    "signald closed the connection: code {} {}",
                    u16::from(cf.code),
                    excerpt(&cf.reason, 200)
                ));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => return Err(format!("unexpected first frame {other:?}")),
            Some(Err(e)) => return Err(format!("signaling connection failed: {e}")),
            None => return Err("signald closed the connection before its welcome".into()),
        }
    }
}

/// Frames naming a peer must name a valid ID: what signald relays is not
/// trusted further than the contract.
fn well_formed(m: &ServerMsg) -> Result<(), String> {
    let id = match m {
        ServerMsg::Paired { peer_id, .. } | ServerMsg::PeerDisconnected { peer_id, .. } => peer_id,
        ServerMsg::Offer { from, .. }
        | ServerMsg::Answer { from, .. }
        | ServerMsg::Candidate { from, .. } => from,
        _ => return Ok(()),
    };
    if valid_id(id) {
        Ok(())
    } else {
        Err(format!("{} is not a valid peer ID", excerpt(id, 70)))
    }
}

/// The frame with signald's free text (an error's message) escaped and
/// cut, as it may reach the log and `status`.
fn escaped(m: ServerMsg) -> ServerMsg {
    match m {
        ServerMsg::Error { code, message } => ServerMsg::Error {
            code,
            message: excerpt(&message, 200),
        },
        other => other,
    }
}

/// The URL without its token, for messages.
fn redact(url: &str) -> String {
    match url.find("token=") {
        Some(i) => {
            let end = url[i..].find('&').map(|j| i + j).unwrap_or(url.len());
            format!("{}token=<hidden>{}", &url[..i], &url[end..])
        }
        None => url.to_string(),
    }
}

/// Why a connected session ended.
enum Ended {
    /// signald closed us with 4002: another connection took our ID with
    /// our token.
    Replaced,
    /// A liveness check got no answer in time, and the engine asked for a
    /// new connection.
    CheckFailed,
    Other(String),
}

/// Runs one connected session; returns why it ended.
async fn session(
    mut ws: Ws,
    ping_timeout: Duration,
    events: &mpsc::Sender<SigEvent>,
    out: &mut mpsc::Receiver<ClientMsg>,
    live: &Liveness,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let mut deadline = Instant::now() + ping_timeout;
    // A liveness check under way: any frame from signald before this
    // instant passes it.
    let mut checking: Option<Instant> = None;
    let mut bad_frames = Throttle::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                // The engine's last frames (a drained link's `unpair`) go
                // first; the engine has stopped, so nothing more comes.
                let _ = timeout(Duration::from_millis(500), async {
                    while let Ok(msg) = out.try_recv() {
                        let text = serde_json::to_string(&msg).expect("client messages serialise");
                        if ws.send(Message::text(text)).await.is_err() {
                            break;
                        }
                    }
                    ws.close(None).await
                })
                .await;
                return Ended::Other("shutting down".into());
            }
            _ = sleep_until(deadline) => {
                return Ended::Other(format!("nothing heard from signald for {} ms", ping_timeout.as_millis()));
            }
            _ = sleep_until(checking.unwrap_or(deadline)), if checking.is_some() => {
                checking = None;
                if events.send(SigEvent::Unanswered).await.is_err() {
                    return Ended::Other("engine stopped".into());
                }
            }
            _ = live.reconnect.notified() => return Ended::CheckFailed,
            _ = live.check.notified(), if checking.is_none() => {
                if let Err(e) = ws.send(Message::Ping(b"p2pd".to_vec().into())).await {
                    return Ended::Other(format!("sending to signald failed: {e}"));
                }
                checking = Some(Instant::now() + CHECK_TIMEOUT);
            }
            msg = out.recv() => {
                let Some(msg) = msg else { return Ended::Other("engine stopped".into()) };
                let text = serde_json::to_string(&msg).expect("client messages serialise");
                if let Err(e) = ws.send(Message::text(text)).await {
                    return Ended::Other(format!("sending to signald failed: {e}"));
                }
            }
            frame = ws.next() => {
                deadline = Instant::now() + ping_timeout;
                checking = None;
                match frame {
                    None => return Ended::Other("signald closed the connection".into()),
                    Some(Err(e)) => return Ended::Other(format!("signaling connection failed: {e}")),
                    Some(Ok(Message::Text(t))) => match serde_json::from_str::<ServerMsg>(&t) {
                        Ok(ServerMsg::Ping) => {
                            let pong = serde_json::to_string(&ClientMsg::Pong).expect("serialises");
                            if let Err(e) = ws.send(Message::text(pong)).await {
                                return Ended::Other(format!("answering ping failed: {e}"));
                            }
                        }
                        Ok(ServerMsg::IceServers { ice_servers }) => {
                            if events.send(SigEvent::IceServers(ice_servers)).await.is_err() {
                                return Ended::Other("engine stopped".into());
                            }
                        }
                        Ok(m) => match well_formed(&m).map(|()| escaped(m)) {
                            Ok(m) => {
                                if events.send(SigEvent::Msg(m)).await.is_err() {
                                    return Ended::Other("engine stopped".into());
                                }
                            }
                            Err(why) => {
                                if let Some(n) = bad_frames.allow() {
                                    tracing::warn!(frame = %excerpt(&t, 200), suppressed = n, "ignoring a frame from signald: {why}");
                                }
                            }
                        },
                        Err(e) => {
                            if let Some(n) = bad_frames.allow() {
                                tracing::warn!(error = %e, frame = %excerpt(&t, 200), suppressed = n, "ignoring a frame from signald");
                            }
                        }
                    },
                    Some(Ok(Message::Close(cf))) => {
                        return match cf {
                            Some(cf) if u16::from(cf.code) == close_code::REPLACED => Ended::Replaced,
                            Some(cf) => Ended::Other(format!(
                                "signald closed the connection: code {} {}",
                                u16::from(cf.code),
                                excerpt(&cf.reason, 200)
                            )),
                            None => Ended::Other("signald closed the connection".into()),
                        };
                    }
                    Some(Ok(_)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any frame naming a peer passes only with a valid ID; the
        /// message naming a bad one stays short, whatever its length.
        #[test]
        fn frames_name_only_valid_peer_ids(peer in "\\PC{0,100}") {
            let frames = [
                ServerMsg::Paired { peer_id: peer.clone(), initiator: false },
                ServerMsg::Offer { sdp: String::new(), from: peer.clone() },
                ServerMsg::Candidate { candidate: None, from: peer.clone() },
            ];
            for f in &frames {
                match well_formed(f) {
                    Ok(()) => prop_assert!(valid_id(&peer)),
                    Err(why) => {
                        prop_assert!(!valid_id(&peer));
                        prop_assert!(why.len() < 400, "{}", why);
                    }
                }
            }
        }
    }

    use super::*;

    #[test]
    fn url_carries_the_id_and_never_the_token() {
        assert_eq!(
            connect_url("ws://h/ws", Some("a-b_c")),
            "ws://h/ws?id=a-b_c"
        );
        assert_eq!(
            connect_url("ws://h/ws?x=1", Some("a")),
            "ws://h/ws?x=1&id=a"
        );
        assert_eq!(connect_url("ws://h/ws", None), "ws://h/ws");
        assert_eq!(
            redact("ws://h/ws?id=a&token=secret&x=1"),
            "ws://h/ws?id=a&token=<hidden>&x=1"
        );
    }

    #[test]
    fn frames_must_name_valid_ids() {
        let paired = |id: &str| ServerMsg::Paired {
            peer_id: id.into(),
            initiator: false,
        };
        assert!(well_formed(&paired("bob")).is_ok());
        assert!(well_formed(&paired("")).is_err());
        assert!(well_formed(&paired("bob\n\u{1b}[2J")).is_err());
        let offer = ServerMsg::Offer {
            sdp: "v=0".into(),
            from: "x".repeat(100),
        };
        let why = well_formed(&offer).unwrap_err();
        assert!(why.contains("bytes)"), "cut short in the log: {why}");
        assert!(well_formed(&ServerMsg::Ping).is_ok());
    }

    #[test]
    fn signalds_words_are_escaped_and_cut() {
        let m = escaped(ServerMsg::Error {
            code: p2p_proto::signal::ErrorCode::BadMessage,
            message: format!("\u{1b}[2J\nfake log line {}", "x".repeat(500)),
        });
        let ServerMsg::Error { message, .. } = m else {
            unreachable!()
        };
        assert!(
            !message.contains('\u{1b}') && !message.contains('\n'),
            "{message}"
        );
        assert!(
            message.len() < 300 && message.ends_with("bytes)"),
            "{message}"
        );
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let max = Duration::from_secs(10);
        for attempt in 0..40 {
            let d = backoff(attempt, max);
            let full = BACKOFF_START.saturating_mul(1 << attempt.min(16)).min(max);
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
        }
    }
}
