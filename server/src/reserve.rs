//! IDs kept for their owners: after a client that registered an ID with a
//! token disconnects, the ID stays reserved to that token (only its
//! SHA-256 is kept, never the token) for `--id-reserve`. The same token
//! takes it back at once; anyone else gets `id_taken`.
//!
//! Every reservation lasts the same time, so insertion order is expiry
//! order: an ordered map gives the oldest at once, and expired ones are
//! swept as new ones come in. Memory stays bounded whatever clients do:
//! at most `max` reservations, and at most `per_addr` from one address
//! (IPv6: its /64), so that one address cannot fill the table. An address
//! at its quota, or reserving into a full table, gives up its own oldest;
//! nobody's reservation is ever dropped to make room for another
//! address's (issue 21: 100 registrations from one address used to evict
//! `bob`'s in 0.1 s). The cluster's scripts (cluster/scripts.rs, `reserve`)
//! keep the same policy in Redis.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::{id, limits};

/// The SHA-256 of a token, salted with the ID it holds: what the directory
/// keeps and compares (in the cluster, what Redis holds). The salt makes a
/// table of precomputed hashes useless across IDs for whoever reads Redis;
/// tokens themselves are meant to be long random secrets (p2pd makes 192
/// bits), which no table covers anyway.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(id: &str, token: &str) -> TokenHash {
        let mut h = Sha256::new();
        h.update(b"signald token v1\0");
        h.update(id.as_bytes());
        h.update(b"\0");
        h.update(token.as_bytes());
        TokenHash(h.finalize().into())
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

/// Who may take an ID back when its client leaves, and from where that
/// client came.
#[derive(Clone, Copy, Debug)]
pub struct Holder {
    pub hash: TokenHash,
    /// The client's address key (IPv6: its /64), for the quota.
    pub from: IpAddr,
}

impl Holder {
    pub fn new(id: &str, token: &str, from: IpAddr) -> Holder {
        Holder {
            hash: TokenHash::of(id, token),
            from: limits::key(from),
        }
    }
}

struct Reservation {
    hash: TokenHash,
    until: Instant,
    /// The address (IPv6: /64) its holder registered from.
    from: IpAddr,
    /// Its place in [`Reservations::order`] (and its address's set).
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

/// What became of a request to reserve an ID.
#[derive(Debug, PartialEq, Eq)]
pub enum Kept {
    Yes,
    /// Reservations are off.
    Off,
    /// The table is full and the address holds none of its own to give
    /// up: nobody else's is dropped for it.
    Full,
}

/// The policy, the same for both backends: at most `max` reservations,
/// at most `per_addr` of them from one address (IPv6: /64). An address
/// over its quota, or reserving into a full table, gives up its own
/// oldest reservation; never another address's.
pub struct Reservations {
    for_how_long: Duration,
    max: usize,
    per_addr: usize,
    by_id: HashMap<Arc<str>, Reservation>,
    /// Live reservations in the order they expire (all last as long).
    order: BTreeMap<u64, Arc<str>>,
    /// Each address's live reservations, oldest first.
    by_addr: HashMap<IpAddr, BTreeSet<u64>>,
    next_seq: u64,
    evicted: u64,
    refused: u64,
}

impl Reservations {
    /// Reservations lasting `for_how_long` (zero: none are kept), at most
    /// `max` at once and `per_addr` from one address (zero: no quota).
    pub fn new(for_how_long: Duration, max: usize, per_addr: usize) -> Reservations {
        Reservations {
            for_how_long,
            max,
            per_addr,
            by_id: HashMap::new(),
            order: BTreeMap::new(),
            by_addr: HashMap::new(),
            next_seq: 0,
            evicted: 0,
            refused: 0,
        }
    }

    /// Keeps `id` for the holder of `hash`, who registered from `from`
    /// (already reduced to its address key), from `now`.
    pub fn reserve(&mut self, id: Arc<str>, hash: TokenHash, from: IpAddr, now: Instant) -> Kept {
        if self.for_how_long.is_zero() || self.max == 0 {
            return Kept::Off;
        }
        self.sweep(now);
        // Reserving an ID again replaces its reservation.
        self.remove(&id);
        let mine = self.by_addr.get(&from).map_or(0, BTreeSet::len);
        if self.per_addr > 0 && mine >= self.per_addr {
            self.drop_oldest_of(from);
        } else if self.by_id.len() >= self.max {
            if mine == 0 {
                self.refused += 1;
                return Kept::Full;
            }
            self.drop_oldest_of(from);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, id.clone());
        self.by_addr.entry(from).or_default().insert(seq);
        self.by_id.insert(
            id,
            Reservation {
                hash,
                until: now + self.for_how_long,
                from,
                seq,
            },
        );
        Kept::Yes
    }

    /// Whether a registration of `id` with `token` may have it.
    pub fn claim(&mut self, id: &str, token: Option<&TokenHash>, now: Instant) -> Claim {
        self.sweep(now);
        let Some(r) = self.by_id.get(id) else {
            return Claim::Free;
        };
        match token {
            Some(t) if r.hash.matches(t) => {
                self.remove(id);
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

    /// Reservations dropped early: their address passed its quota, or
    /// reserved again into a full table.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Reservations not made: the table was full and their address held
    /// none to give up.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    fn remove(&mut self, id: &str) {
        let Some(r) = self.by_id.remove(id) else {
            return;
        };
        self.order.remove(&r.seq);
        if let Some(set) = self.by_addr.get_mut(&r.from) {
            set.remove(&r.seq);
            if set.is_empty() {
                self.by_addr.remove(&r.from);
            }
        }
    }

    fn drop_oldest_of(&mut self, from: IpAddr) {
        let Some(&seq) = self.by_addr.get(&from).and_then(BTreeSet::first) else {
            return;
        };
        if let Some(id) = self.order.get(&seq).cloned() {
            self.remove(&id);
            self.evicted += 1;
        }
    }

    fn sweep(&mut self, now: Instant) {
        while let Some(first) = self.order.first_entry() {
            if self.by_id.get(first.get()).is_some_and(|r| r.until > now) {
                return;
            }
            let id = first.remove();
            self.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn addr(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn tok(id: &str) -> TokenHash {
        TokenHash::of(id, "0123456789abcdef")
    }

    #[test]
    fn the_owner_takes_it_back_others_are_refused_until_it_expires() {
        let mut r = Reservations::new(DAY, 10, 10);
        let now = Instant::now();
        let a = addr("192.0.2.1");
        let owner = tok("alice");
        let other = TokenHash::of("alice", "fedcba9876543210");
        assert_eq!(r.reserve("alice".into(), owner, a, now), Kept::Yes);
        assert_eq!(r.claim("alice", Some(&other), now), Claim::Taken);
        assert_eq!(r.claim("alice", None, now), Claim::Taken);
        assert!(r.is_reserved("alice", now));
        assert_eq!(r.claim("alice", Some(&owner), now), Claim::Owner);
        assert_eq!(r.claim("alice", Some(&other), now), Claim::Free);
        r.reserve("bob".into(), tok("bob"), a, now);
        assert_eq!(
            r.claim("bob", Some(&tok("bob")), now + DAY),
            Claim::Free,
            "expired"
        );
        assert_eq!(r.len(), 0);
        assert!(r.by_addr.is_empty() && r.order.is_empty());
    }

    #[test]
    fn the_salt_is_the_id() {
        assert!(!tok("alice").matches(&tok("bob")));
        assert!(tok("alice").matches(&tok("alice")));
    }

    /// Issue 21: 100,000 reconnects with a token, behind two older live
    /// reservations, grew the queue (and RSS by 5.4 MB) without bound.
    #[test]
    fn reconnects_with_a_token_leave_nothing_behind() {
        let mut r = Reservations::new(DAY, 1000, 10);
        let now = Instant::now();
        let a = addr("192.0.2.1");
        r.reserve("old1".into(), tok("old1"), a, now);
        r.reserve("old2".into(), tok("old2"), a, now);
        for _ in 0..100_000 {
            r.reserve("bob".into(), tok("bob"), a, now);
            assert_eq!(r.claim("bob", Some(&tok("bob")), now), Claim::Owner);
            r.reserve("carol".into(), tok("carol"), a, now);
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.order.len(), 3);
        assert_eq!(r.by_addr[&a].len(), 3);
        assert!(r.is_reserved("old1", now) && r.is_reserved("old2", now));
        assert_eq!(r.evicted(), 0);
    }

    /// Issue 21: 100 token registrations from one address evicted `bob`'s
    /// reservation (another address) in 0.1 s.
    #[test]
    fn one_address_never_evicts_another_s() {
        let mut r = Reservations::new(DAY, 50, 8);
        let now = Instant::now();
        let bob = addr("198.51.100.7");
        r.reserve("bob".into(), tok("bob"), bob, now);
        // One address: its quota, then its own oldest go.
        let mallory = addr("203.0.113.9");
        for i in 0..100 {
            let id: Arc<str> = format!("m{i}").into();
            assert_eq!(r.reserve(id.clone(), tok(&id), mallory, now), Kept::Yes);
        }
        assert!(r.is_reserved("bob", now));
        assert_eq!(r.len(), 9);
        assert!(r.is_reserved("m99", now) && !r.is_reserved("m91", now));
        assert_eq!(r.evicted(), 92);
        // An IPv6 attacker counts by its /64: the caller passes the key,
        // so many addresses of one /64 are one address here.
        // Many addresses fill the table; then newcomers are refused and
        // nobody already in it loses a reservation.
        for n in 0..100u32 {
            let from = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000u32 + n));
            let id: Arc<str> = format!("x{n}").into();
            r.reserve(id.clone(), tok(&id), from, now);
        }
        assert_eq!(r.len(), 50);
        assert!(r.refused() > 0);
        assert!(r.is_reserved("bob", now) && r.is_reserved("m99", now));
        // An address that holds some gives up its own oldest in a full table.
        assert_eq!(r.reserve("bob2".into(), tok("bob2"), bob, now), Kept::Yes);
        assert!(!r.is_reserved("bob", now) && r.is_reserved("bob2", now));
        // When they expire, room comes back.
        assert_eq!(
            r.reserve("late".into(), tok("late"), addr("192.0.2.200"), now + DAY),
            Kept::Yes
        );
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn zero_keeps_nothing_and_zero_quota_is_none() {
        let mut off = Reservations::new(Duration::ZERO, 10, 10);
        let now = Instant::now();
        let a = addr("192.0.2.1");
        assert_eq!(off.reserve("alice".into(), tok("alice"), a, now), Kept::Off);
        assert_eq!(off.claim("alice", None, now), Claim::Free);

        let mut r = Reservations::new(DAY, 3, 0);
        for i in 0..5 {
            let id: Arc<str> = format!("id{i}").into();
            r.reserve(id.clone(), tok(&id), a, now);
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.evicted(), 2);
        assert!(!r.is_reserved("id0", now) && r.is_reserved("id4", now));
        // Re-reserving an ID leaves one entry, not two.
        r.reserve("id4".into(), tok("id4"), a, now);
        assert_eq!((r.len(), r.order.len()), (3, 3));
    }
}
