//! Integration tests of the built p2pd binary as an operator runs it:
//! under a service manager (sd_notify), as a classic daemon, and its
//! systemd user unit.

mod install;
mod service;
mod units;
