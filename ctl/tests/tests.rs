//! End-to-end tests: real signald and p2pd processes on 127.0.0.1, real
//! WebRTC data channels, driven through the real p2pctl.

mod control_socket;
mod current_stacks;
mod data;
mod delivery;
mod failures;
mod hostile;
mod interop;
mod invite;
mod liveness;
mod local_users;
mod nat_lab;
mod pairing;
mod streams;
mod tls;
mod trust;
