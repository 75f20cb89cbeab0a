//! Load generation and measurement helpers for the project's benchmarks.
//!
//! - `signald-load`: WebSocket clients against signald (idle, relay, latency).
//! - `signald-bench`: starts signald, runs several `signald-load` processes
//!   (each may hold at most 20,000 file descriptors here), reads the server's
//!   RSS and CPU from `/proc`, and prints the table for `BENCHMARKS.md`.
//! - `p2pd-bench`: two daemons on loopback, one measurement per function.
//! - `p2pd-lab-bench`: the same paths through the NAT lab.
//!
//! - `signald-bench --cluster`: two signald nodes on a redis-server it
//!   starts, same-node against cross-node ([`cluster`] is the load).
//!
//! Shared here: the signaling [`frames`] and relay window, [`procfs`] figures, the raw loopback path ([`raw`]) and
//! the table rows ([`table`]).

pub mod cluster;
pub mod frames;
pub mod procfs;
pub mod raw;
pub mod table;
pub mod tcp;
