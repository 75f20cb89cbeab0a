//! Redis as the cluster sees it (issue 21, item 10): not trusted blindly.
//! What a node reads back from an inbox must be what a node could have
//! written; the link to Redis can be TLS, as an ACL user confined to the
//! cluster's key prefix.

use std::time::Duration;

use serde_json::json;
use signald::Config;

use crate::util::cluster::Node;
use crate::util::redis::Redis;
use crate::util::{self, Client};

/// `XADD`s one entry to `key` with these fields.
async fn xadd(con: &mut redis::aio::MultiplexedConnection, key: &str, fields: &[(&str, &str)]) {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    let _: String = cmd.query_async(con).await.expect("XADD");
}

/// Alice on node 1 paired with bob on node 2, on a cluster started with
/// `cfg`, and a connection of the test's own to its Redis; `None` where
/// redis-server is missing.
struct AcrossNodes {
    // Keeps the cluster up.
    _srv: util::Server,
    con: redis::aio::MultiplexedConnection,
    alice: Client,
    bob: Client,
}

impl AcrossNodes {
    async fn start(test: &str, cfg: Config) -> Option<AcrossNodes> {
        let srv = util::start_cluster(test, cfg).await?;
        let url = srv.redis_url().expect("a cluster's redis");
        let con = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        let mut alice: Client = util::cluster::client_at(srv.addrs[0], "id=alice").await;
        let mut bob: Client = util::cluster::client_at(srv.addrs[1], "id=bob").await;
        alice.send(json!({"type":"pair","peer_id":"bob"})).await;
        assert_eq!(alice.recv().await["type"], "paired");
        assert_eq!(bob.recv().await["type"], "paired");
        Some(AcrossNodes {
            _srv: srv,
            con,
            alice,
            bob,
        })
    }

    /// Bob's record: his node's incarnation, his connection and the
    /// pairing's number.
    async fn bobs_record(&mut self) -> (String, String, String) {
        redis::cmd("HMGET")
            .arg("sd:c:bob")
            .arg("n")
            .arg("c")
            .arg("e")
            .query_async(&mut self.con)
            .await
            .expect("bob's record")
    }
}

/// Whoever can write to Redis writes frames and events into a node's
/// inbox: a `welcome` posing as relayed, an offer from someone who is not
/// the peer, one over the size limit, a `peer_disconnected` naming another
/// peer, a `paired` with a malformed peer. None reaches the client, each
/// is counted, the pairing stays; the real peer's next frame is the first
/// thing the client gets.
#[tokio::test]
async fn what_redis_hands_back_is_checked_like_a_clients_frame() {
    let cfg = Config {
        max_message_bytes: 4096,
        ..Config::default()
    };
    let Some(mut pair) = AcrossNodes::start("redis_hands_back", cfg).await else {
        return;
    };
    let (inc, conn, epoch) = pair.bobs_record().await;
    let AcrossNodes {
        _srv: srv,
        mut con,
        mut alice,
        mut bob,
    } = pair;
    let inbox = format!("sd:in:{inc}");
    let relayed = |f: String| {
        vec![
            ("k".to_string(), "r".to_string()),
            ("i".to_string(), "bob".to_string()),
            ("c".to_string(), conn.clone()),
            ("e".to_string(), epoch.clone()),
            ("f".to_string(), f),
        ]
    };
    // Frames in a batch entry, as nodes write them (`relay::encode`).
    let batched = |f: &str| {
        vec![
            ("k".to_string(), "b".to_string()),
            (
                "f".to_string(),
                format!("bob {conn} {epoch} {}\n{f}", f.len()),
            ),
        ]
    };
    let big = "x".repeat(8192);
    let mallory = json!({"type":"offer","sdp":"v=0","from":"mallory"}).to_string();
    let forged = [
        batched(&mallory),
        // The peer's name, but a second `from` too.
        batched(r#"{"type":"offer","from":"alice","sdp":"v=0","from":"mallory"}"#),
        // Shorter than it says.
        vec![
            ("k".to_string(), "b".to_string()),
            ("f".to_string(), format!("bob {conn} {epoch} 999\nshort")),
        ],
        relayed(json!({"type":"error","code":"server_full","message":"go away"}).to_string()),
        relayed(json!({"type":"offer","sdp":"v=0","from":"mallory"}).to_string()),
        relayed(json!({"type":"offer","sdp":big,"from":"alice"}).to_string()),
        relayed("{not json".to_string()),
        vec![
            ("k".to_string(), "x".to_string()),
            (
                "j".to_string(),
                json!([{"o":"end","id":"bob","c":conn,"e":epoch,"r":"left","p":"mallory"}])
                    .to_string(),
            ),
        ],
        vec![
            ("k".to_string(), "x".to_string()),
            (
                "j".to_string(),
                json!([{"o":"paired","id":"bob","c":conn,"p":"bad id!","pn":"n1.00000000",
                        "pc":"1","e":epoch,"i":true}])
                .to_string(),
            ),
        ],
    ];
    for entry in &forged {
        let fields: Vec<(&str, &str)> = entry.iter().map(|(k, v)| (&**k, &**v)).collect();
        xadd(&mut con, &inbox, &fields).await;
    }
    util::eventually("every forged entry counted", || async {
        util::metric_at(srv.addrs[1], "signald_cluster_rejected_total").await == forged.len() as f64
    })
    .await;
    alice
        .send(json!({"type":"offer","sdp":"the real one"}))
        .await;
    let got = bob.recv().await;
    assert_eq!(
        got,
        json!({"type":"offer","sdp":"the real one","from":"alice"}),
        "the first frame bob gets is alice's"
    );
    bob.send(json!({"type":"answer","sdp":"still paired"}))
        .await;
    assert_eq!(alice.recv().await["sdp"], "still paired");
}

/// A rolling upgrade from nodes before batching (5dbb59e): such a node
/// writes one frame per inbox entry (`k` = `r`), and a current node
/// delivers it as its own batches, in the entries' order. (The other way
/// round cannot work: an older node drops a batch entry as an unknown
/// kind, which docs/operations.md says.)
#[tokio::test]
async fn frames_written_one_an_entry_by_an_older_node_still_arrive_in_order() {
    let Some(mut pair) = AcrossNodes::start("older_node_entries", Config::default()).await else {
        return;
    };
    let (inc, conn, epoch) = pair.bobs_record().await;
    let inbox = format!("sd:in:{inc}");
    for n in 0..3 {
        let frame = json!({"type":"offer","sdp":n.to_string(),"from":"alice"}).to_string();
        let entry = [
            ("k", "r"),
            ("i", "bob"),
            ("c", &*conn),
            ("e", &*epoch),
            ("f", &*frame),
        ];
        xadd(&mut pair.con, &inbox, &entry).await;
    }
    for n in 0..3 {
        assert_eq!(
            pair.bob.recv().await,
            json!({"type":"offer","sdp":n.to_string(),"from":"alice"})
        );
    }
    // And the node's own batches still follow.
    pair.alice
        .send(json!({"type":"answer","sdp":"batched"}))
        .await;
    assert_eq!(pair.bob.recv().await["sdp"], "batched");
}

/// A node trims what it applied from its inbox: after 300 frames relayed
/// one at a time (each its own inbox entry, so trims are due every 64),
/// the inbox holds no more than one stream node of entries (`~` trims
/// whole ones; Redis's default is 100 entries a node) instead of all of
/// them. (The trim after a quiet second is not tested here: below 64
/// entries, what `~` may free is too little to tell from none.)
#[tokio::test]
async fn a_node_trims_its_inbox_of_what_it_applied() {
    let cfg = Config {
        rate_burst: 1000,
        ..Config::default()
    };
    let Some(mut pair) = AcrossNodes::start("trims_its_inbox", cfg).await else {
        return;
    };
    let (inc, _, _) = pair.bobs_record().await;
    let AcrossNodes {
        _srv: _cluster,
        con,
        mut alice,
        mut bob,
    } = pair;
    let inbox = format!("sd:in:{inc}");
    const FRAMES: usize = 300;
    for n in 0..FRAMES {
        alice
            .send(json!({"type":"offer","sdp":n.to_string()}))
            .await;
        assert_eq!(bob.recv().await["sdp"], n.to_string());
    }
    util::eventually("bob's inbox trimmed", || {
        let (mut con, inbox) = (con.clone(), inbox.clone());
        async move {
            let len: usize = redis::cmd("XLEN")
                .arg(&inbox)
                .query_async(&mut con)
                .await
                .expect("XLEN");
            len <= 100
        }
    })
    .await;
}

/// `rediss://` with the cluster's CA, as an ACL user whose keys are only
/// `--cluster-prefix`'s: two nodes pair clients across the nodes. The same
/// user with another prefix, or a plain `redis://` to the TLS port, is
/// refused at start with the reason.
#[tokio::test]
async fn tls_and_an_acl_user_confined_to_the_prefix() {
    let ca = p2p_testkit::tls::Ca::new("redis test CA");
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = ca.issue(dir.path(), "redis");
    let acl = dir.path().join("users.acl");
    std::fs::write(
        &acl,
        "user default off\nuser signald on >s3cret-pw ~lab1:* +@all -@dangerous +script|load\n",
    )
    .unwrap();
    let [crt, key, ca_pem, acl] =
        [crt, key, ca.pem(), acl].map(|p| p.to_str().unwrap().to_string());
    let Some(redis) = Redis::start_with(
        "tls_and_an_acl_user",
        true,
        &[
            "--tls-cert-file",
            &crt,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca_pem,
            "--tls-auth-clients",
            "no",
            "--aclfile",
            &acl,
        ],
    ) else {
        return;
    };
    let url = redis.url_as("signald", "s3cret-pw");
    assert!(url.starts_with("rediss://"), "{url}");
    let flags = ["--cluster-ca", &ca_pem, "--cluster-prefix", "lab1:"];
    let n1 = Node::start_on(&url, "n1", &flags);
    let n2 = Node::start_on(&url, "n2", &flags);
    let mut a = n1.client("id=alice").await;
    let mut b = n2.client("id=bob").await;
    a.send(json!({"type":"pair","peer_id":"bob"})).await;
    assert_eq!(a.recv().await["type"], "paired");
    assert_eq!(b.recv().await["type"], "paired");
    a.send(json!({"type":"offer","sdp":"over tls"})).await;
    assert_eq!(b.recv().await["sdp"], "over tls");

    for (bad_url, extra, says) in [
        (
            url.clone(),
            vec!["--cluster-prefix", "sd:"],
            "may not use the keys under --cluster-prefix \"sd:\"",
        ),
        (
            url.replacen("rediss://", "redis://", 1),
            vec!["--cluster-prefix", "lab1:"],
            "cannot reach Redis",
        ),
    ] {
        let mut cmd = std::process::Command::new(p2p_testkit::bin("signald"));
        cmd.args(["--listen", "127.0.0.1:0", "--cluster", &bad_url])
            .args(&extra)
            .args(["--node-id", "n3"]);
        if bad_url.starts_with("rediss://") {
            cmd.args(["--cluster-ca", &ca_pem]);
        }
        let mut p = p2p_testkit::Proc::spawn("signald", cmd);
        let st = p.wait_exit();
        assert!(!st.success(), "{bad_url} {extra:?}: started");
        let log = p.log();
        assert!(log.contains(says), "{bad_url} {extra:?}: {log}");
        assert!(
            !log.contains("s3cret-pw"),
            "the password is never shown: {log}"
        );
    }
    // The nodes that started are unaffected.
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.send(json!({"type":"answer","sdp":"still here"})).await;
    assert_eq!(a.recv().await["sdp"], "still here");
}
