//! The directory: who is connected under which ID, who is paired with
//! whom, and the outboxes frames wait in. One interface, two backends: in
//! this process ([`memory`], the default, nothing to install) or in Redis
//! for several nodes ([`cluster`], `--cluster`). The connection code calls
//! [`Directory`] and never learns which one it has.
//!
//! - [`slot`]: one client, its outbox and its pairing cell; no backend
//!   knowledge.
//! - [`policy`]: what happens when an outbox overflows, when the buffer
//!   budget runs out, to a client's own frames and to a relay between two
//!   clients of this node: written once, used by both backends.
//! - [`memory`] and [`cluster`]: where IDs and pairings live, and how a
//!   client is dropped.
//!
//! Both backends keep the same contract; `server/tests` runs one suite
//! against both. The in-memory side answers at once. The cluster's pair,
//! unpair, register and remove wait for Redis; the connection code runs
//! them in boxes of their own (`conn::cold`), so that an idle connection's
//! task is not sized for them. A relay never waits, on either backend: it
//! goes into the peer's outbox, or into the queue of frames for other
//! nodes.

pub mod cluster;
mod memory;
mod policy;
mod slot;

use std::net::IpAddr;
use std::sync::Arc;

use p2p_proto::signal::{DisconnectReason, ErrorCode, ServerMsg};
use tungstenite::Utf8Bytes;

pub use self::cluster::Unavailable;
use self::cluster::{Cluster, Remote};
use self::memory::Memory;
pub use self::slot::{Kick, QueueLimits, Slot};
use crate::budget::Budget;
use crate::metrics::{Counts, Metrics};
use crate::{Config, relayed_frame_max};

/// Who a client is paired with.
pub(in crate::directory) enum Peer {
    /// A client of this process: frames go straight into its outbox.
    Here(Arc<Slot>),
    /// A client of another cluster node: frames go through Redis.
    Elsewhere(Arc<Remote>),
}

/// A pairing as one side sees it.
pub(in crate::directory) struct Link {
    pub(in crate::directory) peer: Peer,
    /// The pairing's number, unique in the cluster (always 0 in memory):
    /// frames and notices tagged with another pairing are stale.
    pub(in crate::directory) pairing: u64,
}

impl Link {
    fn peer_id(&self) -> &Arc<str> {
        match &self.peer {
            Peer::Here(p) => p.id(),
            Peer::Elsewhere(r) => r.id(),
        }
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
#[derive(Debug, PartialEq, Eq)]
pub enum Relayed {
    Ok,
    NotPaired,
}

// One value per process: boxing the memory backend would only add a
// pointer chase to every call of the single-node path.
#[allow(clippy::large_enum_variant)]
pub enum Directory {
    Memory(Memory),
    Cluster(Cluster),
}

impl Directory {
    /// The backend `cfg` asks for; with `--cluster`, once Redis is reached
    /// and the cluster joined.
    pub async fn open(cfg: &Config) -> anyhow::Result<Directory> {
        let queue = QueueLimits {
            frames: cfg.max_queue,
            bytes: cfg.max_queue_bytes,
        };
        let budget = Arc::new(Budget::new(cfg.max_buffered_bytes));
        Ok(match &cfg.cluster {
            None => Directory::Memory(Memory::new(
                cfg.max_clients,
                queue,
                budget,
                cfg.id_reserve,
                cfg.id_reserve_per_ip,
            )),
            Some(c) => Directory::Cluster(
                Cluster::join(
                    c.clone(),
                    cfg.max_clients,
                    cfg.id_reserve,
                    cfg.id_reserve_per_ip,
                    relayed_frame_max(cfg.max_message_bytes),
                    queue,
                    budget,
                )
                .await?,
            ),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        match self {
            Directory::Memory(m) => m.outboxes().metrics(),
            Directory::Cluster(c) => c.outboxes().metrics(),
        }
    }

    pub fn budget(&self) -> &Arc<Budget> {
        match self {
            Directory::Memory(m) => m.outboxes().budget(),
            Directory::Cluster(c) => c.outboxes().budget(),
        }
    }

    /// Connected clients (of this node) and reservations.
    pub fn counts(&self) -> Counts {
        match self {
            Directory::Memory(m) => m.counts(),
            Directory::Cluster(c) => c.counts(),
        }
    }

    pub fn clients(&self) -> usize {
        self.counts().clients
    }

    /// Pairings with a side on this node, where they are counted apart
    /// from the pairings made (a cluster node's).
    pub fn pairings(&self) -> Option<usize> {
        match self {
            Directory::Memory(_) => None,
            Directory::Cluster(c) => Some(c.pairings()),
        }
    }

    /// Adds the backend's own lines to `/metrics`.
    pub fn render_metrics(&self, body: &mut String) {
        if let Directory::Cluster(c) = self {
            c.figures().render(body);
        }
    }

    /// Registers a client. `welcome` makes its first frame from its final
    /// ID; that frame is queued before anyone can pair with the new client.
    ///
    /// Check order: an ID held by a live connection is replaced when the
    /// token matches, else `id_taken`; an ID reserved for a token is taken
    /// back with that token, else `id_taken`; only then the client limit,
    /// which a replacement does not count against.
    pub async fn register(
        &self,
        requested: Option<String>,
        token: Option<String>,
        from: IpAddr,
        welcome: impl Fn(&str) -> Utf8Bytes,
    ) -> Result<Arc<Slot>, Refusal> {
        match self {
            Directory::Memory(m) => m.register(requested, token, from, welcome),
            Directory::Cluster(c) => c.register(requested, token, from, welcome).await,
        }
    }

    /// Pairs `a` (the initiator) with `peer_id`. Checks run in the
    /// contract's order after field validation: `self_pair`,
    /// `already_paired`, `unknown_peer`, `peer_busy`. On success `a`'s
    /// next frame already goes to its peer.
    pub async fn pair(
        &self,
        a: &Arc<Slot>,
        peer_id: &str,
    ) -> Result<Result<(), ErrorCode>, Unavailable> {
        if **a.id() == *peer_id {
            return Ok(Err(ErrorCode::SelfPair));
        }
        match self {
            Directory::Memory(m) => Ok(m.pair(a, peer_id)),
            Directory::Cluster(c) => c.pair(a, peer_id).await,
        }
    }

    /// Ends `a`'s pairing; its peer is told `unpaired` after every frame
    /// `a` relayed before.
    pub async fn unpair(&self, a: &Arc<Slot>) -> Result<Result<(), ErrorCode>, Unavailable> {
        match self {
            Directory::Memory(m) => Ok(m.unpair(a)),
            Directory::Cluster(c) => c.unpair(a).await,
        }
    }

    /// Relays a frame to `a`'s current peer, without waiting.
    pub fn relay(&self, a: &Arc<Slot>, frame: Utf8Bytes) -> Result<Relayed, Unavailable> {
        match self {
            Directory::Memory(m) => Ok(m.relay(a, frame)),
            Directory::Cluster(c) => c.relay(a, frame),
        }
    }

    /// The client's connection ended; its peer is told `reason` after
    /// every frame the client relayed before.
    pub async fn remove(&self, slot: &Arc<Slot>, reason: DisconnectReason) {
        match self {
            Directory::Memory(m) => m.remove(slot, reason, Kick::Own),
            Directory::Cluster(c) => c.remove(slot, reason).await,
        }
    }

    /// Queues a frame for the client itself (see [`policy`]).
    pub fn send_own(&self, slot: &Arc<Slot>, frame: Utf8Bytes) {
        match self {
            Directory::Memory(m) => m.send_own(slot, frame),
            Directory::Cluster(c) => c.send_own(slot, frame),
        }
    }

    /// Queues an `error` frame for the client and counts it.
    pub fn send_error(&self, slot: &Arc<Slot>, code: ErrorCode, message: impl Into<String>) {
        self.metrics().error(code);
        let frame = ServerMsg::Error {
            code,
            message: message.into(),
        };
        self.send_own(slot, frame.to_json().into());
    }

    /// `/healthz`: `Err(body)` for a 503.
    pub fn healthy(&self) -> Result<(), &'static str> {
        match self {
            Directory::Memory(_) => Ok(()),
            Directory::Cluster(c) => c.healthy(),
        }
    }

    /// Refuses new clients and tells every connection to close with 1001.
    pub fn shutdown(&self) {
        match self {
            Directory::Memory(m) => m.shutdown(),
            Directory::Cluster(c) => c.shutdown(),
        }
    }

    /// After the connections closed.
    pub async fn leave(&self) {
        if let Directory::Cluster(c) = self {
            c.leave().await;
        }
    }
}
