//! The table's policies, without a network: caps, the pairing that
//! `connect` made, and the exclusions between `expose` and `accept`.

use std::time::Duration;

use p2p_proto::control::{ErrorCode, StreamDirection, Target};
use tokio::sync::{mpsc, watch};

use super::*;

fn streams(
    per_service: usize,
    total: usize,
    accepts: usize,
) -> (Streams, mpsc::UnboundedReceiver<u64>) {
    Streams::new(
        Limits {
            streams: total,
            per_service,
            accepts,
            forward_connections: 2,
            window: 1 << 16,
            drain: Duration::from_millis(10),
        },
        Vec::new(),
        watch::channel(None).1,
    )
}

fn slot(s: &Streams, service: &str, generation: u64) -> Result<Slot, ErrorBody> {
    s.reserve(
        "bob",
        service,
        StreamDirection::Out,
        "control".into(),
        generation,
    )
}

fn spec(name: &str) -> ServiceSpec {
    ServiceSpec::new(
        name.into(),
        Target::parse("tcp:127.0.0.1:22").unwrap(),
        vec!["bob".into()],
        false,
    )
    .unwrap()
}

#[test]
fn caps_per_service_and_in_all_refuse_busy_and_free_with_the_slot() {
    let (s, _rx) = streams(2, 3, 1);
    let a = slot(&s, "ssh", 1).unwrap();
    let _b = slot(&s, "ssh", 1).unwrap();
    let e = slot(&s, "ssh", 1).err().unwrap();
    assert_eq!(e.code, ErrorCode::Busy);
    assert!(e.message.contains("streams to ssh"), "{}", e.message);
    let _c = slot(&s, "db", 1).unwrap();
    let e = slot(&s, "web", 1).err().unwrap();
    assert!(e.message.contains("--max-streams)"), "{}", e.message);
    assert_eq!(s.open_streams().len(), 3);
    drop(a);
    assert_eq!(s.open_streams().len(), 2);
    slot(&s, "ssh", 1).unwrap();
}

#[test]
fn a_pairing_connect_made_ends_with_its_last_stream_and_not_before() {
    let (s, mut rx) = streams(8, 8, 1);
    // The connect's hold covers the time between pairing and stream.
    let hold = s.hold();
    s.made_pairing(7);
    let first = slot(&s, "ssh", 7).unwrap();
    drop(hold);
    let second = slot(&s, "db", 7).unwrap();
    drop(first);
    assert!(rx.try_recv().is_err(), "a stream is still open");
    drop(second);
    assert_eq!(rx.try_recv().ok(), Some(7));
    // A hold alone that ends (a connect that failed) ends it too.
    s.made_pairing(8);
    drop(s.hold());
    assert_eq!(rx.try_recv().ok(), Some(8));
    // A stream of an older connection ending says nothing of it.
    s.made_pairing(9);
    let other = slot(&s, "ssh", 3).unwrap();
    drop(other);
    assert!(rx.try_recv().is_err());
    // One the user adopted with `pair` stays.
    s.made_pairing(10);
    assert!(s.keep_pairing());
    drop(slot(&s, "ssh", 10).unwrap());
    assert!(rx.try_recv().is_err());
    assert!(!s.keep_pairing(), "nothing left to adopt");
}

#[tokio::test]
async fn accept_and_expose_exclude_each_other_and_accepts_are_capped() {
    let (s, _rx) = streams(8, 8, 1);
    s.expose(spec("ssh"), false).unwrap();
    let e = s.accept("ssh", "bob", false, None).await.err().unwrap();
    assert_eq!(e.code, ErrorCode::BadRequest);
    let e = s.accept("x", "not an id", false, None).await.err().unwrap();
    assert_eq!(e.code, ErrorCode::BadRequest);
    // One waits; the second is over the cap; exposing its name is refused.
    let waiting = {
        let s = s.clone();
        tokio::spawn(async move {
            s.accept("once", "bob", false, Some(Duration::from_millis(200)))
                .await
        })
    };
    while s.accepts().is_empty() {
        tokio::task::yield_now().await;
    }
    let e = s.accept("twice", "bob", false, None).await.err().unwrap();
    assert_eq!(e.code, ErrorCode::Busy);
    let e = s.expose(spec("once"), false).err().unwrap();
    assert!(e.message.contains("an accept is waiting"), "{}", e.message);
    // Its timeout ends it and takes it off the table.
    let e = waiting.await.unwrap().err().unwrap();
    assert_eq!(e.code, ErrorCode::Timeout);
    assert!(s.accepts().is_empty());
    s.expose(spec("once"), false).unwrap();
    assert!(s.unexpose("once"));
    assert!(!s.unexpose("once"));
}

#[test]
fn a_forward_counts_its_connections_within_its_cap() {
    let (s, _rx) = streams(8, 8, 1);
    let entry = s.add_forward(&ForwardInfo {
        listen: "127.0.0.1:1".into(),
        peer_id: "bob".into(),
        service: "ssh".into(),
        allow_unverified: false,
        configured: false,
        open_connections: 0,
        connections: 0,
    });
    assert!(entry.connection() && entry.connection());
    assert!(!entry.connection(), "over --max-forward-connections (2)");
    entry.closed();
    assert!(entry.connection());
    let f = &s.forwards()[0];
    assert_eq!((f.open_connections, f.connections), (2, 4));
    drop(entry);
    assert!(s.forwards().is_empty());
}

#[test]
fn a_service_names_its_peers_and_a_valid_name() {
    let t = || Target::parse("unix:/run/x.sock").unwrap();
    assert!(ServiceSpec::new("ssh".into(), t(), vec![], false).is_err());
    assert!(ServiceSpec::new("a/b".into(), t(), vec!["bob".into()], false).is_err());
    assert!(ServiceSpec::new("ssh".into(), t(), vec!["b b".into()], false).is_err());
    let s = ServiceSpec::parse_flag("ssh:alice+bob:allow-unverified=unix:/run/a=b.sock").unwrap();
    assert_eq!(s.peers, ["alice", "bob"]);
    assert!(s.allow_unverified);
    assert_eq!(s.target.to_string(), "unix:/run/a=b.sock");
}
