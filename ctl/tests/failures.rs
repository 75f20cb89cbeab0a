//! Losing the peer, the server, or the daemon itself.

use p2p_proto::control::{LinkState, ServerState};

use p2p_testkit::{Daemon, Signald, Tail, paired};

#[test]
fn send_while_unpaired_exits_1_with_one_line() {
    let s = Signald::start();
    let a = Daemon::start(&s.url(), "alice");
    let out = a.ctl(&["send", "hello?"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("p2pctl: no open data channel"), "{err}");
    let out = a.ctl_stdin(&["send"], b"one\ntwo\n");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 1 not sent"), "{err}");
    assert!(err.contains("(0 of "), "{err}");
}

#[test]
fn no_daemon_exits_3_and_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(p2p_testkit::bin("p2pctl"))
        .arg("--socket")
        .arg(dir.path().join("none.sock"))
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("p2pctl: no p2pd answering on"), "{err}");
    let out = std::process::Command::new(p2p_testkit::bin("p2pctl"))
        .args(["pair"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn sigkill_of_the_peer_resets_the_survivor_which_pairs_with_a_third() {
    let s = Signald::start();
    // (liveness.rs has the same with a restart bound no test could wait out.)
    let a = Daemon::start(&s.url(), "alice");
    let mut b = Daemon::start(&s.url(), "bob");
    let c = Daemon::start(&s.url(), "carol");
    let events = Tail::start(&a, &["--json"]);
    a.pair(&b);
    b.proc().signal(libc::SIGKILL);
    b.proc_mut().wait_exit();
    let ev = events.wait_event("peer_disconnected");
    assert_eq!(ev["peer_id"], "bob");
    assert_eq!(ev["reason"], "peer_gone");
    a.wait_idle();
    c.pair(&a);
    c.ok(&["send", "from carol"]);
    assert_eq!(events.wait_event("message")["text"], "from carol");
}

#[test]
fn sigstop_of_the_peer_times_it_out_at_the_server_and_resets_the_survivor() {
    let (_s, a, b) = paired("alice", "bob");
    let events = Tail::start(&a, &["--json"]);
    b.proc().signal(libc::SIGSTOP);
    let ev = events.wait_event("peer_disconnected");
    assert_eq!(ev["peer_id"], "bob");
    assert_eq!(ev["reason"], "timeout");
    let st = a.wait_idle();
    assert_eq!(st.server.state, ServerState::Connected);
    b.proc().signal(libc::SIGCONT);
    // Bob notices he was dropped, reconnects and is ready again.
    b.wait_status("back and idle", |s| {
        s.server.state == ServerState::Connected && s.link == LinkState::Idle
    });
    a.pair(&b);
}

#[test]
fn signald_restart_costs_an_open_link_nothing() {
    let mut s = Signald::start();
    let port = s.port();
    let a = Daemon::start(&s.url(), "alice");
    let b = Daemon::start(&s.url(), "bob");
    a.pair(&b);
    let events = Tail::start(&b, &["--json"]);
    s.proc().signal(libc::SIGTERM);
    assert!(s.proc_mut().wait_exit().success());
    a.wait_status("signald down", |st| {
        st.server.state != ServerState::Connected
    });
    // The channel does not need signald.
    a.ok(&["send", "while signald is down"]);
    assert_eq!(
        events.wait_event("message")["text"],
        "while signald is down"
    );
    assert_eq!(a.status().link, LinkState::Open);

    let s2 = Signald::start_on(port);
    for d in [&a, &b] {
        let st = d.wait_status("reconnected", |st| {
            st.server.state == ServerState::Connected && st.server.reconnects >= 1
        });
        assert_eq!(st.link, LinkState::Open);
    }
    // The pairing is made again at signald: a third peer finds bob busy.
    for d in [&a, &b] {
        d.wait_status("paired again at signald", |st| {
            st.peer.as_ref().is_some_and(|p| p.paired_at_signald)
        });
    }
    let c = Daemon::start(&s2.url(), "carol");
    c.trust(&b);
    c.refused(&["pair", "bob"], "busy");
    a.ok(&["send", "after restart"]);
    assert_eq!(events.wait_event("message")["text"], "after restart");
    let st = a.status();
    assert_eq!((st.counters.resets, st.link), (0, LinkState::Open));
}

#[test]
fn fifty_pair_unpair_cycles_leak_no_fds_or_threads() {
    let s = Signald::start();
    let a = Daemon::start(&s.url(), "alice");
    let b = Daemon::start(&s.url(), "bob");
    let cycle = |i: usize| {
        let (x, y) = if i.is_multiple_of(2) {
            (&a, &b)
        } else {
            (&b, &a)
        };
        x.pair(y);
        x.ok(&["send", "ping"]);
        x.ok(&["unpair"]);
        x.wait_idle();
        y.wait_idle();
    };
    for i in 0..5 {
        cycle(i);
    }
    let before = (a.fds_and_threads(), b.fds_and_threads());
    for i in 5..55 {
        cycle(i);
    }
    let after = (a.fds_and_threads(), b.fds_and_threads());
    for ((fd0, th0), (fd1, th1)) in [(before.0, after.0), (before.1, after.1)] {
        // A leak of one fd or task thread per cycle would show as +50.
        assert!(fd1 <= fd0 + 3, "fds grew from {fd0} to {fd1}");
        assert!(th1 <= th0 + 4, "threads grew from {th0} to {th1}");
    }
    assert_eq!(a.status().counters.resets, 55);
}

#[test]
fn a_restarted_daemon_reclaims_its_id_with_the_kept_token() {
    let (s, a, b) = paired("alice", "bob");
    let events = Tail::start(&b, &["--json"]);
    // The old alice hangs (its connection still open at signald); a new
    // alice with the same state directory, hence the same token, replaces
    // it at once instead of getting id_taken.
    a.proc().signal(libc::SIGSTOP);
    let token = std::fs::read_to_string(a.state_dir().join("alice.token")).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir2.path().join("state/p2pd")).unwrap();
    std::fs::write(dir2.path().join("state/p2pd/alice.token"), &token).unwrap();
    // Ours alone, or p2pd refuses them.
    use std::os::unix::fs::PermissionsExt;
    for (p, mode) in [
        ("state", 0o700),
        ("state/p2pd", 0o700),
        ("state/p2pd/alice.token", 0o600),
    ] {
        std::fs::set_permissions(dir2.path().join(p), std::fs::Permissions::from_mode(mode))
            .unwrap();
    }
    let a2 = Daemon::builder(&s.url(), "alice").dir(dir2).spawn();
    a2.wait_status("registered as alice", |st| {
        st.server.state == ServerState::Connected && st.id.as_deref() == Some("alice")
    });
    let ev = events.wait_event("peer_disconnected");
    assert_eq!(ev["peer_id"], "alice");
    assert_eq!(ev["reason"], "replaced");
    b.wait_idle();
    a2.pair(&b);
    a.proc().signal(libc::SIGCONT);
}

#[test]
fn a_pairing_rate_limited_by_signald_fails_with_that_reason() {
    // Burst 3: `pair`, the offer and a candidate fit; the next frame of
    // the pairing is dropped by signald.
    let s = Signald::start_pinging("1s", "3s", &["--rate-limit", "1", "--rate-burst", "3"]);
    let a = Daemon::start(&s.url(), "alice");
    let b = Daemon::start(&s.url(), "bob");
    a.trust_each_other(&b);
    let out = a.ctl(&["pair", "bob"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("rate limited"), "{err}");
    a.wait_idle();
    b.wait_idle();
}
