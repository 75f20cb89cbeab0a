//! The hub: the message history and the `tail` followers.
//!
//! Every event is serialised once, when it is published, and the same line
//! is queued for each follower. There are two ways in, and only one waits:
//!
//! - [`Hub::publish_event`] (the engine: pairing, signaling changes) queues
//!   at once and never waits, so no follower can delay `status` or ICE.
//! - [`Hub::publish_message`] (the data channel's reader) first waits while
//!   a follower's queue is full, which slows the data channel itself: that
//!   is what a pipe should do. A follower that makes no progress for
//!   [`STALL_GRACE`] is marked lagging: it misses events (counted), and once
//!   its queue has drained to half it gets a `lagged` event saying exactly
//!   how many, then the stream resumes.
//!
//! A follower's queue is bounded in bytes ([`FOLLOWER_QUEUE_BYTES`]) and in
//! events ([`FOLLOWER_QUEUE`]): a stopped `tail` pins at most that much.
//! A follower that hangs up is forgotten at once (its handle's `Drop`).
//!
//! The state is behind a std `Mutex`: nothing awaits while holding it.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use p2p_proto::control::{Event, EventKind};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::counters::Counters;

/// Events a follower may have queued before it counts as full.
pub const FOLLOWER_QUEUE: usize = 8192;
/// Bytes of event lines a follower may have queued before it counts as
/// full. One line larger than this still goes into an empty queue.
pub const FOLLOWER_QUEUE_BYTES: usize = 1024 * 1024;
/// How long a message waits for a full follower before that follower
/// starts missing events.
pub const STALL_GRACE: Duration = Duration::from_secs(2);

/// One published event, serialised once and shared by every queue.
#[derive(Debug, Clone)]
pub struct Line(Arc<LineInner>);

#[derive(Debug)]
struct LineInner {
    /// The JSON object and its `\n`.
    text: String,
    /// Payload bytes of a message (what `--history-bytes` counts), else 0.
    payload: usize,
}

impl Line {
    fn new(kind: EventKind) -> Line {
        let payload = match &kind {
            EventKind::Message { text, data_b64, .. } => {
                text.as_ref().map_or(0, String::len)
                    + data_b64.as_ref().map_or(0, |b| b.len() / 4 * 3)
            }
            _ => 0,
        };
        let text = Event {
            ts_ms: now_ms(),
            kind,
        }
        .to_line();
        Line(Arc::new(LineInner { text, payload }))
    }

    /// The event's JSON line, newline included.
    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    fn len(&self) -> usize {
        self.0.text.len()
    }
}

/// How much received history the hub keeps for `tail -n`.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    pub messages: usize,
    /// Payload bytes (text, or decoded binary) across the kept messages.
    pub bytes: usize,
}

/// Cloneable handle on the hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Woken when a follower takes from its queue or leaves, for a
    /// message waiting for room.
    room: Notify,
    limits: HistoryLimits,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct State {
    history: VecDeque<Line>,
    history_bytes: usize,
    followers: Vec<Slot>,
    next_id: u64,
}

/// One follower's queue.
struct Slot {
    id: u64,
    queue: VecDeque<Line>,
    bytes: usize,
    /// Events missed since the last one queued; > 0 means lagging.
    missed: u64,
    /// Since when a message has been waiting for room in this queue.
    full_since: Option<Instant>,
    wake: Arc<Notify>,
}

impl Slot {
    fn is_full(&self) -> bool {
        !self.queue.is_empty()
            && (self.bytes >= FOLLOWER_QUEUE_BYTES || self.queue.len() >= FOLLOWER_QUEUE)
    }

    fn drained_to_half(&self) -> bool {
        self.bytes <= FOLLOWER_QUEUE_BYTES / 2 && self.queue.len() <= FOLLOWER_QUEUE / 2
    }

    fn push(&mut self, line: Line) {
        self.bytes += line.len();
        self.queue.push_back(line);
        self.wake.notify_one();
    }

    /// Queues `line`, or counts it as missed while lagging (resuming with a
    /// `lagged` notice once the queue has drained to half).
    fn offer(&mut self, line: &Line, counters: &Counters) {
        if self.missed > 0 {
            if !self.drained_to_half() {
                self.missed += 1;
                counters
                    .missed_by_subscribers
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            let missed = std::mem::take(&mut self.missed);
            self.push(Line::new(EventKind::Lagged { missed }));
        }
        self.push(line.clone());
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic elsewhere must not take every follower down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    pub fn new(limits: HistoryLimits, counters: Arc<Counters>) -> Hub {
        Hub {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                room: Notify::new(),
                limits,
                counters,
            }),
        }
    }

    /// Queues a control event for every follower now; never waits.
    pub fn publish_event(&self, kind: EventKind) {
        let line = Line::new(kind);
        let mut st = lock(&self.inner.state);
        for f in &mut st.followers {
            f.offer(&line, &self.inner.counters);
        }
    }

    /// Records a received message in the history and queues it for every
    /// follower, first waiting while one of them is full (at most
    /// [`STALL_GRACE`] for each: then that one starts missing events).
    pub async fn publish_message(&self, kind: EventKind) {
        let line = Line::new(kind);
        let inner = &*self.inner;
        // Followers marked lagging while this message waited: they have
        // counted it as missed already.
        let mut lagged_now: Vec<u64> = Vec::new();
        loop {
            let room = inner.room.notified();
            tokio::pin!(room);
            let wait_until = {
                let mut st = lock(&inner.state);
                let now = Instant::now();
                let mut wait_until: Option<Instant> = None;
                for f in st.followers.iter_mut().filter(|f| f.missed == 0) {
                    if !f.is_full() {
                        f.full_since = None;
                        continue;
                    }
                    let since = *f.full_since.get_or_insert(now);
                    if now >= since + STALL_GRACE {
                        tracing::warn!("a tail follower is stuck; it will miss events");
                        f.full_since = None;
                        f.missed = 1;
                        lagged_now.push(f.id);
                        inner
                            .counters
                            .missed_by_subscribers
                            .fetch_add(1, Ordering::Relaxed);
                    } else {
                        let until = since + STALL_GRACE;
                        wait_until = Some(wait_until.map_or(until, |w| w.min(until)));
                    }
                }
                match wait_until {
                    Some(until) => {
                        // Registered before the lock is released: a follower
                        // that takes from its queue now still wakes us.
                        room.as_mut().enable();
                        until
                    }
                    None => {
                        self.deliver(&mut st, line, &lagged_now);
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout_at(wait_until, room).await;
        }
    }

    /// Adds a message to the history and queues it for every follower but
    /// those in `skip` (they counted it as missed).
    fn deliver(&self, st: &mut State, line: Line, skip: &[u64]) {
        let limits = self.inner.limits;
        if limits.messages > 0 {
            st.history_bytes += line.0.payload;
            st.history.push_back(line.clone());
            while st.history.len() > limits.messages
                || (st.history_bytes > limits.bytes && st.history.len() > 1)
            {
                let old = st.history.pop_front().expect("non-empty");
                st.history_bytes -= old.0.payload;
            }
        }
        for f in st.followers.iter_mut().filter(|f| !skip.contains(&f.id)) {
            f.offer(&line, &self.inner.counters);
        }
    }

    /// Up to `replay` messages from history, then (with `follow`) the live
    /// stream, with nothing lost or repeated between the two.
    pub fn subscribe(&self, replay: usize, follow: bool) -> Subscription {
        let mut st = lock(&self.inner.state);
        let skip = st.history.len().saturating_sub(replay);
        let replayed = st.history.iter().skip(skip).cloned().collect();
        let live = follow.then(|| {
            let id = st.next_id;
            st.next_id += 1;
            let wake = Arc::new(Notify::new());
            st.followers.push(Slot {
                id,
                queue: VecDeque::new(),
                bytes: 0,
                missed: 0,
                full_since: None,
                wake: wake.clone(),
            });
            self.count_followers(&st);
            Follower {
                hub: self.clone(),
                id,
                wake,
            }
        });
        Subscription {
            replay: replayed,
            live,
        }
    }

    fn count_followers(&self, st: &State) {
        self.inner
            .counters
            .subscribers
            .store(st.followers.len() as u64, Ordering::Relaxed);
    }
}

/// What `tail` gets.
pub struct Subscription {
    pub replay: Vec<Line>,
    /// `None` without `follow`.
    pub live: Option<Follower>,
}

/// A live follower; dropping it unsubscribes at once.
pub struct Follower {
    hub: Hub,
    id: u64,
    wake: Arc<Notify>,
}

impl Follower {
    /// The next line, waiting for one.
    pub async fn recv(&mut self) -> Line {
        let wake = self.wake.clone();
        loop {
            let woken = wake.notified();
            if let Some(line) = self.try_recv() {
                return line;
            }
            woken.await;
        }
    }

    /// The next line if one is queued.
    pub fn try_recv(&mut self) -> Option<Line> {
        let inner = &*self.hub.inner;
        let mut st = lock(&inner.state);
        let slot = st.followers.iter_mut().find(|f| f.id == self.id)?;
        let line = slot.queue.pop_front()?;
        slot.bytes -= line.len();
        if slot.full_since.is_some() {
            inner.room.notify_waiters();
        }
        Some(line)
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let inner = &*self.hub.inner;
        let mut st = lock(&inner.state);
        st.followers.retain(|f| f.id != self.id);
        self.hub.count_followers(&st);
        drop(st);
        // A message may be waiting for this follower's room.
        inner.room.notify_waiters();
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
