//! Whether the peer still answers on the data path.
//!
//! signald's word that the peer's signaling connection ended (`left`) or
//! went silent (`timeout`) says nothing certain about the peer itself: its
//! WebSocket may have died with a network change while its peer connection
//! lives, or signald may be restarting. Only the path can tell. Every ICE
//! stack answers STUN Binding requests on the selected pair by itself (the
//! consent checks of RFC 7675), and ours sends one at every tick of the
//! ICE agent ([`CONSENT_INTERVAL`]), so the counters of the connection's
//! candidate pairs say whether our requests are still answered. No message
//! of ours ever reaches the peer's application: a browser, aiortc or
//! werift never sees the check.
//!
//! [`Checker`] holds the decision (no I/O, explicit instants); [`run`] feeds
//! it samples of the connection's stats until it decides.

use std::time::Duration;

use tokio::time::Instant;
use webrtc::peer_connection::{PeerConnection, RTCStatsReportEntry, StatsSelector};

use crate::link::PathCheck;

/// How often ICE sends a consent check on the selected pair. The agent's
/// timer ticks every 200 ms once connected and sends a check on a tick when
/// this much has passed since the last one, so 150 ms means one check per
/// tick. Five STUN round trips a second cost an idle link next to nothing
/// (the agent wakes for its tick anyway), and they let a check of the path
/// decide within about a second ([`CHECKS`]).
pub const CONSENT_INTERVAL: Duration = Duration::from_millis(150);

/// Consent checks that must go unanswered before the path counts as silent.
const CHECKS: u64 = 3;
/// After the last of them, how long its answer may take: three round
/// trips, within these bounds.
const GRACE_MIN: Duration = Duration::from_millis(150);
const GRACE_MAX: Duration = Duration::from_secs(1);
/// When no checks go out at all (no selected pair, ICE already gone), the
/// path is silent after this long without an answer.
const GIVE_UP: Duration = Duration::from_millis(1500);
/// How often [`run`] samples the stats.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// Consent checks sent and answers received over every candidate pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub sent: u64,
    pub answered: u64,
}

/// One check of the path, from its first sample to its verdict.
#[derive(Debug)]
pub struct Checker {
    started: Instant,
    first: Counts,
    /// When the last of the [`CHECKS`] requests was first seen sent.
    all_sent: Option<Instant>,
}

impl Checker {
    pub fn new(now: Instant, counts: Counts) -> Checker {
        Checker {
            started: now,
            first: counts,
            all_sent: None,
        }
    }

    /// Takes one sample; the verdict once there is one. `rtt` is ICE's
    /// round-trip time on the selected pair, when measured.
    pub fn sample(
        &mut self,
        now: Instant,
        counts: Counts,
        rtt: Option<Duration>,
    ) -> Option<PathCheck> {
        if counts.answered > self.first.answered {
            return Some(PathCheck::Answered);
        }
        if self.all_sent.is_none() && counts.sent >= self.first.sent + CHECKS {
            self.all_sent = Some(now);
        }
        let grace = rtt
            .map(|r| r * 3)
            .unwrap_or(GRACE_MIN)
            .clamp(GRACE_MIN, GRACE_MAX);
        match self.all_sent {
            Some(at) if now >= at + grace => Some(PathCheck::Silent),
            _ if now >= self.started + GIVE_UP + grace => Some(PathCheck::Silent),
            _ => None,
        }
    }
}

/// The consent counters and the selected pair's round trip, from the
/// connection's stats.
async fn counts(pc: &dyn PeerConnection) -> (Counts, Option<Duration>) {
    let report = pc
        .get_stats(std::time::Instant::now(), StatsSelector::None)
        .await;
    let mut c = Counts::default();
    for p in report.candidate_pairs() {
        c.sent += p.consent_requests_sent;
        c.answered += p.responses_received;
    }
    let rtt = report
        .transport()
        .and_then(|t| report.get(&t.selected_candidate_pair_id))
        .and_then(|e| match e {
            RTCStatsReportEntry::IceCandidatePair(p) if p.current_round_trip_time > 0.0 => {
                Some(Duration::from_secs_f64(p.current_round_trip_time))
            }
            _ => None,
        });
    (c, rtt)
}

/// Checks the path of `pc`: samples its stats until the peer answers a
/// consent check or [`CHECKS`] of them went unanswered.
pub async fn run(pc: &dyn PeerConnection) -> PathCheck {
    let (first, _) = counts(pc).await;
    let mut checker = Checker::new(Instant::now(), first);
    loop {
        tokio::time::sleep(SAMPLE_EVERY).await;
        let (c, rtt) = counts(pc).await;
        if let Some(verdict) = checker.sample(Instant::now(), c, rtt) {
            tracing::debug!(?verdict, took = ?checker.started.elapsed(), sent = c.sent - first.sent, "path checked");
            return verdict;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn one_answer_is_enough() {
        let t0 = Instant::now();
        let mut c = Checker::new(
            t0,
            Counts {
                sent: 10,
                answered: 9,
            },
        );
        assert_eq!(
            c.sample(
                at(t0, 20),
                Counts {
                    sent: 10,
                    answered: 9
                },
                None
            ),
            None
        );
        assert_eq!(
            c.sample(
                at(t0, 40),
                Counts {
                    sent: 11,
                    answered: 10
                },
                None
            ),
            Some(PathCheck::Answered)
        );
    }

    #[test]
    fn silent_after_three_unanswered_checks_and_their_grace() {
        let t0 = Instant::now();
        let rtt = Some(Duration::from_millis(100));
        let mut c = Checker::new(
            t0,
            Counts {
                sent: 4,
                answered: 4,
            },
        );
        for (ms, sent) in [(200, 5), (400, 6), (599, 6)] {
            assert_eq!(
                c.sample(at(t0, ms), Counts { sent, answered: 4 }, rtt),
                None
            );
        }
        // The third goes out at 600 ms; three round trips later, silence.
        assert_eq!(
            c.sample(
                at(t0, 600),
                Counts {
                    sent: 7,
                    answered: 4
                },
                rtt
            ),
            None
        );
        assert_eq!(
            c.sample(
                at(t0, 899),
                Counts {
                    sent: 7,
                    answered: 4
                },
                rtt
            ),
            None
        );
        assert_eq!(
            c.sample(
                at(t0, 900),
                Counts {
                    sent: 7,
                    answered: 4
                },
                rtt
            ),
            Some(PathCheck::Silent)
        );
    }

    #[test]
    fn a_late_answer_within_the_grace_still_counts() {
        let t0 = Instant::now();
        let mut c = Checker::new(t0, Counts::default());
        assert_eq!(
            c.sample(
                at(t0, 600),
                Counts {
                    sent: 3,
                    answered: 0
                },
                None
            ),
            None
        );
        assert_eq!(
            c.sample(
                at(t0, 700),
                Counts {
                    sent: 4,
                    answered: 1
                },
                None
            ),
            Some(PathCheck::Answered)
        );
    }

    #[test]
    fn no_checks_sent_means_silent_after_the_bound() {
        let t0 = Instant::now();
        let mut c = Checker::new(t0, Counts::default());
        assert_eq!(c.sample(at(t0, 1600), Counts::default(), None), None);
        assert_eq!(
            c.sample(at(t0, 1650), Counts::default(), None),
            Some(PathCheck::Silent)
        );
    }
}
