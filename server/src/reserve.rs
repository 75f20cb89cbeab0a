//! IDs kept for their owners: after a client that registered an ID with a
//! token disconnects, the ID stays reserved to that token (only its
//! SHA-256 is kept, never the token) for `--id-reserve`. The same token
//! takes it back at once; anyone else gets `id_taken`.
//!
//! Every reservation lasts the same time, so insertion order is expiry
//! order: a queue gives the oldest in O(1), expired ones are swept as new
//! ones come in, and when the table is full the oldest is dropped early
//! (counted), so memory stays bounded whatever clients do.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::id;

/// The SHA-256 of a token: what the registry keeps and compares.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Lower-case hex, as the cluster keeps it in Redis.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Compares in time independent of where the hashes differ.
    pub fn matches(&self, other: &TokenHash) -> bool {
        id::bytes_equal(&self.0, &other.0)
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Even the hash stays out of logs.
        f.write_str("TokenHash(..)")
    }
}

struct Reservation {
    hash: TokenHash,
    until: Instant,
    /// Which entry of the queue this is (an ID reserved again after being
    /// taken has a newer one).
    seq: u64,
}

/// What a registration may do with an ID nobody holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Not reserved (or the reservation expired).
    Free,
    /// Reserved to this very token: taken, the reservation is gone.
    Owner,
    /// Reserved to another token (or to a token, and none was given).
    Taken,
}

pub struct Reservations {
    for_how_long: Duration,
    max: usize,
    by_id: HashMap<Arc<str>, Reservation>,
    queue: VecDeque<(u64, Arc<str>)>,
    next_seq: u64,
    evicted: u64,
}

impl Reservations {
    /// Reservations lasting `for_how_long` (zero: none are kept), at most
    /// `max` at once.
    pub fn new(for_how_long: Duration, max: usize) -> Reservations {
        Reservations {
            for_how_long,
            max,
            by_id: HashMap::new(),
            queue: VecDeque::new(),
            next_seq: 0,
            evicted: 0,
        }
    }

    /// Keeps `id` for the holder of `hash`, from `now`.
    pub fn reserve(&mut self, id: Arc<str>, hash: TokenHash, now: Instant) {
        if self.for_how_long.is_zero() || self.max == 0 {
            return;
        }
        self.sweep(now);
        let growing = !self.by_id.contains_key(&id);
        while growing && self.by_id.len() >= self.max {
            if self.drop_oldest() {
                self.evicted += 1;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push_back((seq, id.clone()));
        self.compact();
        self.by_id.insert(
            id,
            Reservation {
                hash,
                until: now + self.for_how_long,
                seq,
            },
        );
    }

    /// Whether a registration of `id` with `token` may have it.
    pub fn claim(&mut self, id: &str, token: Option<&TokenHash>, now: Instant) -> Claim {
        self.sweep(now);
        let Some(r) = self.by_id.get(id) else {
            return Claim::Free;
        };
        match token {
            Some(t) if r.hash.matches(t) => {
                self.by_id.remove(id);
                Claim::Owner
            }
            _ => Claim::Taken,
        }
    }

    /// Whether `id` is reserved (for random IDs, which must avoid it).
    pub fn is_reserved(&self, id: &str, now: Instant) -> bool {
        self.by_id.get(id).is_some_and(|r| r.until > now)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Reservations dropped early because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Drops the queue's stale entries (IDs taken back, or reserved
    /// again) once they outnumber the live ones: `sweep` stops at the first
    /// live reservation, so without this a client reconnecting with its
    /// token over and over grew the queue for ever behind an older live
    /// one. Keeps the queue at most about twice the table, at an amortised
    /// constant cost per reservation.
    fn compact(&mut self) {
        if self.queue.len() <= 2 * self.by_id.len() + 16 {
            return;
        }
        let by_id = &self.by_id;
        self.queue
            .retain(|(seq, id)| by_id.get(id).is_some_and(|r| r.seq == *seq));
    }

    /// Queue entries held (live and stale), for tests.
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.queue.len()
    }

    fn sweep(&mut self, now: Instant) {
        while let Some((seq, id)) = self.queue.front() {
            match self.by_id.get(id) {
                Some(r) if r.seq == *seq && r.until > now => return,
                _ => {
                    let (seq, id) = self.queue.pop_front().expect("non-empty");
                    if self.by_id.get(&id).is_some_and(|r| r.seq == seq) {
                        self.by_id.remove(&id);
                    }
                }
            }
        }
    }

    /// Drops the oldest queue entry; whether it was a live reservation.
    fn drop_oldest(&mut self) -> bool {
        let Some((seq, id)) = self.queue.pop_front() else {
            return false;
        };
        if self.by_id.get(&id).is_some_and(|r| r.seq == seq) {
            self.by_id.remove(&id);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn the_owner_takes_it_back_others_are_refused_until_it_expires() {
        let mut r = Reservations::new(DAY, 10);
        let now = Instant::now();
        let owner = TokenHash::of("0123456789abcdef");
        let other = TokenHash::of("fedcba9876543210");
        r.reserve("alice".into(), owner, now);
        assert_eq!(r.claim("alice", Some(&other), now), Claim::Taken);
        assert_eq!(r.claim("alice", None, now), Claim::Taken);
        assert!(r.is_reserved("alice", now));
        assert_eq!(r.claim("alice", Some(&owner), now), Claim::Owner);
        assert_eq!(r.claim("alice", Some(&other), now), Claim::Free);
        r.reserve("bob".into(), owner, now);
        assert_eq!(
            r.claim("bob", Some(&other), now + DAY),
            Claim::Free,
            "expired"
        );
        assert_eq!(r.len(), 0);
    }

    /// Issue 21: 100,000 reconnects with a token, behind two older live
    /// reservations, grew the queue (and RSS by 5.4 MB) without bound.
    #[test]
    fn reconnects_with_a_token_do_not_grow_the_queue() {
        let mut r = Reservations::new(DAY, 1000);
        let now = Instant::now();
        let t = TokenHash::of("0123456789abcdef");
        r.reserve("old1".into(), t, now);
        r.reserve("old2".into(), t, now);
        for _ in 0..100_000 {
            r.reserve("bob".into(), t, now);
            assert_eq!(r.claim("bob", Some(&t), now), Claim::Owner);
        }
        assert_eq!(r.len(), 2);
        assert!(r.queued() <= 2 * r.len() + 17, "{} queued", r.queued());
        assert!(r.is_reserved("old1", now) && r.is_reserved("old2", now));
    }

    #[test]
    fn zero_keeps_nothing_and_the_table_is_bounded() {
        let mut off = Reservations::new(Duration::ZERO, 10);
        let now = Instant::now();
        off.reserve("alice".into(), TokenHash::of("0123456789abcdef"), now);
        assert_eq!(off.claim("alice", None, now), Claim::Free);

        let mut r = Reservations::new(DAY, 3);
        for i in 0..5 {
            r.reserve(
                format!("id{i}").into(),
                TokenHash::of("0123456789abcdef"),
                now,
            );
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.evicted(), 2);
        assert!(!r.is_reserved("id0", now) && r.is_reserved("id4", now));
        // Re-reserving an ID leaves one entry, not two.
        r.reserve("id4".into(), TokenHash::of("0123456789abcdef"), now);
        assert_eq!(r.len(), 3);
    }
}
