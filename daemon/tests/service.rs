//! p2pd's process model: `READY=1` only once the control socket accepts,
//! `STOPPING=1` on SIGTERM; `--daemonize` detaches, writes the pidfile,
//! serves, and a second start on the same socket fails clearly.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long any single expected event may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

/// A p2pd pointed at a signald that is not there: it keeps retrying, which
/// is all these tests need.
fn p2pd(dir: &Path) -> Command {
    p2pd_on(dir, &dir.join("p2pd.sock"))
}

fn p2pd_on(dir: &Path, sock: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_p2pd"));
    cmd.arg("--server")
        .arg("ws://127.0.0.1:9/ws")
        .arg("--socket")
        .arg(sock)
        .env("XDG_STATE_HOME", dir.join("state"))
        .env("P2PD_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .env_remove("P2PD_SOCKET")
        .env_remove("P2PD_SERVER");
    cmd
}

/// Runs `p2pd --daemonize --pidfile PIDFILE --log-file LOG` in `dir` and
/// waits for the launcher to exit.
fn daemonize(dir: &Path, pidfile: impl AsRef<Path>, log: &Path) -> std::process::Output {
    p2pd(dir)
        .arg("--daemonize")
        .arg("--pidfile")
        .arg(pidfile.as_ref())
        .arg("--log-file")
        .arg(log)
        .output()
        .unwrap()
}

/// Asks the daemon for its status over the control socket.
fn status(sock: &Path) {
    let mut c = p2p_testkit::Control::connect(sock).expect("control socket accepts");
    c.status();
}

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("a notification in time");
    String::from_utf8_lossy(&buf[..n]).trim().to_string()
}

/// Sends SIGTERM to a detached daemon when dropped, unless disarmed once
/// the test has stopped it itself (its PID could be reused after that).
struct StopOnDrop(Option<i32>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: signalling the daemon this test started.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
}

fn sigterm(pid: i32) {
    // SAFETY: signalling a process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

/// Waits for a process that is not our child to exit, without polling:
/// a pidfd becomes readable when it does.
fn wait_gone(pid: i32) {
    // SAFETY: plain syscalls on a descriptor we own and close.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        if fd < 0 {
            return; // already gone
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let n = libc::poll(&mut p, 1, WAIT.as_millis() as i32);
        libc::close(fd);
        assert_eq!(n, 1, "process {pid} still running");
    }
}

#[test]
fn notify_ready_only_once_the_control_socket_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(WAIT)).unwrap();
    let mut child = p2pd(dir.path())
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert_eq!(recv(&notify), "READY=1");
    // No retry: READY=1 promises the socket accepts now.
    status(&dir.path().join("p2pd.sock"));
    sigterm(child.id() as i32);
    assert_eq!(recv(&notify), "STOPPING=1");
    assert!(child.wait().unwrap().success());
}

#[test]
fn daemonize_detaches_writes_pidfile_serves_and_refuses_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("p2pd.sock");
    let pidfile = dir.path().join("p2pd.pid");
    let log = dir.path().join("p2pd.log");
    let start = Instant::now();
    let out = daemonize(dir.path(), &pidfile, &log);
    assert!(
        out.status.success(),
        "{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        start.elapsed() < WAIT,
        "launcher took {:?}",
        start.elapsed()
    );
    // The launcher is gone and the daemon is not its child any more: its
    // pidfile names a live process that serves the socket.
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(pid as u32, std::process::id());
    // A detached daemon is nobody's child: stop it even if an assert fails.
    let mut stop = StopOnDrop(Some(pid));
    // SAFETY: signal 0 only checks that the process exists.
    assert_eq!(unsafe { libc::kill(pid, 0) }, 0, "daemon {pid} not running");
    status(&sock);

    // Same socket, another pidfile: the control socket refuses.
    let second = daemonize(dir.path(), dir.path().join("other.pid"), &log);
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already serving"), "{err}");
    assert!(!dir.path().join("other.pid").exists());
    // Same pidfile: the lock refuses before anything else.
    let third = daemonize(dir.path(), &pidfile, &log);
    assert_eq!(third.status.code(), Some(1));
    let err = String::from_utf8_lossy(&third.stderr);
    assert!(err.contains("holds the pidfile"), "{err}");
    // And without --daemonize too.
    let fourth = p2pd(dir.path()).output().unwrap();
    assert!(!fourth.status.success());
    assert!(String::from_utf8_lossy(&fourth.stderr).contains("already serving"));

    status(&sock);
    stop.0 = None;
    sigterm(pid);
    wait_gone(pid);
    assert!(!pidfile.exists(), "pidfile left behind");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("already serving"), "{logged}");
}

#[test]
fn daemonize_reports_a_startup_failure_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    // The socket path's directory cannot be made: a file is in the way.
    std::fs::write(dir.path().join("blocker"), "").unwrap();
    let out = p2pd_on(dir.path(), &dir.path().join("blocker/p2pd.sock"))
        .arg("--daemonize")
        .arg("--log-file")
        .arg(dir.path().join("log"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("blocker"), "{err}");
}

/// An existing key that other users can read, or a state directory they
/// can look into, stops p2pd at start with the exact fix; it changes
/// nothing itself (issue 21, item 3).
#[test]
fn a_key_or_state_directory_open_to_others_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state").join("p2pd");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = p2pd(dir.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("chmod 700 {}", state.display())),
        "{err}"
    );
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let key = state.join("identity.pem");
    std::fs::write(&key, "not read: refused first").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = p2pd(dir.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("chmod 600 {}", key.display())),
        "{err}"
    );
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "left as it was");
}

/// p2pd sends its token in an `Authorization: Bearer` header, never in the
/// request line that reverse proxies log (issue 21, item 9).
#[test]
fn the_token_travels_in_a_header_not_in_the_url() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let mut child = Command::new(env!("CARGO_BIN_EXE_p2pd"))
        .args(["--server", &url, "--id", "alice", "--socket"])
        .arg(dir.path().join("p2pd.sock"))
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .env("P2PD_LOG", "warn")
        .env_remove("P2PD_SOCKET")
        .env_remove("P2PD_SERVER")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(listener.accept());
    });
    let Ok(Ok((conn, _))) = rx.recv_timeout(WAIT) else {
        let _ = child.kill();
        panic!("p2pd never connected");
    };
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut head = Vec::new();
    for line in BufReader::new(conn).lines() {
        let line = line.unwrap();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    let token = std::fs::read_to_string(dir.path().join("state/p2pd/alice.token")).unwrap();
    let token = token.trim();
    assert_eq!(head[0], "GET /ws?id=alice HTTP/1.1", "{head:?}");
    assert!(
        head.iter()
            .any(|h| h == &format!("authorization: Bearer {token}")
                || h == &format!("Authorization: Bearer {token}")),
        "{head:?}"
    );
    assert_eq!(
        head.iter().filter(|h| h.contains(token)).count(),
        1,
        "only in the header: {head:?}"
    );
}
