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
mod stream;

pub use event::{DisconnectReason, Event, EventKind, InviteFailure};
pub use reply::{
    ErrorBody, ErrorCode, False, IdentityInfo, InviteInfo, OkBody, PairOutcome, Pin, Reply, True,
};
pub use request::{Request, parse_request};
pub use status::{
    Counters, LinkState, Path, PeerTrust, ServerState, Status, StatusPeer, StatusServer,
    StatusTrust, TrustPolicy,
};
pub use stream::{
    AcceptInfo, ForwardInfo, ServiceInfo, StreamDirection, StreamInfo, Target, check_service,
    error_chunk, pipe, split_host_port, valid_service,
};

/// Version of this protocol, reported by `status`.
pub const CONTROL_VERSION: u32 = 1;

/// Longest request line the daemon reads (a 64 KiB message, JSON-escaped,
/// fits with room to spare). Longer lines get `line_too_long`.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// serde's default for flags that are true unless said otherwise.
fn yes() -> bool {
    true
}

/// Why the directory holding a control socket cannot be trusted, if it
/// cannot: it must be a real directory (not a symlink), owned by us or by
/// root (like /tmp, or a system daemon's /run/p2pd), and writable by nobody
/// else. Otherwise another local user could have put a socket there that
/// answers as p2pd, or could replace ours. A sticky directory like /tmp
/// passes: there nobody can remove or rename what is not theirs, and a
/// name squatted before us is caught by the bind, or by the client's
/// check of who serves the socket.
pub fn socket_dir_problem(dir: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) => return Some(format!("cannot check {}: {e}", dir.display())),
    };
    if meta.file_type().is_symlink() {
        return Some(format!(
            "{} is a symlink; the socket directory must be a real directory",
            dir.display()
        ));
    }
    if !meta.is_dir() {
        return Some(format!("{} is not a directory", dir.display()));
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let me = unsafe { libc::getuid() };
    if meta.uid() != me && meta.uid() != 0 {
        return Some(format!(
            "{} belongs to uid {}, not to us (uid {me}): someone else made it; remove it, or use XDG_RUNTIME_DIR or --socket",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
        return Some(format!(
            "{} is mode {:o}: others can write it (chmod 700 {})",
            dir.display(),
            meta.mode() & 0o777,
            dir.display()
        ));
    }
    None
}

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
    fn socket_dirs_must_be_ours_real_and_closed() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile_dir();
        assert_eq!(socket_dir_problem(&d), None);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(socket_dir_problem(&d).unwrap().contains("others can write"));
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(socket_dir_problem(&d), None, "sticky, like /tmp");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = d.with_extension("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(socket_dir_problem(&link).unwrap().contains("symlink"));
        assert!(socket_dir_problem(&d.join("missing")).is_some());
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir(&d).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("p2p-proto-sockdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

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
