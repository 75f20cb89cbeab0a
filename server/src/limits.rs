//! Who may connect: per-IP limits on open connections, on handshakes in
//! progress and on registrations per second, and a global limit on
//! handshakes in progress. Refusals happen before the upgrade (HTTP 429 for
//! a per-IP limit, 503 for the global one) and are counted by reason.
//!
//! Each accepted connection holds a [`Ticket`] that counts it for its
//! address until it is dropped, so no path can forget to give a count back.
//! A TCP peer inside `--trusted-proxy` is not limited itself (it carries
//! many clients); the client it names in `X-Forwarded-For` is counted once
//! the head is read. IPv6 addresses count by their /64, what one host or
//! one customer usually gets: per-address limits would be no limit at all.
//!
//! When the global limit on handshakes is reached, the newcomer is not
//! simply refused: the oldest unfinished handshake of the address holding
//! the most is shed (its connection closed) to make room, as long as that
//! address holds more than the newcomer's would. So a few addresses that
//! keep reopening slow handshakes cannot lock everyone else out; only when
//! the handshakes are spread evenly is a newcomer refused (503).
//!
//! All state sits behind one std `Mutex`, held for a few counter updates
//! and never across an `.await`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::proxy;

/// The limits, as configured; zero turns one off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IpLimits {
    /// Open connections per address (HTTP ones and handshakes included).
    pub conns_per_ip: usize,
    /// Connections per address whose TLS handshake or request head is not
    /// complete yet.
    pub handshakes_per_ip: usize,
    /// Handshakes in progress from all addresses together.
    pub handshakes: usize,
    /// WebSocket upgrades per address and second (token bucket refill).
    pub registration_rate: f64,
    /// Upgrades per address in a burst (token bucket size).
    pub registration_burst: u32,
    /// TURN credentials handed to clients of one address in a burst
    /// (token bucket size); 0: no limit.
    pub turn_burst: u32,
    /// TURN credentials per address and second (its refill).
    pub turn_rate: f64,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    ConnsPerIp,
    HandshakesPerIp,
    RegistrationsPerIp,
    /// The global limit on handshakes in progress.
    Handshakes,
}

impl Refused {
    pub const ALL: [Refused; 4] = [
        Refused::ConnsPerIp,
        Refused::HandshakesPerIp,
        Refused::RegistrationsPerIp,
        Refused::Handshakes,
    ];

    /// The `reason` label in `signald_refused_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::ConnsPerIp => "conns_per_ip",
            Refused::HandshakesPerIp => "handshakes_per_ip",
            Refused::RegistrationsPerIp => "registrations_per_ip",
            Refused::Handshakes => "handshakes",
        }
    }
}

/// What is known about one address (or IPv6 /64).
struct Entry {
    conns: usize,
    handshakes: usize,
    /// Upgrades it may still make at once.
    tokens: f64,
    /// TURN credentials its clients may still be given at once.
    turn: f64,
    last: Instant,
}

impl Entry {
    fn refill(&mut self, lim: &IpLimits, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * lim.registration_rate).min(lim.registration_burst as f64);
        self.turn = (self.turn + dt * lim.turn_rate).min(lim.turn_burst as f64);
    }

    /// Nothing here that a fresh entry would not say.
    fn idle(&mut self, lim: &IpLimits, now: Instant) -> bool {
        self.conns == 0 && self.handshakes == 0 && {
            self.refill(lim, now);
            self.tokens >= lim.registration_burst as f64 && self.turn >= lim.turn_burst as f64
        }
    }
}

/// One handshake in progress.
struct Pending {
    /// The address it counts under (none: through a trusted proxy).
    ip: Option<IpAddr>,
    since: Instant,
    /// Told when the handshake is shed.
    shed: Arc<Notify>,
}

struct State {
    by_ip: HashMap<IpAddr, Entry>,
    /// Handshakes in progress, by ticket; `handshakes` is its length.
    pending: HashMap<u64, Pending>,
    next_id: u64,
    handshakes: usize,
    /// Size of `by_ip` after the last sweep: sweeping again once it has
    /// doubled keeps the cost per connection constant.
    swept_at: usize,
}

pub struct Limits {
    lim: IpLimits,
    state: Mutex<State>,
    refused: [AtomicU64; Refused::ALL.len()],
    /// Handshakes shed to make room for a newcomer.
    shed: AtomicU64,
    /// Welcomes sent without TURN credentials: their address had used
    /// its allowance.
    turn_refused: AtomicU64,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The key an address is counted under: itself, or an IPv6 address's
/// /64 (what one host or customer commonly gets).
pub(crate) fn key(ip: IpAddr) -> IpAddr {
    match proxy::canonical(ip) {
        v4 @ IpAddr::V4(_) => v4,
        v6 => proxy::mask(v6, 64),
    }
}

fn over(limit: usize, count: usize) -> bool {
    limit != 0 && count >= limit
}

impl Limits {
    pub fn new(lim: IpLimits) -> Arc<Limits> {
        Arc::new(Limits {
            lim,
            state: Mutex::new(State {
                by_ip: HashMap::new(),
                pending: HashMap::new(),
                next_id: 0,
                handshakes: 0,
                swept_at: 1024,
            }),
            refused: Default::default(),
            shed: AtomicU64::new(0),
            turn_refused: AtomicU64::new(0),
        })
    }

    fn entry<'a>(&self, st: &'a mut State, ip: IpAddr, now: Instant) -> &'a mut Entry {
        st.by_ip.entry(ip).or_insert_with(|| Entry {
            conns: 0,
            handshakes: 0,
            tokens: self.lim.registration_burst as f64,
            turn: self.lim.turn_burst as f64,
            last: now,
        })
    }

    fn count(&self, why: Refused) -> Refused {
        let i = Refused::ALL
            .iter()
            .position(|r| *r == why)
            .expect("every reason is in ALL");
        self.refused[i].fetch_add(1, Ordering::Relaxed);
        why
    }

    /// Admits a freshly accepted connection from `peer`. A trusted proxy
    /// (`per_ip` false) only counts against the global limit.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, per_ip: bool) -> Result<Ticket, Refused> {
        let now = Instant::now();
        let mut st = lock(&self.state);
        let ip = key(peer);
        if over(self.lim.handshakes, st.handshakes) {
            let mine = match per_ip {
                true => st.by_ip.get(&ip).map_or(0, |e| e.handshakes),
                false => 0,
            };
            if !self.shed_heaviest(&mut st, mine, now) {
                return Err(self.count(Refused::Handshakes));
            }
        }
        if per_ip {
            if st.by_ip.len() >= st.swept_at * 2 {
                self.sweep(&mut st, now);
            }
            let e = self.entry(&mut st, ip, now);
            if over(self.lim.conns_per_ip, e.conns) {
                return Err(self.count(Refused::ConnsPerIp));
            }
            if over(self.lim.handshakes_per_ip, e.handshakes) {
                return Err(self.count(Refused::HandshakesPerIp));
            }
            e.conns += 1;
            e.handshakes += 1;
        }
        st.handshakes += 1;
        let id = st.next_id;
        st.next_id += 1;
        let shed = Arc::new(Notify::new());
        st.pending.insert(
            id,
            Pending {
                ip: per_ip.then_some(ip),
                since: now,
                shed: shed.clone(),
            },
        );
        Ok(Ticket {
            limits: self.clone(),
            counted: per_ip.then_some(ip),
            handshake: Some(id),
            shed,
        })
    }

    /// Sheds the oldest handshake of the address holding the most, if it
    /// holds more than one and more than the newcomer's address would
    /// (`mine` now, one more once admitted). Whether one was shed.
    fn shed_heaviest(&self, st: &mut State, mine: usize, now: Instant) -> bool {
        let Some((&ip, heaviest)) = st.by_ip.iter().max_by_key(|(_, e)| e.handshakes) else {
            return false;
        };
        if heaviest.handshakes < 2 || heaviest.handshakes <= mine + 1 {
            return false;
        }
        let oldest = st
            .pending
            .iter()
            .filter(|(_, p)| p.ip == Some(ip))
            .min_by_key(|(_, p)| p.since)
            .map(|(&id, _)| id);
        let Some(p) = oldest.and_then(|id| st.pending.remove(&id)) else {
            return false;
        };
        st.handshakes -= 1;
        self.release(st, ip, false, true, now);
        // A permit is kept if its task is not waiting yet.
        p.shed.notify_one();
        self.shed.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Handshakes shed so far to make room for newcomers.
    pub fn turn_refused(&self) -> u64 {
        self.turn_refused.load(Ordering::Relaxed)
    }

    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// Ends handshake `id`, if it was not shed meanwhile.
    fn end_handshake(&self, st: &mut State, id: u64, now: Instant) {
        if let Some(p) = st.pending.remove(&id) {
            st.handshakes -= 1;
            if let Some(ip) = p.ip {
                self.release(st, ip, false, true, now);
            }
        }
    }

    fn sweep(&self, st: &mut State, now: Instant) {
        let lim = self.lim;
        st.by_ip.retain(|_, e| !e.idle(&lim, now));
        st.swept_at = st.by_ip.len().max(1024);
    }

    /// Connections refused so far for `why`.
    pub fn refused(&self, why: Refused) -> u64 {
        let i = Refused::ALL.iter().position(|r| *r == why).expect("in ALL");
        self.refused[i].load(Ordering::Relaxed)
    }

    /// Handshakes in progress now.
    pub fn handshakes(&self) -> usize {
        lock(&self.state).handshakes
    }

    /// Addresses with state kept (connections, or a bucket not yet full).
    pub fn tracked(&self) -> usize {
        lock(&self.state).by_ip.len()
    }

    fn release(&self, st: &mut State, ip: IpAddr, conn: bool, handshake: bool, now: Instant) {
        let lim = self.lim;
        let Some(e) = st.by_ip.get_mut(&ip) else {
            return;
        };
        if conn {
            e.conns -= 1;
        }
        if handshake {
            e.handshakes -= 1;
        }
        if e.idle(&lim, now) {
            st.by_ip.remove(&ip);
        }
    }
}

/// One accepted connection's place in the counts; gives it back on drop.
pub struct Ticket {
    limits: Arc<Limits>,
    /// The key its connection counts under, if any (not for a trusted
    /// proxy until its client is known).
    counted: Option<IpAddr>,
    /// Its handshake in [`State::pending`], until done.
    handshake: Option<u64>,
    shed: Arc<Notify>,
}

impl Ticket {
    /// The head is read (and TLS done): no longer a handshake in progress.
    pub fn handshake_done(&mut self) {
        if let Some(id) = self.handshake.take() {
            let now = Instant::now();
            let mut st = lock(&self.limits.state);
            self.limits.end_handshake(&mut st, id, now);
        }
    }

    /// Resolves when this connection's handshake was shed to make room for
    /// a newcomer: its connection must close now. Never resolves after
    /// [`Ticket::handshake_done`].
    pub async fn shed(&self) {
        match self.handshake {
            Some(_) => self.shed.notified().await,
            None => std::future::pending().await,
        }
    }

    /// Counts the connection for the client a trusted proxy named.
    pub fn attribute(&mut self, client: IpAddr) -> Result<(), Refused> {
        if self.counted.is_some() {
            return Ok(());
        }
        let now = Instant::now();
        let ip = key(client);
        let limits = self.limits.clone();
        let mut st = lock(&limits.state);
        let e = limits.entry(&mut st, ip, now);
        if over(limits.lim.conns_per_ip, e.conns) {
            let idle = e.idle(&limits.lim, now);
            if idle {
                st.by_ip.remove(&ip);
            }
            return Err(limits.count(Refused::ConnsPerIp));
        }
        e.conns += 1;
        self.counted = Some(ip);
        Ok(())
    }

    /// A WebSocket upgrade from this connection's client: takes a token
    /// from its bucket. Connections not counted per IP are not limited.
    pub fn register(&self) -> Result<(), Refused> {
        let Some(ip) = self.counted else {
            return Ok(());
        };
        let lim = self.limits.lim;
        if lim.registration_rate == 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut st = lock(&self.limits.state);
        let e = self.limits.entry(&mut st, ip, now);
        e.refill(&lim, now);
        if e.tokens >= 1.0 {
            e.tokens -= 1.0;
            Ok(())
        } else {
            Err(self.limits.count(Refused::RegistrationsPerIp))
        }
    }
}

impl Ticket {
    /// Whether this connection's client may be given TURN credentials:
    /// takes one from its address's allowance. Connections not counted per
    /// IP are not limited.
    pub fn take_turn(&self) -> bool {
        let Some(ip) = self.counted else {
            return true;
        };
        let lim = self.limits.lim;
        if lim.turn_burst == 0 {
            return true;
        }
        let now = Instant::now();
        let mut st = lock(&self.limits.state);
        let e = self.limits.entry(&mut st, ip, now);
        e.refill(&lim, now);
        if e.turn >= 1.0 {
            e.turn -= 1.0;
            true
        } else {
            self.limits.turn_refused.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut st = lock(&self.limits.state);
        if let Some(id) = self.handshake.take() {
            self.limits.end_handshake(&mut st, id, now);
        }
        if let Some(ip) = self.counted {
            self.limits.release(&mut st, ip, true, false, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> IpLimits {
        IpLimits {
            conns_per_ip: 2,
            handshakes_per_ip: 1,
            handshakes: 3,
            registration_rate: 0.001,
            registration_burst: 2,
            turn_burst: 2,
            turn_rate: 0.001,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn counts_come_back_and_each_limit_refuses() {
        let l = Limits::new(lim());
        let a = ip("192.0.2.1");
        let mut t1 = l.admit(a, true).unwrap();
        assert_eq!(l.admit(a, true).err(), Some(Refused::HandshakesPerIp));
        t1.handshake_done();
        let mut t2 = l.admit(a, true).unwrap();
        t2.handshake_done();
        assert_eq!(l.admit(a, true).err(), Some(Refused::ConnsPerIp));
        // Registrations: a burst of two, then none (the refill is slow).
        t1.register().unwrap();
        t2.register().unwrap();
        assert_eq!(t2.register(), Err(Refused::RegistrationsPerIp));
        drop(t1);
        drop(t2);
        // The bucket is remembered after the connections are gone.
        assert_eq!(l.tracked(), 1);
        let t3 = l.admit(a, true).unwrap();
        assert_eq!(t3.register(), Err(Refused::RegistrationsPerIp));
        drop(t3);
        // Global handshakes, from other addresses and through a proxy.
        let _h: Vec<Ticket> = ["192.0.2.2", "192.0.2.3", "192.0.2.4"]
            .iter()
            .map(|s| l.admit(ip(s), s != &"192.0.2.4").unwrap())
            .collect();
        assert_eq!(l.handshakes(), 3);
        assert_eq!(
            l.admit(ip("192.0.2.5"), true).err(),
            Some(Refused::Handshakes)
        );
        assert_eq!(l.refused(Refused::Handshakes), 1);
        assert_eq!(l.refused(Refused::ConnsPerIp), 1);
        assert_eq!(l.refused(Refused::RegistrationsPerIp), 2);
    }

    #[tokio::test]
    async fn a_proxied_client_counts_for_itself_and_v6_by_its_64() {
        let l = Limits::new(lim());
        let proxy = ip("127.0.0.1");
        let mut tickets = Vec::new();
        for _ in 0..2 {
            let mut t = l.admit(proxy, false).unwrap();
            t.handshake_done();
            t.attribute(ip("2001:db8:1:2::7")).unwrap();
            tickets.push(t);
        }
        let mut t = l.admit(proxy, false).unwrap();
        t.handshake_done();
        // Another address in the same /64.
        assert_eq!(
            t.attribute(ip("2001:db8:1:2::99")),
            Err(Refused::ConnsPerIp)
        );
        t.attribute(ip("2001:db8:1:3::1")).unwrap();
        drop(t);
        drop(tickets);
        assert_eq!(l.handshakes(), 0);
    }

    /// One address holding many handshakes cannot lock newcomers out: its
    /// oldest is shed for them. Evenly spread handshakes are not shed.
    #[tokio::test]
    async fn the_heaviest_address_sheds_its_oldest_handshake_for_a_newcomer() {
        let l = Limits::new(IpLimits {
            conns_per_ip: 0,
            handshakes_per_ip: 0,
            handshakes: 4,
            ..lim()
        });
        let (heavy, other, newcomer) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
        let mut heavy_tickets: Vec<Ticket> = Vec::new();
        for _ in 0..3 {
            heavy_tickets.push(l.admit(heavy, true).unwrap());
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let _o = l.admit(other, true).unwrap();
        assert_eq!(l.handshakes(), 4);
        let mut n = l.admit(newcomer, true).expect("made room");
        assert_eq!((l.handshakes(), l.shed()), (4, 1));
        // The oldest of the heavy address was told; the others were not.
        tokio::time::timeout(std::time::Duration::from_secs(1), heavy_tickets[0].shed())
            .await
            .expect("the oldest is shed");
        let not_yet = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            heavy_tickets[1].shed(),
        );
        assert!(not_yet.await.is_err());
        // Its ticket gives nothing back twice.
        drop(heavy_tickets.remove(0));
        assert_eq!(l.handshakes(), 4);
        // Now two, one, one: the newcomer's address would hold two too
        // after a second admission, so the next one is refused.
        n.handshake_done();
        let _n2 = l.admit(newcomer, true).unwrap();
        assert_eq!(l.admit(newcomer, true).err(), Some(Refused::Handshakes));
        drop(heavy_tickets);
        assert_eq!(l.handshakes(), 2);
    }

    #[tokio::test]
    async fn zero_is_off() {
        let l = Limits::new(IpLimits {
            conns_per_ip: 0,
            handshakes_per_ip: 0,
            handshakes: 0,
            registration_rate: 0.0,
            registration_burst: 0,
            turn_burst: 0,
            turn_rate: 0.0,
        });
        let a = ip("192.0.2.1");
        let tickets: Vec<Ticket> = (0..100).map(|_| l.admit(a, true).unwrap()).collect();
        for t in &tickets {
            t.register().unwrap();
            assert!(t.take_turn());
        }
    }

    /// Issue 21, item 8: TURN credentials are an allowance per address,
    /// not one per WebSocket.
    #[tokio::test]
    async fn turn_credentials_are_an_allowance_per_address() {
        let l = Limits::new(IpLimits {
            conns_per_ip: 0,
            turn_burst: 3,
            turn_rate: 0.001,
            ..lim()
        });
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        let given = (0..10)
            .filter(|_| l.admit(a, true).unwrap().take_turn())
            .count();
        assert_eq!(given, 3);
        assert_eq!(l.turn_refused(), 7);
        assert!(l.admit(b, true).unwrap().take_turn(), "another address");
    }
}
