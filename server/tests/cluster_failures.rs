//! Failures of a cluster, with real processes: three `signald --cluster`
//! nodes (heartbeat 100 ms, dead after 1 s) on a real redis-server, killed
//! with SIGKILL, stopped with SIGSTOP past their deadline, or left without
//! Redis. Each surviving peer must be told exactly once; a node that was
//! away fences itself and sends nothing more; what cannot be served while
//! Redis is away fails with a clear error.

use std::process::Command;

use serde_json::json;

use crate::races::frames_until_probe;
use crate::util::cluster::Node;
use crate::util::redis::Redis;
use crate::util::{self, Client};

fn token(who: &str) -> String {
    format!("token-of-{who}-0123456789")
}

/// `n` pairs `a{i}` (on `left`, with a token) ↔ `b{i}` (on `right[i % 2]`).
async fn pairs(n: usize, left: &Node, right: [&Node; 2]) -> Vec<(Client, Client)> {
    let mut out = Vec::new();
    for i in 0..n {
        let (a, b) = (format!("a{i}"), format!("b{i}"));
        let mut ca = left.client(&format!("id={a}&token={}", token(&a))).await;
        let mut cb = right[i % 2].client(&format!("id={b}")).await;
        ca.send(json!({"type":"pair","peer_id":b})).await;
        assert_eq!(ca.recv().await["type"], "paired");
        assert_eq!(cb.recv().await["type"], "paired");
        out.push((ca, cb));
    }
    out
}

#[tokio::test]
async fn kill_9_a_node_its_peers_are_told_once_and_its_ids_are_free_at_once() {
    let Some(redis) = Redis::start("kill_9_a_node") else {
        return;
    };
    let n1 = Node::start(&redis, "n1", &[]);
    let n2 = Node::start(&redis, "n2", &[]);
    let n3 = Node::start(&redis, "n3", &[]);
    let mut pairs = pairs(10, &n1, [&n2, &n3]).await;
    // A pairing with both sides on the dying node: nobody left to tell.
    let _c1 = n1.client("id=c1").await;
    let mut c2 = n1.client("id=c2").await;
    c2.send(json!({"type":"pair","peer_id":"c1"})).await;
    c2.recv().await;
    n1.signal(libc::SIGKILL);
    for (i, (_, b)) in pairs.iter_mut().enumerate() {
        assert_eq!(
            b.recv().await,
            json!({"type":"peer_disconnected","peer_id":format!("a{i}"),"reason":"left"})
        );
    }
    for (_, b) in pairs.iter_mut() {
        assert!(frames_until_probe(b).await.is_empty(), "a second notice");
    }
    // The owners take their IDs back at once, on any node; nobody else can.
    for i in 0..10 {
        let a = format!("a{i}");
        let mut ws = n3
            .raw(&format!("id={a}&token=some-other-token-{i:04}"))
            .await;
        assert_eq!(
            util::next_frame(&mut ws, true).await.unwrap()["code"],
            "id_taken"
        );
        let back = n2.client(&format!("id={a}&token={}", token(&a))).await;
        assert_eq!(back.id, a);
    }
    // Without a token an ID is free for anyone.
    assert_eq!(n3.client("id=c1").await.id, "c1");
    util::eventually("the dead node reaped", || async {
        n2.metric("signald_cluster_dead_nodes").await == 0.0
            && n2.metric("signald_cluster_nodes").await == 2.0
    })
    .await;
    let reaped = n2.metric("signald_cluster_reaped_total").await
        + n3.metric("signald_cluster_reaped_total").await;
    assert_eq!(reaped, 12.0);
}

#[tokio::test]
async fn a_node_stopped_past_its_deadline_fences_itself_and_sends_no_second_notice() {
    let Some(redis) = Redis::start("a_node_stopped_past_its_deadline") else {
        return;
    };
    let n1 = Node::start(&redis, "n1", &[]);
    let n2 = Node::start(&redis, "n2", &[]);
    let n3 = Node::start(&redis, "n3", &[]);
    let mut pairs = pairs(6, &n1, [&n2, &n3]).await;
    n1.stop();
    // While it is stopped its clients still write: the frames wait in its
    // sockets, and must never reach anyone.
    for (a, _) in pairs.iter_mut() {
        a.send(json!({"type":"offer","sdp":"late"})).await;
        a.send(json!({"type":"unpair"})).await;
    }
    for (i, (_, b)) in pairs.iter_mut().enumerate() {
        assert_eq!(
            b.recv().await,
            json!({"type":"peer_disconnected","peer_id":format!("a{i}"),"reason":"left"})
        );
    }
    n1.signal(libc::SIGCONT);
    // It finds itself dead: its clients are closed, try again later.
    for (a, _) in pairs.iter_mut() {
        a.expect_close(1013).await;
    }
    util::eventually("n1 back as a new incarnation", || async {
        n1.metric("signald_cluster_joins_total").await == 2.0
            && n1.metric("signald_cluster_live").await == 1.0
    })
    .await;
    assert_eq!(n1.metric("signald_cluster_fences_total").await, 1.0);
    for (_, b) in pairs.iter_mut() {
        assert!(frames_until_probe(b).await.is_empty(), "after the fence");
    }
    // It serves again, across nodes.
    let mut x = n1.client("id=x").await;
    x.send(json!({"type":"pair","peer_id":"b0"})).await;
    assert_eq!(x.recv().await["type"], "paired");
    let b0 = &mut pairs[0].1;
    assert_eq!(
        b0.recv().await,
        json!({"type":"paired","peer_id":"x","initiator":false})
    );
    x.send(json!({"type":"offer","sdp":"fresh"})).await;
    assert_eq!(b0.recv().await["sdp"], "fresh");
    // A late frame n1 still sent on waking (its connection task can race
    // the fence) is dropped by n2, counted, never delivered: b0 got only
    // the fresh one, and the others nothing (checked above).
    let stale = n2.metric("signald_cluster_stale_dropped_total").await
        + n3.metric("signald_cluster_stale_dropped_total").await;
    assert!(stale <= 6.0, "{stale} stale frames for 6 late offers");
}

/// Redis stops answering (SIGSTOP) for less than dead-after: a frame for a
/// peer on another node cannot be handed to Redis, so its sender is
/// closed with 1013 rather than have the frame vanish unnoticed; the peer
/// stays, and once Redis answers again it is told `left` (after the frame,
/// if Redis took it after all).
#[tokio::test]
async fn a_relay_redis_does_not_take_closes_its_sender_with_1013() {
    let Some(redis) = Redis::start("relay_not_taken") else {
        return;
    };
    let n1 = Node::start_timed(&redis.url(), "n1", "30s", &[]);
    let n2 = Node::start_timed(&redis.url(), "n2", "30s", &[]);
    let mut pairs = pairs(1, &n1, [&n2, &n2]).await;
    let (a, b) = &mut pairs[0];
    redis.proc().signal(libc::SIGSTOP);
    a.send(json!({"type":"offer","sdp":"maybe"})).await;
    a.expect_close(1013).await;
    redis.proc().signal(libc::SIGCONT);
    let mut got = b.recv().await;
    if got["type"] == "offer" {
        assert_eq!(got["sdp"], "maybe");
        got = b.recv().await;
    }
    assert_eq!(
        got,
        json!({"type":"peer_disconnected","peer_id":"a0","reason":"left"})
    );
    assert_eq!(n1.metric("signald_cluster_fences_total").await, 0.0);
}

#[tokio::test]
async fn redis_restarted_mid_run() {
    let Some(mut redis) = Redis::start("redis_restarted_mid_run") else {
        return;
    };
    let n1 = Node::start(&redis, "n1", &[]);
    let n2 = Node::start(&redis, "n2", &[]);
    let mut pairs = pairs(3, &n1, [&n2, &n2]).await;
    redis.kill();
    // Meanwhile: a clear refusal, never a silent half-registration, and
    // the health check fails so a load balancer looks elsewhere.
    let mut ws = n1.raw("id=newcomer").await;
    let refused = util::next_frame(&mut ws, true).await.unwrap();
    assert_eq!(refused["code"], "server_full", "{refused}");
    util::expect_close(&mut ws, 1013).await;
    util::eventually("healthz failing on both", || async {
        util::http_get(n1.addr(), "/healthz")
            .await
            .0
            .contains("503")
            && util::http_get(n2.addr(), "/healthz")
                .await
                .0
                .contains("503")
    })
    .await;
    // Past the deadline both fence: every client is told to come back.
    for (a, b) in pairs.iter_mut() {
        a.expect_close(1013).await;
        b.expect_close(1013).await;
    }
    redis.restart();
    util::eventually("both nodes back", || async {
        util::http_get(n1.addr(), "/healthz")
            .await
            .0
            .contains("200")
            && util::http_get(n2.addr(), "/healthz")
                .await
                .0
                .contains("200")
    })
    .await;
    // The clients reconnect (on other nodes this time) and pair again.
    let mut a = n2.client(&format!("id=a0&token={}", token("a0"))).await;
    let mut b = n1.client("id=b0").await;
    a.send(json!({"type":"pair","peer_id":"b0"})).await;
    assert_eq!(a.recv().await["type"], "paired");
    assert_eq!(b.recv().await["type"], "paired");
    b.send(json!({"type":"answer","sdp":"again"})).await;
    assert_eq!(
        a.recv().await,
        json!({"type":"answer","sdp":"again","from":"b0"})
    );
}

#[test]
fn redis_unreachable_at_start_is_a_clear_error() {
    // Nothing listens on port 1 of the loopback: refused at once.
    let out = Command::new(p2p_testkit::bin("signald"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cluster",
            "redis://127.0.0.1:1/",
        ])
        .env("SIGNALD_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("signald: cannot reach Redis at redis://127.0.0.1:1/"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
}

#[test]
fn nodes_must_agree_on_dead_after() {
    let Some(redis) = Redis::start("nodes_must_agree_on_dead_after") else {
        return;
    };
    let _n1 = Node::start(&redis, "n1", &[]);
    let out = Command::new(p2p_testkit::bin("signald"))
        .args(["--listen", "127.0.0.1:0", "--cluster", &redis.url()])
        .args(["--cluster-dead-after", "3s", "--node-id", "odd"])
        .env("SIGNALD_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("give every node the same"), "{err}");
}
