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
