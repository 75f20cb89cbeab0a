//! Wake-up coalescing (`--coalesce`): under a steady stream of events, a
//! worker thread that runs out of work waits a short window before it
//! blocks for the next event, so that one wake-up collects what arrives
//! in the window.
//!
//! A relayed frame costs signald a `recv`, a `send` and a share of an
//! `epoll_wait`, and on loopback or in a VM each of those costs more than
//! the frame's own work (BENCHMARKS.md, round 9). A client's frames
//! arrive in bursts (a browser sends its candidates back to back, a load
//! answers what it read); a server that wakes for the first frame of a
//! burst reads it alone and writes it alone. Waiting a moment first reads
//! and writes the burst at once.
//!
//! The price is latency: at most the window per hop, and only while a
//! thread's idle spells average less than the window, that is while
//! events come faster than the window could add to their wait. A thread
//! at moderate load blocks at once, as if there were no coalescing.

use std::cell::RefCell;
use std::time::{Duration, Instant};

/// The largest window `--coalesce` takes: beyond it the added latency
/// would show in pairing and ICE.
pub const MAX_WINDOW: Duration = Duration::from_millis(2);

/// One worker's decision to wait: its idle spells' moving average against
/// the window.
#[derive(Debug)]
pub struct Pacer {
    window: Duration,
    /// When the worker last blocked.
    parked: Option<Instant>,
    /// Its idle spells' moving average, each new spell weighing an eighth
    /// (one short spell in a quiet stream does not start the waiting);
    /// `None` before the first.
    idle: Option<Duration>,
}

impl Pacer {
    pub fn new(window: Duration) -> Pacer {
        Pacer {
            window,
            parked: None,
            idle: None,
        }
    }

    /// The worker is about to block: how long to wait first, if at all.
    pub fn parking(&mut self) -> Option<Duration> {
        self.idle
            .is_some_and(|idle| idle < self.window)
            .then_some(self.window)
    }

    /// The worker blocked at `now` (after any wait).
    pub fn parked(&mut self, now: Instant) {
        self.parked = Some(now);
    }

    /// The worker woke at `now`.
    pub fn woke(&mut self, now: Instant) {
        let Some(at) = self.parked else { return };
        let spell = now.saturating_duration_since(at);
        self.idle = Some(match self.idle {
            None => spell,
            Some(avg) if spell >= avg => avg + (spell - avg) / 8,
            Some(avg) => avg - (avg - spell) / 8,
        });
    }
}

thread_local! {
    static PACER: RefCell<Option<Pacer>> = const { RefCell::new(None) };
}

/// A multi-threaded tokio runtime whose workers coalesce wake-ups within
/// `window` (zero: never).
pub fn runtime(window: Duration) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    if !window.is_zero() {
        b.on_thread_start(move || {
            PACER.set(Some(Pacer::new(window)));
            // The kernel's default 50 µs of timer slack would stretch the
            // window by that much again.
            // SAFETY: PR_SET_TIMERSLACK takes a number and affects only
            // the calling thread.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        })
        .on_thread_park(|| {
            let wait = PACER.with_borrow_mut(|p| p.as_mut().and_then(Pacer::parking));
            if let Some(wait) = wait {
                std::thread::sleep(wait);
            }
            PACER.with_borrow_mut(|p| p.as_mut().map(|p| p.parked(Instant::now())));
        })
        .on_thread_unpark(|| {
            PACER.with_borrow_mut(|p| p.as_mut().map(|p| p.woke(Instant::now())));
        });
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_micros(300);

    /// Idle spells of `spell`, `n` of them, from `t`.
    fn spells(p: &mut Pacer, t: &mut Instant, spell: Duration, n: usize) {
        for _ in 0..n {
            p.parked(*t);
            *t += spell;
            p.woke(*t);
        }
    }

    #[test]
    fn a_steady_stream_of_events_waits_and_a_quiet_one_does_not() {
        let mut t = Instant::now();
        let mut p = Pacer::new(WINDOW);
        assert_eq!(p.parking(), None, "nothing known yet");
        spells(&mut p, &mut t, Duration::from_micros(20), 50);
        assert_eq!(p.parking(), Some(WINDOW));
        let mut q = Pacer::new(WINDOW);
        spells(&mut q, &mut t, Duration::from_millis(5), 50);
        assert_eq!(q.parking(), None);
    }

    #[test]
    fn one_short_spell_in_a_quiet_stream_does_not_start_the_waiting() {
        let mut t = Instant::now();
        let mut p = Pacer::new(WINDOW);
        spells(&mut p, &mut t, Duration::from_millis(5), 20);
        spells(&mut p, &mut t, Duration::from_micros(10), 1);
        assert_eq!(p.parking(), None);
        // A stream that turns busy starts it within a few dozen wake-ups.
        spells(&mut p, &mut t, Duration::from_micros(10), 40);
        assert_eq!(p.parking(), Some(WINDOW));
        // And one that turns quiet stops it as fast.
        spells(&mut p, &mut t, Duration::from_millis(5), 3);
        assert_eq!(p.parking(), None);
    }
}
