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
//! joins this node's queue of [`Outgoing`] frames, and one task takes
//! what has queued up, packs the frames for each destination node into
//! one inbox entry (a [`batch`](encode)), sends those entries as one
//! pipeline of `XADD`s on the node's Redis connection, waits for the
//! answers, then takes the next. Under load one entry and one round trip
//! carry hundreds of frames instead of one.
//!
//! **Gathering under load.** At a steady stream of frames, a batch holds
//! what arrived during the previous round trip, a few dozen frames, and
//! each batch costs Redis an `XADD` and the receiving node an `XREAD` of
//! its own whatever its size: those per-batch costs were most of what a
//! frame cost Redis. So once a pipeline has carried [`BUSY`] frames or
//! more, the writer waits [`gather`](super::ClusterConfig::gather) (the
//! `--coalesce` window, which tokio's millisecond timer rounds up to its
//! next tick) before it takes the next batch. At 90,000 frames/s across
//! two nodes this cut Redis's CPU per frame by a fifth to a third
//! (BENCHMARKS.md, round 11); the price is at most that wait per
//! cross-node hop, and only under load: a node relaying fewer frames than
//! [`BUSY`] per round trip sends each batch as soon as the last one is
//! answered.
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
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tracing::debug;
use tungstenite::Utf8Bytes;

use super::{Inner, OP_TIMEOUT, Remote, Unavailable};
use crate::directory::slot::{Kick, Slot, lock};

/// Frames sent in one pipeline at most.
const BATCH: usize = 1024;

/// Bytes of frames in one pipeline: more waits for the next (a batch
/// always takes at least one frame).
const BATCH_BYTES: usize = 1024 * 1024;

/// A pipeline of this many frames or more means the node is under load:
/// the writer gathers before it takes the next batch.
const BUSY: usize = 8;

/// How long the writer waits after sending `sent` frames in a pipeline
/// before it takes the next batch.
fn gather_after(sent: usize, gather: Duration) -> Option<Duration> {
    (sent >= BUSY && !gather.is_zero()).then_some(gather)
}

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
                    let mut n = 0;
                    let mut bytes = 0;
                    for f in q.frames.iter().take(BATCH) {
                        if n > 0 && bytes + f.frame.len() > BATCH_BYTES {
                            break;
                        }
                        n += 1;
                        bytes += f.frame.len();
                    }
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
        // One entry per destination node, its frames in queue order.
        let mut entries: Vec<(&str, Vec<u8>)> = Vec::new();
        for f in &batch {
            let at = match entries.iter().position(|(k, _)| *k == f.to.inbox) {
                Some(at) => at,
                None => {
                    entries.push((&f.to.inbox, Vec::new()));
                    entries.len() - 1
                }
            };
            encode(&mut entries[at].1, &f.to, f.pairing, f.frame.as_bytes());
        }
        let mut pipe = redis::pipe();
        for (inbox, frames) in &entries {
            // `NOMKSTREAM`: the inbox of a node reaped meanwhile is not
            // made again (its frames are stale anyway).
            pipe.cmd("XADD")
                .arg(inbox)
                .arg("NOMKSTREAM")
                .arg("*")
                .arg("k")
                .arg("b")
                .arg("f")
                .arg(frames)
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
        if let Some(wait) = gather_after(batch.len(), i.cfg.gather) {
            // Frames queued meanwhile wait; a barrier (an `unpair`) too,
            // as it would behind a slow Redis.
            tokio::time::sleep(wait).await;
        }
    }
}

/// Appends a frame for `to` to a batch: `ID CONN PAIRING LEN`, a line
/// feed, then the frame's `LEN` bytes. IDs hold no space; the length
/// makes any frame content safe.
fn encode(out: &mut Vec<u8>, to: &Remote, pairing: u64, frame: &[u8]) {
    let mut n = itoa::Buffer::new();
    out.reserve(to.id.len() + 3 * 21 + frame.len());
    out.extend_from_slice(to.id.as_bytes());
    for x in [to.conn, pairing, frame.len() as u64] {
        out.push(b' ');
        out.extend_from_slice(n.format(x).as_bytes());
    }
    out.push(b'\n');
    out.extend_from_slice(frame);
}

/// One frame of a batch: for client `id` on connection `conn`, in
/// pairing `pairing`.
pub struct Batched<'a> {
    pub id: &'a str,
    pub conn: u64,
    pub pairing: u64,
    pub frame: &'a [u8],
}

/// The frames of a batch, in order; an `Err` ends it (whatever follows a
/// malformed frame cannot be found).
pub fn decode(mut b: &[u8]) -> impl Iterator<Item = Result<Batched<'_>, ()>> {
    std::iter::from_fn(move || {
        if b.is_empty() {
            return None;
        }
        let next = || -> Option<(Batched<'_>, &[u8])> {
            let nl = b.iter().take(128).position(|&c| c == b'\n')?;
            let head = std::str::from_utf8(&b[..nl]).ok()?;
            let mut parts = head.split(' ');
            let id = parts.next()?;
            let conn = parts.next()?.parse().ok()?;
            let pairing = parts.next()?.parse().ok()?;
            let len: usize = parts.next()?.parse().ok()?;
            if parts.next().is_some() {
                return None;
            }
            let body = &b[nl + 1..];
            let frame = body.get(..len)?;
            Some((
                Batched {
                    id,
                    conn,
                    pairing,
                    frame,
                },
                &body[len..],
            ))
        };
        match next() {
            Some((f, rest)) => {
                b = rest;
                Some(Ok(f))
            }
            None => {
                b = &[];
                Some(Err(()))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_reads_back_as_its_frames_in_order() {
        let to = Remote::new("sd:", "bob", "n1.0000abcd", 7);
        let mut b = Vec::new();
        encode(&mut b, &to, 3, br#"{"type":"offer","sdp":"a\nb 1 2 3\n"}"#);
        encode(&mut b, &to, 3, b"");
        encode(&mut b, &to, 4, "é\n".as_bytes());
        let got: Vec<_> = decode(&b)
            .map(|f| f.map(|f| (f.id, f.conn, f.pairing, f.frame.to_vec())))
            .collect();
        assert_eq!(
            got,
            vec![
                Ok((
                    "bob",
                    7,
                    3,
                    br#"{"type":"offer","sdp":"a\nb 1 2 3\n"}"#.to_vec()
                )),
                Ok(("bob", 7, 3, Vec::new())),
                Ok(("bob", 7, 4, "é\n".as_bytes().to_vec())),
            ]
        );
    }

    #[test]
    fn a_malformed_batch_ends_at_the_first_bad_frame() {
        for bad in [
            &b"bob 7 3 10\nshort"[..],
            b"bob 7 x 1\na",
            b"bob 7 3\na",
            b"bob 7 3 1 extra\na",
            b"no line feed at all",
            b"\xff 7 3 1\na",
        ] {
            let got: Vec<_> = decode(bad).map(|f| f.map(|f| f.frame.to_vec())).collect();
            assert_eq!(got, vec![Err(())], "{:?}", String::from_utf8_lossy(bad));
        }
        let mut b = b"bob 1 2 1\nx".to_vec();
        b.extend_from_slice(b"garbage");
        let got: Vec<_> = decode(&b).map(|f| f.map(|f| f.frame.to_vec())).collect();
        assert_eq!(got, vec![Ok(b"x".to_vec()), Err(())]);
    }

    #[test]
    fn the_writer_gathers_only_under_load_and_only_when_asked_to() {
        let w = Duration::from_micros(300);
        assert_eq!(gather_after(1, w), None, "a lone frame goes at once");
        assert_eq!(gather_after(BUSY - 1, w), None);
        assert_eq!(gather_after(BUSY, w), Some(w));
        assert_eq!(gather_after(BATCH, w), Some(w));
        assert_eq!(gather_after(BATCH, Duration::ZERO), None, "--coalesce 0");
    }

    #[test]
    fn entry_ids_order_as_positions() {
        assert_eq!(entry_pos("1700000000000-3"), Some((1700000000000, 3)));
        assert!(entry_pos("5-10") > entry_pos("5-9"));
        assert!(entry_pos("6-0") > entry_pos("5-9"));
        assert_eq!(entry_pos(""), None);
        assert_eq!(entry_pos("x-1"), None);
    }
}
