//! Counters of the server, rendered as Prometheus text for `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use p2p_proto::signal::ErrorCode;

use crate::limits::Refused;

/// What the registry, the budget and the limits report beside the counters.
pub struct Gauges {
    pub clients: usize,
    pub reserved: usize,
    pub reservations_evicted: u64,
    pub buffered: usize,
    pub buffered_peak: usize,
    pub handshakes: usize,
    pub tracked_addresses: usize,
    /// Connections refused before the upgrade, by reason.
    pub refused: Vec<(Refused, u64)>,
}

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
    /// Clients dropped to bring the global buffer budget back.
    pub evictions: AtomicU64,
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

    /// The Prometheus text exposition, with the gauges the registry knows.
    pub fn render(&self, now: &Gauges) -> String {
        let mut s = String::with_capacity(2048);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as i64;
        let rows: [(&str, &str, &str, i64); 13] = [
            (
                "signald_clients",
                "Connected clients.",
                "gauge",
                now.clients as i64,
            ),
            (
                "signald_pairings",
                "Pairings in force.",
                "gauge",
                self.pairings.load(Ordering::Relaxed),
            ),
            (
                "signald_reserved_ids",
                "IDs kept for their token after the holder left.",
                "gauge",
                now.reserved as i64,
            ),
            (
                "signald_connections_total",
                "Clients registered since start.",
                "counter",
                load(&self.connections),
            ),
            (
                "signald_frames_relayed_total",
                "Offer, answer and candidate frames relayed to a peer.",
                "counter",
                load(&self.relayed),
            ),
            (
                "signald_timeouts_total",
                "Clients closed for missing pings.",
                "counter",
                load(&self.timeouts),
            ),
            (
                "signald_slow_reader_drops_total",
                "Clients dropped because they did not read their frames.",
                "counter",
                load(&self.slow_readers),
            ),
            (
                "signald_reservations_evicted_total",
                "Reservations dropped early because the table was full.",
                "counter",
                now.reservations_evicted as i64,
            ),
            (
                "signald_buffered_bytes",
                "Bytes queued for clients and not yet written to their sockets.",
                "gauge",
                now.buffered as i64,
            ),
            (
                "signald_buffered_bytes_peak",
                "The highest signald_buffered_bytes since start.",
                "gauge",
                now.buffered_peak as i64,
            ),
            (
                "signald_budget_evictions_total",
                "Clients dropped because the buffered bytes passed --max-buffered-bytes.",
                "counter",
                load(&self.evictions),
            ),
            (
                "signald_handshakes",
                "Connections whose TLS handshake or request head is not complete.",
                "gauge",
                now.handshakes as i64,
            ),
            (
                "signald_tracked_addresses",
                "Client addresses (IPv6: /64s) with connections or a registration bucket not yet full.",
                "gauge",
                now.tracked_addresses as i64,
            ),
        ];
        for (name, help, kind, v) in rows {
            writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}")
                .expect("writing to a String");
        }
        s.push_str(
            "# HELP signald_refused_total Connections refused before the upgrade, by limit.\n",
        );
        s.push_str("# TYPE signald_refused_total counter\n");
        for (why, n) in &now.refused {
            writeln!(
                s,
                "signald_refused_total{{reason=\"{}\"}} {n}",
                why.as_str()
            )
            .expect("writing to a String");
        }
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
