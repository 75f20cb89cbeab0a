//! A link lives exactly as long as its peer: a dead peer is let go as soon
//! as its path stops answering, and a live one is kept whatever signald
//! does. The restart bound is long in these tests (60 s, three times the
//! tests' own waits), so only the data path's check can make them pass.

use std::time::{Duration, Instant};

use p2p_proto::control::{LinkState, ServerState};

use p2p_testkit::{Daemon, Signald, Tail};

const LONG_BOUND: &[&str] = &["--ice-restart-timeout", "60s"];

/// Reads `tail --json` events up to the message `text`; any event that
/// says the link broke comes first is a failure.
fn expect_message(tail: &Tail, text: &str) {
    loop {
        let ev = tail.next_event();
        match ev["event"].as_str() {
            Some("message") => {
                assert_eq!(ev["text"], text);
                return;
            }
            Some("peer_disconnected" | "ice_restarting" | "channel_open" | "paired") => {
                panic!("the link broke before {text:?} arrived: {ev}")
            }
            _ => {}
        }
    }
}

#[test]
fn a_killed_peer_is_let_go_at_once_in_both_roles() {
    let s = Signald::start();
    let a = Daemon::start_with(&s.url(), "alice", LONG_BOUND);
    let c = Daemon::start(&s.url(), "carol");
    let events = Tail::start(&a, &["--json"]);
    // A new daemon each round, under a new ID: signald keeps a killed
    // daemon's ID reserved for its token.
    for (alice_offers, peer) in [(true, "bob"), (false, "dave")] {
        let b = Daemon::start_with(&s.url(), peer, LONG_BOUND);
        if alice_offers {
            a.pair(&b);
        } else {
            b.pair(&a);
        }
        let killed = Instant::now();
        b.proc().signal(libc::SIGKILL);
        let ev = events.wait_event("peer_disconnected");
        assert_eq!(ev["peer_id"], peer);
        assert_eq!(ev["reason"], "peer_gone", "alice offers: {alice_offers}");
        a.wait_idle();
        eprintln!(
            "alice offers {alice_offers}: idle {:?} after the kill",
            killed.elapsed()
        );
        // At once ready for someone else, both ways.
        if alice_offers {
            c.pair(&a);
        } else {
            a.pair(&c);
        }
        c.ok(&["send", "from carol"]);
        assert_eq!(events.wait_event("message")["text"], "from carol");
        a.ok(&["unpair"]);
        assert_eq!(
            events.wait_event("peer_disconnected")["reason"],
            "local_unpair"
        );
        a.wait_idle();
        c.wait_idle();
    }
}

#[test]
fn a_frozen_peer_is_lost_and_a_pairing_with_a_third_replaces_it() {
    // signald notices the frozen process after 2 s; then only the path.
    let s = Signald::start_pinging("1s", "2s", &[]);
    let a = Daemon::start_with(&s.url(), "alice", LONG_BOUND);
    let b = Daemon::start_with(&s.url(), "bob", LONG_BOUND);
    let c = Daemon::start(&s.url(), "carol");
    a.pair(&b);
    a.trust_each_other(&c);
    b.proc().signal(libc::SIGSTOP);
    let st = a.wait_status("lost", |st| {
        st.peer.as_ref().is_some_and(|p| p.reachable == Some(false))
    });
    assert_eq!(st.link, LinkState::Open, "lost, not ended: {st:?}");
    let out = a.ok(&["pair", "carol"]);
    assert!(out.contains("channel open"), "{out}");
    let events = Tail::start(&c, &["--json"]);
    a.ok(&["send", "to carol"]);
    expect_message(&events, "to carol");
    b.proc().signal(libc::SIGCONT);
}

#[test]
fn signald_away_longer_than_every_bound_costs_an_open_link_nothing() {
    let mut s = Signald::start();
    let port = s.port();
    // The outage lasts three times the restart bound.
    let bound = &["--ice-restart-timeout", "2s"];
    let a = Daemon::start_with(&s.url(), "alice", bound);
    let b = Daemon::start_with(&s.url(), "bob", bound);
    a.pair(&b);
    let (ta, tb) = (Tail::start(&a, &["--json"]), Tail::start(&b, &["--json"]));
    s.proc().signal(libc::SIGTERM);
    assert!(s.proc_mut().wait_exit().success());
    for d in [&a, &b] {
        d.wait_status("signald down", |st| {
            st.server.state != ServerState::Connected
        });
    }
    // Three times the restart bound, with messages both ways all along.
    let outage = Instant::now();
    let mut i = 0;
    while outage.elapsed() < Duration::from_secs(6) {
        i += 1;
        a.ok(&["send", &format!("a{i}")]);
        expect_message(&tb, &format!("a{i}"));
        b.ok(&["send", &format!("b{i}")]);
        expect_message(&ta, &format!("b{i}"));
        std::thread::sleep(Duration::from_millis(250));
    }
    for d in [&a, &b] {
        let st = d.status();
        assert_eq!(st.link, LinkState::Open, "{st:?}");
        let peer = st.peer.expect("a peer");
        assert!(!peer.paired_at_signald);
        assert_eq!(peer.reachable, Some(true), "the peer answers");
    }
    // An unpair with signald still down reaches the peer in band.
    a.ok(&["unpair"]);
    let ev = tb.wait_event("peer_disconnected");
    assert_eq!(ev["reason"], "channel_closed", "{ev}");
    a.wait_idle();
    b.wait_idle();
    // signald back: both register again and pair again.
    let _s2 = Signald::start_on(port);
    for d in [&a, &b] {
        d.wait_status("registered again", |st| {
            st.server.state == ServerState::Connected
        });
    }
    a.pair(&b);
    let ta = Tail::start(&a, &["--json"]);
    b.ok(&["send", "after the outage"]);
    expect_message(&ta, "after the outage");
}

/// One metric of the signald at `port` (plain HTTP on loopback).
fn signald_metric(port: u16, name: &str) -> f64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("signald");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: signald\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {body}"))
        .trim()
        .parse()
        .expect("a number")
}

/// Issue 19: a stopping daemon (SIGTERM) never registers at signald
/// again, even when signald comes back while it is still draining.
#[test]
fn a_stopping_daemon_never_registers_at_signald_again() {
    let mut s = Signald::start();
    let port = s.port();
    let mut a = Daemon::start_with(&s.url(), "alice", &["--drain-timeout", "4s"]);
    let b = Daemon::start(&s.url(), "bob");
    a.pair(&b);
    // bob freezes: what alice sends now is never acknowledged, so her
    // drain takes its whole timeout.
    b.proc().stop();
    a.ok(&["send", "never acknowledged"]);
    s.proc().signal(libc::SIGTERM);
    assert!(s.proc_mut().wait_exit().success());
    a.wait_status("signald down", |st| {
        st.server.state != ServerState::Connected
    });
    a.proc().signal(libc::SIGTERM);
    // Back while alice drains; her reconnect cap (the tests' 300 ms)
    // would have had her registered many times over.
    let s2 = Signald::start_on(port);
    let exited = a.proc_mut().wait_exit();
    assert!(exited.success(), "{exited}");
    assert_eq!(
        signald_metric(s2.port(), "signald_connections_total"),
        0.0,
        "nobody registered: bob is frozen, alice stopping"
    );
    b.proc().signal(libc::SIGCONT);
}
