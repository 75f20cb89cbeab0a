//! The in-memory backend: one process, nothing to install.
//!
//! Every change to who is connected or who is paired with whom happens
//! under the map lock, so two overlapping disconnects can never notify a
//! side twice or not at all. The relay hot path does not touch that lock
//! (see [`super::policy`]); the lock order is [`super::slot`]'s.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use p2p_proto::signal::{DisconnectReason, ErrorCode, ServerMsg};
use tokio::time::Instant;
use tungstenite::Utf8Bytes;

use super::policy::{Clients, Outboxes, Relay};
use super::slot::{Kick, QueueLimits, Slot, lock};
use super::{Link, Peer, Refusal, Relayed};
use crate::budget::Budget;
use crate::id;
use crate::metrics::Counts;
use crate::reserve::{Claim, Holder, Reservations};

struct Map {
    clients: HashMap<Arc<str>, Arc<Slot>>,
    /// IDs whose holder left, kept for its token.
    reserved: Reservations,
    shutting_down: bool,
}

/// IDs, pairings and outboxes of one process.
pub struct Memory {
    map: Mutex<Map>,
    max_clients: usize,
    outboxes: Outboxes,
}

/// The map, locked: what the shared policies drop clients through.
struct Locked<'a> {
    mem: &'a Memory,
    map: MutexGuard<'a, Map>,
}

impl Clients for Locked<'_> {
    fn each(&self, f: &mut dyn FnMut(&Arc<Slot>)) {
        self.map.clients.values().for_each(f);
    }

    fn drop_client(&mut self, slot: &Arc<Slot>, why: Kick) {
        self.remove(slot, DisconnectReason::Left, why);
    }
}

impl Locked<'_> {
    /// Removes a client and ends its pairing, telling the peer `reason`.
    /// Idempotent: a second call for the same client changes nothing.
    fn remove(&mut self, slot: &Arc<Slot>, reason: DisconnectReason, why: Kick) {
        if self
            .map
            .clients
            .get(slot.id())
            .is_some_and(|s| Arc::ptr_eq(s, slot))
        {
            self.map.clients.remove(slot.id());
            // A replacement takes the ID at once; anyone else leaving keeps
            // it for its token.
            if let (Some(h), false) = (slot.holder(), why == Kick::Replaced) {
                self.map
                    .reserved
                    .reserve(slot.id().clone(), h.hash, h.from, Instant::now());
            }
        }
        slot.end(why);
        self.detach(slot, reason);
    }

    /// Ends `slot`'s pairing, if any, and tells the other side. Returns
    /// whether there was one.
    fn detach(&mut self, slot: &Arc<Slot>, reason: DisconnectReason) -> bool {
        let peer = {
            let mut mine = slot.link();
            let Some(Link {
                peer: Peer::Here(peer),
                ..
            }) = mine.take()
            else {
                // In memory every peer is here.
                return false;
            };
            // Both sides change together: no relay can slip between them.
            peer.link().take();
            peer
        };
        let m = self.mem.outboxes.metrics();
        m.unpaired();
        let notice = ServerMsg::PeerDisconnected {
            peer_id: slot.id().to_string(),
            reason,
        };
        self.mem
            .outboxes
            .deliver(&peer, notice.to_json().into(), self);
        true
    }

    fn make_room(&mut self) {
        self.mem.outboxes.make_room(self);
    }
}

impl Memory {
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
            outboxes: Outboxes::new(queue, budget),
        }
    }

    pub(super) fn outboxes(&self) -> &Outboxes {
        &self.outboxes
    }

    fn locked(&self) -> Locked<'_> {
        Locked {
            mem: self,
            map: lock(&self.map),
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

    /// See [`Directory::register`](super::Directory::register).
    pub fn register(
        &self,
        requested: Option<String>,
        token: Option<String>,
        from: IpAddr,
        welcome: impl Fn(&str) -> Utf8Bytes,
    ) -> Result<Arc<Slot>, Refusal> {
        let now = Instant::now();
        let mut l = self.locked();
        if l.map.shutting_down {
            return Err(Refusal::ShuttingDown);
        }
        let holder_of = |id: &str| token.as_deref().map(|t| Holder::new(id, t, from));
        let (id, holder): (Arc<str>, _) = match requested {
            Some(id) => {
                let holder = holder_of(&id);
                let hash = holder.map(|h| h.hash);
                if let Some(old) = l.map.clients.get(id.as_str()).cloned() {
                    let same = match (&old.holder(), &hash) {
                        (Some(a), Some(b)) => a.hash.matches(b),
                        _ => false,
                    };
                    if !same {
                        return Err(Refusal::IdTaken);
                    }
                    l.remove(&old, DisconnectReason::Replaced, Kick::Replaced);
                } else {
                    if l.map.reserved.claim(&id, hash.as_ref(), now) == Claim::Taken {
                        return Err(Refusal::IdTaken);
                    }
                    if l.map.clients.len() >= self.max_clients {
                        return Err(Refusal::ServerFull);
                    }
                }
                (id.into(), holder)
            }
            None => {
                if l.map.clients.len() >= self.max_clients {
                    return Err(Refusal::ServerFull);
                }
                let id: Arc<str> = loop {
                    let id = id::random_id();
                    if !l.map.clients.contains_key(id.as_str())
                        && !l.map.reserved.is_reserved(&id, now)
                    {
                        break id.into();
                    }
                };
                let holder = holder_of(&id);
                (id, holder)
            }
        };
        let slot = Arc::new(Slot::new(
            id.clone(),
            holder,
            0,
            self.outboxes.budget().clone(),
        ));
        self.outboxes.first(&slot, welcome(&id));
        l.map.clients.insert(id, slot.clone());
        let m = self.outboxes.metrics();
        m.connected();
        l.make_room();
        Ok(slot)
    }

    /// Removes a client and ends its pairing, telling the peer `reason`.
    pub fn remove(&self, slot: &Arc<Slot>, reason: DisconnectReason, why: Kick) {
        let mut l = self.locked();
        l.remove(slot, reason, why);
        l.make_room();
    }

    pub fn send_own(&self, slot: &Arc<Slot>, frame: Utf8Bytes) {
        self.outboxes.send_own(slot, frame, || self.locked());
    }

    /// See [`Directory::pair`](super::Directory::pair); `a` is not
    /// `peer_id`.
    pub fn pair(&self, a: &Arc<Slot>, peer_id: &str) -> Result<(), ErrorCode> {
        let mut l = self.locked();
        if a.link().is_some() {
            return Err(ErrorCode::AlreadyPaired);
        }
        if !l.map.clients.get(a.id()).is_some_and(|s| Arc::ptr_eq(s, a)) {
            // `a` is being removed (replaced or dropped); it is closing anyway.
            return Ok(());
        }
        let Some(b) = l.map.clients.get(peer_id).cloned() else {
            return Err(ErrorCode::UnknownPeer);
        };
        let mut paired = Vec::with_capacity(2);
        {
            let mut la = a.link();
            let mut lb = b.link();
            if lb.is_some() {
                return Err(ErrorCode::PeerBusy);
            }
            *la = Some(Link {
                peer: Peer::Here(b.clone()),
                pairing: 0,
            });
            *lb = Some(Link {
                peer: Peer::Here(a.clone()),
                pairing: 0,
            });
            // Queued while both links are held, so that no relayed frame
            // can reach either side before its `paired`. Delivered below:
            // dropping a client takes its link.
            for (to, peer, initiator) in [(a, &b, true), (&b, a, false)] {
                let frame = ServerMsg::Paired {
                    peer_id: peer.id().to_string(),
                    initiator,
                };
                paired.push((
                    to.clone(),
                    to.push(frame.to_json().into(), self.outboxes.queue()),
                ));
            }
        }
        let m = self.outboxes.metrics();
        m.paired();
        for (to, pushed) in paired {
            self.outboxes.settle(&to, pushed, &mut l);
        }
        l.make_room();
        Ok(())
    }

    /// Ends `a`'s pairing; its peer is told `unpaired`.
    pub fn unpair(&self, a: &Arc<Slot>) -> Result<(), ErrorCode> {
        let mut l = self.locked();
        if l.detach(a, DisconnectReason::Unpaired) {
            l.make_room();
            Ok(())
        } else {
            Err(ErrorCode::NotPaired)
        }
    }

    /// Relays a frame to `a`'s current peer. The hot path: no map lock.
    pub fn relay(&self, a: &Arc<Slot>, frame: Utf8Bytes) -> Relayed {
        match self.outboxes.relay(a, frame, || self.locked()) {
            Relay::Here => Relayed::Ok,
            // In memory every peer is here.
            Relay::NotPaired | Relay::Elsewhere { .. } => Relayed::NotPaired,
        }
    }

    /// Refuses new clients and tells every connection to close with 1001.
    /// No `peer_disconnected` is sent: everyone is going.
    pub fn shutdown(&self) {
        let mut map = lock(&self.map);
        map.shutting_down = true;
        for (_, slot) in map.clients.drain() {
            slot.end(Kick::Shutdown);
            // Break the peer cycle so the slots are freed.
            slot.link().take();
        }
    }
}
