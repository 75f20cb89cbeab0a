//! The opening side: `connect` and each connection of a `forward`. They
//! reach the peer over the open link, pairing first when the daemon is
//! idle; a pairing made that way ends with its last stream, unless the
//! user asks for it with `pair` meanwhile.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use p2p_proto::control::{ErrorBody, ErrorCode, ForwardInfo};
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::{Opened, socket};
use crate::engine::{Cmd, EngineHandle, OpenLink};
use crate::link::{Reply, Verb};

/// The default bound on pairing and the open handshake together.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
    ErrorBody {
        code,
        message: message.into(),
    }
}

/// Opens a stream to `peer`'s `service` for `local`, pairing first when
/// idle (concurrent callers wait for the same pairing).
pub async fn connect(
    engine: &EngineHandle,
    peer: &str,
    service: &str,
    allow_unverified: bool,
    timeout: Duration,
    local: String,
) -> Result<Opened, ErrorBody> {
    let streams = engine.streams();
    let _hold = streams.hold();
    let link = link_to(engine, peer, timeout).await?;
    streams.open(&link, service, local, allow_unverified).await
}

/// The open link to `peer`: the one there is, or one paired now.
async fn link_to(
    engine: &EngineHandle,
    peer: &str,
    timeout: Duration,
) -> Result<Arc<OpenLink>, ErrorBody> {
    p2p_proto::signal::check_id(peer).map_err(|m| err(ErrorCode::BadRequest, m))?;
    let deadline = Instant::now() + timeout;
    let mut changes = engine.link_changes();
    loop {
        if let Some(link) = engine.open_link() {
            if link.peer_id() == peer {
                return Ok(link);
            }
            return Err(err(
                ErrorCode::AlreadyPaired,
                format!(
                    "p2pd is paired with {}, and holds one peer at a time: unpair first",
                    link.peer_id()
                ),
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(err(
                ErrorCode::Timeout,
                format!(
                    "no open link to {peer} within {}",
                    humantime::format_duration(timeout)
                ),
            ));
        }
        let verb = Verb::Pair {
            peer: peer.to_string(),
            wait_open: true,
            timeout: left,
            code: None,
        };
        match engine.call(|reply| Cmd::Link { verb, reply }).await {
            None => return Err(err(ErrorCode::ShuttingDown, "p2pd is shutting down")),
            Some(Reply::Pair(Ok(_))) => {
                if let Some(link) = engine.open_link()
                    && link.peer_id() == peer
                {
                    engine.streams().made_pairing(link.generation());
                    return Ok(link);
                }
            }
            // Another request is pairing (with this peer, most likely:
            // a concurrent connect): wait for what it achieves.
            Some(Reply::Pair(Err(e))) if e.code == ErrorCode::AlreadyPaired => {
                let wait = left.min(Duration::from_millis(200));
                let _ = tokio::time::timeout(wait, changes.changed()).await;
            }
            Some(Reply::Pair(Err(e))) => return Err(e),
            Some(_) => {
                return Err(err(
                    ErrorCode::Failed,
                    "an answer of the wrong kind (a bug)",
                ));
            }
        }
    }
}

/// Parses a forward's `[ADDR:]PORT` (port 0 takes a free one).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let port: u16 = s.parse().map_err(|_| format!("{s:?}: not a port"))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse::<SocketAddr>().map_err(|_| {
        format!("{s:?}: expected [ADDR:]PORT, e.g. 2222, 127.0.0.1:2222 or [::1]:2222 (an address, not a name)")
    })
}

/// Parses p2pd's `--forward [ADDR:]PORT=PEER/SERVICE[:allow-unverified]`.
pub fn parse_forward_flag(s: &str) -> Result<(SocketAddr, String, String, bool), String> {
    let usage = "expected [ADDR:]PORT=PEER/SERVICE[:allow-unverified], e.g. 2222=alice/ssh";
    let (listen, to) = s.split_once('=').ok_or_else(|| format!("{s:?}: {usage}"))?;
    let listen = parse_listen(listen)?;
    let (to, allow_unverified) = match to.strip_suffix(":allow-unverified") {
        Some(to) => (to, true),
        None => (to, false),
    };
    let (peer, service) = to
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: {usage}"))?;
    p2p_proto::signal::check_id(peer).map_err(|m| format!("{s:?}: {m}"))?;
    p2p_proto::control::check_service(service).map_err(|m| format!("{s:?}: {m}"))?;
    Ok((listen, peer.into(), service.into(), allow_unverified))
}

/// Binds a forward's listener.
pub async fn bind(listen: SocketAddr) -> Result<TcpListener, ErrorBody> {
    TcpListener::bind(listen).await.map_err(|e| {
        err(
            ErrorCode::BadRequest,
            format!("cannot listen on {listen}: {e}"),
        )
    })
}

/// Serves a forward until `stop` resolves: one stream per accepted
/// connection (already open ones run to their end).
pub async fn forward(
    engine: EngineHandle,
    listener: TcpListener,
    info: ForwardInfo,
    stop: impl std::future::Future<Output = ()>,
) {
    let entry = Arc::new(engine.streams().add_forward(&info));
    tokio::pin!(stop);
    loop {
        let (conn, from) = tokio::select! {
            () = &mut stop => return,
            got = listener.accept() => match got {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, listen = %info.listen, "accepting a forwarded connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if !entry.connection() {
            tracing::warn!(%from, listen = %info.listen, "a forward at its cap (--max-forward-connections) refuses a connection");
            let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
            continue;
        }
        let _ = conn.set_nodelay(true);
        let engine = engine.clone();
        let entry = entry.clone();
        let info = info.clone();
        tokio::spawn(async move {
            let local = format!("forward {}", info.listen);
            let opened = connect(
                &engine,
                &info.peer_id,
                &info.service,
                info.allow_unverified,
                DEFAULT_TIMEOUT,
                local,
            )
            .await;
            match opened {
                Ok(Opened {
                    channel,
                    slot,
                    info: stream,
                }) => {
                    let result =
                        socket::pump(channel, socket::Socket::Tcp(conn), slot.meter()).await;
                    if let Err(e) = result {
                        tracing::info!(id = stream.id, reason = %e.message, "forwarded stream failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(%from, listen = %info.listen, reason = %e.message, "a forwarded connection could not open its stream");
                    let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
                }
            }
            entry.closed();
        });
    }
}
