//! What happens to frames on their way into outboxes, written once for
//! both backends: a client that does not read, a budget that runs out,
//! a client's own frames, a relay to a peer on this node.
//!
//! - **A client whose outbox overflows does not read**: it is dropped
//!   (close 1008), counted in `signald_slow_reader_drops_total`, and its
//!   peer is told `left`. The sender is never stalled for it.
//! - **The budget**: whenever a push takes the bytes held by all outboxes
//!   over `--max-buffered-bytes`, the clients holding the most are dropped
//!   the same way until the total is back under seven eighths of it
//!   (`signald_budget_evictions_total`). Under the budget this costs one
//!   atomic load.
//! - **A client's own frames** (errors, pings) obey the same bound: one
//!   that overflows its own queue does not read either.
//!
//! The one step left to each backend is dropping a client ([`Clients`]):
//! in memory, the client leaves the table and its peer's outbox gets the
//! notice before the table's lock is released; in a cluster, the client is
//! ended and its connection task releases it in Redis at once, which tells
//! the peer wherever it is (one script later; the node's own cache of the
//! pairing changes only in Redis's order). Either way the peer hears
//! `left` without waiting for any timeout.

use std::sync::Arc;

use tungstenite::Utf8Bytes;

use super::slot::{Kick, Push, QueueLimits, Slot};
use super::{Link, Peer};
use crate::budget::Budget;
use crate::directory::cluster::Remote;
use crate::metrics::Metrics;

/// A backend's clients on this node, seen under its table lock.
pub(super) trait Clients {
    /// Calls `f` with every client of this node.
    fn each(&self, f: &mut dyn FnMut(&Arc<Slot>));
    /// Drops `slot` for `why`: it is ended, and its peer is told `left`.
    fn drop_client(&mut self, slot: &Arc<Slot>, why: Kick);
}

/// Where a relayed frame went.
pub(super) enum Relay {
    /// Into the peer's outbox on this node (or the peer is ending).
    Here,
    NotPaired,
    /// The peer is a client of another node: the frame is handed back with
    /// where it goes.
    Elsewhere {
        to: Arc<Remote>,
        pairing: u64,
        frame: Utf8Bytes,
    },
}

/// The outbox bounds, the budget and the counters the policies keep.
pub(super) struct Outboxes {
    queue: QueueLimits,
    budget: Arc<Budget>,
    metrics: Metrics,
}

impl Outboxes {
    pub fn new(queue: QueueLimits, budget: Arc<Budget>) -> Outboxes {
        Outboxes {
            queue,
            budget,
            metrics: Metrics::default(),
        }
    }

    pub fn queue(&self) -> QueueLimits {
        self.queue
    }

    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A new client's first frame: an empty outbox always takes it.
    pub fn first(&self, slot: &Slot, frame: Utf8Bytes) {
        slot.enqueue(frame, self.queue);
    }

    /// The client does not read: dropped, its peer told.
    fn overflowed(&self, slot: &Arc<Slot>, clients: &mut impl Clients) {
        self.metrics.slow_reader();
        clients.drop_client(slot, Kick::SlowReader);
    }

    /// Queues a frame for `to` from elsewhere (a notice, a relayed frame
    /// from another node) and wakes its task; a client that does not read
    /// is dropped. For callers that hold the table; they make room after.
    pub fn deliver(&self, to: &Arc<Slot>, frame: Utf8Bytes, clients: &mut impl Clients) {
        let pushed = to.push(frame, self.queue);
        self.settle(to, pushed, clients);
    }

    /// Acts on what became of a frame pushed to `to` under locks that
    /// dropping a client would take (a pairing being made).
    pub fn settle(&self, to: &Arc<Slot>, pushed: Push, clients: &mut impl Clients) {
        if pushed == Push::Overflow {
            self.overflowed(to, clients);
        }
    }

    /// Queues a frame for the client itself (errors, pings); only its own
    /// connection task calls this. `clients` is taken only when needed.
    pub fn send_own<C: Clients>(
        &self,
        slot: &Arc<Slot>,
        frame: Utf8Bytes,
        clients: impl FnOnce() -> C,
    ) {
        match slot.enqueue(frame, self.queue) {
            Push::Overflow => self.overflowed(slot, &mut clients()),
            Push::Queued => self.make_room_with(clients),
            Push::Ending => {}
        }
    }

    /// Relays a frame to `from`'s current peer if it is on this node: the
    /// hot path, which takes no table lock unless a client must go.
    pub fn relay<C: Clients>(
        &self,
        from: &Slot,
        frame: Utf8Bytes,
        clients: impl FnOnce() -> C,
    ) -> Relay {
        let overflowed = {
            let link = from.link();
            let peer = match link.as_ref() {
                None => return Relay::NotPaired,
                Some(Link {
                    peer: Peer::Elsewhere(to),
                    pairing,
                }) => {
                    return Relay::Elsewhere {
                        to: to.clone(),
                        pairing: *pairing,
                        frame,
                    };
                }
                Some(Link {
                    peer: Peer::Here(peer),
                    ..
                }) => peer,
            };
            match peer.push(frame, self.queue) {
                Push::Overflow => Some(peer.clone()),
                Push::Queued | Push::Ending => None,
            }
        };
        match overflowed {
            // The peer does not read: drop it, never stall the sender.
            Some(peer) => self.overflowed(&peer, &mut clients()),
            None => {
                self.metrics.relayed();
                self.make_room_with(clients);
            }
        }
        Relay::Here
    }

    /// [`make_room`](Self::make_room), taking the table only when the
    /// budget is passed.
    pub fn make_room_with<C: Clients>(&self, clients: impl FnOnce() -> C) {
        if self.budget.over() {
            self.make_room(&mut clients());
        }
    }

    /// Brings the buffered bytes back under the budget, if they passed it,
    /// by dropping the clients that hold the most. One pass frees at least
    /// an eighth of the budget, which someone has to fill again before the
    /// next pass.
    pub fn make_room(&self, clients: &mut impl Clients) {
        if !self.budget.over() {
            return;
        }
        let mut holders: Vec<(usize, Arc<Slot>)> = Vec::new();
        clients.each(&mut |s| {
            let held = s.held();
            if held > 0 && s.ended().is_none() {
                holders.push((held, s.clone()));
            }
        });
        holders.sort_unstable_by_key(|h| std::cmp::Reverse(h.0));
        let target = self.budget.target();
        for (_, slot) in holders {
            if self.budget.used() <= target {
                break;
            }
            self.metrics.evicted();
            clients.drop_client(&slot, Kick::Evicted);
        }
    }
}
