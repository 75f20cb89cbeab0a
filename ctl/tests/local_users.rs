//! Other users on the same machine: a directory squatted in /tmp, or a
//! socket that answers as p2pd but belongs to someone else, must not get
//! our requests (or our message bodies).
//!
//! Needs root, to run programs as two made-up uids (`setpriv`); otherwise
//! it says so in one skip line.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use p2p_testkit::{Proc, Signald, bin, skip};

/// Two uids nobody on this machine uses (no account is needed to run a
/// process as a uid), different for each test process.
fn uids() -> (u32, u32) {
    let base = 61_000 + (std::process::id() % 2000) * 2;
    (base, base + 1)
}

/// The built programs, copied where any uid can run them (the target
/// directory lives under root's home).
struct Bins(tempfile::TempDir);

impl Bins {
    fn copy() -> Bins {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for name in ["p2pd", "p2pctl"] {
            std::fs::copy(bin(name), dir.path().join(name)).unwrap();
        }
        Bins(dir)
    }

    /// `name` run as `uid`, with a home of its own and no runtime dir (so
    /// the /tmp fallback is in play).
    fn as_user(&self, uid: u32, home: &Path, name: &str) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg("--")
            .arg(self.0.path().join(name))
            .env("HOME", home)
            .env("XDG_STATE_HOME", home.join("state"))
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("P2PD_SOCKET")
            .env("P2PD_LOG", "info");
        c
    }
}

/// A home directory for `uid` (owned by it, closed to others).
fn home_for(uid: u32) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(d.path(), Some(uid), Some(uid)).unwrap();
    d
}

fn can_switch_users(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        skip(what, "needs root to run processes as other uids");
        return false;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        skip(what, "setpriv (util-linux) is not installed");
        return false;
    }
    true
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Removes a directory made under /tmp when the test ends, pass or fail.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_socket_directory_squatted_in_tmp_is_refused_by_daemon_and_client() {
    let what = "a_socket_directory_squatted_in_tmp_is_refused_by_daemon_and_client";
    if !can_switch_users(what) {
        return;
    }
    let (alice, mallory) = uids();
    let bins = Bins::copy();
    let home = home_for(alice);
    let s = Signald::start();

    // Mallory, first on the machine, makes Alice's fallback directory.
    let squat = PathBuf::from(format!("/tmp/p2pd-{alice}"));
    let _ = std::fs::remove_dir_all(&squat);
    let _cleanup = RemoveOnDrop(squat.clone());
    std::fs::create_dir(&squat).unwrap();
    std::os::unix::fs::chown(&squat, Some(mallory), Some(mallory)).unwrap();
    std::fs::set_permissions(&squat, std::fs::Permissions::from_mode(0o777)).unwrap();

    let out = bins
        .as_user(alice, home.path(), "p2pd")
        .args(["--server", &s.url(), "--id", "alice", "--bind", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "p2pd served from a squatted directory"
    );
    let err = stderr(&out);
    assert!(
        err.contains(&format!("belongs to uid {mallory}")),
        "the error says whose it is: {err}"
    );
    assert!(
        std::fs::read_dir(&squat).unwrap().next().is_none(),
        "p2pd put nothing into the squatted directory"
    );

    // Whatever Mallory serves there, Alice's p2pctl does not talk to it.
    let out = bins
        .as_user(alice, home.path(), "p2pctl")
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("not talking to"), "{}", stderr(&out));
}

#[test]
fn p2pctl_will_not_send_to_a_daemon_run_by_another_user() {
    let what = "p2pctl_will_not_send_to_a_daemon_run_by_another_user";
    if !can_switch_users(what) {
        return;
    }
    let (alice, mallory) = uids();
    let bins = Bins::copy();
    let alice_home = home_for(alice);
    let mallory_home = home_for(mallory);
    let s = Signald::start();

    // Mallory runs a real p2pd and opens its socket to everyone, in a
    // sticky shared directory like /tmp (which passes the directory check:
    // the process behind the socket is what gives it away).
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let sock = shared.path().join("p2pd.sock");
    let mut cmd = bins.as_user(mallory, mallory_home.path(), "p2pd");
    cmd.args([
        "--server",
        &s.url(),
        "--id",
        "mallory",
        "--bind",
        "127.0.0.1",
    ])
    .arg("--socket")
    .arg(&sock);
    let m = Proc::spawn("p2pd mallory", cmd);
    m.wait_line("p2pd ready");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();

    let out = bins
        .as_user(alice, alice_home.path(), "p2pctl")
        .arg("--socket")
        .arg(&sock)
        .args(["send", "secret"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("runs as uid {mallory}, not as us (uid {alice})")),
        "{err}"
    );

    // Mallory's own p2pctl still talks to it: the check is not "refuse all".
    let out = bins
        .as_user(mallory, mallory_home.path(), "p2pctl")
        .arg("--socket")
        .arg(&sock)
        .arg("status")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}
