//! Joins stdin and stdout to an open stream (`connect`, `accept`): the
//! control connection carries `p2p_proto::control::pipe` chunks both ways
//! once the daemon answered `ok`.
//!
//! Each direction ends on its own: stdin's EOF is sent as `END` while the
//! far side's bytes keep coming; the far side's `END` closes our stdout.
//! The exit code is 0 only when the daemon says `DONE` (both directions
//! ended cleanly, and the peer acknowledged all we sent); a failure after
//! the open is exit 4 with the daemon's reason.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use p2p_proto::control::{ErrorBody, pipe};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::client::{Client, CtlError, Result};

/// Exit code of a stream that failed after it opened.
pub const STREAM_FAILED: u8 = 4;

#[derive(Default)]
struct Progress {
    up: AtomicU64,
    down: AtomicU64,
}

/// Runs the stream on `client`'s connection until it ends.
pub async fn run(client: Client, quiet: bool) -> Result<ExitCode> {
    let Client { reader, writer } = client;
    let mut from_daemon = reader.into_inner();
    let mut to_daemon = writer.into_inner();
    let progress = Arc::new(Progress::default());
    let show = !quiet && std::io::stderr().is_terminal();
    let ticker = show.then(|| tokio::spawn(tick(progress.clone())));
    let up = upload(&mut to_daemon, &progress);
    let down = download(&mut from_daemon, &progress);
    tokio::pin!(up, down);
    // The outcome comes from the daemon (`DONE`, or an error). A failure
    // of our own (stdin unreadable) ends the command at once: the
    // connection closes without `END`, which p2pd takes for an abort of
    // the stream, and the peer hears so.
    let mut up_done = false;
    let outcome = loop {
        tokio::select! {
            r = &mut up, if !up_done => {
                up_done = true;
                match r {
                    // p2pd stopped reading: its last chunks say why.
                    Ok(()) | Err(Failure::Stream(_)) => {}
                    Err(e) => break Err(e),
                }
            }
            r = &mut down => break r,
        }
    };
    if let Some(t) = ticker {
        t.abort();
        eprint!("\r\x1b[K");
        summary(&progress);
    }
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(Failure::Stream(e)) => {
            eprintln!("p2pctl: {}", e.message);
            Ok(ExitCode::from(STREAM_FAILED))
        }
        Err(Failure::Local(e)) => Err(e),
    }
}

enum Failure {
    /// The stream failed; the daemon said why.
    Stream(ErrorBody),
    /// Our own side failed (stdin, stdout, the connection).
    Local(CtlError),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Local(e.into())
    }
}

/// p2pd went away (it was killed, or it crashed): the stream failed.
fn gone(e: std::io::Error) -> Failure {
    Failure::Stream(ErrorBody {
        code: p2p_proto::control::ErrorCode::StreamFailed,
        message: format!("p2pd ended the stream without saying how ({e})"),
    })
}

/// Stdin to the daemon, then `END`.
async fn upload<W: AsyncWrite + Unpin>(
    to: &mut W,
    progress: &Progress,
) -> std::result::Result<(), Failure> {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; pipe::MAX_CHUNK];
    loop {
        let n = stdin
            .read(&mut buf)
            .await
            .map_err(|e| Failure::Local(anyhow::Error::new(e).context("reading stdin").into()))?;
        // A write to p2pd that fails means it went away: the stream
        // failed (never a broken pipe, which `main` takes for a reader
        // that stopped early).
        if n == 0 {
            to.write_all(&pipe::header(pipe::END, 0))
                .await
                .map_err(gone)?;
            to.flush().await.map_err(gone)?;
            return Ok(());
        }
        to.write_all(&pipe::header(pipe::DATA, n))
            .await
            .map_err(gone)?;
        to.write_all(&buf[..n]).await.map_err(gone)?;
        to.flush().await.map_err(gone)?;
        progress.up.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The daemon's chunks to stdout, until `DONE` or an error.
async fn download<R: AsyncRead + Unpin>(
    from: &mut R,
    progress: &Progress,
) -> std::result::Result<(), Failure> {
    let mut stdout = Some(tokio::io::stdout());
    let mut buf = vec![0u8; pipe::MAX_CHUNK];
    loop {
        let mut h = [0u8; pipe::HEADER];
        from.read_exact(&mut h).await.map_err(gone)?;
        let (tag, len) = pipe::parse_header(h, true)
            .map_err(|e| Failure::Local(anyhow::anyhow!("p2pd sent a {e}").into()))?;
        let body = &mut buf[..len];
        from.read_exact(body).await.map_err(gone)?;
        match tag {
            pipe::DATA => {
                let Some(out) = stdout.as_mut() else {
                    return Err(Failure::Local(
                        anyhow::anyhow!("p2pd sent data after the end").into(),
                    ));
                };
                out.write_all(body).await.map_err(|e| {
                    Failure::Local(anyhow::Error::new(e).context("writing to stdout").into())
                })?;
                out.flush().await?;
                progress.down.fetch_add(len as u64, Ordering::Relaxed);
            }
            pipe::END => {
                if let Some(mut out) = stdout.take() {
                    out.flush().await?;
                    drop(out);
                    close_stdout();
                }
            }
            pipe::DONE => return Ok(()),
            _ => {
                let e: ErrorBody = serde_json::from_slice(body).unwrap_or_else(|_| ErrorBody {
                    code: p2p_proto::control::ErrorCode::StreamFailed,
                    message: String::from_utf8_lossy(body).into_owned(),
                });
                return Err(Failure::Stream(e));
            }
        }
    }
}

/// The far side ended: whoever reads our stdout sees EOF now, as it would
/// from `nc`. fd 1 is pointed at /dev/null rather than closed, so that no
/// later open takes its number.
fn close_stdout() {
    // SAFETY: plain descriptor calls on a path literal; a failure leaves
    // stdout as it was.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::close(null);
        }
    }
}

async fn tick(progress: Arc<Progress>) {
    let started = Instant::now();
    let mut every = tokio::time::interval(Duration::from_millis(500));
    loop {
        every.tick().await;
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let up = progress.up.load(Ordering::Relaxed);
        let down = progress.down.load(Ordering::Relaxed);
        eprint!(
            "\r\x1b[Ksent {} ({}/s), received {} ({}/s)",
            size(up),
            size((up as f64 / secs) as u64),
            size(down),
            size((down as f64 / secs) as u64)
        );
    }
}

fn summary(progress: &Progress) {
    eprintln!(
        "sent {}, received {}",
        size(progress.up.load(Ordering::Relaxed)),
        size(progress.down.load(Ordering::Relaxed))
    );
}

/// `12.3 MiB`
fn size(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ => format!("{v:.1} {}", UNITS[unit]),
    }
}
