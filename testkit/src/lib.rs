//! The project's test kit: what the tests of every crate and the benchmarks
//! share, written once.
//!
//! - [`proc`]: start a built binary, collect its output, wait for its
//!   readiness line, kill it on drop and print its output when a test fails.
//! - [`Signald`] and [`Daemon`]: real `signald` and `p2pd` processes on
//!   127.0.0.1 (or in a lab namespace), and `p2pctl` aimed at a daemon.
//! - [`Control`]: a typed client of p2pd's control socket, built on
//!   `p2p_proto::control`.
//! - [`Tail`]: a running `p2pctl tail`; [`transfer`]: send N lines and check
//!   they arrive complete and in order.
//! - [`paired`]: a signald and two daemons with an open channel.
//! - [`systemd_analyze`] and [`skip`]: tests that need a tool print one
//!   `SKIPPED` line where it is missing.
//! - [`relay::Rewriter`]: a man in the middle that rewrites fingerprints;
//!   [`raw::RawClient`]: signald's frames, spoken directly.
//! - [`tls::Ca`]: a throw-away certificate authority for `wss://` tests.
//! - [`lab`]: the NAT lab (network namespaces, NATs, coturn, an impaired
//!   link), for its tests and its benchmark.
//!
//! Waiting is always for an observable state under a generous bound
//! ([`WAIT`]), never a fixed sleep.

mod control;
mod daemon;
pub mod lab;
pub mod proc;
pub mod raw;
pub mod relay;
mod signald;
mod skip;
mod tail;
pub mod tls;

pub use control::{Control, Follower};
pub use daemon::{Daemon, DaemonBuilder, paired};
pub use proc::{BROWSER_START, Proc, WAIT, bin, manifest_dir, wait_for};
pub use signald::Signald;
pub use skip::{skip, systemd_analyze, systemd_verify};
pub use tail::{Tail, transfer};
