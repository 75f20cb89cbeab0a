//! Pairing, unpairing and what `status` says about it.

use p2p_proto::control::{LinkState, ServerState};

use p2p_testkit::{Daemon, Signald, Tail};

#[test]
fn pair_exchange_both_ways_and_send_works_as_soon_as_pair_returns() {
    let s = Signald::start();
    let a = Daemon::start(&s.url(), "alice");
    let b = Daemon::start(&s.url(), "bob");
    let tail_b = Tail::start(&b, &[]);
    let tail_a = Tail::start(&a, &[]);

    a.trust_each_other(&b);
    let out = a.ok(&["pair", "bob"]);
    assert!(out.starts_with("paired with bob: channel open"), "{out}");
    // No wait between pair and send: pair returns only once send works.
    a.ok(&["send", "hello", "bob"]);
    assert_eq!(tail_b.next_str(), "hello bob");

    b.wait_open_with("alice");
    b.ok(&["send", "hi alice"]);
    assert_eq!(tail_a.next_str(), "hi alice");
}

#[test]
fn status_json_has_the_documented_fields() {
    let s = Signald::start();
    let a = Daemon::start(&s.url(), "alice");
    let b = Daemon::start(&s.url(), "bob");
    let idle = a.status();
    assert_eq!(idle.id.as_deref(), Some("alice"));
    assert_eq!(idle.server.state, ServerState::Connected);
    assert_eq!(idle.server.ping_interval_ms, Some(100));
    assert_eq!(idle.server.ping_timeout_ms, Some(2000));
    assert!(idle.server.ice_servers.is_empty());
    assert_eq!(idle.link, LinkState::Idle);
    assert!(idle.peer.is_none());

    a.pair(&b);
    a.ok(&["send", "x"]);
    // The stats may name the selected pair a moment after the open.
    let st = a.wait_status("reporting the selected path", |s| {
        s.peer.as_ref().is_some_and(|p| p.path.is_some())
    });
    assert_eq!(st.link, LinkState::Open);
    let peer = st.peer.expect("peer");
    assert_eq!(peer.id, "bob");
    assert_eq!(peer.initiator, Some(true));
    let path = peer.path.expect("selected path");
    assert_eq!(path.local_type, "host");
    assert!(path.local_address.starts_with("127.0.0.1:"), "{path:?}");
    assert!(path.remote_address.starts_with("127.0.0.1:"), "{path:?}");
    assert_eq!(st.ice_connection_state.as_deref(), Some("connected"));
    assert_eq!(st.peer_connection_state.as_deref(), Some("connected"));
    assert_eq!(st.data_channel_state.as_deref(), Some("open"));
    assert_eq!(st.counters.messages_sent, 1);
    assert_eq!(st.counters.bytes_sent, 1);
    assert_eq!(st.counters.pairings, 1);

    // The raw JSON carries every documented key, also when null.
    let raw: serde_json::Value = serde_json::from_str(&b.ok(&["status", "--json"])).unwrap();
    for key in [
        "control_version",
        "version",
        "id",
        "pid",
        "uptime_ms",
        "server",
        "peer",
        "link",
        "ice_connection_state",
        "peer_connection_state",
        "data_channel_state",
        "counters",
    ] {
        assert!(raw.get(key).is_some(), "status --json lacks {key}: {raw}");
    }
    let human = b.ok(&["status"]);
    assert!(human.contains("peer:     alice (channel open"), "{human}");
}

#[test]
fn unpair_then_pair_again_either_way() {
    let s = Signald::start();
    let a = Daemon::start(&s.url(), "alice");
    let b = Daemon::start(&s.url(), "bob");
    let events_b = Tail::start(&b, &["--json"]);
    a.pair(&b);
    assert_eq!(events_b.wait_event("channel_open")["peer_id"], "alice");

    a.ok(&["unpair"]);
    let ev = events_b.wait_event("peer_disconnected");
    assert_eq!(ev["peer_id"], "alice");
    assert_eq!(ev["reason"], "unpaired");
    a.wait_idle();
    b.wait_idle();
    let st = a.status();
    assert_eq!(st.counters.resets, 1);

    // Unpairing again is a note, not an error.
    let out = a.ctl(&["unpair"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not paired"));

    b.pair(&a);
    b.ok(&["send", "again"]);
}

#[test]
fn pair_no_wait_returns_before_the_channel_is_open() {
    let s = Signald::start();
    let a = Daemon::start(&s.url(), "alice");
    let _b = Daemon::start(&s.url(), "bob");
    a.trust_each_other(&_b);
    let out = a.ok(&["pair", "--no-wait", "bob"]);
    assert!(out.starts_with("paired with bob"), "{out}");
    a.wait_open_with("bob");
}

#[test]
fn pair_refusals_have_their_reasons_and_exit_1() {
    let s = Signald::start();
    let a = Daemon::start(&s.url(), "alice");
    let b = Daemon::start(&s.url(), "bob");
    let c = Daemon::start(&s.url(), "carol");
    let picky = Daemon::start_with(&s.url(), "picky", &["--allow-peer", "bob"]);

    for (x, y) in [(&a, &b), (&a, &c), (&a, &picky), (&b, &c), (&b, &picky)] {
        x.trust_each_other(y);
    }
    // Under --trust known an unknown peer is refused before signald hears
    // of it; a pinned ID nobody holds is signald's unknown_peer.
    a.refused(&["pair", "stranger"], "not a trusted peer");
    let some_key = b.status().fingerprint.to_string();
    a.ok(&["trust", "nobody", &some_key]);
    a.refused(&["pair", "nobody"], "no client with ID nobody");
    a.refused(&["pair", "alice"], "ourselves");
    a.refused(&["pair", "picky"], "refused");
    a.wait_idle();

    b.pair(&c);
    a.refused(&["pair", "bob"], "busy");
    b.refused(&["pair", "alice"], "already paired with carol");
    a.wait_idle();

    // The allow-list admits bob once he is free.
    b.ok(&["unpair"]);
    b.pair(&picky);
}

#[test]
fn a_request_given_up_is_not_revived_by_signalds_late_answer() {
    // signald is held (SIGSTOP) so that its answer to `pair` arrives only
    // after p2pd has given the request up: the answer must change nothing.
    let s = Signald::start_pinging("1s", "5s", &[]);
    let a = Daemon::start(&s.url(), "alice");
    let b = Daemon::start(&s.url(), "bob");
    let c = Daemon::start(&s.url(), "carol");
    let events_b = Tail::start(&b, &["--json"]);
    a.trust_each_other(&b);
    s.proc().signal(libc::SIGSTOP);
    let pending = a
        .ctl_cmd(&["pair", "--no-wait", "bob"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    a.wait_status("requesting", |st| st.link == LinkState::Requested);
    a.ok(&["unpair"]);
    s.proc().signal(libc::SIGCONT);
    // signald pairs and then unpairs (our unpair follows the request).
    assert_eq!(events_b.wait_event("paired")["peer_id"], "alice");
    assert_eq!(
        events_b.wait_event("peer_disconnected")["reason"],
        "unpaired"
    );
    let st = a.status();
    assert_eq!(st.link, LinkState::Idle, "{st:#?}");
    // The request given up failed as such; p2pd is free to pair with
    // someone else at once.
    let out = pending.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unpaired locally"));
    a.pair(&c);
}

#[test]
fn a_pairing_refused_by_the_allow_list_is_an_event() {
    let s = Signald::start();
    let a = Daemon::start(&s.url(), "alice");
    let picky = Daemon::start_with(&s.url(), "picky", &["--allow-peer", "bob"]);
    let events = Tail::start(&picky, &["--json"]);
    a.trust_each_other(&picky);
    a.refused(&["pair", "picky"], "refused");
    let ev = events.wait_event("peer_disconnected");
    assert_eq!(ev["peer_id"], "alice");
    assert_eq!(ev["reason"], "refused_by_allow_list");
}

/// An idle link hears nothing but ICE's checks. With a disconnected
/// timeout shorter than the checks' interval (the crate's 2 s), every gap
/// between two checks looked like a dead path and restarted ICE; p2pd now
/// checks at a third of the timeout.
#[test]
fn an_idle_link_with_a_short_disconnected_timeout_stays_quiet() {
    let s = Signald::start();
    let short = ["--ice-disconnected-timeout", "1s"];
    let a = Daemon::start_with(&s.url(), "alice", &short);
    let b = Daemon::start_with(&s.url(), "bob", &short);
    a.pair(&b);
    // Idle for several timeouts: long enough for the old behaviour to
    // restart at least once (it did within ~1.2 s).
    std::thread::sleep(std::time::Duration::from_secs(4));
    for d in [&a, &b] {
        let st = d.status();
        assert_eq!(st.counters.ice_restarts, 0, "{st:#?}");
        assert_eq!(st.link, LinkState::Open);
    }
    a.ok(&["send", "still here"]);
}
