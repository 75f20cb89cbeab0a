use super::*;

fn msg(i: usize) -> EventKind {
    EventKind::Message {
        from: "p".into(),
        text: Some(i.to_string()),
        data_b64: None,
    }
}

fn big(i: usize, size: usize) -> EventKind {
    let mut text = i.to_string();
    text.push_str(&"x".repeat(size));
    EventKind::Message {
        from: "p".into(),
        text: Some(text),
        data_b64: None,
    }
}

fn text(line: &Line) -> String {
    let ev: Event = serde_json::from_str(line.as_str().trim_end()).unwrap();
    match ev.kind {
        EventKind::Message { text, .. } => text.unwrap(),
        other => format!("{other:?}"),
    }
}

fn hub(messages: usize, bytes: usize) -> (Hub, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let hub = Hub::new(HistoryLimits { messages, bytes }, counters.clone());
    (hub, counters)
}

#[tokio::test]
async fn replay_then_live_without_gap() {
    let (hub, _) = hub(3, 1 << 20);
    for i in 0..5 {
        hub.publish_message(msg(i)).await;
    }
    let sub = hub.subscribe(10, true);
    let replay: Vec<_> = sub.replay.iter().map(text).collect();
    assert_eq!(replay, ["2", "3", "4"]);
    hub.publish_message(msg(5)).await;
    let mut live = sub.live.unwrap();
    assert_eq!(text(&live.recv().await), "5");
}

#[tokio::test]
async fn history_is_bounded_by_bytes_too() {
    let (hub, _) = hub(100, 10);
    for t in ["aaaa", "bbbb", "cccc"] {
        hub.publish_message(EventKind::Message {
            from: "p".into(),
            text: Some(t.into()),
            data_b64: None,
        })
        .await;
    }
    let kept: Vec<_> = hub.subscribe(100, false).replay.iter().map(text).collect();
    assert_eq!(kept, ["bbbb", "cccc"]);
}

#[tokio::test(start_paused = true)]
async fn stuck_follower_is_told_how_many_it_missed() {
    let (hub, counters) = hub(0, 0);
    let mut live = hub.subscribe(0, true).live.unwrap();
    let total = FOLLOWER_QUEUE + 10;
    for i in 0..total {
        // Paused time lets the grace period pass at once for the tenth
        // message after the queue filled.
        hub.publish_message(msg(i)).await;
    }
    for i in 0..FOLLOWER_QUEUE {
        assert_eq!(text(&live.recv().await), i.to_string());
    }
    hub.publish_message(msg(total)).await;
    let lag: Event = serde_json::from_str(live.recv().await.as_str().trim_end()).unwrap();
    assert_eq!(lag.kind, EventKind::Lagged { missed: 10 });
    assert_eq!(text(&live.recv().await), total.to_string());
    assert_eq!(counters.missed_by_subscribers.load(Ordering::Relaxed), 10);
}

#[tokio::test(start_paused = true)]
async fn a_full_follower_slows_messages_but_never_events() {
    let (hub, _) = hub(0, 0);
    let mut stuck = hub.subscribe(0, true).live.unwrap();
    let mut other = hub.subscribe(0, true).live.unwrap();
    for i in 0..FOLLOWER_QUEUE {
        hub.publish_message(msg(i)).await;
    }
    // The next message waits for the stuck follower...
    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move { hub.publish_message(msg(FOLLOWER_QUEUE)).await })
    };
    tokio::time::sleep(STALL_GRACE / 2).await;
    assert!(
        !publisher.is_finished(),
        "a full follower must slow messages"
    );
    // ...while a control event goes out at once, to both.
    hub.publish_event(EventKind::SignalingDown { reason: "x".into() });
    for _ in 0..FOLLOWER_QUEUE {
        other.recv().await;
    }
    let ev = other.recv().await;
    assert!(ev.as_str().contains("signaling_down"), "{}", ev.as_str());
    // Room in the stuck queue lets the message through before the grace.
    stuck.recv().await;
    publisher.await.unwrap();
    assert_eq!(text(&other.recv().await), FOLLOWER_QUEUE.to_string());
}

#[tokio::test(start_paused = true)]
async fn a_stopped_follower_pins_at_most_its_byte_bound() {
    let (hub, counters) = hub(0, 0);
    let _stopped = hub.subscribe(0, true).live.unwrap();
    // 3,000 messages of 60 KB, as in the measured attack: 180 MB if queued.
    for i in 0..3000 {
        hub.publish_message(big(i, 60_000)).await;
    }
    let st = lock(&hub.inner.state);
    let queued = st.followers[0].bytes;
    assert!(
        queued <= FOLLOWER_QUEUE_BYTES + 61_000,
        "{queued} bytes queued for a stopped follower"
    );
    assert!(counters.missed_by_subscribers.load(Ordering::Relaxed) > 2900);
}

#[tokio::test]
async fn a_follower_that_leaves_is_forgotten_at_once() {
    let (hub, counters) = hub(0, 0);
    let live = hub.subscribe(0, true).live.unwrap();
    assert_eq!(counters.subscribers.load(Ordering::Relaxed), 1);
    drop(live);
    assert_eq!(counters.subscribers.load(Ordering::Relaxed), 0);
    assert!(lock(&hub.inner.state).followers.is_empty());
}
