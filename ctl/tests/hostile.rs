//! Whatever the peer or signald sends, p2pd's memory, CPU and log stay
//! bounded, and `status` keeps answering.

use serde_json::json;

use p2p_testkit::raw::RawClient;
use p2p_testkit::{Daemon, Signald, Tail, paired};

/// Resident memory of a process, in bytes.
fn rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

#[test]
fn a_candidate_flood_is_capped_and_logged_a_few_times() {
    // signald's own limits out of the way (its rate limit and the queue
    // bound that would drop bob as a slow reader): a signald on the
    // attacker's side, say. What is tested is p2pd's defence.
    let s = Signald::start_pinging(
        "1s",
        "5s",
        &[
            "--rate-limit",
            "100000",
            "--rate-burst",
            "100000",
            "--rate-limit-bytes",
            "4000000000",
            "--rate-burst-bytes",
            "4000000000",
            "--max-queue",
            "100000",
        ],
    );
    let bob = Daemon::start_with(&s.url(), "bob", &["--trust", "any"]);
    let mut mallory = RawClient::connect(&s.url(), "mallory");
    mallory.send(json!({"type": "pair", "peer_id": "bob"}));
    assert_eq!(mallory.wait("paired")["peer_id"], "bob");
    let before = rss(bob.proc().pid());
    for i in 0..20_000u32 {
        let (a, b) = (i / 256 % 256, i % 256);
        mallory.feed(json!({"type": "candidate", "candidate": {
            "candidate": format!("candidate:{i} 1 udp 2122260223 10.{a}.{b}.1 {} typ host", 1024 + i % 60000),
            "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": null
        }}));
    }
    // One more candidate, huge.
    mallory.feed(json!({"type": "candidate", "candidate": {
        "candidate": format!("candidate:1 1 udp 1 127.0.0.1 9 typ host {}", "x".repeat(30_000)),
        "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": null
    }}));
    // The unpair after them: once bob is idle again, he has handled them all.
    mallory.send(json!({"type": "unpair"}));
    let st = bob.wait_idle();
    assert_eq!(st.server.state, p2p_proto::control::ServerState::Connected);
    let grown = rss(bob.proc().pid()).saturating_sub(before);
    assert!(grown < 16 << 20, "bob grew by {grown} bytes");
    let warned = bob
        .proc()
        .log()
        .matches("ignoring a remote candidate")
        .count();
    assert!(
        (1..=10).contains(&warned),
        "{warned} warnings about candidates"
    );
    // Still a working daemon.
    let carol = Daemon::start(&s.url(), "carol");
    carol.pair(&bob);
}

#[test]
fn garbage_offers_end_the_pairing_and_reach_the_log_escaped() {
    let s = Signald::start();
    let bob = Daemon::start_with(&s.url(), "bob", &["--trust", "any"]);
    let events = Tail::start(&bob, &["--json"]);
    let mut mallory = RawClient::connect(&s.url(), "mallory");
    mallory.send(json!({"type": "pair", "peer_id": "bob"}));
    mallory.wait("paired");
    for _ in 0..200 {
        mallory.feed(
            json!({"type": "offer", "sdp": "v=0\r\na=fingerprint:sha-256 \u{1b}[2J garbage"}),
        );
    }
    mallory.flush();
    // The first one ends the pairing (no usable key); bob unpairs.
    assert_eq!(mallory.wait("peer_disconnected")["reason"], "unpaired");
    // Under --trust any an unreadable key is a plain failure.
    assert_eq!(events.wait_event("peer_disconnected")["reason"], "failed");
    bob.wait_idle();
    let log = bob.proc().log();
    assert!(
        log.contains("\\u{1b}[2J"),
        "the garbage is logged, escaped:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "no raw escape byte reaches the log"
    );
}

#[test]
fn a_stopped_follower_does_not_make_the_daemon_hold_the_traffic() {
    let (_s, alice, bob) = paired("alice", "bob");
    let stopped = Tail::start(&bob, &[]);
    let live = Tail::start(&bob, &[]);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(stopped.pid(), libc::SIGSTOP) };
    let before = rss(bob.proc().pid());
    // 3,000 messages of 60 KB: 180 MB through a follower that reads nothing.
    let line = "y".repeat(60_000);
    let input: String = (0..3_000).map(|i| format!("{i} {line}\n")).collect();
    let reader = std::thread::spawn(move || {
        for i in 0..3_000 {
            let got = live.next_str();
            assert!(
                got.starts_with(&format!("{i} ")),
                "message {i} out of order"
            );
        }
    });
    let out = alice.ctl_stdin(&["send"], input.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    reader
        .join()
        .expect("the live follower got all 3,000, in order");
    let grown = rss(bob.proc().pid()).saturating_sub(before);
    // A follower's queue is bounded at 1 MiB, the history at 4 MiB.
    assert!(grown < 48 << 20, "bob grew by {} MiB", grown >> 20);
    let st = bob.status();
    assert!(
        st.counters.missed_by_subscribers > 2_000,
        "{:?}",
        st.counters
    );
    // The live follower has gone (its reader ended); a follower that is
    // gone is forgotten at once.
    assert_eq!(st.counters.subscribers, 1);
    drop(stopped);
    bob.wait_status("forgetting the killed follower", |s| {
        s.counters.subscribers == 0
    });
}

#[test]
fn a_daemon_that_is_refused_by_signald_keeps_answering() {
    let s = Signald::start();
    let _holder = RawClient::connect(&s.url(), "taken");
    // Another token (or none) for a held ID: id_taken, retried; status
    // answers all along and says why.
    let d = Daemon::builder(&s.url(), "taken").spawn();
    let st = d.wait_status("refused", |st| {
        st.server
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("id_taken"))
    });
    assert_ne!(st.server.state, p2p_proto::control::ServerState::Connected);
}
