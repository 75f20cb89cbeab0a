//! Two real p2pd daemons, each talking to a different cluster node, pair
//! through the cluster (their offers, answers and candidates relayed
//! between nodes through Redis) and pass 100,000 lines in order over the
//! data channel they opened.

use p2p_testkit::{Daemon, Tail, transfer};

use crate::util::cluster::Node;
use crate::util::redis::Redis;

#[test]
fn two_p2pd_on_different_nodes_pair_and_pass_100000_lines() {
    let Some(redis) = Redis::start("two_p2pd_on_different_nodes") else {
        return;
    };
    // p2pd answers pings as the contract asks; these are its test timings.
    let ping = ["--ping-interval", "100ms", "--ping-timeout", "1s"];
    let n1 = Node::start(&redis, "n1", &ping);
    let n2 = Node::start(&redis, "n2", &ping);
    let alice = Daemon::start(&n1.url(), "alice");
    let bob = Daemon::start(&n2.url(), "bob");
    alice.pair(&bob);
    let tail = Tail::start(&bob, &[]);
    transfer(&alice, &tail, 100_000, "line");
    // The signaling went between the nodes, not around them.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = rt.block_on(n1.metric("signald_cluster_relayed_out_total"));
    let back = rt.block_on(n2.metric("signald_cluster_relayed_out_total"));
    assert!(out > 0.0 && back > 0.0, "relayed {out} / {back}");
}

/// alice's node dies under her: the cluster reaps it (after 1 s here) and
/// tells bob that alice `left`. She did not: her channel still answers, so
/// bob keeps the link, past three times its restart bound, and messages
/// keep flowing both ways while alice cannot reach signald at all.
#[test]
fn a_node_killed_under_one_side_costs_the_open_link_nothing() {
    let Some(redis) = Redis::start("a_node_killed_under_one_side") else {
        return;
    };
    let ping = ["--ping-interval", "100ms", "--ping-timeout", "1s"];
    let n1 = Node::start(&redis, "n1", &ping);
    let n2 = Node::start(&redis, "n2", &ping);
    let bound = ["--ice-restart-timeout", "2s"];
    let alice = Daemon::start_with(&n1.url(), "alice", &bound);
    let bob = Daemon::start_with(&n2.url(), "bob", &bound);
    alice.pair(&bob);
    let (ta, tb) = (Tail::start(&alice, &[]), Tail::start(&bob, &[]));
    n1.signal(libc::SIGKILL);
    bob.wait_status("told alice left", |st| {
        st.peer.as_ref().is_some_and(|p| !p.paired_at_signald)
    });
    let since = std::time::Instant::now();
    let mut i = 0;
    while since.elapsed() < std::time::Duration::from_secs(6) {
        i += 1;
        alice.ok(&["send", &format!("a{i}")]);
        assert_eq!(tb.next_str(), format!("a{i}"));
        bob.ok(&["send", &format!("b{i}")]);
        assert_eq!(ta.next_str(), format!("b{i}"));
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    for d in [&alice, &bob] {
        let st = d.status();
        assert_eq!(st.link, p2p_proto::control::LinkState::Open, "{st:?}");
        assert_eq!(st.counters.resets, 0);
    }
}
