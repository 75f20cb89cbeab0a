//! One connected client as every part of the server sees it: its ID, its
//! outbox, the pairing it is in, and the waker of its connection task.
//!
//! This layer knows nothing of backends. It bounds each outbox in frames
//! and in bytes (what is queued plus what the connection took and has not
//! yet written) and counts every byte in the global [`Budget`]; what to do
//! when a bound is passed is the shared policy's business
//! ([`super::policy`]), which this layer only reports to ([`Push`]).
//!
//! Lock order, never reversed: a backend's table → `link` locks → `out`
//! locks. A relay holds one `link` lock and then one `out` lock; only
//! backend operations, serialised by their table lock, hold two `link`
//! locks at once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Context;

use futures_util::task::AtomicWaker;
use tungstenite::Utf8Bytes;

use super::Link;
use crate::budget::Budget;
use crate::reserve::Holder;

/// Why someone other than the connection's own task ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// A new connection reclaimed the ID with its token (close 4002).
    Replaced,
    /// The outbound queue overflowed: the client does not read (close 1008).
    SlowReader,
    /// It held the most when the global buffer budget ran out (close 1008).
    Evicted,
    /// The server is shutting down (close 1001).
    Shutdown,
    /// A cluster node cannot carry out this client's requests: Redis did
    /// not take its frames, or the node lost its place in the cluster
    /// (close 1013).
    Unavailable,
    /// The connection's own task ended it; nothing to act on.
    Own,
}

/// The bounds of one client's outbox.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub frames: usize,
    pub bytes: usize,
}

/// What became of a frame offered to an outbox.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// Over the queue bound: the client does not read and must be dropped.
    Overflow,
    /// The client is already ending; the frame is not needed.
    Ending,
}

/// Frames waiting to be written to one client, and whether it is ending.
#[derive(Default)]
struct Outbox {
    frames: VecDeque<Utf8Bytes>,
    /// Bytes in `frames`.
    queued: usize,
    /// Bytes the connection task took and has not yet written to the socket
    /// (they sit in the WebSocket library's write buffer meanwhile).
    inflight: usize,
    /// Set once the client is removed; later frames are not queued.
    end: Option<Kick>,
}

impl Outbox {
    fn held(&self) -> usize {
        self.queued + self.inflight
    }
}

/// One connected client, shared by its connection task, its peer and its
/// backend's table.
pub struct Slot {
    id: Arc<str>,
    /// Who may reclaim this ID when it leaves: the hash of its token and
    /// the address it came from (for that address's reservation quota);
    /// `None` without a token. The token itself is never kept.
    holder: Option<Holder>,
    /// This connection's number in its process (with `--cluster`, the
    /// node's incarnation and this tell connections apart cluster-wide).
    conn: u64,
    /// The current pairing. Changed only under the backend's table lock.
    link: Mutex<Option<Link>>,
    out: Mutex<Outbox>,
    /// Wakes the connection task when a frame is queued or it is kicked.
    waker: AtomicWaker,
    /// Where this outbox's bytes are counted.
    budget: Arc<Budget>,
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take every other client down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Slot {
    pub fn new(id: Arc<str>, holder: Option<Holder>, conn: u64, budget: Arc<Budget>) -> Slot {
        Slot {
            id,
            holder,
            conn,
            link: Mutex::new(None),
            out: Mutex::new(Outbox::default()),
            waker: AtomicWaker::new(),
            budget,
        }
    }

    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    pub(in crate::directory) fn holder(&self) -> Option<Holder> {
        self.holder
    }

    pub(in crate::directory) fn conn(&self) -> u64 {
        self.conn
    }

    /// The pairing cell; lock order: after the table, before any `out`.
    pub(in crate::directory) fn link(&self) -> MutexGuard<'_, Option<Link>> {
        lock(&self.link)
    }

    /// The current peer's ID, if paired.
    pub fn peer_id(&self) -> Option<Arc<str>> {
        self.link().as_ref().map(|l| l.peer_id().clone())
    }

    /// Queues a frame from elsewhere and wakes the connection task.
    pub(in crate::directory) fn push(&self, frame: Utf8Bytes, lim: QueueLimits) -> Push {
        let res = self.enqueue(frame, lim);
        if res == Push::Queued {
            self.waker.wake();
        }
        res
    }

    /// Queues without waking the connection task: for frames its own task
    /// queues, which it writes before it next waits anyway.
    pub(in crate::directory) fn enqueue(&self, frame: Utf8Bytes, lim: QueueLimits) -> Push {
        let mut out = lock(&self.out);
        let held = out.held();
        if out.end.is_some() {
            Push::Ending
        } else if out.frames.len() >= lim.frames
            // An empty outbox takes any one frame: a client that keeps up is
            // never dropped for the size of a single message.
            || (held > 0 && held + frame.len() > lim.bytes)
        {
            Push::Overflow
        } else {
            out.queued += frame.len();
            self.budget.add(frame.len());
            out.frames.push_back(frame);
            Push::Queued
        }
    }

    /// Takes the next frame to write; its bytes stay counted until
    /// [`written`](Self::written) says they reached the socket.
    pub fn pop(&self) -> Option<Utf8Bytes> {
        let mut out = lock(&self.out);
        let f = out.frames.pop_front();
        match &f {
            Some(f) => {
                out.queued -= f.len();
                out.inflight += f.len();
            }
            None if out.frames.capacity() > 0 => {
                // Drained: give the slots back, so that a quiet client holds
                // none (a burst allocates them once, not per frame).
                out.frames = VecDeque::new();
            }
            None => {}
        }
        f
    }

    /// `n` bytes taken with [`pop`](Self::pop) are written to the socket.
    pub fn written(&self, n: usize) {
        let mut out = lock(&self.out);
        // Less may be left if the client was dropped meanwhile.
        let n = n.min(out.inflight);
        out.inflight -= n;
        self.budget.sub(n);
    }

    /// Bytes queued for this client and not yet written.
    pub(in crate::directory) fn held(&self) -> usize {
        lock(&self.out).held()
    }

    /// Registers the connection task to be woken by a push or a kick.
    pub fn register(&self, cx: &Context<'_>) {
        self.waker.register(cx.waker());
    }

    /// Why the client is ending, once it is.
    pub fn ended(&self) -> Option<Kick> {
        lock(&self.out).end
    }

    /// Marks the client as ending for `why` and wakes its task, which
    /// then closes it; only the first reason counts.
    pub(in crate::directory) fn end(&self, why: Kick) {
        let mut out = lock(&self.out);
        if out.end.is_none() {
            out.end = Some(why);
            if matches!(why, Kick::SlowReader | Kick::Evicted) {
                // Nothing queued will be written: free it now, capacity too.
                // The one frame in the library's write buffer goes with the
                // socket, within the close grace.
                self.budget.sub(out.held());
                out.queued = 0;
                out.inflight = 0;
                out.frames = VecDeque::new();
            }
        }
        drop(out);
        self.waker.wake();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let out = self.out.get_mut().unwrap_or_else(|e| e.into_inner());
        self.budget.sub(out.held());
    }
}
