//! Frames between nodes: a relayed frame goes into the peer's node's inbox
//! (`XADD`, tagged with the peer's connection and the pairing's number),
//! and inbox entry IDs are read back as positions.
//!
//! Why a stream and not pub/sub: the inbox also carries the control events
//! the scripts add (`paired`, the end of a pairing, a kick), and one stream
//! keeps a frame after the `paired` it follows and before the notice that
//! ends its pairing, whatever connection each came by; a node that loses
//! its Redis connection for a moment reads on from where it was instead of
//! losing what was sent meanwhile. The receiving node delivers a frame only
//! if the connection and pairing number still match (a frame of an ended
//! pairing is stale, counted and dropped).
//!
//! **One writer per node.** A relay does not wait for Redis: the frame
//! joins this node's queue of [`Outgoing`] frames, and one task sends
//! what has queued up as one pipeline of `XADD`s on the node's Redis
//! connection, waits for the answers, then sends the next. Under load a
//! round trip carries hundreds of frames instead of one.
//!
//! **Order.** A client's frames enter the queue in the order it sent them,
//! and the writer sends the queue in order over one connection, so Redis
//! appends them in that order. Everything else a client asks of Redis
//! (`unpair`, the release when it leaves) first waits for
//! [`Outgoing::barrier`]: until Redis has acknowledged every frame queued
//! before the request. So a client's `unpair` or departure reaches its
//! peer after every frame it relayed before, as on one node.
//!
//! **Failure.** If Redis does not take a batch (an error, or no answer
//! within the command timeout), some of its frames may be lost: each
//! client that sent one is closed with 1013, as a client whose own request
//! failed is, so nothing is lost silently. The queue is bounded in bytes;
//! a frame that would pass the bound is refused the same way (Redis is
//! not keeping up).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::debug;

use super::{Inner, OP_TIMEOUT, Remote, Unavailable};
use crate::directory::slot::{Kick, Slot, lock};

/// Frames sent in one pipeline at most.
const BATCH: usize = 1024;

/// The inbox stream of incarnation `inc`, under the cluster's key prefix.
pub fn inbox_key(prefix: &str, inc: &str) -> String {
    format!("{prefix}in:{inc}")
}

/// A stream entry ID `MS-SEQ` as a comparable position.
pub fn entry_pos(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// One frame on its way to another node.
struct Outbound {
    from: Arc<Slot>,
    to: Arc<Remote>,
    pairing: u64,
    frame: Utf8Bytes,
}

#[derive(Default)]
struct Queue {
    frames: Vec<Outbound>,
    /// Bytes in `frames`.
    bytes: usize,
    /// Frames ever queued: the position of the next one.
    queued: u64,
    /// No more frames: the writer ends once the queue is empty.
    stopped: bool,
}

/// This node's frames for clients of other nodes, in the order they were
/// relayed.
pub struct Outgoing {
    q: Mutex<Queue>,
    /// Wakes the writer when the queue was empty.
    wake: Notify,
    /// How many frames Redis has answered for, in queue order.
    done: watch::Sender<u64>,
    /// Bytes the queue may hold.
    bound: usize,
}

impl Outgoing {
    pub fn new(bound: usize) -> Outgoing {
        Outgoing {
            q: Mutex::new(Queue::default()),
            wake: Notify::new(),
            done: watch::Sender::new(0),
            bound,
        }
    }

    /// Queues a frame from `from` for `to`'s node.
    pub fn send(
        &self,
        from: &Arc<Slot>,
        to: Arc<Remote>,
        pairing: u64,
        frame: Utf8Bytes,
    ) -> Result<(), Unavailable> {
        let mut q = lock(&self.q);
        if q.stopped || (q.bytes > 0 && q.bytes + frame.len() > self.bound) {
            return Err(Unavailable);
        }
        q.bytes += frame.len();
        q.queued += 1;
        q.frames.push(Outbound {
            from: from.clone(),
            to,
            pairing,
            frame,
        });
        let first = q.frames.len() == 1;
        drop(q);
        if first {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Waits until Redis has answered for every frame queued before now.
    pub async fn barrier(&self) -> Result<(), Unavailable> {
        let target = lock(&self.q).queued;
        let mut rx = self.done.subscribe();
        match tokio::time::timeout(OP_TIMEOUT * 2, rx.wait_for(|d| *d >= target)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Unavailable),
        }
    }

    /// Takes no more frames; the writer ends once it has sent the rest.
    pub fn stop(&self) {
        lock(&self.q).stopped = true;
        self.wake.notify_one();
    }

    /// The next batch, in queue order, and the position after it; `None`
    /// once stopped and empty.
    async fn next(&self) -> Option<(Vec<Outbound>, u64)> {
        loop {
            {
                let mut q = lock(&self.q);
                if !q.frames.is_empty() {
                    let n = q.frames.len().min(BATCH);
                    let rest = q.frames.split_off(n);
                    let batch = std::mem::replace(&mut q.frames, rest);
                    q.bytes -= batch.iter().map(|f| f.frame.len()).sum::<usize>();
                    let end = q.queued - q.frames.len() as u64;
                    return Some((batch, end));
                }
                if q.stopped {
                    return None;
                }
            }
            // A frame queued between the check and here left a permit.
            self.wake.notified().await;
        }
    }
}

/// The node's writer: sends the outgoing queue to Redis, a pipeline at a
/// time, until the node leaves.
pub async fn run(i: Arc<Inner>) {
    let out = &i.outgoing;
    while let Some((batch, end)) = out.next().await {
        let mut pipe = redis::pipe();
        for f in &batch {
            // `NOMKSTREAM`: the inbox of a node reaped meanwhile is not
            // made again (the frame is stale anyway).
            pipe.cmd("XADD")
                .arg(&f.to.inbox)
                .arg("NOMKSTREAM")
                .arg("*")
                .arg("k")
                .arg("r")
                .arg("i")
                .arg(&*f.to.id)
                .arg("c")
                .arg(f.to.conn)
                .arg("e")
                .arg(f.pairing)
                .arg("f")
                .arg(f.frame.as_bytes())
                .ignore();
        }
        let mut con = i.redis.clone();
        // Counted as relayed when queued, as a frame into an outbox is.
        if let Err(e) = pipe.query_async::<()>(&mut con).await {
            i.counters.redis_errors.fetch_add(1, Ordering::Relaxed);
            debug!("relaying {} frames to other nodes: {e}", batch.len());
            for f in &batch {
                f.from.end(Kick::Unavailable);
            }
        }
        out.done.send_replace(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_order_as_positions() {
        assert_eq!(entry_pos("1700000000000-3"), Some((1700000000000, 3)));
        assert!(entry_pos("5-10") > entry_pos("5-9"));
        assert!(entry_pos("6-0") > entry_pos("5-9"));
        assert_eq!(entry_pos(""), None);
        assert_eq!(entry_pos("x-1"), None);
    }
}
