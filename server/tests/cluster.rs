//! The contract across nodes: three signald nodes in this process on one
//! real redis-server, clients spread over them in turn (a round-robin load
//! balancer). First the single-server tests that do not depend on one
//! process, run unchanged against the cluster; then what only a cluster
//! can get wrong: races between nodes for the same ID or the same peer,
//! replacement and reservations across nodes, relays both ways.

use std::sync::Arc;

use futures_util::SinkExt;
use serde_json::{Value, json};
use signald::Config;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{self, Client, Server, start_cluster, start_cluster_of};
use crate::{errors, flow, liveness, memory, races};

/// Runs a single-server test's body against a cluster.
macro_rules! on_cluster {
    ($($test:ident => $module:ident :: $body:ident, $cfg:ident;)*) => {$(
        #[tokio::test]
        async fn $test() {
            if let Some(srv) = start_cluster(stringify!($test), $module::$cfg()).await {
                $module::$body(srv).await;
            }
        }
    )*};
}

on_cluster! {
    flow_random_ids_are_url_safe_and_distinct => flow::random_ids_are_url_safe_and_distinct_on, random_ids_are_url_safe_and_distinct_cfg;
    flow_pair_relay_unpair => flow::pair_relay_unpair_on, pair_relay_unpair_cfg;
    flow_closing_tells_the_peer_left => flow::closing_tells_the_peer_left_on, closing_tells_the_peer_left_cfg;
    flow_relay_goes_to_the_current_peer_only => flow::relay_goes_to_the_current_peer_only_on, relay_goes_to_the_current_peer_only_cfg;
    flow_token_replacement_mid_pairing => flow::token_replacement_mid_pairing_on, token_replacement_mid_pairing_cfg;
    errors_bad_input_corpus_is_bad_message_and_harmless => errors::bad_input_corpus_is_bad_message_and_harmless_on, bad_input_corpus_is_bad_message_and_harmless_cfg;
    errors_unknown_types_including_server_only_ones => errors::unknown_types_including_server_only_ones_on, unknown_types_including_server_only_ones_cfg;
    errors_pair_refusals_in_contract_order => errors::pair_refusals_in_contract_order_on, pair_refusals_in_contract_order_cfg;
    errors_not_paired_after_field_validation => errors::not_paired_after_field_validation_on, not_paired_after_field_validation_cfg;
    errors_bad_ids_close_4003 => errors::bad_ids_close_4003_on, bad_ids_close_4003_cfg;
    errors_id_taken_closes_4001 => errors::id_taken_closes_4001_on, id_taken_closes_4001_cfg;
    errors_flood_gets_rate_limited_then_1008 => errors::flood_gets_rate_limited_then_1008_on, flood_gets_rate_limited_then_1008_cfg;
    errors_invalid_utf8_text_is_bad_message_then_1007 => errors::invalid_utf8_text_is_bad_message_then_1007_on, invalid_utf8_text_is_bad_message_then_1007_cfg;
    liveness_silent_client_is_closed_4000_and_its_peer_told_timeout => liveness::silent_client_is_closed_4000_and_its_peer_told_timeout_on, silent_client_is_closed_4000_and_its_peer_told_timeout_cfg;
    liveness_any_frame_counts_as_liveness => liveness::any_frame_counts_as_liveness_on, any_frame_counts_as_liveness_cfg;
    liveness_a_client_answering_pings_outlives_many_timeouts => liveness::a_client_answering_pings_outlives_many_timeouts_on, a_client_answering_pings_outlives_many_timeouts_cfg;
    races_both_sides_unpair_at_the_same_instant => races::both_sides_unpair_at_the_same_instant_on, both_sides_unpair_at_the_same_instant_cfg;
    races_one_leaves_while_the_other_unpairs => races::one_leaves_while_the_other_unpairs_on, one_leaves_while_the_other_unpairs_cfg;
    races_both_leave_at_once_and_the_ids_are_freed => races::both_leave_at_once_and_the_ids_are_freed_on, both_leave_at_once_and_the_ids_are_freed_cfg;
    races_a_stuck_reader_is_dropped_and_nobody_else_stalls => races::a_stuck_reader_is_dropped_and_nobody_else_stalls_on, a_stuck_reader_is_dropped_and_nobody_else_stalls_cfg;
    errors_too_large_closes_1009_exact_limit_is_fine => errors::too_large_closes_1009_exact_limit_is_fine_on, too_large_closes_1009_exact_limit_is_fine_cfg;
    memory_a_large_message_reaches_a_reader_whole => memory::a_large_message_reaches_a_reader_whole_on, a_large_message_reaches_a_reader_whole_cfg;
    memory_a_burst_is_paid_by_its_sender_not_by_its_peer => memory::a_burst_is_paid_by_its_sender_not_by_its_peer_on, a_burst_is_paid_by_its_sender_not_by_its_peer_cfg;
}

/// Clients from one address by the thousand: the per-address limits would
/// measure themselves.
fn many() -> Config {
    Config {
        max_conns_per_ip: 0,
        max_handshakes_per_ip: 0,
        registration_rate: 0.0,
        ..Config::default()
    }
}

async fn at(srv: &Server, node: usize, query: &str) -> Client {
    util::cluster::client_at(srv.addrs[node % srv.addrs.len()], query).await
}

async fn relayed_out(srv: &Server, node: usize) -> f64 {
    util::metric_at(srv.addrs[node], "signald_cluster_relayed_out_total").await
}

#[tokio::test]
async fn cross_node_pair_and_relay_and_same_node_without_redis() {
    let Some(srv) = start_cluster("cross_node_pair_and_relay", Config::default()).await else {
        return;
    };
    let mut a = at(&srv, 0, "id=a").await;
    let mut b = at(&srv, 1, "id=b").await;
    let mut d = at(&srv, 0, "id=d").await;
    a.send(json!({"type":"pair","peer_id":"b"})).await;
    assert_eq!(
        a.recv().await,
        json!({"type":"paired","peer_id":"b","initiator":true})
    );
    assert_eq!(
        b.recv().await,
        json!({"type":"paired","peer_id":"a","initiator":false})
    );
    for i in 0..50 {
        a.send(json!({"type":"offer","sdp":format!("o{i}")})).await;
        b.send(json!({"type":"answer","sdp":format!("a{i}")})).await;
    }
    // In order, each once, `from` set by signald.
    for i in 0..50 {
        assert_eq!(
            b.recv().await,
            json!({"type":"offer","sdp":format!("o{i}"),"from":"a"})
        );
        assert_eq!(
            a.recv().await,
            json!({"type":"answer","sdp":format!("a{i}"),"from":"b"})
        );
    }
    assert_eq!(relayed_out(&srv, 0).await, 50.0);
    assert_eq!(relayed_out(&srv, 1).await, 50.0);
    a.send(json!({"type":"unpair"})).await;
    assert_eq!(
        b.recv().await,
        json!({"type":"peer_disconnected","peer_id":"a","reason":"unpaired"})
    );
    // Two clients of one node: relayed locally, Redis not involved.
    a.send(json!({"type":"pair","peer_id":"d"})).await;
    assert_eq!(a.recv().await["type"], "paired");
    assert_eq!(d.recv().await["type"], "paired");
    for i in 0..20 {
        d.send(json!({"type":"candidate","candidate":null})).await;
        assert_eq!(
            a.recv().await,
            json!({"type":"candidate","candidate":null,"from":"d"})
        );
        a.send(json!({"type":"offer","sdp":format!("l{i}")})).await;
        assert_eq!(d.recv().await["sdp"], format!("l{i}"));
    }
    assert_eq!(
        relayed_out(&srv, 0).await,
        50.0,
        "same-node frames went through Redis"
    );
    b.probe_unpaired().await;
    assert_eq!(srv.metric("signald_frames_relayed_total").await, 140.0);
    // The cluster's health and figures.
    let (status, body) = util::http_get(srv.addrs[2], "/healthz").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );
    util::eventually("the figures of three nodes", || async {
        util::metric_at(srv.addrs[2], "signald_cluster_nodes").await == 3.0
            && util::metric_at(srv.addrs[2], "signald_cluster_clients").await == 3.0
            && util::metric_at(srv.addrs[2], "signald_cluster_pairings").await == 1.0
    })
    .await;
    assert_eq!(util::metric_at(srv.addrs[0], "signald_pairings").await, 1.0);
    assert_eq!(util::metric_at(srv.addrs[1], "signald_pairings").await, 0.0);
    assert_eq!(
        util::metric_at(srv.addrs[0], "signald_cluster_live").await,
        1.0
    );
}

/// Three clients on three nodes pair in a ring at the same instant
/// (x→y, y→z, z→x), a thousand times: each time exactly one pairing forms,
/// symmetric, and the third client is refused; when it ends, its other
/// side is told exactly once.
#[tokio::test]
async fn a_thousand_cross_node_pairing_races() {
    let Some(srv) = start_cluster("a_thousand_cross_node_pairing_races", many()).await else {
        return;
    };
    let srv = Arc::new(srv);
    let slots = Arc::new(tokio::sync::Semaphore::new(24));
    let mut tasks = Vec::new();
    for r in 0..1000usize {
        let (srv, slots) = (srv.clone(), slots.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.unwrap();
            let ids = [format!("r{r}x"), format!("r{r}y"), format!("r{r}z")];
            let mut c = Vec::new();
            for (k, id) in ids.iter().enumerate() {
                c.push(at(&srv, r + k, &format!("id={id}")).await);
            }
            let pair = |to: &str| Message::text(json!({"type":"pair","peer_id":to}).to_string());
            let [c0, c1, c2] = &mut c[..] else {
                unreachable!()
            };
            let (s0, s1, s2) = tokio::join!(
                c0.ws.send(pair(&ids[1])),
                c1.ws.send(pair(&ids[2])),
                c2.ws.send(pair(&ids[0]))
            );
            s0.unwrap();
            s1.unwrap();
            s2.unwrap();
            let mut seen: Vec<Vec<Value>> = Vec::new();
            for client in c.iter_mut() {
                seen.push(races::frames_until_probe(client).await);
            }
            let paired: Vec<usize> = (0..3)
                .filter(|&k| seen[k].iter().any(|v| v["type"] == "paired"))
                .collect();
            assert_eq!(paired.len(), 2, "round {r}: {seen:?}");
            let (i, j) = (paired[0], paired[1]);
            let loser = 3 - i - j;
            // The pair is symmetric; the initiator is whoever asked.
            let (init, resp) = if (i + 1) % 3 == j { (i, j) } else { (j, i) };
            assert_eq!(
                seen[init],
                vec![json!({"type":"paired","peer_id":ids[resp],"initiator":true})],
                "round {r}"
            );
            assert_eq!(seen[resp].len(), 2, "round {r}: {seen:?}");
            assert_eq!(
                seen[resp][0],
                json!({"type":"paired","peer_id":ids[init],"initiator":false})
            );
            assert_eq!(
                seen[resp][1]["code"], "already_paired",
                "round {r}: {seen:?}"
            );
            assert_eq!(seen[loser].len(), 1, "round {r}: {seen:?}");
            assert_eq!(seen[loser][0]["code"], "peer_busy", "round {r}: {seen:?}");
            // The ending: one notice to the other side, nothing to anyone else.
            // (Another node's notice comes when it comes: awaited, then a
            // probe shows nothing followed it.)
            c[init].send(json!({"type":"unpair"})).await;
            assert_eq!(
                c[resp].recv().await,
                json!({"type":"peer_disconnected","peer_id":ids[init],"reason":"unpaired"})
            );
            assert!(races::frames_until_probe(&mut c[resp]).await.is_empty());
            assert!(races::frames_until_probe(&mut c[init]).await.is_empty());
            assert!(races::frames_until_probe(&mut c[loser]).await.is_empty());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Every client has left: the cluster's counts are back at zero.
    util::eventually("no client and no pairing left", || async {
        util::metric_at(srv.addrs[0], "signald_cluster_pairings").await == 0.0
            && util::metric_at(srv.addrs[0], "signald_cluster_clients").await == 0.0
    })
    .await;
}

/// One ID asked for on two nodes at the same instant: without a token (or
/// with different ones) exactly one gets it; with the same token the later
/// claim replaces the earlier (4002), never two holders.
#[tokio::test]
async fn the_same_id_claimed_on_two_nodes() {
    let Some(srv) = start_cluster("the_same_id_claimed_on_two_nodes", many()).await else {
        return;
    };
    let (n1, n2) = (srv.addrs[0], srv.addrs[1]);
    for r in 0..200 {
        let (q1, q2) = match r % 2 {
            0 => (format!("id=dup{r}"), format!("id=dup{r}")),
            _ => (
                format!("id=dup{r}&token=first-token-{r:06}"),
                format!("id=dup{r}&token=other-token-{r:06}"),
            ),
        };
        let (mut w1, mut w2) = tokio::join!(
            util::cluster::raw_at(n1, &q1),
            util::cluster::raw_at(n2, &q2)
        );
        let (f1, f2) = tokio::join!(
            util::next_frame(&mut w1, true),
            util::next_frame(&mut w2, true)
        );
        let (f1, f2) = (f1.unwrap(), f2.unwrap());
        let kinds = [f1["type"].clone(), f2["type"].clone()];
        assert!(kinds.contains(&json!("welcome")), "round {r}: {f1} {f2}");
        let loser = if f1["type"] == "welcome" {
            (&mut w2, &f2)
        } else {
            (&mut w1, &f1)
        };
        assert_eq!(loser.1["code"], "id_taken", "round {r}: {f1} {f2}");
        util::expect_close(loser.0, 4001).await;
    }
    for r in 0..100 {
        let q = format!("id=same{r}&token=same-token-{r:06}");
        let (mut w1, mut w2) =
            tokio::join!(util::cluster::raw_at(n1, &q), util::cluster::raw_at(n2, &q));
        let (f1, f2) = tokio::join!(
            util::next_frame(&mut w1, true),
            util::next_frame(&mut w2, true)
        );
        assert_eq!(f1.unwrap()["type"], "welcome");
        assert_eq!(f2.unwrap()["type"], "welcome");
        // One of them is replaced: the first to close says 4002, and the
        // other still answers.
        let (closed, mut other) = tokio::select! {
            c = util::next_frame(&mut w1, true) => (c, w2),
            c = util::next_frame(&mut w2, true) => (c, w1),
        };
        assert_eq!(closed.err(), Some(Some(4002)), "round {r}");
        other
            .send(Message::text(json!({"type":"offer","sdp":"x"}).to_string()))
            .await
            .unwrap();
        assert_eq!(
            util::next_frame(&mut other, true).await.unwrap()["code"],
            "not_paired"
        );
    }
}

#[tokio::test]
async fn token_replacement_across_nodes_tells_the_peer_once() {
    let Some(srv) = start_cluster("token_replacement_across_nodes", Config::default()).await else {
        return;
    };
    let token = "cross-node-token-0123";
    let mut old = at(&srv, 0, &format!("id=a&token={token}")).await;
    let mut b = at(&srv, 1, "id=b").await;
    old.send(json!({"type":"pair","peer_id":"b"})).await;
    old.recv().await;
    b.recv().await;
    let mut new = at(&srv, 2, &format!("id=a&token={token}")).await;
    assert_eq!(new.id, "a");
    old.expect_close(4002).await;
    assert_eq!(
        b.recv().await,
        json!({"type":"peer_disconnected","peer_id":"a","reason":"replaced"})
    );
    assert!(races::frames_until_probe(&mut b).await.is_empty());
    new.probe_unpaired().await;
    new.send(json!({"type":"pair","peer_id":"b"})).await;
    assert_eq!(new.recv().await["type"], "paired");
    assert_eq!(
        b.recv().await,
        json!({"type":"paired","peer_id":"a","initiator":false})
    );
    b.send(json!({"type":"offer","sdp":"to the new a"})).await;
    assert_eq!(new.recv().await["sdp"], "to the new a");
}

#[tokio::test]
async fn reservations_are_shared_by_every_node() {
    let Some(srv) = start_cluster("reservations_are_shared", Config::default()).await else {
        return;
    };
    let owner = "owner-token-0123456789";
    drop(at(&srv, 0, &format!("id=alice&token={owner}")).await);
    util::eventually("alice reserved", || async {
        util::metric_at(srv.addrs[1], "signald_reserved_ids").await == 1.0
    })
    .await;
    for q in ["id=alice&token=other-token-0123456789", "id=alice"] {
        let mut ws = util::cluster::raw_at(srv.addrs[1], q).await;
        assert_eq!(
            util::next_frame(&mut ws, true).await.unwrap()["code"],
            "id_taken",
            "{q}"
        );
        util::expect_close(&mut ws, 4001).await;
    }
    let back = at(&srv, 2, &format!("id=alice&token={owner}")).await;
    assert_eq!(back.id, "alice");
    util::eventually("the reservation used up", || async {
        util::metric_at(srv.addrs[0], "signald_reserved_ids").await == 0.0
    })
    .await;
}

/// A client's frames to a peer on another node go through its node's
/// writer, many to a round trip; its `unpair`, or its departure, still
/// reaches the peer after every frame it sent before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_then_unpair_or_leaving_arrive_in_order_across_nodes() {
    let cfg = Config {
        rate_limit: u32::MAX,
        rate_burst: u32::MAX,
        rate_limit_bytes: u32::MAX,
        rate_burst_bytes: u32::MAX,
        ..many()
    };
    let Some(srv) = start_cluster_of("frames_then_unpair_in_order", cfg, 2).await else {
        return;
    };
    let mut b = at(&srv, 1, "id=b").await;
    for round in 0..20 {
        let id = format!("a{round}");
        let mut a = at(&srv, 0, &format!("id={id}")).await;
        a.send(json!({"type":"pair","peer_id":"b"})).await;
        assert_eq!(a.recv().await["type"], "paired");
        assert_eq!(b.recv().await["type"], "paired");
        // At most the default burst (200), so that b's queue (256 frames)
        // holds them even when one inbox read brings all at once.
        for i in 0..200 {
            let f = json!({"type":"offer","sdp":format!("{round}/{i}")});
            a.ws.feed(Message::text(f.to_string())).await.unwrap();
        }
        let leaves = round % 2 == 1;
        if leaves {
            a.ws.flush().await.unwrap();
            a.ws.close(None).await.unwrap();
        } else {
            let f = json!({"type":"unpair"});
            a.ws.feed(Message::text(f.to_string())).await.unwrap();
            a.ws.flush().await.unwrap();
        }
        for i in 0..200 {
            assert_eq!(
                b.recv().await,
                json!({"type":"offer","sdp":format!("{round}/{i}"),"from":id}),
                "round {round}"
            );
        }
        let reason = if leaves { "left" } else { "unpaired" };
        assert_eq!(
            b.recv().await,
            json!({"type":"peer_disconnected","peer_id":id,"reason":reason})
        );
    }
    assert_eq!(relayed_out(&srv, 0).await, 20.0 * 200.0);
}
