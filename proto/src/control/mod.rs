//! The JSON-lines protocol of p2pd's control socket.
//!
//! One [`Request`] object per line from the client; one [`Reply`] object per
//! line from the daemon, in request order. `tail` answers `ok` and then
//! streams [`Event`] lines until the client hangs up. `docs/control.md` is
//! the prose version of this file; `status` and events never change shape
//! incompatibly within one [`CONTROL_VERSION`].

mod event;
mod reply;
mod request;
mod status;

pub use event::{DisconnectReason, Event, EventKind, InviteFailure};
pub use reply::{
    ErrorBody, ErrorCode, False, IdentityInfo, InviteInfo, OkBody, PairOutcome, Pin, Reply, True,
};
pub use request::{Request, parse_request};
pub use status::{
    Counters, LinkState, Path, PeerTrust, ServerState, Status, StatusPeer, StatusServer,
    StatusTrust, TrustPolicy,
};

/// Version of this protocol, reported by `status`.
pub const CONTROL_VERSION: u32 = 1;

/// Longest request line the daemon reads (a 64 KiB message, JSON-escaped,
/// fits with room to spare). Longer lines get `line_too_long`.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Where the daemon listens unless told otherwise (`$P2PD_SOCKET` is read
/// by the programs' flag parsers before this):
/// `$XDG_RUNTIME_DIR/p2pd/p2pd.sock`, else `/tmp/p2pd-$UID/p2pd.sock`.
pub fn default_socket_path() -> std::path::PathBuf {
    socket_path_in(std::env::var_os("XDG_RUNTIME_DIR").map(Into::into))
}

fn socket_path_in(runtime_dir: Option<std::path::PathBuf>) -> std::path::PathBuf {
    match runtime_dir.filter(|d| d.is_absolute()) {
        Some(d) => d.join("p2pd").join("p2pd.sock"),
        None => {
            // SAFETY: getuid has no preconditions and cannot fail.
            let uid = unsafe { libc::getuid() };
            format!("/tmp/p2pd-{uid}/p2pd.sock").into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_fallbacks() {
        assert_eq!(
            socket_path_in(Some("/run/user/7".into())),
            std::path::PathBuf::from("/run/user/7/p2pd/p2pd.sock")
        );
        let p = socket_path_in(None);
        assert!(p.starts_with("/tmp") && p.ends_with("p2pd.sock"), "{p:?}");
        // A relative XDG_RUNTIME_DIR is invalid per the XDG spec: ignored.
        assert!(socket_path_in(Some("rel".into())).starts_with("/tmp"));
    }
}
