//! The one owner of client IDs and pairings.
//!
//! Every change to who is connected or who is paired with whom happens under
//! the registry's map lock, so two overlapping disconnects can never notify a
//! side twice or not at all. The relay hot path does not touch that lock: a
//! connection reads its own `peer` slot (a per-client lock, uncontended
//! except while a pairing changes) and pushes into the peer's outbox.
//!
//! Lock order, never reversed: map → `peer` locks → `out` locks. A relay holds
//! one `peer` lock and then one `out` lock; only registry operations, which are
//! serialised by the map lock, hold two `peer` locks at once. With
//! `--cluster` the map is the cluster's local table (`cluster::local`) and
//! the same order holds below it.
//!
//! This registry is the in-memory backend: one process, nothing to install.
//! `cluster` keeps the same [`Slot`]s and outboxes and puts the IDs and
//! pairings in Redis instead; `backend` picks one.
//!
//! Every outbox is bounded in frames and in bytes (what is queued plus what
//! its connection took and has not yet written); a client past either bound
//! does not read, and is dropped. All outboxes together are held to the
//! global [`Budget`]: whenever a push takes the total over it, the clients
//! holding the most are dropped until it is back under seven eighths.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use futures_util::task::AtomicWaker;
use p2p_proto::signal::{DisconnectReason, ErrorCode, ServerMsg};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::budget::Budget;
use crate::cluster::Remote;
use crate::id;
use crate::metrics::{Counts, Metrics};
use crate::reserve::{Claim, Holder, Reservations};

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
    /// This cluster node lost its place in the cluster (it could not reach
    /// Redis in time, or was declared dead): close 1013, no notices.
    Fenced,
    /// The connection's own task ended it; nothing to act on.
    Own,
}

/// The bounds of one client's outbox.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub frames: usize,
    pub bytes: usize,
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

/// Who a client is paired with.
pub enum Peer {
    /// A client of this process: frames go straight into its outbox.
    Local(Arc<Slot>),
    /// A client of another cluster node: frames go through Redis.
    Remote(Arc<Remote>),
}

/// A pairing as one side sees it.
pub struct Link {
    pub peer: Peer,
    /// The pairing's number, unique in the cluster (always 0 in memory):
    /// frames and notices tagged with another epoch are stale.
    pub epoch: u64,
}

impl Link {
    pub fn peer_id(&self) -> &Arc<str> {
        match &self.peer {
            Peer::Local(p) => &p.id,
            Peer::Remote(r) => &r.id,
        }
    }
}

/// One connected client, shared by its connection task, its peer and the map.
pub struct Slot {
    pub id: Arc<str>,
    /// Who may reclaim this ID when it leaves: the hash of its token and
    /// the address it came from (for that address's reservation quota);
    /// `None` without a token. The token itself is never kept.
    holder: Option<Holder>,
    /// This connection's number in its process (with `--cluster`, the
    /// node's incarnation and this tell connections apart cluster-wide).
    pub conn: u64,
    /// The current peer. Changed only under the map lock.
    peer: Mutex<Option<Link>>,
    out: Mutex<Outbox>,
    /// Wakes the connection task when a frame is queued or it is kicked.
    pub waker: AtomicWaker,
    /// Where this outbox's bytes are counted.
    budget: Arc<Budget>,
}

pub enum Push {
    Queued,
    /// Over the queue bound: the client must be dropped.
    Overflow,
    /// The client is already ending; the frame is not needed.
    Ending,
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take every other client down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Slot {
    /// A client of a cluster node (the in-memory registry makes its own).
    pub fn new(id: Arc<str>, holder: Option<Holder>, conn: u64, budget: Arc<Budget>) -> Slot {
        Slot {
            id,
            holder,
            conn,
            peer: Mutex::new(None),
            out: Mutex::new(Outbox::default()),
            waker: AtomicWaker::new(),
            budget,
        }
    }

    /// The pairing cell; lock order: after the map, before any `out`.
    pub fn link(&self) -> MutexGuard<'_, Option<Link>> {
        lock(&self.peer)
    }

    /// Queues a frame from elsewhere and wakes the connection task.
    pub fn push(&self, frame: Utf8Bytes, lim: QueueLimits) -> Push {
        let res = self.enqueue(frame, lim);
        if matches!(res, Push::Queued) {
            self.waker.wake();
        }
        res
    }

    /// Queues without waking the connection task: for frames its own task
    /// queues, which it writes before it next waits anyway.
    pub fn enqueue(&self, frame: Utf8Bytes, lim: QueueLimits) -> Push {
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
            None if out.frames.capacity() > 16 => {
                // Give back what a burst grew, so idle clients stay small.
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
    pub fn held(&self) -> usize {
        lock(&self.out).held()
    }

    /// Why the client is ending, once it is.
    pub fn ended(&self) -> Option<Kick> {
        lock(&self.out).end
    }

    /// Marks the client as ending for `why` and wakes its task, which
    /// then closes it; only the first reason counts.
    pub fn end(&self, why: Kick) {
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

    /// The current peer's ID, if paired.
    pub fn peer_id(&self) -> Option<Arc<str>> {
        lock(&self.peer).as_ref().map(|l| l.peer_id().clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let out = self.out.get_mut().unwrap_or_else(|e| e.into_inner());
        self.budget.sub(out.held());
    }
}

/// Why registration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    IdTaken,
    ServerFull,
    ShuttingDown,
    /// A cluster node that cannot reach Redis, or is between incarnations.
    Unavailable,
}

/// Outcome of a relay attempt.
pub enum Relayed {
    Ok,
    NotPaired,
}

struct Map {
    clients: HashMap<Arc<str>, Arc<Slot>>,
    /// IDs whose holder left, kept for its token.
    reserved: Reservations,
    shutting_down: bool,
}

/// Shared handle: IDs, pairings and the counters of the server.
pub struct Registry {
    map: Mutex<Map>,
    max_clients: usize,
    queue: QueueLimits,
    pub budget: Arc<Budget>,
    pub metrics: Metrics,
}

impl Registry {
    /// At most `max_clients` at once (and as many reservations, each kept
    /// for `id_reserve`, at most `reserve_per_addr` from one address), each
    /// outbox within `queue`, all within `budget`.
    pub fn new(
        max_clients: usize,
        queue: QueueLimits,
        budget: Arc<Budget>,
        id_reserve: Duration,
        reserve_per_addr: usize,
    ) -> Self {
        Self {
            map: Mutex::new(Map {
                clients: HashMap::new(),
                reserved: Reservations::new(id_reserve, max_clients, reserve_per_addr),
                shutting_down: false,
            }),
            max_clients,
            queue,
            budget,
            metrics: Metrics::default(),
        }
    }

    /// Connected clients and reservations: for `/metrics`.
    pub fn counts(&self) -> Counts {
        let map = lock(&self.map);
        Counts {
            clients: map.clients.len(),
            reserved: map.reserved.len(),
            reservations_evicted: map.reserved.evicted(),
            reservations_refused: map.reserved.refused(),
        }
    }

    /// Registers a client. `welcome` makes its first frame from its final ID;
    /// that frame is queued before anyone can pair with the new client.
    ///
    /// Check order: an ID held by a live connection is replaced when the
    /// token matches, else `id_taken`; an ID reserved for a token is taken
    /// back with that token, else `id_taken`; only then the client limit,
    /// which a replacement does not count against.
    pub fn register(
        &self,
        requested: Option<String>,
        token: Option<String>,
        from: IpAddr,
        welcome: impl FnOnce(&str) -> Utf8Bytes,
    ) -> Result<Arc<Slot>, Refusal> {
        let now = Instant::now();
        let mut map = lock(&self.map);
        if map.shutting_down {
            return Err(Refusal::ShuttingDown);
        }
        let holder_of = |id: &str| token.as_deref().map(|t| Holder::new(id, t, from));
        let (id, holder): (Arc<str>, _) = match requested {
            Some(id) => {
                let holder = holder_of(&id);
                let hash = holder.map(|h| h.hash);
                if let Some(old) = map.clients.get(id.as_str()).cloned() {
                    let same = match (&old.holder, &hash) {
                        (Some(a), Some(b)) => a.hash.matches(b),
                        _ => false,
                    };
                    if !same {
                        return Err(Refusal::IdTaken);
                    }
                    self.remove_locked(&mut map, &old, DisconnectReason::Replaced, Kick::Replaced);
                } else {
                    if map.reserved.claim(&id, hash.as_ref(), now) == Claim::Taken {
                        return Err(Refusal::IdTaken);
                    }
                    if map.clients.len() >= self.max_clients {
                        return Err(Refusal::ServerFull);
                    }
                }
                (id.into(), holder)
            }
            None => {
                if map.clients.len() >= self.max_clients {
                    return Err(Refusal::ServerFull);
                }
                let id: Arc<str> = loop {
                    let id = id::random_id();
                    if !map.clients.contains_key(id.as_str()) && !map.reserved.is_reserved(&id, now)
                    {
                        break id.into();
                    }
                };
                let holder = holder_of(&id);
                (id, holder)
            }
        };
        let slot = Arc::new(Slot::new(id.clone(), holder, 0, self.budget.clone()));
        // The first frame of an empty outbox: always taken.
        slot.enqueue(welcome(&id), self.queue);
        map.clients.insert(id, slot.clone());
        self.metrics.connections.fetch_add(1, Ordering::Relaxed);
        self.make_room_locked(&mut map);
        Ok(slot)
    }

    /// Removes a client and ends its pairing, telling the peer `reason`.
    /// Idempotent: a second call for the same client changes nothing.
    pub fn remove(&self, slot: &Arc<Slot>, reason: DisconnectReason, why: Kick) {
        let mut map = lock(&self.map);
        self.remove_locked(&mut map, slot, reason, why);
        self.make_room_locked(&mut map);
    }

    /// Brings the buffered bytes back under the budget, if they passed it,
    /// by dropping the clients that hold the most (their peers are told
    /// `left`). Under the budget this costs one atomic load. Over it, one
    /// pass over the clients frees at least an eighth of the budget, which
    /// someone has to fill again before the next pass.
    fn make_room_locked(&self, map: &mut Map) {
        if !self.budget.over() {
            return;
        }
        let mut holders: Vec<(usize, Arc<Slot>)> = map
            .clients
            .values()
            .filter_map(|s| {
                let held = s.held();
                (held > 0).then(|| (held, s.clone()))
            })
            .collect();
        holders.sort_unstable_by_key(|h| std::cmp::Reverse(h.0));
        let target = self.budget.target();
        for (_, slot) in holders {
            if self.budget.used() <= target {
                break;
            }
            self.metrics.evictions.fetch_add(1, Ordering::Relaxed);
            self.remove_locked(map, &slot, DisconnectReason::Left, Kick::Evicted);
        }
    }

    fn make_room(&self) {
        if self.budget.over() {
            let mut map = lock(&self.map);
            self.make_room_locked(&mut map);
        }
    }

    fn remove_locked(&self, map: &mut Map, slot: &Arc<Slot>, reason: DisconnectReason, why: Kick) {
        if map
            .clients
            .get(&slot.id)
            .is_some_and(|s| Arc::ptr_eq(s, slot))
        {
            map.clients.remove(&slot.id);
            // A replacement takes the ID at once; anyone else leaving keeps
            // it for its token.
            if let (Some(h), false) = (slot.holder, why == Kick::Replaced) {
                map.reserved
                    .reserve(slot.id.clone(), h.hash, h.from, Instant::now());
            }
        }
        slot.end(why);
        self.detach_locked(map, slot, reason);
    }

    /// Ends `slot`'s pairing, if any, and tells the other side. Returns
    /// whether there was one.
    fn detach_locked(&self, map: &mut Map, slot: &Arc<Slot>, reason: DisconnectReason) -> bool {
        let peer = {
            let mut mine = lock(&slot.peer);
            let Some(Link {
                peer: Peer::Local(peer),
                ..
            }) = mine.take()
            else {
                // In memory every peer is local.
                return false;
            };
            // Both sides change together: no relay can slip between them.
            lock(&peer.peer).take();
            peer
        };
        self.metrics.pairings.fetch_sub(1, Ordering::Relaxed);
        let notice = ServerMsg::PeerDisconnected {
            peer_id: slot.id.to_string(),
            reason,
        };
        self.deliver_locked(map, &peer, notice.to_json().into());
        true
    }

    /// Queues a frame; a client whose queue overflows is dropped.
    fn deliver_locked(&self, map: &mut Map, to: &Arc<Slot>, frame: Utf8Bytes) {
        if let Push::Overflow = to.push(frame, self.queue) {
            self.metrics.slow_readers.fetch_add(1, Ordering::Relaxed);
            self.remove_locked(map, to, DisconnectReason::Left, Kick::SlowReader);
        }
    }

    /// Queues a frame for the client itself (errors, pings); only its own
    /// connection task calls this. A client whose own queue overflows does
    /// not read, and is dropped.
    pub fn send_own(&self, slot: &Arc<Slot>, frame: Utf8Bytes) {
        match slot.enqueue(frame, self.queue) {
            Push::Overflow => {
                self.metrics.slow_readers.fetch_add(1, Ordering::Relaxed);
                self.remove(slot, DisconnectReason::Left, Kick::SlowReader);
            }
            Push::Queued => self.make_room(),
            Push::Ending => {}
        }
    }

    /// Pairs `a` (the initiator) with `peer_id`. Checks run in the
    /// contract's order after field validation: `self_pair`,
    /// `already_paired`, `unknown_peer`, `peer_busy`.
    pub fn pair(&self, a: &Arc<Slot>, peer_id: &str) -> Result<(), ErrorCode> {
        if *a.id == *peer_id {
            return Err(ErrorCode::SelfPair);
        }
        let mut map = lock(&self.map);
        if lock(&a.peer).is_some() {
            return Err(ErrorCode::AlreadyPaired);
        }
        if !map.clients.get(&a.id).is_some_and(|s| Arc::ptr_eq(s, a)) {
            // `a` is being removed (replaced or dropped); it is closing anyway.
            return Ok(());
        }
        let Some(b) = map.clients.get(peer_id).cloned() else {
            return Err(ErrorCode::UnknownPeer);
        };
        let mut overflowed = Vec::new();
        {
            let mut pa = lock(&a.peer);
            let mut pb = lock(&b.peer);
            if pb.is_some() {
                return Err(ErrorCode::PeerBusy);
            }
            // Queue `paired` while both locks are held, so that no relayed
            // frame can reach either side before its `paired`.
            for (to, peer, initiator) in [(a, &b, true), (&b, a, false)] {
                let frame = ServerMsg::Paired {
                    peer_id: peer.id.to_string(),
                    initiator,
                };
                if let Push::Overflow = to.push(frame.to_json().into(), self.queue) {
                    overflowed.push(to.clone());
                }
            }
            *pa = Some(Link {
                peer: Peer::Local(b.clone()),
                epoch: 0,
            });
            *pb = Some(Link {
                peer: Peer::Local(a.clone()),
                epoch: 0,
            });
        }
        self.metrics.pairings.fetch_add(1, Ordering::Relaxed);
        for s in overflowed {
            self.metrics.slow_readers.fetch_add(1, Ordering::Relaxed);
            self.remove_locked(&mut map, &s, DisconnectReason::Left, Kick::SlowReader);
        }
        self.make_room_locked(&mut map);
        Ok(())
    }

    /// Ends `a`'s pairing; its peer is told `unpaired`.
    pub fn unpair(&self, a: &Arc<Slot>) -> Result<(), ErrorCode> {
        let mut map = lock(&self.map);
        if self.detach_locked(&mut map, a, DisconnectReason::Unpaired) {
            self.make_room_locked(&mut map);
            Ok(())
        } else {
            Err(ErrorCode::NotPaired)
        }
    }

    /// Relays a frame to `a`'s current peer. The hot path: no map lock.
    pub fn relay(&self, a: &Arc<Slot>, frame: Utf8Bytes) -> Relayed {
        let overflow = {
            let mine = lock(&a.peer);
            let Some(Link {
                peer: Peer::Local(peer),
                ..
            }) = mine.as_ref()
            else {
                return Relayed::NotPaired;
            };
            match peer.push(frame, self.queue) {
                Push::Overflow => Some(peer.clone()),
                Push::Queued | Push::Ending => None,
            }
        };
        match overflow {
            None => {
                self.metrics.relayed.fetch_add(1, Ordering::Relaxed);
                self.make_room();
            }
            Some(peer) => {
                // The peer does not read: drop it, never stall the sender.
                self.metrics.slow_readers.fetch_add(1, Ordering::Relaxed);
                self.remove(&peer, DisconnectReason::Left, Kick::SlowReader);
            }
        }
        Relayed::Ok
    }

    /// Refuses new clients and tells every connection to close with 1001.
    /// No `peer_disconnected` is sent: everyone is going.
    pub fn shutdown(&self) {
        let mut map = lock(&self.map);
        map.shutting_down = true;
        for (_, slot) in map.clients.drain() {
            slot.end(Kick::Shutdown);
            // Break the peer cycle so the slots are freed.
            lock(&slot.peer).take();
        }
    }
}
