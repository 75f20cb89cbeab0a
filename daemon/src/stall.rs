//! Silence on the path, noticed from the data flow.
//!
//! ICE alone notices a dead path only after `--ice-disconnected-timeout`
//! (5 s) of silence. A data flow shows it much sooner, from either end:
//!
//! - the sender's data waits for acknowledgement, which the peer's SCTP
//!   stack sends within a round trip or two;
//! - the receiver saw messages arrive steadily, then nothing at all (no
//!   packet of any kind) for a few round trips.
//!
//! [`Detector`] decides (no I/O, explicit instants); [`watch`] feeds it the
//! open channel's unacknowledged bytes, the messages received and the
//! packets received on the transport, and reports a stall to the link,
//! which checks the path with consent checks (`crate::consent`), and the
//! signaling connection with a WebSocket ping, at once. A false alarm (a
//! sender that simply stopped; a peer whose window is full) costs three
//! STUN checks and a ping, never the link.
//!
//! The watch costs nothing while nothing moves: it sleeps until a message
//! is sent or received ([`Flow`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use webrtc::data_channel::DataChannel;
use webrtc::peer_connection::{PeerConnection, StatsSelector};

use crate::peer::{PcContext, PcEventKind};

/// How long the path may bring nothing back: four round trips, within
/// these bounds. The floor stays above SCTP's delayed SACK (200 ms at
/// most) and a loaded driver's ticks; the ceiling under ICE's own timeout.
const STALL_MIN: Duration = Duration::from_millis(300);
const STALL_MAX: Duration = Duration::from_secs(2);
/// How often the counters are read while data moves.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Messages arriving this close together count as a steady flow, whose
/// sudden end is suspect.
const STEADY_GAP: Duration = Duration::from_millis(100);

/// What the detector makes of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing moves: stop sampling until the next message.
    Idle,
    /// Keep sampling.
    Watching,
    /// Too long with nothing received: report it (once per silence).
    Stalled,
}

/// One sample of the flow.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Bytes sent and not yet acknowledged.
    pub outstanding: usize,
    /// Messages received so far (the channel's).
    pub messages: u64,
    /// Packets received so far (the transport's: data, acknowledgements,
    /// keepalives).
    pub packets: u64,
    pub rtt: Option<Duration>,
}

/// Decides from samples.
#[derive(Debug)]
pub struct Detector {
    packets: u64,
    heard_at: Instant,
    messages: u64,
    /// When the last two messages were seen to arrive.
    message_at: Option<Instant>,
    steady: bool,
    reported: bool,
}

impl Detector {
    pub fn new(s: Sample, now: Instant) -> Detector {
        Detector {
            packets: s.packets,
            heard_at: now,
            messages: s.messages,
            message_at: None,
            steady: false,
            reported: false,
        }
    }

    /// Data starts to move again after an idle spell: the wait for the
    /// path starts now.
    pub fn resume(&mut self, s: Sample, now: Instant) {
        self.packets = s.packets;
        self.heard_at = now;
        if s.messages != self.messages {
            self.messages = s.messages;
            self.message_at = Some(now);
        }
        self.steady = false;
    }

    pub fn step(&mut self, now: Instant, s: Sample) -> Verdict {
        if s.packets != self.packets {
            self.packets = s.packets;
            self.heard_at = now;
            self.reported = false;
        }
        if s.messages != self.messages {
            self.messages = s.messages;
            self.steady = self
                .message_at
                .is_some_and(|at| now.duration_since(at) <= STEADY_GAP);
            self.message_at = Some(now);
        }
        let limit = (s.rtt.unwrap_or(Duration::ZERO) * 4).clamp(STALL_MIN, STALL_MAX);
        let silent = now.duration_since(self.heard_at) >= limit;
        let expecting = s.outstanding > 0 || self.steady;
        if !expecting {
            return Verdict::Idle;
        }
        if silent {
            // One report per silence; a steady flow that ended is not
            // expected again until messages come back.
            self.steady = false;
            if !self.reported {
                self.reported = true;
                return Verdict::Stalled;
            }
            return if s.outstanding > 0 {
                Verdict::Watching
            } else {
                Verdict::Idle
            };
        }
        Verdict::Watching
    }
}

/// Wakes the watch when a message is sent or received.
#[derive(Clone, Default)]
pub struct Flow(Arc<Notify>);

impl Flow {
    /// Data was handed to the channel.
    pub fn sent(&self) {
        self.0.notify_one();
    }

    /// A message arrived.
    pub fn received(&self) {
        self.0.notify_one();
    }
}

/// One sample of `dc` on `pc`; `None` once the channel is closed.
async fn sample(pc: &dyn PeerConnection, dc: &dyn DataChannel, messages: u64) -> Option<Sample> {
    let outstanding = dc.outstanding_bytes().await.ok()?;
    let report = pc
        .get_stats(std::time::Instant::now(), StatsSelector::None)
        .await;
    Some(Sample {
        outstanding,
        messages,
        packets: report.transport().map_or(0, |t| t.packets_received),
        rtt: crate::peer::selected_rtt(&report),
    })
}

/// Watches the open channel `dc` of `pc` until it closes; reports each
/// stall as [`PcEventKind::Stalled`].
pub fn watch(
    pc: Arc<dyn PeerConnection>,
    dc: Arc<dyn DataChannel>,
    ctx: PcContext,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let messages = || {
            ctx.counters
                .messages_received
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let Some(first) = sample(pc.as_ref(), dc.as_ref(), messages()).await else {
            return;
        };
        let mut detector = Detector::new(first, Instant::now());
        let mut idle = true;
        loop {
            if idle {
                ctx.flow.0.notified().await;
                let Some(s) = sample(pc.as_ref(), dc.as_ref(), messages()).await else {
                    return;
                };
                detector.resume(s, Instant::now());
                idle = false;
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
            let Some(s) = sample(pc.as_ref(), dc.as_ref(), messages()).await else {
                return;
            };
            match detector.step(Instant::now(), s) {
                Verdict::Stalled => {
                    tracing::debug!(
                        unacknowledged_bytes = s.outstanding,
                        "nothing received on the path for a while"
                    );
                    ctx.forward(PcEventKind::Stalled);
                }
                Verdict::Idle => idle = true,
                Verdict::Watching => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    fn sample(outstanding: usize, messages: u64, packets: u64) -> Sample {
        Sample {
            outstanding,
            messages,
            packets,
            rtt: None,
        }
    }

    #[test]
    fn data_in_flight_with_nothing_received_stalls_once() {
        let t0 = Instant::now();
        let mut d = Detector::new(sample(0, 0, 10), t0);
        assert_eq!(d.step(ms(t0, 100), sample(500, 0, 10)), Verdict::Watching);
        assert_eq!(d.step(ms(t0, 299), sample(500, 0, 10)), Verdict::Watching);
        assert_eq!(d.step(ms(t0, 300), sample(500, 0, 10)), Verdict::Stalled);
        assert_eq!(
            d.step(ms(t0, 900), sample(500, 0, 10)),
            Verdict::Watching,
            "once"
        );
        // Anything received re-arms it.
        assert_eq!(d.step(ms(t0, 1000), sample(500, 0, 11)), Verdict::Watching);
        assert_eq!(d.step(ms(t0, 1300), sample(500, 0, 11)), Verdict::Stalled);
    }

    #[test]
    fn acknowledgements_keep_it_quiet_and_idle_stops_it() {
        let t0 = Instant::now();
        let mut d = Detector::new(sample(0, 0, 0), t0);
        for n in 1..100 {
            assert_eq!(
                d.step(ms(t0, n * 100), sample(4096, 0, n)),
                Verdict::Watching
            );
        }
        assert_eq!(d.step(ms(t0, 20_000), sample(0, 0, 99)), Verdict::Idle);
        // After an idle spell the wait starts when data moves again.
        d.resume(sample(10, 0, 99), ms(t0, 60_000));
        assert_eq!(d.step(ms(t0, 60_200), sample(10, 0, 99)), Verdict::Watching);
        assert_eq!(d.step(ms(t0, 60_300), sample(10, 0, 99)), Verdict::Stalled);
    }

    /// The receiving end: messages arrived every 10 ms, then nothing, not
    /// even a packet: suspect. A single message, or a flow that slowly
    /// dries up, is not.
    #[test]
    fn a_steady_inbound_flow_that_stops_dead_stalls() {
        let t0 = Instant::now();
        let mut d = Detector::new(sample(0, 0, 0), t0);
        for n in 1..=20 {
            let v = d.step(ms(t0, n * 50), sample(0, n * 5, n * 5));
            // The first message alone says nothing of a flow.
            if n > 1 {
                assert_eq!(v, Verdict::Watching, "{n}");
            }
        }
        // The last message at 1000 ms; silence from then on.
        assert_eq!(d.step(ms(t0, 1250), sample(0, 100, 100)), Verdict::Watching);
        assert_eq!(d.step(ms(t0, 1300), sample(0, 100, 100)), Verdict::Stalled);
        assert_eq!(d.step(ms(t0, 1350), sample(0, 100, 100)), Verdict::Idle);

        // Sparse messages (one every 500 ms) are no steady flow.
        let mut d = Detector::new(sample(0, 0, 0), t0);
        for n in 1..=10 {
            let v = d.step(ms(t0, n * 500), sample(0, n, n));
            assert_ne!(v, Verdict::Stalled, "{n}");
        }
        assert_eq!(d.step(ms(t0, 9000), sample(0, 10, 10)), Verdict::Idle);
    }

    #[test]
    fn the_wait_scales_with_the_round_trip_within_bounds() {
        let t0 = Instant::now();
        let with_rtt = |ms: u64| Sample {
            rtt: Some(Duration::from_millis(ms)),
            ..sample(1, 0, 0)
        };
        let mut d = Detector::new(sample(0, 0, 0), t0);
        assert_eq!(d.step(ms(t0, 599), with_rtt(150)), Verdict::Watching);
        assert_eq!(d.step(ms(t0, 600), with_rtt(150)), Verdict::Stalled);
        let mut d = Detector::new(sample(0, 0, 0), t0);
        assert_eq!(d.step(ms(t0, 1999), with_rtt(3000)), Verdict::Watching);
        assert_eq!(d.step(ms(t0, 2000), with_rtt(3000)), Verdict::Stalled);
    }
}
