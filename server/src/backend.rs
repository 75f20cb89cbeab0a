//! Where IDs and pairings live: in this process ([`Registry`], the default,
//! nothing to install) or in Redis for several nodes ([`Cluster`],
//! `--cluster`). Connections talk to this one interface; the in-memory
//! side answers at once, the cluster side after a Redis round trip.
//!
//! The cluster's futures are boxed: unboxed, their Redis state would be
//! part of every connection task's future, idle ones included (measured:
//! +0.8 KiB per idle client on a single node).

use std::net::IpAddr;
use std::sync::Arc;

use p2p_proto::signal::{DisconnectReason, ErrorCode};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::budget::Budget;
use crate::cluster::{Cluster, Unavailable};
use crate::metrics::{Counts, Metrics};
use crate::registry::{Kick, Refusal, Registry, Relayed, Slot};

// One value per process: boxing the registry would only add a pointer
// chase to every call of the single-node path.
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    Memory(Registry),
    Cluster(Cluster),
}

impl Backend {
    pub fn metrics(&self) -> &Metrics {
        match self {
            Backend::Memory(r) => &r.metrics,
            Backend::Cluster(c) => c.metrics(),
        }
    }

    pub fn budget(&self) -> &Arc<Budget> {
        match self {
            Backend::Memory(r) => &r.budget,
            Backend::Cluster(c) => c.budget(),
        }
    }

    /// Connected clients (of this node) and reservations.
    pub fn counts(&self) -> Counts {
        match self {
            Backend::Memory(r) => r.counts(),
            Backend::Cluster(c) => c.counts(),
        }
    }

    pub fn clients(&self) -> usize {
        self.counts().clients
    }

    pub async fn register(
        &self,
        requested: Option<String>,
        token: Option<String>,
        from: IpAddr,
        welcome: impl Fn(&str) -> Utf8Bytes,
    ) -> Result<Arc<Slot>, Refusal> {
        match self {
            Backend::Memory(r) => r.register(requested, token, from, welcome),
            Backend::Cluster(c) => Box::pin(c.register(requested, token, from, welcome)).await,
        }
    }

    pub async fn pair(
        &self,
        a: &Arc<Slot>,
        peer_id: &str,
    ) -> Result<Result<(), ErrorCode>, Unavailable> {
        match self {
            Backend::Memory(r) => Ok(r.pair(a, peer_id)),
            Backend::Cluster(c) => Box::pin(c.pair(a, peer_id)).await,
        }
    }

    pub async fn unpair(&self, a: &Arc<Slot>) -> Result<Result<(), ErrorCode>, Unavailable> {
        match self {
            Backend::Memory(r) => Ok(r.unpair(a)),
            Backend::Cluster(c) => Box::pin(c.unpair(a)).await,
        }
    }

    pub async fn relay(&self, a: &Arc<Slot>, frame: Utf8Bytes) -> Result<Relayed, Unavailable> {
        match self {
            Backend::Memory(r) => Ok(r.relay(a, frame)),
            Backend::Cluster(c) => Box::pin(c.relay(a, frame)).await,
        }
    }

    /// The client's connection ended; its peer is told `reason`.
    pub async fn remove(&self, slot: &Arc<Slot>, reason: DisconnectReason) {
        match self {
            Backend::Memory(r) => r.remove(slot, reason, Kick::Own),
            Backend::Cluster(c) => Box::pin(c.remove(slot, reason)).await,
        }
    }

    pub fn send_own(&self, slot: &Arc<Slot>, frame: Utf8Bytes) {
        match self {
            Backend::Memory(r) => r.send_own(slot, frame),
            Backend::Cluster(c) => c.send_own(slot, frame),
        }
    }

    /// Queues an `error` frame for the client and counts it.
    pub fn send_error(&self, slot: &Arc<Slot>, code: ErrorCode, message: impl Into<String>) {
        self.metrics().error(code);
        let frame = p2p_proto::signal::ServerMsg::Error {
            code,
            message: message.into(),
        };
        self.send_own(slot, frame.to_json().into());
    }

    /// `/healthz`: `Err(body)` for a 503.
    pub fn healthy(&self) -> Result<(), &'static str> {
        match self {
            Backend::Memory(_) => Ok(()),
            Backend::Cluster(c) => c.healthy(),
        }
    }

    pub fn shutdown(&self) {
        match self {
            Backend::Memory(r) => r.shutdown(),
            Backend::Cluster(c) => c.shutdown(),
        }
    }

    /// After the connections closed.
    pub async fn leave(&self) {
        if let Backend::Cluster(c) = self {
            c.leave().await;
        }
    }
}
