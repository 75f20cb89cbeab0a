//! Counters shared by the tasks that bump them, read by `status`.
//!
//! Plain atomics: the data path bumps them per message, and a lock or a
//! message to the engine per message would cost more than the counting.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct Counters {
    pub messages_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub messages_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub pairings: AtomicU64,
    pub resets: AtomicU64,
    pub ice_restarts: AtomicU64,
    pub subscribers: AtomicU64,
    pub missed_by_subscribers: AtomicU64,
    pub control_errors: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> p2p_proto::control::Counters {
        p2p_proto::control::Counters {
            messages_sent: self.messages_sent.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            messages_received: self.messages_received.load(Relaxed),
            bytes_received: self.bytes_received.load(Relaxed),
            pairings: self.pairings.load(Relaxed),
            resets: self.resets.load(Relaxed),
            ice_restarts: self.ice_restarts.load(Relaxed),
            subscribers: self.subscribers.load(Relaxed),
            missed_by_subscribers: self.missed_by_subscribers.load(Relaxed),
            control_errors: self.control_errors.load(Relaxed),
        }
    }
}
