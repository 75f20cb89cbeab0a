//! Counters of the server, rendered as Prometheus text for `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use p2p_proto::signal::ErrorCode;

use crate::limits::Refused;

/// What a backend counts of its clients and reservations (a cluster node:
/// its own clients, the cluster's reservations).
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub clients: usize,
    pub reserved: usize,
    pub reservations_evicted: u64,
    pub reservations_refused: u64,
}

/// What the directory, the budget and the limits report beside the counters.
pub struct Gauges {
    pub clients: usize,
    /// Pairings with a side on this node, when the directory does not count
    /// them itself (a cluster node).
    pub pairings: Option<usize>,
    pub reserved: usize,
    pub reservations_evicted: u64,
    pub reservations_refused: u64,
    pub buffered: usize,
    pub buffered_peak: usize,
    pub handshakes: usize,
    /// Handshakes shed to make room for newcomers.
    pub handshakes_shed: u64,
    /// Welcomes without TURN credentials: their address used its allowance.
    pub turn_withheld: u64,
    pub tracked_addresses: usize,
    /// Connections refused before the upgrade, by reason.
    pub refused: Vec<(Refused, u64)>,
}

/// Counters updated with relaxed atomics; nothing waits on them.
#[derive(Default)]
pub struct Metrics {
    /// Clients registered since start.
    connections: AtomicU64,
    /// Pairings in force now (a node's own count; a cluster's gauge comes
    /// from Redis).
    pairings: AtomicI64,
    /// `offer`/`answer`/`candidate` frames handed to a peer.
    relayed: AtomicU64,
    /// Clients closed with 4000 for missing pings.
    timeouts: AtomicU64,
    /// Clients dropped because their outbound queue overflowed.
    slow_readers: AtomicU64,
    /// Clients dropped to bring the global buffer budget back.
    evictions: AtomicU64,
    errors: [AtomicU64; ErrorCode::ALL.len()],
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// A client registered.
    pub fn connected(&self) {
        bump(&self.connections);
    }

    /// A pairing was made.
    pub fn paired(&self) {
        self.pairings.fetch_add(1, Ordering::Relaxed);
    }

    /// A pairing ended.
    pub fn unpaired(&self) {
        self.pairings.fetch_sub(1, Ordering::Relaxed);
    }

    /// A frame was handed to a peer.
    pub fn relayed(&self) {
        bump(&self.relayed);
    }

    /// A client was closed for missing pings.
    pub fn timed_out(&self) {
        bump(&self.timeouts);
    }

    /// A client was dropped for not reading.
    pub fn slow_reader(&self) {
        bump(&self.slow_readers);
    }

    /// A client was dropped to bring the buffer budget back.
    pub fn evicted(&self) {
        bump(&self.evictions);
    }

    /// Counts one `error` frame.
    pub fn error(&self, code: ErrorCode) {
        let i = ErrorCode::ALL
            .iter()
            .position(|c| *c == code)
            .expect("every code is in ALL");
        self.errors[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition, with the gauges the directory knows.
    pub fn render(&self, now: &Gauges) -> String {
        let mut s = String::with_capacity(2048);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as i64;
        let rows: [(&str, &str, &str, i64); 16] = [
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
                now.pairings
                    .map_or(self.pairings.load(Ordering::Relaxed), |p| p as i64),
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
                "Reservations dropped early: their address passed its quota, or reserved again into a full table.",
                "counter",
                now.reservations_evicted as i64,
            ),
            (
                "signald_reservations_refused_total",
                "Reservations not made: the table was full and their address held none to give up.",
                "counter",
                now.reservations_refused as i64,
            ),
            (
                "signald_turn_withheld_total",
                "Welcomes sent without TURN credentials: the client's address had used its allowance (--turn-per-ip).",
                "counter",
                now.turn_withheld as i64,
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
                "signald_handshakes_shed_total",
                "Unfinished handshakes closed to make room for a newcomer (the oldest of the address holding the most).",
                "counter",
                now.handshakes_shed as i64,
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

/// A cluster node's figures (`--cluster`): its own, then the cluster's as
/// read from Redis at its last heartbeat.
pub struct ClusterFigures {
    pub node: String,
    pub incarnation: String,
    pub live: bool,
    pub redis_ok: bool,
    pub joins: u64,
    pub fences: u64,
    pub redis_errors: u64,
    pub relayed_out: u64,
    pub relayed_in: u64,
    pub stale_dropped: u64,
    pub rejected: u64,
    pub reaped: u64,
    pub pending_releases: u64,
    pub nodes: u64,
    pub clients: u64,
    pub pairings: u64,
    pub dead_nodes: u64,
}

impl ClusterFigures {
    /// Appends the cluster rows to a `/metrics` body.
    pub fn render(&self, s: &mut String) {
        // Node and incarnation names are [A-Za-z0-9_.-]: no escaping needed.
        writeln!(
            s,
            "# HELP signald_cluster_node This node's name and current incarnation.\n\
             # TYPE signald_cluster_node gauge\n\
             signald_cluster_node{{node=\"{}\",incarnation=\"{}\"}} 1",
            self.node, self.incarnation
        )
        .expect("writing to a String");
        let rows: [(&str, &str, &str, u64); 15] = [
            (
                "signald_cluster_live",
                "1 while this node is part of the cluster, 0 while fenced or rejoining.",
                "gauge",
                u64::from(self.live),
            ),
            (
                "signald_cluster_redis_up",
                "1 if the last heartbeat reached Redis.",
                "gauge",
                u64::from(self.redis_ok),
            ),
            (
                "signald_cluster_joins_total",
                "Incarnations this process started (1 + rejoins after a fence).",
                "counter",
                self.joins,
            ),
            (
                "signald_cluster_fences_total",
                "Times this node fenced itself (clients closed with 1013).",
                "counter",
                self.fences,
            ),
            (
                "signald_cluster_redis_errors_total",
                "Redis commands that failed or timed out.",
                "counter",
                self.redis_errors,
            ),
            (
                "signald_cluster_relayed_out_total",
                "Frames relayed to peers on other nodes.",
                "counter",
                self.relayed_out,
            ),
            (
                "signald_cluster_relayed_in_total",
                "Frames from other nodes delivered to this node's clients.",
                "counter",
                self.relayed_in,
            ),
            (
                "signald_cluster_stale_dropped_total",
                "Frames from other nodes for a pairing that had ended, dropped.",
                "counter",
                self.stale_dropped,
            ),
            (
                "signald_cluster_rejected_total",
                "Inbox entries read from Redis that no node could have written (malformed, or a frame its client's peer could not have sent), dropped.",
                "counter",
                self.rejected,
            ),
            (
                "signald_cluster_reaped_total",
                "Clients of dead nodes this node freed.",
                "counter",
                self.reaped,
            ),
            (
                "signald_cluster_pending_releases",
                "Ended connections Redis has not been told about yet.",
                "gauge",
                self.pending_releases,
            ),
            (
                "signald_cluster_nodes",
                "Live nodes in the cluster (at the last heartbeat).",
                "gauge",
                self.nodes,
            ),
            (
                "signald_cluster_clients",
                "Clients on all nodes (at the last heartbeat).",
                "gauge",
                self.clients,
            ),
            (
                "signald_cluster_pairings",
                "Pairings in the cluster (at the last heartbeat).",
                "gauge",
                self.pairings,
            ),
            (
                "signald_cluster_dead_nodes",
                "Nodes declared dead whose clients are still being freed.",
                "gauge",
                self.dead_nodes,
            ),
        ];
        for (name, help, kind, v) in rows {
            writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}")
                .expect("writing to a String");
        }
    }
}
