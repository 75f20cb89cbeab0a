//! Integration tests: the real server on 127.0.0.1:0, real WebSocket clients.

mod util;

mod binary;
mod cluster;
mod cluster_failures;
mod cluster_p2pd;
mod cluster_redis;
mod errors;
mod flow;
mod handshake;
mod limits;
mod liveness;
mod memory;
mod props;
mod races;
mod reserve;
mod service;
mod units;
