//! Whether the peer still answers on the data path.
//!
//! signald's word that the peer's signaling connection ended (`left`) or
//! went silent (`timeout`) says nothing certain about the peer itself: its
//! WebSocket may have died with a network change while its peer connection
//! lives, or signald may be restarting. Only the path can tell. Every ICE
//! stack answers STUN Binding requests on the selected pair by itself (the
//! consent checks of RFC 7675), so p2pd sends a few of them at once
//! (`send_consent_check`, vendor/PATCHES.md 16) and reads the candidate
//! pairs' counters to see whether one was answered. No message of ours
//! reaches the peer's application: a browser, aiortc or werift never sees
//! the check. Between checks the link pays only for the agent's ordinary
//! keepalive.
//!
//! [`Checker`] holds the decision (no I/O, explicit instants); [`run`] does
//! what it says until it decides.

use std::time::Duration;

use tokio::time::Instant;
use webrtc::peer_connection::{PeerConnection, StatsSelector};

use crate::link::PathCheck;

/// Consent checks sent before the path counts as silent: one lost
/// datagram must not end a link.
const CHECKS: u32 = 3;
/// Between two checks: two round trips, within these bounds.
const SPACING_MAX: Duration = Duration::from_millis(500);
/// After the last check, how long its answer may take: three round trips,
/// within these bounds.
const GRACE_MAX: Duration = Duration::from_secs(1);

/// How patient a check is on a short path (the floors of its waits; on a
/// long one the round trip decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Silence would end the link (`left`): 200 ms between checks, 150 ms
    /// for the last answer; a verdict in 550 ms on loopback.
    Careful,
    /// Silence would only restart ICE (a stalled flow, `timeout`): 100 ms
    /// and 100 ms; a verdict in 300 ms. A wrong verdict costs a restart.
    Quick,
}

impl Pace {
    fn floors(self) -> (Duration, Duration) {
        match self {
            Pace::Careful => (Duration::from_millis(200), Duration::from_millis(150)),
            Pace::Quick => (Duration::from_millis(100), Duration::from_millis(100)),
        }
    }
}
/// How often [`run`] looks at the counters while it waits.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// What [`Checker::step`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send a consent check now.
    Send,
    /// Nothing yet: look again at the counters soon.
    Wait,
    /// Decided.
    Verdict(PathCheck),
}

/// One check of the path: `CHECKS` consent checks spaced by the round
/// trip, and a verdict when one is answered or the last one's grace ends.
#[derive(Debug)]
pub struct Checker {
    /// Answers received over every pair before the first check.
    answered_before: u64,
    pace: Pace,
    sent: u32,
    last_sent: Option<Instant>,
}

impl Checker {
    pub fn new(answered_before: u64, pace: Pace) -> Checker {
        Checker {
            answered_before,
            pace,
            sent: 0,
            last_sent: None,
        }
    }

    /// The next step at `now`, given the answers counted so far and ICE's
    /// round-trip time on the selected pair, when measured. After a
    /// [`Step::Send`] the caller sends the check and calls [`Checker::sent`].
    pub fn step(&self, now: Instant, answered: u64, rtt: Option<Duration>) -> Step {
        if answered > self.answered_before {
            return Step::Verdict(PathCheck::Answered);
        }
        let rtt = rtt.unwrap_or(Duration::ZERO);
        let (spacing_min, grace_min) = self.pace.floors();
        let wait = match self.sent {
            0 => return Step::Send,
            n if n < CHECKS => (rtt * 2).clamp(spacing_min, SPACING_MAX),
            _ => (rtt * 3).clamp(grace_min, GRACE_MAX),
        };
        match self.last_sent {
            Some(at) if now < at + wait => Step::Wait,
            _ if self.sent < CHECKS => Step::Send,
            _ => Step::Verdict(PathCheck::Silent),
        }
    }

    /// A check went out at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.sent += 1;
        self.last_sent = Some(now);
    }
}

/// Answers received over every candidate pair, and the selected pair's
/// round trip, from the connection's stats.
async fn answers(pc: &dyn PeerConnection) -> (u64, Option<Duration>) {
    let report = pc
        .get_stats(std::time::Instant::now(), StatsSelector::None)
        .await;
    let answered = report.candidate_pairs().map(|p| p.responses_received).sum();
    (answered, crate::peer::selected_rtt(&report))
}

/// Checks the path of `pc`: sends consent checks until one is answered or
/// `CHECKS` of them went unanswered.
pub async fn run(pc: &dyn PeerConnection, pace: Pace) -> PathCheck {
    let started = Instant::now();
    let (before, _) = answers(pc).await;
    let mut checker = Checker::new(before, pace);
    loop {
        let (answered, rtt) = answers(pc).await;
        match checker.step(Instant::now(), answered, rtt) {
            Step::Verdict(verdict) => {
                tracing::debug!(?verdict, took = ?started.elapsed(), "path checked");
                return verdict;
            }
            Step::Send => {
                // Without a selected pair nothing can answer: counted as
                // sent all the same, so silence is declared in time.
                if let Err(e) = pc.send_consent_check().await {
                    tracing::debug!(error = %e, "a consent check could not be sent");
                }
                checker.sent(Instant::now());
            }
            Step::Wait => tokio::time::sleep(SAMPLE_EVERY).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    /// Drives a checker whose peer never answers; the instants of its
    /// sends and of its verdict.
    fn silent_run(rtt: Option<Duration>) -> (Vec<u64>, u64) {
        silent_run_at(rtt, Pace::Careful)
    }

    fn silent_run_at(rtt: Option<Duration>, pace: Pace) -> (Vec<u64>, u64) {
        let t0 = Instant::now();
        let mut c = Checker::new(7, pace);
        let mut sends = Vec::new();
        for ms in 0..5000 {
            match c.step(at(t0, ms), 7, rtt) {
                Step::Send => {
                    c.sent(at(t0, ms));
                    sends.push(ms);
                }
                Step::Wait => {}
                Step::Verdict(v) => {
                    assert_eq!(v, PathCheck::Silent);
                    return (sends, ms);
                }
            }
        }
        panic!("no verdict");
    }

    #[test]
    fn three_unanswered_checks_spaced_by_the_round_trip_mean_silence() {
        // Loopback: the floors.
        assert_eq!(silent_run(None), (vec![0, 200, 400], 550));
        // A 150 ms path: two and three round trips.
        let rtt = Some(Duration::from_millis(150));
        assert_eq!(silent_run(rtt), (vec![0, 300, 600], 1050));
        // A very long path: the ceilings.
        let rtt = Some(Duration::from_secs(2));
        assert_eq!(silent_run(rtt), (vec![0, 500, 1000], 2000));
        // Quick, when silence would only restart ICE.
        assert_eq!(silent_run_at(None, Pace::Quick), (vec![0, 100, 200], 300));
        let rtt = Some(Duration::from_millis(150));
        assert_eq!(silent_run_at(rtt, Pace::Quick), (vec![0, 300, 600], 1050));
    }

    #[test]
    fn one_answer_is_enough_even_a_late_one() {
        let t0 = Instant::now();
        let mut c = Checker::new(3, Pace::Careful);
        assert_eq!(c.step(t0, 3, None), Step::Send);
        c.sent(t0);
        assert_eq!(c.step(at(t0, 100), 3, None), Step::Wait);
        assert_eq!(
            c.step(at(t0, 150), 4, None),
            Step::Verdict(PathCheck::Answered)
        );
        // After the last check, within its grace.
        let mut c = Checker::new(0, Pace::Careful);
        for ms in [0, 200, 400] {
            assert_eq!(c.step(at(t0, ms), 0, None), Step::Send);
            c.sent(at(t0, ms));
        }
        assert_eq!(c.step(at(t0, 549), 0, None), Step::Wait);
        assert_eq!(
            c.step(at(t0, 549), 1, None),
            Step::Verdict(PathCheck::Answered)
        );
    }
}
