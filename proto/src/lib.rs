//! Protocol types shared by signald, p2pd and p2pctl, defined once.
//!
//! - [`signal`]: the WebSocket signaling frames (the wire contract with
//!   third-party clients such as browsers).
//! - [`control`]: the JSON-lines protocol of p2pd's local control socket.
//! - [`identity`]: a peer's key fingerprint and how people write it.
//! - [`lines`]: reading JSON lines with a length cap.

pub mod control;
pub mod identity;
pub mod lines;
pub mod signal;

#[cfg(test)]
mod props;
