//! Byte streams end to end: real signald, real p2pd pairs, the real
//! p2pctl `connect`, `accept`, `expose` and `forward`.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use p2p_testkit::{Daemon, Signald};

/// A signald with relaxed pings: these tests move tens of MiB through
/// debug builds on two cores, and signald's liveness is not what they test
/// (a 300 ms timeout dropped a starved daemon).
fn signald() -> Signald {
    Signald::start_pinging("1s", "10s", &[])
}

/// Two daemons paired, as `p2p_testkit::paired`, under [`signald`].
fn paired(a: &str, b: &str) -> (Signald, Daemon, Daemon) {
    let s = signald();
    let da = Daemon::start(&s.url(), a);
    let db = Daemon::start(&s.url(), b);
    da.pair(&db);
    (s, da, db)
}

/// Reproducible bytes that no compressor or pattern makes easy.
fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Waits until `d` shows an accept waiting for `service`.
fn wait_accepting(d: &Daemon, service: &str) {
    d.wait_status(&format!("accepting {service}"), |s| {
        s.accepts.iter().any(|a| a.service == service)
    });
}

/// Collects a p2pctl's output in a thread of its own: two ends of one
/// stream must be read at once, or the first one's full pipe would hold
/// up the second.
fn collect(child: Child, what: &'static str) -> std::thread::JoinHandle<Output> {
    std::thread::spawn(move || {
        let out = child.wait_with_output().expect("waiting for p2pctl");
        eprintln!(
            "{what}: {} stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    })
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i}");
    }
}

#[test]
fn bytes_through_connect_and_accept_arrive_identical_both_ways_at_once() {
    let (_s, a, b) = paired("st-a", "st-b");
    let up = random_bytes(64 << 20, 1);
    let down = random_bytes(64 << 20, 2);
    let acc = b.spawn_ctl_stdin(&["accept", "pipe", "--peer", "st-a"], down.clone());
    wait_accepting(&b, "pipe");
    let started = Instant::now();
    let acc = collect(acc, "accept");
    let conn = collect(
        a.spawn_ctl_stdin(&["connect", "st-b/pipe"], up.clone()),
        "connect",
    );
    let (conn, acc) = (conn.join().unwrap(), acc.join().unwrap());
    eprintln!("64 MiB each way in {:?}", started.elapsed());
    assert!(conn.status.success() && acc.status.success());
    // No progress line when stderr is not a terminal, and nothing else.
    assert!(conn.stderr.is_empty() && acc.stderr.is_empty());
    assert_same(&acc.stdout, &up, "connect -> accept");
    assert_same(&conn.stdout, &down, "accept -> connect");
    // Nothing is left open; the link carries on.
    assert!(a.status().streams.is_empty() && b.status().streams.is_empty());
    a.ok(&["send", "still here"]);
}

/// A TCP service on 127.0.0.1 whose connections each run `serve`.
fn service(serve: fn(TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn));
        }
    });
    port
}

/// Reads to EOF, then answers with what it read, reversed, and closes.
fn reverse_after_eof(mut conn: TcpStream) {
    let mut all = Vec::new();
    if conn.read_to_end(&mut all).is_ok() {
        all.reverse();
        let _ = conn.write_all(&all);
    }
}

/// Echoes until EOF, then closes its side too.
fn echo(mut conn: TcpStream) {
    let mut buf = [0u8; 65536];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}

#[test]
fn stdin_s_eof_reaches_the_service_and_its_answer_still_arrives() {
    let (_s, a, b) = paired("eof-a", "eof-b");
    let port = service(reverse_after_eof);
    let target = format!("tcp:127.0.0.1:{port}");
    let out = b.ok(&["expose", "rev", &target, "--peer", "eof-a"]);
    assert!(out.contains("rev -> tcp:127.0.0.1:"), "{out}");
    let input = random_bytes(3 << 20, 3);
    let out = a.ctl_stdin(&["connect", "eof-b/rev"], &input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut want = input.clone();
    want.reverse();
    assert_same(&out.stdout, &want, "the answer after EOF");
}

#[test]
fn a_forward_carries_fifty_concurrent_connections_each_complete() {
    let (_s, a, b) = paired("fw-a", "fw-b");
    let port = service(echo);
    b.ok(&[
        "expose",
        "echo",
        &format!("tcp:[::ffff:127.0.0.1]:{port}"),
        "--peer",
        "fw-a",
    ]);
    let mut fwd = a
        .ctl_cmd(&["forward", "0", "fw-b/echo"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(fwd.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let listen: std::net::SocketAddr = line
        .strip_prefix("forwarding ")
        .and_then(|l| l.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("forward said {line:?}"));
    let clients: Vec<_> = (0..50)
        .map(|i| {
            std::thread::spawn(move || {
                let data = random_bytes(1 << 20, 100 + i);
                let mut c = TcpStream::connect(listen).unwrap();
                let mut w = c.try_clone().unwrap();
                let sent = data.clone();
                let writer = std::thread::spawn(move || {
                    w.write_all(&sent).unwrap();
                    w.shutdown(Shutdown::Write).unwrap();
                });
                let mut got = Vec::new();
                c.read_to_end(&mut got).unwrap();
                writer.join().unwrap();
                assert_same(&got, &data, &format!("connection {i}"));
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let text = a.ok(&["status"]);
    assert!(text.contains("forward:  127.0.0.1:"), "{text}");
    let st = a.wait_status("every forwarded stream closed", |s| s.streams.is_empty());
    assert_eq!(st.forwards.len(), 1);
    assert_eq!(st.forwards[0].connections, 50);
    // Stopping p2pctl stops the forward.
    unsafe { libc::kill(fwd.id() as i32, libc::SIGTERM) };
    assert!(fwd.wait().unwrap().success());
    a.wait_status("the forward gone", |s| s.forwards.is_empty());
    assert!(TcpStream::connect(listen).is_err());
}

/// Runs `p2pctl ARGS` on `d`, expecting exit `code` and a one-line error
/// containing `needle`.
fn fails(d: &Daemon, args: &[&str], code: i32, needle: &str) {
    let out = d.ctl(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "p2pctl {args:?}: {err}");
    assert!(
        err.contains(needle),
        "p2pctl {args:?}: {err:?} lacks {needle:?}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
}

#[test]
fn refusals_each_say_why_and_leave_the_daemons_unharmed() {
    let (_s, a, b) = paired("no-a", "no-b");
    fails(
        &a,
        &["connect", "no-b/nothing"],
        1,
        "no service named nothing",
    );
    b.ok(&["expose", "theirs", "tcp:127.0.0.1:9", "--peer", "somebody"]);
    fails(
        &a,
        &["connect", "no-b/theirs"],
        1,
        "theirs does not allow no-a",
    );
    // A port nothing listens on: the target refuses.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    expose_tcp(&b, "down", port, "no-a");
    fails(&a, &["connect", "no-b/down"], 1, "cannot reach its target");
    b.ok(&[
        "expose",
        "sock",
        "unix:/nonexistent/s.sock",
        "--peer",
        "no-a",
    ]);
    fails(&a, &["connect", "no-b/sock"], 1, "cannot reach its target");
    // Usage errors are exit 2, before anything is sent.
    fails(&a, &["connect", "no-b"], 2, "PEER/SERVICE");
    fails(
        &b,
        &["expose", "x", "tcp:::1:22", "--peer", "no-a"],
        2,
        "tcp:[::1]:22",
    );
    fails(&b, &["expose", "x", "tcp:127.0.0.1:22"], 2, "--peer");
    fails(
        &b,
        &["expose", "bad/name", "tcp:127.0.0.1:22", "--peer", "no-a"],
        1,
        "not a valid service name",
    );
    // An accept for a name that is exposed would never see a stream.
    fails(&b, &["accept", "down", "--peer", "no-a"], 1, "is exposed");
    // `connect` while paired with another peer.
    fails(&a, &["connect", "other/x"], 1, "paired with no-b");
    // Nothing is left behind, and both still work.
    let st = b.status();
    assert!(st.streams.is_empty() && st.accepts.is_empty());
    assert_eq!(st.services.len(), 3);
    assert!(b.ok(&["unexpose", "down"]).is_empty());
    assert_eq!(b.status().services.len(), 2);
    let port = service(echo);
    expose_tcp(&b, "echo", port, "no-a");
    let out = a.ctl_stdin(&["connect", "no-b/echo"], b"still works");
    assert_eq!(out.stdout, b"still works");
    a.ok(&["send", "and messages too"]);
}

/// Daemons `a` and `b` under `--trust POLICY`, `b` exposing `echo` (at
/// `target`) to `a`, paired for the first time.
fn first_contact(s: &Signald, policy: &str, a: &str, b: &str, target: &str) -> (Daemon, Daemon) {
    let da = Daemon::start_with(&s.url(), a, &["--trust", policy]);
    let db = Daemon::start_with(&s.url(), b, &["--trust", policy]);
    db.ok(&["expose", "echo", target, "--peer", a]);
    da.ok(&["pair", b]);
    db.wait_open_with(a);
    (da, db)
}

#[test]
fn a_key_pinned_on_first_contact_or_not_at_all_does_not_open_streams() {
    let s = signald();
    let port = service(echo);
    let target = format!("tcp:127.0.0.1:{port}");
    // First contact: each pins the other's key now, which proves nothing.
    let (a, b) = first_contact(&s, "tofu", "tofu-a", "tofu-b", &target);
    fails(
        &a,
        &["connect", "tofu-b/echo"],
        1,
        "pinned on this first contact",
    );
    // The opener may opt in; the service has not.
    fails(
        &a,
        &["connect", "tofu-b/echo", "--allow-unverified"],
        1,
        "not pinned before this pairing",
    );
    b.ok(&[
        "expose",
        "echo",
        &target,
        "--peer",
        "tofu-a",
        "--allow-unverified",
    ]);
    assert!(
        b.ok(&["expose", "--list"])
            .contains("UNVERIFIED peers allowed")
    );
    let st = b.status();
    assert!(st.services[0].allow_unverified, "status shows the opt-in");
    let text = b.ok(&["status"]);
    assert!(text.contains("expose:   echo -> tcp:127.0.0.1:"), "{text}");
    assert!(text.contains("(UNVERIFIED peers allowed)"), "{text}");
    let out = a.ctl_stdin(
        &["connect", "tofu-b/echo", "--allow-unverified"],
        b"opted in",
    );
    assert_eq!(out.stdout, b"opted in");
    // The next pairing is with a key pinned before it: verified.
    b.ok(&["expose", "echo", &target, "--peer", "tofu-a"]);
    a.ok(&["unpair"]);
    b.wait_idle();
    a.ok(&["pair", "tofu-b"]);
    b.wait_open_with("tofu-a");
    let out = a.ctl_stdin(&["connect", "tofu-b/echo"], b"pinned before");
    assert_eq!(out.stdout, b"pinned before");

    // Under --trust any nothing is verified.
    let (c, _d) = first_contact(&s, "any", "any-c", "any-d", &target);
    fails(
        &c,
        &["connect", "any-d/echo"],
        1,
        "not verified (--trust any)",
    );
    fails(
        &c,
        &["connect", "any-d/echo", "--allow-unverified"],
        1,
        "not pinned before this pairing",
    );
}

#[test]
fn connect_pairs_when_idle_and_the_pairing_ends_with_its_last_stream() {
    let s = signald();
    let a = Daemon::start(&s.url(), "auto-a");
    let b = Daemon::start(&s.url(), "auto-b");
    a.trust_each_other(&b);
    let port = service(reverse_after_eof);
    expose_tcp(&b, "rev", port, "auto-a");
    // Three at once, all waiting for the same pairing.
    let runs: Vec<_> = (0..3u8)
        .map(|i| {
            collect(
                a.spawn_ctl_stdin(&["connect", "auto-b/rev"], vec![b'a' + i, b'z']),
                "connect",
            )
        })
        .collect();
    for (i, r) in runs.into_iter().enumerate() {
        let out = r.join().unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, [b'z', b'a' + i as u8]);
    }
    a.wait_idle();
    b.wait_idle();
    // A pairing that connect made becomes the user's with `pair`, and
    // stays after the last stream.
    let (held, out) = held_open(&a, &["connect", "auto-b/rev"]);
    a.wait_status("a stream open", |s| s.streams.len() == 1);
    assert!(a.ok(&["pair", "auto-b"]).contains("channel open"));
    drop(held);
    assert!(out.join().unwrap().status.success());
    a.wait_status("the stream closed", |s| s.streams.is_empty());
    // The unpair it would have had comes within milliseconds (above).
    std::thread::sleep(Duration::from_millis(500));
    a.ok(&["send", "still paired"]);
    assert_eq!(a.status().link, p2p_proto::control::LinkState::Open);
    // And one the user made never ends with a stream.
    let out = a.ctl_stdin(&["connect", "auto-b/rev"], b"ab");
    assert_eq!(out.stdout, b"ba");
    a.ok(&["send", "still paired after another"]);
}

#[test]
fn a_stopped_reader_holds_only_its_own_stream() {
    let (_s, a, b) = paired("slow-a", "slow-b");
    let tail = p2p_testkit::Tail::start(&b, &[]);
    let slow_bytes = random_bytes(16 << 20, 5);
    let fast_bytes = random_bytes(16 << 20, 6);
    // The slow accept's stdout is a pipe nobody reads for now.
    let mut slow = b.spawn_ctl_stdin(&["accept", "slow", "--peer", "slow-a"], Vec::new());
    let fast = collect(
        b.spawn_ctl_stdin(&["accept", "fast", "--peer", "slow-a"], Vec::new()),
        "fast accept",
    );
    wait_accepting(&b, "slow");
    wait_accepting(&b, "fast");
    let slow_conn = collect(
        a.spawn_ctl_stdin(&["connect", "slow-b/slow"], slow_bytes.clone()),
        "slow connect",
    );
    b.wait_status("the slow stream open", |s| {
        s.streams
            .iter()
            .any(|st| st.service == "slow" && st.bytes_in > 0)
    });
    let fast_conn = collect(
        a.spawn_ctl_stdin(&["connect", "slow-b/fast"], fast_bytes.clone()),
        "fast connect",
    );
    // The other stream and the message channel move while the slow
    // reader stands still (if they could not, this would never end).
    let fast = fast.join().unwrap();
    assert!(fast.status.success() && fast_conn.join().unwrap().status.success());
    assert_same(&fast.stdout, &fast_bytes, "the moving stream");
    a.ok(&["send", "a message past the stopped reader"]);
    assert_eq!(tail.next_str(), "a message past the stopped reader");
    std::thread::sleep(Duration::from_secs(2));
    // Taken in meanwhile: at most the window (2 MiB) and what the pipes and
    // sockets between p2pd and the stopped reader hold (under 1 MiB).
    let held = b
        .status()
        .streams
        .iter()
        .find(|s| s.service == "slow")
        .map(|s| s.bytes_in)
        .expect("the slow stream is still open");
    assert!(held < 3 << 20, "{held} bytes taken in for a stopped reader");
    assert!(
        held < slow_bytes.len() as u64 / 4,
        "the stopped reader held back its stream"
    );
    let mut got = Vec::new();
    slow.stdout.take().unwrap().read_to_end(&mut got).unwrap();
    assert!(slow.wait().unwrap().success());
    assert!(slow_conn.join().unwrap().status.success());
    assert_same(&got, &slow_bytes, "the stream that was held");
}

/// `d` exposes `name`, a TCP service on 127.0.0.1:`port`, to `peer`.
fn expose_tcp(d: &Daemon, name: &str, port: u16, peer: &str) {
    d.ok(&[
        "expose",
        name,
        &format!("tcp:127.0.0.1:{port}"),
        "--peer",
        peer,
    ]);
}

/// A `connect` whose stdin stays open until the returned sender is
/// dropped; its output is collected meanwhile.
fn held_open(
    d: &Daemon,
    args: &[&str],
) -> (std::process::ChildStdin, std::thread::JoinHandle<Output>) {
    let mut child = d
        .ctl_cmd(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    (stdin, collect(child, "held open"))
}

#[test]
fn caps_refuse_cleanly_and_the_far_side_s_death_ends_a_stream() {
    let s = signald();
    let a = Daemon::start(&s.url(), "cap-a");
    let b = Daemon::start_with(
        &s.url(),
        "cap-b",
        &["--max-streams-per-service", "1", "--max-accepts", "1"],
    );
    a.pair(&b);
    let port = service(echo);
    expose_tcp(&b, "echo", port, "cap-a");
    let (mut first, first_out) = held_open(&a, &["connect", "cap-b/echo"]);
    first.write_all(b"first").unwrap();
    b.wait_status("one stream to echo", |s| s.streams.len() == 1);
    fails(
        &a,
        &["connect", "cap-b/echo"],
        1,
        "streams to echo are open already",
    );
    drop(first);
    let out = first_out.join().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"first");
    let acc = collect(
        b.spawn_ctl_stdin(&["accept", "one", "--peer", "cap-a"], Vec::new()),
        "accept",
    );
    wait_accepting(&b, "one");
    fails(
        &b,
        &["accept", "two", "--peer", "cap-a"],
        1,
        "accepts are waiting already",
    );

    // The far side dies mid-stream: the stream ends non-zero, within the
    // bounds in which the link notices a dead peer.
    let (mut feed, conn) = held_open(&a, &["connect", "cap-b/one"]);
    let chunk = random_bytes(1 << 20, 7);
    feed.write_all(&chunk).unwrap();
    b.wait_status("the stream moving", |s| {
        s.streams.iter().any(|st| st.bytes_in > 0)
    });
    let killed = Instant::now();
    b.proc().signal(libc::SIGKILL);
    let feeder = std::thread::spawn(move || while feed.write_all(&chunk).is_ok() {});
    let out = conn.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("lost"), "{err}");
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "{:?}",
        killed.elapsed()
    );
    feeder.join().unwrap();
    // Its own accept saw its daemon die.
    assert_eq!(acc.join().unwrap().status.code(), Some(4));
    a.wait_idle();
}

#[test]
fn services_and_forwards_given_as_p2pd_options_work_from_the_start() {
    let s = signald();
    let port = service(echo);
    let b = Daemon::start_with(
        &s.url(),
        "opt-b",
        &[
            "--expose",
            &format!("echo:opt-a+someone=tcp:[::ffff:127.0.0.1]:{port}"),
        ],
    );
    let a = Daemon::start_with(&s.url(), "opt-a", &["--forward", "127.0.0.1:0=opt-b/echo"]);
    a.trust_each_other(&b);
    let st = b.status();
    assert_eq!(st.services.len(), 1);
    assert!(st.services[0].configured);
    assert_eq!(st.services[0].peers, ["opt-a", "someone"]);
    let listen: std::net::SocketAddr = a.status().forwards[0].listen.parse().unwrap();
    // The forward pairs on its own (p2pd is idle), and lets the pairing
    // go with its last stream.
    let mut c = TcpStream::connect(listen).unwrap();
    c.write_all(b"through the options").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"through the options");
    a.wait_idle();
    assert_eq!(a.status().forwards[0].connections, 1);
}

/// The link lives as long as its peer, not as long as signald: a stream
/// keeps moving while signald is away for three times the restart bound,
/// a new one opens meanwhile (streams need no signald), and both end
/// cleanly.
#[test]
fn streams_move_and_open_while_signald_is_away_longer_than_every_bound() {
    let s = signald();
    let bound = &["--ice-restart-timeout", "2s"];
    let a = Daemon::start_with(&s.url(), "away-a", bound);
    let b = Daemon::start_with(&s.url(), "away-b", bound);
    a.pair(&b);
    let port = service(echo);
    expose_tcp(&b, "echo", port, "away-a");
    let (mut held, out) = held_open(&a, &["connect", "away-b/echo"]);
    held.write_all(b"before;").unwrap();
    b.wait_status("the stream open", |st| st.streams.len() == 1);
    s.proc().signal(libc::SIGKILL);
    for d in [&a, &b] {
        d.wait_status("signald gone", |st| {
            st.server.state != p2p_proto::control::ServerState::Connected
        });
    }
    let outage = Instant::now();
    let mut sent = b"before;".to_vec();
    let mut i = 0;
    while outage.elapsed() < Duration::from_secs(6) {
        i += 1;
        let piece = format!("during {i};");
        held.write_all(piece.as_bytes()).unwrap();
        sent.extend_from_slice(piece.as_bytes());
        std::thread::sleep(Duration::from_millis(250));
    }
    // A second stream, opened with signald still away.
    let second = a.ctl_stdin(&["connect", "away-b/echo"], b"opened during the outage");
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(second.stdout, b"opened during the outage");
    drop(held);
    let out = out.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same(&out.stdout, &sent, "the stream across the outage");
    assert_eq!(a.status().link, p2p_proto::control::LinkState::Open);
}
