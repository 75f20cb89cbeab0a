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
