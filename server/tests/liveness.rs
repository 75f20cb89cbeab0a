//! Pings, timeouts and the deadline, with short timings.

use std::time::Duration;

use serde_json::json;
use signald::Config;

use crate::util::{Server, start};

fn fast() -> Config {
    Config {
        ping_interval: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(300),
        ..Config::default()
    }
}

pub fn silent_client_is_closed_4000_and_its_peer_told_timeout_cfg() -> Config {
    fast()
}

#[tokio::test]
async fn silent_client_is_closed_4000_and_its_peer_told_timeout() {
    silent_client_is_closed_4000_and_its_peer_told_timeout_on(
        start(silent_client_is_closed_4000_and_its_peer_told_timeout_cfg()).await,
    )
    .await;
}

pub async fn silent_client_is_closed_4000_and_its_peer_told_timeout_on(srv: Server) {
    let (mut silent, mut b) = srv.pair("silent", "b").await;
    // b answers every ping; `silent` reads but never sends.
    let keep_alive = async {
        loop {
            let v = b.recv_any().await;
            if v["type"] == "ping" {
                b.send(json!({"type":"pong"})).await;
                continue;
            }
            return v;
        }
    };
    let (notice, ()) = tokio::join!(keep_alive, async {
        // Pings keep coming, then the close.
        let first = silent.recv_any().await;
        assert_eq!(first, json!({"type":"ping"}));
        silent.expect_close(4000).await;
    });
    assert_eq!(
        notice,
        json!({"type":"peer_disconnected","peer_id":"silent","reason":"timeout"})
    );
    assert_eq!(srv.metric("signald_timeouts_total").await, 1.0);
}

pub fn any_frame_counts_as_liveness_cfg() -> Config {
    fast()
}

#[tokio::test]
async fn any_frame_counts_as_liveness() {
    any_frame_counts_as_liveness_on(start(any_frame_counts_as_liveness_cfg()).await).await;
}

pub async fn any_frame_counts_as_liveness_on(srv: Server) {
    let mut a = srv.named("a").await;
    // Never answer a ping with pong: an unrelated frame every ping is enough.
    // Ten pings span more than three timeouts.
    for _ in 0..10 {
        let v = a.recv_any().await;
        assert_eq!(v["type"], "ping");
        a.send(json!({"type":"unpair"})).await;
        a.expect_error("not_paired").await;
    }
}

pub fn a_client_answering_pings_outlives_many_timeouts_cfg() -> Config {
    fast()
}

#[tokio::test]
async fn a_client_answering_pings_outlives_many_timeouts() {
    a_client_answering_pings_outlives_many_timeouts_on(
        start(a_client_answering_pings_outlives_many_timeouts_cfg()).await,
    )
    .await;
}

pub async fn a_client_answering_pings_outlives_many_timeouts_on(srv: Server) {
    let mut a = srv.named("a").await;
    // Ten pings at 100 ms span over three 300 ms timeouts.
    for _ in 0..10 {
        assert_eq!(a.recv_any().await, json!({"type":"ping"}));
        a.send(json!({"type":"pong"})).await;
    }
    a.probe_unpaired().await;
}
