//! Counters of the server, rendered as Prometheus text for `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use p2p_proto::signal::ErrorCode;

/// Counters updated with relaxed atomics; nothing waits on them.
#[derive(Default)]
pub struct Metrics {
    /// Clients registered since start.
    pub connections: AtomicU64,
    /// Pairings in force now.
    pub pairings: AtomicI64,
    /// `offer`/`answer`/`candidate` frames handed to a peer.
    pub relayed: AtomicU64,
    /// Clients closed with 4000 for missing pings.
    pub timeouts: AtomicU64,
    /// Clients dropped because their outbound queue overflowed.
    pub slow_readers: AtomicU64,
    errors: [AtomicU64; ErrorCode::ALL.len()],
}

impl Metrics {
    /// Counts one `error` frame.
    pub fn error(&self, code: ErrorCode) {
        let i = ErrorCode::ALL
            .iter()
            .position(|c| *c == code)
            .expect("every code is in ALL");
        self.errors[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition, given the current client count.
    pub fn render(&self, clients: usize) -> String {
        let mut s = String::with_capacity(2048);
        let mut gauge = |name: &str, help: &str, kind: &str, v: i64| {
            writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}")
                .expect("writing to a String");
        };
        gauge(
            "signald_clients",
            "Connected clients.",
            "gauge",
            clients as i64,
        );
        gauge(
            "signald_pairings",
            "Pairings in force.",
            "gauge",
            self.pairings.load(Ordering::Relaxed),
        );
        gauge(
            "signald_connections_total",
            "Clients registered since start.",
            "counter",
            self.connections.load(Ordering::Relaxed) as i64,
        );
        gauge(
            "signald_frames_relayed_total",
            "Offer, answer and candidate frames relayed to a peer.",
            "counter",
            self.relayed.load(Ordering::Relaxed) as i64,
        );
        gauge(
            "signald_timeouts_total",
            "Clients closed for missing pings.",
            "counter",
            self.timeouts.load(Ordering::Relaxed) as i64,
        );
        gauge(
            "signald_slow_reader_drops_total",
            "Clients dropped because they did not read their frames.",
            "counter",
            self.slow_readers.load(Ordering::Relaxed) as i64,
        );
        s.push_str("# HELP signald_errors_total Error frames sent, by code.\n");
        s.push_str("# TYPE signald_errors_total counter\n");
        for (code, n) in ErrorCode::ALL.iter().zip(&self.errors) {
            writeln!(
                s,
                "signald_errors_total{{code=\"{}\"}} {}",
                code.as_str(),
                n.load(Ordering::Relaxed)
            )
            .expect("writing to a String");
        }
        s
    }
}
