//! Moves one open stream's bytes between its data channel and our local
//! end, both directions at once, with a window of credit per direction.
//!
//! Three loops run together: the channel's reader (never blocked: what it
//! takes is bounded by the credit we gave, so it queues without waiting and
//! the association's other channels keep moving), the writer to our local
//! end (which grants credit back as it writes), and the reader of our local
//! end (which sends only as much as the peer's credit allows). The stream
//! is done when both directions ended and the peer's stack acknowledged
//! everything we sent; then the channel closes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use p2p_proto::control::{ErrorBody, ErrorCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc, watch};
use webrtc::data_channel::DataChannel;

use super::frame::{self, Frame, MAX_DATA};
use super::local::{Read, Reader, Writer};

/// Bytes moved each way, for `status`.
#[derive(Default)]
pub struct Meter {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// How the pump ended badly, and whether the peer must be told.
struct Failure {
    error: ErrorBody,
    /// Our side failed: the peer hears an `Abort` with this reason.
    tell_peer: Option<String>,
}

fn failed(message: impl Into<String>) -> ErrorBody {
    ErrorBody {
        code: ErrorCode::StreamFailed,
        message: message.into(),
    }
}

/// Credit to send: bytes the peer still lets us send.
#[derive(Default)]
struct Credit {
    left: AtomicU64,
    more: Notify,
}

impl Credit {
    fn add(&self, n: u32) {
        self.left.fetch_add(u64::from(n), Ordering::AcqRel);
        self.more.notify_one();
    }

    /// Waits until there is some; returns how much.
    async fn some(&self) -> u64 {
        loop {
            let more = self.more.notified();
            let left = self.left.load(Ordering::Acquire);
            if left > 0 {
                return left;
            }
            more.await;
        }
    }

    fn take(&self, n: u64) {
        self.left.fetch_sub(n, Ordering::AcqRel);
    }
}

enum Inbound {
    Data(Bytes),
    End,
}

/// The parts of one stream the pump needs.
pub struct Channel {
    pub dc: Arc<dyn DataChannel>,
    /// The peer's window: what we may send before its first `Credit`.
    pub peer_window: u32,
    /// Our window: what the peer may send before our first `Credit`.
    pub window: u32,
    /// Who the peer is, for messages.
    pub peer: String,
    /// How long the end waits for the peer to acknowledge our last bytes.
    pub drain: Duration,
    /// We opened the stream: the peer closes its channel (see [`close`]).
    pub opener: bool,
}

/// Runs the stream to its end; says how it ended to a framed local end
/// (a raw one's owner resets it on `Err`).
pub async fn run<R, W>(
    ch: Channel,
    reader: &mut Reader<R>,
    writer: &mut Writer<W>,
    meter: &Meter,
) -> Result<(), ErrorBody>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let outcome = match pump(&ch, reader, writer, meter).await {
        Ok(()) => {
            let _ = crate::channel::acknowledged(&ch.dc, ch.drain).await;
            Ok(())
        }
        Err(f) => {
            if let Some(why) = f.tell_peer {
                let _ = ch.dc.send(Frame::Abort(why).encode()).await;
                let _ = crate::channel::acknowledged(&ch.dc, Duration::from_millis(500)).await;
            }
            Err(f.error)
        }
    };
    writer.finish(&outcome).await;
    close(&ch.dc, ch.opener, ch.drain).await;
    outcome
}

/// Closes a stream's channel: the acceptor at once, the opener once the
/// acceptor's close arrived (or, if it does not come, after `limit`).
///
/// The order matters. webrtc 0.21.1 frees a channel's SCTP stream id as
/// soon as its own side closes, while SCTP's closing procedure still runs
/// (vendor/PATCHES.md 18, which keeps a freed id unused for long). Closed
/// by the acceptor, the opener's side of the stream ends in one step when
/// the acceptor's reset arrives, and the two never close at once (which
/// crossed resets and left warnings about streams that no longer exist).
pub async fn close(dc: &Arc<dyn DataChannel>, opener: bool, limit: Duration) {
    if !opener {
        let _ = dc.close().await;
        return;
    }
    let closed = async { while frame::next(dc).await.is_some() {} };
    if tokio::time::timeout(limit, closed).await.is_err() {
        tracing::debug!("the peer did not close a stream's channel in time");
        let _ = dc.close().await;
    }
}

/// The acceptor's last word on a stream that will not run (a refusal, an
/// abort): sent, given a second to reach the peer, and the channel closed.
pub(super) async fn last_word(dc: &Arc<dyn DataChannel>, frame: Frame) {
    let _ = dc.send(frame.encode()).await;
    let _ = crate::channel::acknowledged(dc, Duration::from_secs(1)).await;
    close(dc, false, Duration::ZERO).await;
}

async fn pump<R, W>(
    ch: &Channel,
    reader: &mut Reader<R>,
    writer: &mut Writer<W>,
    meter: &Meter,
) -> Result<(), Failure>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let credit = Credit::default();
    credit.add(ch.peer_window);
    // What we let the peer send so far; the reader checks against it.
    let granted = AtomicU64::new(u64::from(ch.window));
    let (ended_tx, ended_rx) = watch::channel(false);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::try_join!(
        from_channel(ch, tx, &credit, &granted, ended_rx, meter),
        to_local(ch, rx, writer, &granted),
        from_local(ch, reader, &credit, ended_tx, meter),
    )?;
    Ok(())
}

/// Reads the channel: data queued for our local end, credit for our
/// sending, the peer's end and abort. Returns once the peer's direction
/// ended and ours too (until then credit may still come).
async fn from_channel(
    ch: &Channel,
    tx: mpsc::UnboundedSender<Inbound>,
    credit: &Credit,
    granted: &AtomicU64,
    mut our_end: watch::Receiver<bool>,
    meter: &Meter,
) -> Result<(), Failure> {
    let protocol = |what: String| Failure {
        error: failed(format!("{} broke the stream protocol: {what}", ch.peer)),
        tell_peer: Some(what),
    };
    let mut received = 0u64;
    let mut ended = false;
    loop {
        if ended && *our_end.borrow() {
            return Ok(());
        }
        let next = tokio::select! {
            next = frame::next(&ch.dc) => next,
            _ = our_end.changed(), if ended => continue,
        };
        let Some(next) = next else {
            return Err(Failure {
                error: failed(format!(
                    "the link to {} was lost or the stream reset before it ended",
                    ch.peer
                )),
                tell_peer: None,
            });
        };
        match next.map_err(protocol)? {
            Frame::Data(_) if ended => {
                return Err(protocol("data after its end".into()));
            }
            Frame::Data(b) => {
                received += b.len() as u64;
                if received > granted.load(Ordering::Acquire) {
                    return Err(protocol("data beyond the credit given".into()));
                }
                meter.bytes_in.fetch_add(b.len() as u64, Ordering::Relaxed);
                // The local writer may be gone (it failed): its error wins.
                let _ = tx.send(Inbound::Data(b));
            }
            Frame::Credit(n) => credit.add(n),
            Frame::End if !ended => {
                ended = true;
                let _ = tx.send(Inbound::End);
            }
            Frame::Abort(why) => {
                return Err(Failure {
                    error: failed(format!("{} aborted the stream: {why}", ch.peer)),
                    tell_peer: None,
                });
            }
            other => return Err(protocol(format!("an unexpected {other:?}"))),
        }
    }
}

/// Writes what the peer sent to our local end, granting credit as it goes.
async fn to_local<W: AsyncWrite + Unpin>(
    ch: &Channel,
    mut rx: mpsc::UnboundedReceiver<Inbound>,
    writer: &mut Writer<W>,
    granted: &AtomicU64,
) -> Result<(), Failure> {
    let local = |e: std::io::Error| Failure {
        error: failed(format!("writing to our end of the stream: {e}")),
        tell_peer: Some(format!("its receiving end failed: {e}")),
    };
    // Credit goes back in quarters of the window: few messages, and the
    // peer never waits while three quarters are still in flight.
    let step = u64::from(ch.window / 4).max(1);
    let mut unreported = 0u64;
    loop {
        match rx.recv().await {
            Some(Inbound::Data(b)) => {
                writer.data(&b, !rx.is_empty()).await.map_err(local)?;
                unreported += b.len() as u64;
                if unreported >= step {
                    granted.fetch_add(unreported, Ordering::AcqRel);
                    let n = unreported as u32;
                    unreported = 0;
                    // A send that fails means the channel went: its reader
                    // says so.
                    let _ = ch.dc.send(Frame::Credit(n).encode()).await;
                }
            }
            Some(Inbound::End) => return writer.end().await.map_err(local),
            // The channel's reader failed; its error is the one returned.
            None => return std::future::pending().await,
        }
    }
}

/// Reads our local end and sends it, within the peer's credit.
async fn from_local<R: AsyncRead + Unpin>(
    ch: &Channel,
    reader: &mut Reader<R>,
    credit: &Credit,
    ended: watch::Sender<bool>,
    meter: &Meter,
) -> Result<(), Failure> {
    let lost = |e: webrtc::error::Error| Failure {
        error: failed(format!(
            "the link to {} was lost or the stream reset before it ended ({e})",
            ch.peer
        )),
        tell_peer: None,
    };
    loop {
        let left = credit.some().await;
        let mut buf = frame::data_buffer();
        match reader.read(&mut buf, (left as usize).min(MAX_DATA)).await {
            Read::Data(n) => {
                credit.take(n as u64);
                meter.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                ch.dc.send(buf).await.map_err(lost)?;
            }
            Read::End => {
                ch.dc.send(Frame::End.encode()).await.map_err(lost)?;
                let _ = ended.send(true);
                return Ok(());
            }
            Read::Abort(why) => {
                return Err(Failure {
                    error: failed(why.clone()),
                    tell_peer: Some(why),
                });
            }
        }
    }
}
