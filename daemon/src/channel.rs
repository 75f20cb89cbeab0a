//! The data channel's reader: one task per channel loops on `dc.poll()`,
//! hands each received message to the hub (in order, waiting while a
//! follower is full: that backpressure reaches the peer through SCTP's
//! window) and forwards open and close to the engine.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use p2p_proto::control::EventKind;
use tokio::sync::watch;
use webrtc::data_channel::{DataChannel, DataChannelEvent};

use crate::peer::{PcContext, PcEventKind};

/// How long the initiator keeps poking the driver while the channel opens.
const NUDGE_FOR: Duration = Duration::from_secs(5);
/// How often it pokes.
const NUDGE_EVERY: Duration = Duration::from_millis(2);

/// A channel and the task reading it.
pub struct Reader {
    dc: Arc<dyn DataChannel>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    pub fn channel(&self) -> &Arc<dyn DataChannel> {
        &self.dc
    }

    /// Waits (bounded) for the task, which ends once the connection closed.
    pub async fn join(self) {
        if tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .is_err()
        {
            tracing::warn!("data channel reader did not stop in 2 s");
        }
    }
}

/// Starts reading `dc`. With `nudge` the task pokes the connection's driver
/// until the channel opens (see `docs/webrtc.md`, "fast open"). With a
/// `gate`, nothing after the open is read until the gate says `true` (an
/// invitation's handshake must pass first): what the peer sends meanwhile
/// waits in the channel, and SCTP's window closes toward it.
pub fn start(
    dc: Arc<dyn DataChannel>,
    nudge: bool,
    peer_id: &str,
    ctx: &PcContext,
    gate: Option<watch::Receiver<bool>>,
) -> Reader {
    let task = tokio::spawn(read(
        dc.clone(),
        nudge,
        peer_id.to_string(),
        ctx.clone(),
        gate,
    ));
    Reader { dc, task }
}

/// How often a drain looks at what is still unacknowledged. The crate has
/// no event for "everything acknowledged" that a task can await next to a
/// deadline; 5 ms is small beside any drain that matters.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// Waits until the peer's SCTP stack has acknowledged every byte `send`
/// handed to `dc` (a `send` still blocked on the full buffer gets in and
/// is waited for too), at most `limit`; then closes the channel, which the
/// peer sees after the last message. Reports [`PcEventKind::Drained`].
pub fn drain(dc: Arc<dyn DataChannel>, limit: Duration, ctx: PcContext) {
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        if let Err(n) = acknowledged(&dc, limit).await {
            tracing::warn!(
                unacknowledged_bytes = n,
                "drain timed out: closing with data the peer has not acknowledged (--drain-timeout {})",
                humantime::format_duration(limit)
            );
        }
        tracing::debug!(took = ?started.elapsed(), "drained");
        let _ = dc.close().await;
        ctx.forward(PcEventKind::Drained);
    });
}

/// Waits until the peer's SCTP stack has acknowledged everything handed
/// to `dc`, at most `limit`; `Err` with the bytes still unacknowledged
/// then. A closed channel has nothing to wait for.
pub async fn acknowledged(dc: &Arc<dyn DataChannel>, limit: Duration) -> Result<(), usize> {
    let started = tokio::time::Instant::now();
    wake_driver(dc).await;
    loop {
        match dc.outstanding_bytes().await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) if started.elapsed() >= limit => return Err(n),
            Ok(_) => tokio::time::sleep(DRAIN_POLL).await,
        }
    }
}

/// Wakes the connection's driver so that queued packets leave now rather
/// than at the ICE agent's next 200 ms tick: setting the threshold has that
/// side effect (measured; the crate does not document it).
pub async fn wake_driver(dc: &Arc<dyn DataChannel>) {
    let _ = dc.set_buffered_amount_low_threshold(0).await;
}

async fn read(
    dc: Arc<dyn DataChannel>,
    mut nudge: bool,
    peer_id: String,
    ctx: PcContext,
    mut gate: Option<watch::Receiver<bool>>,
) {
    let nudge_until = tokio::time::Instant::now() + NUDGE_FOR;
    let mut tick = tokio::time::interval(NUDGE_EVERY);
    loop {
        let event = if nudge {
            tokio::select! {
                ev = dc.poll() => ev,
                _ = tick.tick() => {
                    nudge = tokio::time::Instant::now() <= nudge_until;
                    wake_driver(&dc).await;
                    continue;
                }
            }
        } else {
            dc.poll().await
        };
        match event {
            Some(DataChannelEvent::OnOpen) => {
                nudge = false;
                ctx.forward(PcEventKind::ChannelOpen);
                if let Some(g) = &mut gate {
                    // Released, or dropped with the connection (then the
                    // next poll sees the close).
                    let _ = g.wait_for(|open| *open).await;
                    gate = None;
                }
            }
            Some(DataChannelEvent::OnMessage(msg)) => {
                ctx.flow.received();
                let c = &ctx.counters;
                c.messages_received.fetch_add(1, Ordering::Relaxed);
                c.bytes_received
                    .fetch_add(msg.data.len() as u64, Ordering::Relaxed);
                ctx.hub
                    .publish_message(message(&peer_id, msg.is_string, &msg.data))
                    .await;
            }
            Some(DataChannelEvent::OnClose) | None => {
                ctx.forward(PcEventKind::ChannelClosed);
                return;
            }
            Some(_) => {}
        }
    }
}

/// The `message` event for a received payload: text when the peer sent a
/// string that is UTF-8, else base64 of the bytes.
fn message(from: &str, is_string: bool, data: &[u8]) -> EventKind {
    let text = if is_string {
        std::str::from_utf8(data).ok().map(str::to_string)
    } else {
        None
    };
    let data_b64 = match &text {
        Some(_) => None,
        None => Some(base64::engine::general_purpose::STANDARD.encode(data)),
    };
    EventKind::Message {
        from: from.to_string(),
        text,
        data_b64,
    }
}
