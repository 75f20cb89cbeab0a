//! IDs reserved for their token after the holder leaves (`--id-reserve`).

use std::time::Duration;

use signald::Config;

use crate::util::{Server, WAIT, start};

const OWNER: &str = "owner-token-0123456789";
const OTHER: &str = "other-token-0123456789";

/// Connects with `query` and returns the first frame's `type` and, for an
/// error, its code (or the close code if the server closed at once).
async fn attempt(srv: &Server, query: &str) -> (String, String) {
    let mut ws = srv.raw(query).await;
    match crate::util::next_frame(&mut ws, true).await {
        Ok(v) => (
            v["type"].as_str().unwrap_or("").to_string(),
            v["code"].as_str().unwrap_or("").to_string(),
        ),
        Err(code) => ("closed".into(), format!("{code:?}")),
    }
}

#[tokio::test]
async fn a_token_keeps_its_id_after_the_holder_leaves() {
    let srv = start(Config::default()).await;
    let c = srv.client(&format!("id=alice&token={OWNER}")).await;
    drop(c);
    // The server notices the close; until then the ID is simply held.
    let deadline = tokio::time::Instant::now() + WAIT;
    while srv.metric("signald_reserved_ids").await < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "never reserved");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for q in [format!("id=alice&token={OTHER}"), "id=alice".to_string()] {
        assert_eq!(
            attempt(&srv, &q).await,
            ("error".into(), "id_taken".into()),
            "{q}"
        );
    }
    let back = srv.client(&format!("id=alice&token={OWNER}")).await;
    assert_eq!(back.id, "alice");
    assert_eq!(srv.metric("signald_reserved_ids").await, 0.0);
}

#[tokio::test]
async fn an_id_without_a_token_is_free_at_once_and_zero_turns_reservation_off() {
    let srv = start(Config::default()).await;
    drop(srv.named("bob").await);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match attempt(&srv, &format!("id=bob&token={OTHER}")).await {
            (t, _) if t == "welcome" => break,
            // Still held by the closing connection: its close is in flight.
            (_, code) if code == "id_taken" => {}
            other => panic!("{other:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let srv = start(Config {
        id_reserve: Duration::ZERO,
        ..Config::default()
    })
    .await;
    drop(srv.client(&format!("id=carol&token={OWNER}")).await);
    let deadline = tokio::time::Instant::now() + WAIT;
    while attempt(&srv, &format!("id=carol&token={OTHER}")).await.0 != "welcome" {
        assert!(tokio::time::Instant::now() < deadline, "carol never free");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(srv.metric("signald_reserved_ids").await, 0.0);
}

#[tokio::test]
async fn a_reservation_expires() {
    let srv = start(Config {
        id_reserve: Duration::from_millis(200),
        ..Config::default()
    })
    .await;
    drop(srv.client(&format!("id=dave&token={OWNER}")).await);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut refused = false;
    loop {
        match attempt(&srv, &format!("id=dave&token={OTHER}")).await {
            (t, _) if t == "welcome" => break,
            (_, code) if code == "id_taken" => refused = true,
            other => panic!("{other:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the ID was kept for a while first");
}

/// The token may come in an `Authorization: Bearer` header (what p2pd
/// sends, so that proxies do not log it); it works exactly as the query's,
/// and one given both ways is refused.
#[tokio::test]
async fn a_bearer_token_holds_and_reclaims_its_id_like_the_querys() {
    let srv = start(Config::default()).await;
    let first = |mut ws: crate::util::Ws| async move {
        match crate::util::next_frame(&mut ws, true).await {
            Ok(v) => (
                v["type"].as_str().unwrap_or("").to_string(),
                v["code"].as_str().unwrap_or("").to_string(),
                ws,
            ),
            Err(code) => ("closed".into(), format!("{code:?}"), ws),
        }
    };
    let (kind, _, held) = first(srv.raw_with_bearer("id=alice", OWNER).await).await;
    assert_eq!(kind, "welcome");
    // Another token, by header or query, is refused; the same one replaces.
    let (kind, code, _) = first(srv.raw_with_bearer("id=alice", OTHER).await).await;
    assert_eq!((kind.as_str(), code.as_str()), ("error", "id_taken"));
    let (kind, _, _again) = first(srv.raw(&format!("id=alice&token={OWNER}")).await).await;
    assert_eq!(kind, "welcome", "the query form names the same token");
    drop(held);
    let (kind, code, _) = first(
        srv.raw_with_bearer(&format!("id=bob&token={OWNER}"), OWNER)
            .await,
    )
    .await;
    assert_eq!(
        (kind.as_str(), code.as_str()),
        ("error", "bad_id"),
        "given twice"
    );
}

/// Registers `id` with `token` from the loopback address `from` on node
/// `node` (of a cluster; 0 in memory), reads its `welcome` and leaves.
async fn hold_and_leave(srv: &Server, node: usize, from: &str, id: &str, token: &str) {
    let addr = srv.addrs[node % srv.addrs.len()];
    let stream = crate::util::connect_from(from, addr).await;
    let url = format!("ws://{addr}/ws?id={id}&token={token}");
    let mut ws = crate::util::upgrade_on(stream, &url, &[])
        .await
        .expect("upgraded");
    let first = crate::util::next_frame(&mut ws, true)
        .await
        .expect("a frame");
    assert_eq!(first["type"], "welcome", "{id}: {first}");
    ws.close(None).await.ok();
}

/// A figure of the whole ID space: in a cluster every node reports the
/// same, so one node is asked.
async fn shared(srv: &Server, name: &str) -> f64 {
    crate::util::metric_at(srv.addrs[0], name).await
}

async fn reserved(srv: &Server) -> f64 {
    shared(srv, "signald_reserved_ids").await
}

/// Issue 21, item 6: 100 token registrations from one address evicted
/// `bob`'s reservation in 0.1 s, and then `bob` with a new token was
/// welcomed. Now an address past its quota gives up its own oldest, a
/// full table refuses newcomers, and nobody's reservation makes room for
/// another address's; the same on both backends.
async fn one_address_cannot_evict_another_s_reservation(srv: Server) {
    hold_and_leave(&srv, 1, "127.0.0.3", "bob", OWNER).await;
    crate::util::eventually("bob reserved", || async { reserved(&srv).await == 1.0 }).await;
    for i in 0..30 {
        hold_and_leave(&srv, i, "127.0.0.2", &format!("m{i}"), OTHER).await;
    }
    // The quota is 4: mallory keeps her 4 newest, bob his one.
    crate::util::eventually("mallory at her quota", || async {
        reserved(&srv).await == 5.0
            && shared(&srv, "signald_reservations_evicted_total").await == 26.0
    })
    .await;
    // Five more addresses bring 20 more into a table of 20: 15 fit, and
    // nobody already there loses a reservation for them.
    for a in 0..5 {
        for i in 0..4 {
            let id = format!("x{a}n{i}");
            hold_and_leave(&srv, i, &format!("127.0.1.{}", a + 1), &id, OTHER).await;
        }
    }
    crate::util::eventually("the table full", || async {
        reserved(&srv).await == 20.0
            && shared(&srv, "signald_reservations_refused_total").await
                + shared(&srv, "signald_reservations_evicted_total").await
                == 26.0 + 5.0
    })
    .await;
    assert!(shared(&srv, "signald_reservations_refused_total").await >= 1.0);
    assert_eq!(
        attempt(&srv, &format!("id=bob&token={OTHER}")).await,
        ("error".into(), "id_taken".into())
    );
    let back = srv.client(&format!("id=bob&token={OWNER}")).await;
    assert_eq!(back.id, "bob");
}

fn quota_config() -> Config {
    Config {
        id_reserve_per_ip: 4,
        max_clients: 20,
        ..Config::default()
    }
}

#[tokio::test]
async fn one_address_cannot_evict_another_s_reservation_in_memory() {
    one_address_cannot_evict_another_s_reservation(start(quota_config()).await).await;
}

#[tokio::test]
async fn one_address_cannot_evict_another_s_reservation_in_a_cluster() {
    let Some(srv) = crate::util::start_cluster("reserve_quota", quota_config()).await else {
        return;
    };
    one_address_cannot_evict_another_s_reservation(srv).await;
}
