//! The control socket itself: bad input, concurrency, ownership.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;

use p2p_testkit::{Daemon, Signald};

fn reply(r: &mut impl BufRead) -> serde_json::Value {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

#[test]
fn garbage_and_oversized_lines_get_errors_and_the_connection_goes_on() {
    let s = Signald::start();
    let a = Daemon::start(&s.url(), "alice");
    let mut conn = UnixStream::connect(a.socket()).unwrap();
    let mut r = BufReader::new(conn.try_clone().unwrap());

    conn.write_all(b"this is not json\n").unwrap();
    let e = reply(&mut r);
    assert_eq!(e["ok"], false);
    assert_eq!(e["error"]["code"], "bad_request");

    conn.write_all(b"{\"cmd\":\"reboot\"}\n").unwrap();
    assert_eq!(reply(&mut r)["error"]["code"], "unknown_command");

    conn.write_all(b"{\"cmd\":\"pair\",\"peer_id\":5}\n")
        .unwrap();
    assert_eq!(reply(&mut r)["error"]["code"], "bad_request");

    conn.write_all(b"[1,2,3]\n\xff\xfe\n").unwrap();
    assert_eq!(reply(&mut r)["error"]["code"], "bad_request");
    assert_eq!(reply(&mut r)["error"]["code"], "bad_request");

    let mut huge = vec![b'a'; 2 * 1024 * 1024];
    huge.push(b'\n');
    conn.write_all(&huge).unwrap();
    assert_eq!(reply(&mut r)["error"]["code"], "line_too_long");

    conn.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    let ok = reply(&mut r);
    assert_eq!(ok["ok"], true);
    assert_eq!(ok["status"]["id"], "alice");
    assert!(ok["status"]["counters"]["control_errors"].as_u64().unwrap() >= 6);

    // Another client is served meanwhile, and the daemon is unharmed.
    a.ok(&["status"]);
}

#[test]
fn many_clients_at_once() {
    let s = Signald::start();
    let a = Daemon::start(&s.url(), "alice");
    let conns: Vec<UnixStream> = (0..50)
        .map(|_| UnixStream::connect(a.socket()).unwrap())
        .collect();
    for mut c in &conns {
        c.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    }
    for c in &conns {
        let mut r = BufReader::new(c);
        assert_eq!(reply(&mut r)["ok"], true);
    }
}

#[test]
fn socket_is_private_and_a_second_daemon_is_refused() {
    let s = Signald::start();
    let a = Daemon::start(&s.url(), "alice");
    let mode = std::fs::metadata(a.socket()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let mut second = std::process::Command::new(p2p_testkit::bin("p2pd"))
        .args(["--server", &s.url(), "--socket"])
        .arg(a.socket())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = second.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("another p2pd is already serving"), "{err}");
    // The first one still answers.
    a.ok(&["status"]);
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let s = Signald::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p2pd.sock");
    // A socket file nobody listens on, as a crashed daemon leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let d = Daemon::builder(&s.url(), "alice").dir(dir).spawn();
    d.wait_status("up", |st| st.id.as_deref() == Some("alice"));
}

#[test]
fn sigterm_exits_0_and_removes_the_socket() {
    let s = Signald::start();
    let mut a = Daemon::start(&s.url(), "alice");
    let sock = a.socket();
    a.proc().signal(libc::SIGTERM);
    assert!(a.proc_mut().wait_exit().success());
    assert!(!sock.exists(), "socket left behind");
}
