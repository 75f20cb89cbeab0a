//! The control socket: a Unix socket (mode 0600, in a 0700 directory)
//! speaking JSON lines, one task per client.
//!
//! Requests on one connection are answered in order. Replies are flushed
//! when no further request is already buffered, so a client that pipelines
//! (`p2pctl send`) gets its acknowledgements in batches rather than one
//! write per line. The `send` verb has a module of its own (`send`), and
//! `tail` (the module of that name) turns the connection into an event
//! stream.

mod send;
mod stream;
mod tail;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use interprocess::local_socket::tokio::{Listener, Stream};
use interprocess::local_socket::traits::tokio::Listener as _;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use p2p_proto::control::{
    ErrorBody, ErrorCode, MAX_LINE_BYTES, OkBody, Reply, Request, parse_request,
};
use p2p_proto::lines::{LineRead, read_line_capped};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::watch;

use crate::engine::{Cmd, DEFAULT_PAIR_TIMEOUT, EngineHandle};
use crate::invite::{self, Code};
use crate::link::{InviteEdit, Reply as Answer, Verb};
use crate::trust::TrustEdit;

/// Binds the control socket at `path`, refusing when a live daemon already
/// serves it and replacing a stale socket file.
pub fn bind(path: &Path, own_dir: bool) -> anyhow::Result<Listener> {
    if let Some(dir) = path.parent() {
        crate::paths::ensure_private_dir(dir, own_dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                bail!(
                    "{} exists and is not a socket; not touching it",
                    path.display()
                );
            }
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => bail!(
                    "another p2pd is already serving {} (stop it first, or pass --socket)",
                    path.display()
                ),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "replacing a stale control socket");
                    std::fs::remove_file(path)
                        .with_context(|| format!("removing stale socket {}", path.display()))?;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("probing {}", path.display()));
                }
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    }
    let name = path
        .to_fs_name::<GenericFilePath>()
        .with_context(|| format!("socket path {}", path.display()))?;
    ListenerOptions::new()
        .name(name)
        .mode(0o600)
        .reclaim_name(true)
        .create_tokio()
        .with_context(|| format!("binding control socket {}", path.display()))
}

/// Accepts clients until shutdown.
pub async fn serve(
    listener: Listener,
    path: PathBuf,
    engine: EngineHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut clients = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            conn = listener.accept() => match conn {
                Ok(stream) => {
                    let engine = engine.clone();
                    let shutdown = shutdown.clone();
                    clients.spawn(async move {
                        if let Err(e) = client(stream, engine, shutdown).await {
                            tracing::debug!(error = %e, "control client ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "accepting a control client");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
        }
    }
    clients.shutdown().await;
}

async fn client(
    stream: Stream,
    engine: EngineHandle,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // 64 KiB: a whole maximum-size message per read, and acknowledgements
    // for a pipelining client written in large batches.
    let mut reader = BufReader::with_capacity(64 * 1024, &stream);
    let mut writer = BufWriter::with_capacity(64 * 1024, &stream);
    let mut line = Vec::new();
    loop {
        if reader.buffer().is_empty() {
            writer.flush().await?;
        }
        let read = tokio::select! {
            r = read_line_capped(&mut reader, &mut line, MAX_LINE_BYTES) => r?,
            _ = shutdown.changed() => return Ok(()),
        };
        let reply = match read {
            LineRead::Eof => {
                writer.flush().await?;
                return Ok(());
            }
            LineRead::TooLong => Reply::err(
                ErrorCode::LineTooLong,
                format!("request line longer than {MAX_LINE_BYTES} bytes"),
            ),
            LineRead::Line => {
                let parsed = std::str::from_utf8(&line)
                    .map_err(|_| ErrorBody {
                        code: ErrorCode::BadRequest,
                        message: "request line is not UTF-8".into(),
                    })
                    .and_then(|l| parse_request(l.trim_end_matches('\r')));
                match parsed {
                    Err(e) => e.into(),
                    Ok(Request::Tail { replay, follow }) => {
                        return tail::serve(
                            &mut reader,
                            &mut writer,
                            &engine,
                            replay,
                            follow,
                            shutdown,
                        )
                        .await;
                    }
                    Ok(req @ (Request::Connect { .. } | Request::Accept { .. })) => {
                        writer.flush().await?;
                        return stream::serve(req, &mut reader, &mut writer, &engine).await;
                    }
                    Ok(req @ Request::Forward { .. }) => {
                        writer.flush().await?;
                        return stream::forward(req, &mut reader, &mut writer, &engine, shutdown)
                            .await;
                    }
                    Ok(req) => handle(req, &engine).await,
                }
            }
        };
        if matches!(reply, Reply::Err { .. }) {
            engine
                .counters()
                .control_errors
                .fetch_add(1, Ordering::Relaxed);
        }
        writer.write_all(reply.to_line().as_bytes()).await?;
    }
}

async fn handle(req: Request, engine: &EngineHandle) -> Reply {
    let gone = || Reply::err(ErrorCode::ShuttingDown, "p2pd is shutting down");
    match req {
        Request::Send { text, data_b64, to } => send::send(engine, text, data_b64, to).await,
        Request::Id | Request::RotateId => {
            let rotate = matches!(req, Request::RotateId);
            match engine.call(|reply| Cmd::Identity { rotate, reply }).await {
                Some(Ok(identity)) => Reply::ok(OkBody::Identity { identity }),
                Some(Err(e)) => e.into(),
                None => gone(),
            }
        }
        Request::Status => match engine.call(Cmd::Status).await {
            Some(status) => Reply::ok(OkBody::Status {
                status: Box::new(status),
            }),
            None => gone(),
        },
        Request::Tail { .. }
        | Request::Connect { .. }
        | Request::Accept { .. }
        | Request::Forward { .. } => {
            unreachable!("these take the connection over")
        }
        Request::Expose { .. } | Request::Unexpose { .. } | Request::ExposeList => {
            stream::edit(req, engine)
        }
        Request::Pair { ref peer_id, .. }
            if engine.open_link().is_some_and(|l| l.peer_id() == peer_id)
                && engine.streams().keep_pairing() =>
        {
            // A pairing that `connect` made: the user's now, kept after
            // its last stream.
            let link = engine.open_link();
            Reply::ok(OkBody::Pair {
                pair: p2p_proto::control::PairOutcome {
                    peer_id: peer_id.clone(),
                    state: p2p_proto::control::LinkState::Open,
                    path: None,
                    fingerprint: None,
                    trust: link.map(|l| l.trust()),
                },
            })
        }
        Request::Trust { .. } | Request::Untrust { .. } | Request::TrustList => {
            let edit = match trust_edit(req) {
                Ok(edit) => edit,
                Err(refused) => return refused.into(),
            };
            match engine.call(|reply| Cmd::Trust { edit, reply }).await {
                Some(Ok(body)) => Reply::ok(body),
                Some(Err(e)) => e.into(),
                None => gone(),
            }
        }
        req => match verb(req) {
            Ok(verb) => match engine.call(|reply| Cmd::Link { verb, reply }).await {
                Some(answer) => answered(answer),
                None => gone(),
            },
            Err(refused) => refused.into(),
        },
    }
}

/// The verb a request that the link decides stands for, its arguments
/// checked; or the reply to a request that is not well formed.
fn verb(req: Request) -> Result<Verb, ErrorBody> {
    let bad_request = |message: String| ErrorBody {
        code: ErrorCode::BadRequest,
        message,
    };
    Ok(match req {
        Request::Pair {
            peer_id,
            wait,
            timeout_ms,
            code,
        } => Verb::Pair {
            peer: peer_id,
            wait_open: wait,
            timeout: timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_PAIR_TIMEOUT),
            code: code
                .as_deref()
                .map(Code::parse)
                .transpose()
                .map_err(bad_request)?,
        },
        Request::Unpair => Verb::Unpair,
        Request::Invite { ttl_ms, for_peer } => {
            if let Some(p) = &for_peer {
                p2p_proto::signal::check_id(p).map_err(bad_request)?;
            }
            let ttl = ttl_ms
                .map(Duration::from_millis)
                .unwrap_or(invite::DEFAULT_TTL);
            Verb::Invite(InviteEdit::Create { ttl, for_peer })
        }
        Request::InviteList => Verb::Invite(InviteEdit::List),
        Request::InviteCancel { code } => Verb::Invite(InviteEdit::Cancel(code)),
        Request::Send { .. }
        | Request::Id
        | Request::RotateId
        | Request::Status
        | Request::Trust { .. }
        | Request::Untrust { .. }
        | Request::TrustList
        | Request::Tail { .. }
        | Request::Expose { .. }
        | Request::Unexpose { .. }
        | Request::ExposeList
        | Request::Connect { .. }
        | Request::Accept { .. }
        | Request::Forward { .. } => unreachable!("handled on their own paths"),
    })
}

/// The trust store edit a `trust`, `untrust` or `trust --list` request
/// stands for, its peer ID checked.
fn trust_edit(req: Request) -> Result<TrustEdit, ErrorBody> {
    let checked = |peer: String| match p2p_proto::signal::check_id(&peer) {
        Ok(()) => Ok(peer),
        Err(message) => Err(ErrorBody {
            code: ErrorCode::BadRequest,
            message,
        }),
    };
    Ok(match req {
        Request::Trust {
            peer_id,
            fingerprint,
            comment,
        } => TrustEdit::Trust {
            peer: checked(peer_id)?,
            fingerprint,
            comment,
        },
        Request::Untrust { peer_id } => TrustEdit::Untrust {
            peer: checked(peer_id)?,
        },
        _ => TrustEdit::List,
    })
}

/// The core's answer as the control protocol says it.
fn answered(answer: Answer) -> Reply {
    match answer {
        Answer::Pair(Ok(pair)) => Reply::ok(OkBody::Pair { pair }),
        Answer::Unpair(was_paired) => Reply::ok(OkBody::Unpair { was_paired }),
        Answer::Body(Ok(body)) => Reply::ok(body),
        Answer::Pair(Err(e)) | Answer::Body(Err(e)) => e.into(),
        Answer::Claim(_) => Reply::err(ErrorCode::Failed, "an answer of the wrong kind (a bug)"),
    }
}
