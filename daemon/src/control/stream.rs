//! The stream requests of the control socket. `expose`, `unexpose` and
//! `expose_list` are answered like any request; `connect`, `accept` and
//! `forward` take the connection over: after their `ok` it carries the
//! stream's chunks (`p2p_proto::control::pipe`), or holds the forward open
//! until the client hangs up.

use std::time::Duration;

use p2p_proto::control::{ErrorBody, ForwardInfo, OkBody, Reply, Request};
use tokio::io::{AsyncBufRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::engine::EngineHandle;
use crate::stream::local::{Reader, Style, Writer};
use crate::stream::{Opened, ServiceSpec, connect, pump};

/// `expose`, `unexpose`, `expose_list`.
pub fn edit(req: Request, engine: &EngineHandle) -> Reply {
    let streams = engine.streams();
    match req {
        Request::Expose {
            name,
            target,
            peers,
            allow_unverified,
        } => match ServiceSpec::new(name, target, peers, allow_unverified) {
            Ok(spec) => match streams.expose(spec, false) {
                Ok(exposed) => {
                    tracing::info!(service = %exposed.name, target = %exposed.target, peers = ?exposed.peers, allow_unverified = exposed.allow_unverified, "exposed");
                    Reply::ok(OkBody::Exposed { exposed })
                }
                Err(e) => e.into(),
            },
            Err(message) => Reply::err(p2p_proto::control::ErrorCode::BadRequest, message),
        },
        Request::Unexpose { name } => Reply::ok(OkBody::Unexposed {
            was_exposed: streams.unexpose(&name),
        }),
        _ => Reply::ok(OkBody::Services {
            services: streams.services(),
        }),
    }
}

/// `connect` and `accept`: the reply, then the stream on this connection.
pub async fn serve<R, W>(
    req: Request,
    reader: &mut R,
    writer: &mut W,
    engine: &EngineHandle,
) -> std::io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let opened = match req {
        Request::Connect {
            peer_id,
            service,
            allow_unverified,
            timeout_ms,
        } => {
            let timeout = timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(connect::DEFAULT_TIMEOUT);
            connect::connect(
                engine,
                &peer_id,
                &service,
                allow_unverified,
                timeout,
                "control".into(),
            )
            .await
        }
        Request::Accept {
            service,
            peer_id,
            allow_unverified,
            timeout_ms,
        } => {
            // The client may hang up while it waits: then the accept goes.
            let wait = engine.streams().accept(
                &service,
                &peer_id,
                allow_unverified,
                timeout_ms.map(Duration::from_millis),
            );
            tokio::select! {
                got = wait => got,
                () = hung_up(reader) => return Ok(()),
            }
        }
        _ => unreachable!("only connect and accept take the connection"),
    };
    let Opened {
        channel,
        slot,
        info,
    } = match opened {
        Ok(o) => o,
        Err(e) => return refuse(writer, e).await,
    };
    answer(
        writer,
        Reply::ok(OkBody::Stream {
            stream: info.clone(),
        }),
    )
    .await?;
    let mut reader = Reader::new(reader, Style::Framed);
    let mut writer = Writer::new(writer, Style::Framed);
    let result = pump::run(channel, &mut reader, &mut writer, slot.meter()).await;
    match result {
        Ok(()) => tracing::debug!(id = info.id, "stream ended"),
        Err(e) => tracing::info!(id = info.id, reason = %e.message, "stream failed"),
    }
    Ok(())
}

/// `forward`: listens, answers, and forwards until the client hangs up or
/// p2pd stops.
pub async fn forward<R, W>(
    req: Request,
    reader: &mut R,
    writer: &mut W,
    engine: &EngineHandle,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Request::Forward {
        listen,
        peer_id,
        service,
        allow_unverified,
    } = req
    else {
        unreachable!("only forward")
    };
    let checked = (|| {
        let bad = |m: String| ErrorBody {
            code: p2p_proto::control::ErrorCode::BadRequest,
            message: m,
        };
        p2p_proto::signal::check_id(&peer_id).map_err(bad)?;
        p2p_proto::control::check_service(&service).map_err(bad)?;
        connect::parse_listen(&listen).map_err(bad)
    })();
    let addr = match checked {
        Ok(a) => a,
        Err(e) => return refuse(writer, e).await,
    };
    let listener = match connect::bind(addr).await {
        Ok(l) => l,
        Err(e) => return refuse(writer, e).await,
    };
    let info = ForwardInfo {
        listen: listener.local_addr()?.to_string(),
        peer_id,
        service,
        allow_unverified,
        configured: false,
        open_connections: 0,
        connections: 0,
    };
    tracing::info!(listen = %info.listen, peer = %info.peer_id, service = %info.service, "forwarding");
    answer(
        writer,
        Reply::ok(OkBody::Forward {
            forward: info.clone(),
        }),
    )
    .await?;
    let stop = async move {
        tokio::select! {
            () = hung_up(reader) => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
    };
    connect::forward(engine.clone(), listener, info, stop).await;
    Ok(())
}

async fn refuse<W: AsyncWrite + Unpin>(writer: &mut W, e: ErrorBody) -> std::io::Result<()> {
    answer(writer, e.into()).await
}

/// The one reply before the connection changes what it carries.
async fn answer<W: AsyncWrite + Unpin>(writer: &mut W, reply: Reply) -> std::io::Result<()> {
    writer.write_all(reply.to_line().as_bytes()).await?;
    writer.flush().await
}

/// Resolves when the client closes its side (what it writes meanwhile
/// is ignored).
async fn hung_up<R: AsyncBufRead + Unpin>(reader: &mut R) {
    let mut sink = [0u8; 512];
    loop {
        match reader.read(&mut sink).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
