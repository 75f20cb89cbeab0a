//! The hub: one task owning the message history and the `tail` followers.
//!
//! Everything that followers see passes through here in order. Delivery to a
//! follower is lossless while it keeps up: when its queue is full the hub
//! waits (up to [`STALL_GRACE`]) and so slows the data channel itself, which
//! is what a pipe should do. A follower that makes no progress for that long
//! is marked lagging: it misses events (counted), and once it has drained
//! half its queue it first gets a `lagged` event saying exactly how many.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use p2p_proto::control::{Event, EventKind};
use tokio::sync::{mpsc, oneshot};

use crate::counters::Counters;

/// Events a follower may have queued before it counts as slow.
pub const FOLLOWER_QUEUE: usize = 8192;
/// How long the hub waits for a stuck follower before it starts losing.
pub const STALL_GRACE: Duration = Duration::from_secs(2);

pub type SharedEvent = Arc<Event>;

enum HubCmd {
    Publish(Event),
    Subscribe {
        replay: usize,
        follow: bool,
        reply: oneshot::Sender<Subscription>,
    },
}

/// What `tail` gets: the replayed messages, then (when following) the live
/// stream, with nothing lost or repeated between the two.
pub struct Subscription {
    pub replay: Vec<SharedEvent>,
    pub live: Option<mpsc::Receiver<SharedEvent>>,
}

/// How much received history the hub keeps for `tail -n`.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    pub messages: usize,
    /// Payload bytes (text, or decoded binary) across the kept messages.
    pub bytes: usize,
}

/// Payload size of a message event, 0 for other events.
fn payload_len(ev: &Event) -> usize {
    match &ev.kind {
        EventKind::Message { text, data_b64, .. } => {
            text.as_ref().map_or(0, String::len) + data_b64.as_ref().map_or(0, |b| b.len() / 4 * 3)
        }
        _ => 0,
    }
}

/// Cloneable handle on the hub task.
#[derive(Clone)]
pub struct Hub {
    tx: mpsc::Sender<HubCmd>,
}

impl Hub {
    /// Starts the hub task; it ends when every handle is dropped.
    pub fn start(
        history: HistoryLimits,
        counters: Arc<Counters>,
    ) -> (Hub, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(1024);
        let task = tokio::spawn(run(rx, history, counters));
        (Hub { tx }, task)
    }

    /// Publishes an event, waiting while followers catch up (backpressure).
    pub async fn publish(&self, kind: EventKind) {
        let ev = Event {
            ts_ms: now_ms(),
            kind,
        };
        // The hub outlives every publisher; a closed hub means shutdown.
        if self.tx.send(HubCmd::Publish(ev)).await.is_err() {
            tracing::debug!("hub gone; event dropped during shutdown");
        }
    }

    pub async fn subscribe(&self, replay: usize, follow: bool) -> Option<Subscription> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(HubCmd::Subscribe {
                replay,
                follow,
                reply,
            })
            .await
            .ok()?;
        rx.await.ok()
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Follower {
    tx: mpsc::Sender<SharedEvent>,
    /// Events missed since the last one delivered; > 0 means lagging.
    missed: u64,
}

async fn run(mut rx: mpsc::Receiver<HubCmd>, limits: HistoryLimits, counters: Arc<Counters>) {
    let mut history: VecDeque<SharedEvent> = VecDeque::new();
    let mut history_bytes = 0usize;
    let mut followers: Vec<Follower> = Vec::new();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            HubCmd::Subscribe {
                replay,
                follow,
                reply,
            } => {
                let skip = history.len().saturating_sub(replay);
                let replay = history.iter().skip(skip).cloned().collect();
                let live = follow.then(|| {
                    let (tx, rx) = mpsc::channel(FOLLOWER_QUEUE);
                    followers.push(Follower { tx, missed: 0 });
                    rx
                });
                // A client that hung up meanwhile just drops the reply.
                let _ = reply.send(Subscription { replay, live });
            }
            HubCmd::Publish(ev) => {
                let ev = Arc::new(ev);
                if matches!(ev.kind, EventKind::Message { .. }) && limits.messages > 0 {
                    history_bytes += payload_len(&ev);
                    history.push_back(ev.clone());
                    while history.len() > limits.messages
                        || (history_bytes > limits.bytes && history.len() > 1)
                    {
                        let old = history.pop_front().expect("non-empty");
                        history_bytes -= payload_len(&old);
                    }
                }
                let mut i = 0;
                while i < followers.len() {
                    if deliver(&mut followers[i], &ev, &counters).await {
                        i += 1;
                    } else {
                        followers.swap_remove(i);
                    }
                }
            }
        }
        counters
            .subscribers
            .store(followers.len() as u64, Ordering::Relaxed);
    }
}

/// Hands `ev` to one follower; false when the follower has gone.
async fn deliver(f: &mut Follower, ev: &SharedEvent, counters: &Counters) -> bool {
    use mpsc::error::TrySendError;
    if f.missed > 0 {
        // Lagging: resume only once half the queue is free, so that a
        // barely-reading follower does not stall the link again and again.
        if f.tx.is_closed() {
            return false;
        }
        if f.tx.capacity() < FOLLOWER_QUEUE / 2 {
            f.missed += 1;
            counters
                .missed_by_subscribers
                .fetch_add(1, Ordering::Relaxed);
            return true;
        }
        let notice = Arc::new(Event {
            ts_ms: now_ms(),
            kind: EventKind::Lagged { missed: f.missed },
        });
        if f.tx.try_send(notice).is_err() {
            return !f.tx.is_closed();
        }
        f.missed = 0;
    }
    match f.tx.try_send(ev.clone()) {
        Ok(()) => true,
        Err(TrySendError::Closed(_)) => false,
        Err(TrySendError::Full(ev)) => {
            match tokio::time::timeout(STALL_GRACE, f.tx.send(ev)).await {
                Ok(Ok(())) => true,
                Ok(Err(_)) => false,
                Err(_) => {
                    tracing::warn!("a tail follower is stuck; it will miss events");
                    f.missed = 1;
                    counters
                        .missed_by_subscribers
                        .fetch_add(1, Ordering::Relaxed);
                    true
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: u32) -> EventKind {
        EventKind::Message {
            from: "p".into(),
            text: Some(i.to_string()),
            data_b64: None,
        }
    }

    fn text(ev: &Event) -> String {
        match &ev.kind {
            EventKind::Message { text, .. } => text.clone().unwrap(),
            other => format!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn replay_then_live_without_gap() {
        let counters = Arc::new(Counters::default());
        let (hub, _task) = Hub::start(
            HistoryLimits {
                messages: 3,
                bytes: 1 << 20,
            },
            counters,
        );
        for i in 0..5 {
            hub.publish(msg(i)).await;
        }
        let sub = hub.subscribe(10, true).await.unwrap();
        let replay: Vec<_> = sub.replay.iter().map(|e| text(e)).collect();
        assert_eq!(replay, ["2", "3", "4"]);
        hub.publish(msg(5)).await;
        let mut live = sub.live.unwrap();
        assert_eq!(text(&live.recv().await.unwrap()), "5");
    }

    #[tokio::test]
    async fn history_is_bounded_by_bytes_too() {
        let counters = Arc::new(Counters::default());
        let (hub, _task) = Hub::start(
            HistoryLimits {
                messages: 100,
                bytes: 10,
            },
            counters,
        );
        for t in ["aaaa", "bbbb", "cccc"] {
            hub.publish(EventKind::Message {
                from: "p".into(),
                text: Some(t.into()),
                data_b64: None,
            })
            .await;
        }
        let sub = hub.subscribe(100, false).await.unwrap();
        let kept: Vec<_> = sub.replay.iter().map(|e| text(e)).collect();
        assert_eq!(kept, ["bbbb", "cccc"]);
    }

    #[tokio::test(start_paused = true)]
    async fn stuck_follower_is_told_how_many_it_missed() {
        let counters = Arc::new(Counters::default());
        let (hub, _task) = Hub::start(
            HistoryLimits {
                messages: 0,
                bytes: 0,
            },
            counters.clone(),
        );
        let mut live = hub.subscribe(0, true).await.unwrap().live.unwrap();
        let total = FOLLOWER_QUEUE as u32 + 10;
        for i in 0..total {
            hub.publish(msg(i)).await;
        }
        // Make sure the hub has handled every publish (paused time lets the
        // grace period pass instantly).
        let _ = hub.subscribe(0, false).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..FOLLOWER_QUEUE {
            got.push(text(&live.recv().await.unwrap()));
        }
        assert_eq!(
            got.last().unwrap(),
            &(FOLLOWER_QUEUE as u32 - 1).to_string()
        );
        hub.publish(msg(total)).await;
        let _ = hub.subscribe(0, false).await.unwrap();
        let lag = live.recv().await.unwrap();
        assert_eq!(lag.kind, EventKind::Lagged { missed: 10 });
        assert_eq!(text(&live.recv().await.unwrap()), total.to_string());
        assert_eq!(counters.missed_by_subscribers.load(Ordering::Relaxed), 10);
    }
}
