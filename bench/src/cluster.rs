//! Load for `signald-bench --cluster`: pairs whose two sides may sit on
//! different nodes (signald-load speaks to one URL), bouncing frames,
//! timing them, or pairing and unpairing in a loop. Each function runs its
//! own single-threaded runtime, as signald-load does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::frames::{PING, PONG, Proto, Side, Ws, candidate, relay_window};

fn rt() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn connect(url: &str, id: &str) -> anyhow::Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?id={id}"))
        .await
        .with_context(|| format!("connecting {id} to {url}"))?;
    wait_for(&mut ws, r#"{"type":"welcome""#).await?;
    Ok(ws)
}

async fn wait_for(ws: &mut Ws, prefix: &str) -> anyhow::Result<()> {
    while let Some(msg) = ws.next().await {
        if let Message::Text(t) = msg? {
            if t.starts_with(prefix) {
                return Ok(());
            }
            if t.as_str() == PING {
                ws.send(Message::text(PONG)).await?;
                continue;
            }
            if t.contains("\"error\"") {
                bail!("server error: {t}");
            }
        }
    }
    bail!("closed while waiting for {prefix}")
}

/// `n` pairs, `a{i}` on `url_a` pairing with `b{i}` on `url_b`.
async fn pairs(url_a: &str, url_b: &str, n: usize, prefix: &str) -> anyhow::Result<Vec<(Ws, Ws)>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (ia, ib) = (format!("{prefix}a{i}"), format!("{prefix}b{i}"));
        let mut a = connect(url_a, &ia).await?;
        let mut b = connect(url_b, &ib).await?;
        a.send(Message::text(
            json!({"type":"pair","peer_id":ib}).to_string(),
        ))
        .await?;
        wait_for(&mut a, r#"{"type":"paired""#).await?;
        wait_for(&mut b, r#"{"type":"paired""#).await?;
        out.push((a, b));
    }
    Ok(out)
}

/// Frames bounced between `n` pairs with `window` in flight each, for
/// `dur` after a second's warm-up; calls `start` when the window opens
/// and `stop` when it closes. Frames received in the window.
pub fn relay(
    url_a: &str,
    url_b: &str,
    n: usize,
    window: usize,
    dur: Duration,
    prefix: &str,
    mut start: impl FnMut(),
) -> anyhow::Result<(u64, f64)> {
    rt()?.block_on(async {
        let pairs = pairs(url_a, url_b, n, prefix).await?;
        let frame = candidate(0);
        let sides = pairs
            .into_iter()
            .map(|(a, b)| {
                let side = |ws| Side {
                    ws,
                    frame: frame.clone(),
                };
                (side(a), side(b))
            })
            .collect();
        let received = relay_window(sides, window, Proto::Signald);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let c0 = received.load(Ordering::Relaxed);
        let t0 = Instant::now();
        start();
        tokio::time::sleep(dur).await;
        Ok((
            received.load(Ordering::Relaxed) - c0,
            t0.elapsed().as_secs_f64(),
        ))
    })
}

/// Send → receipt times (µs) of `rate` frames/s from each of `n` pairs'
/// initiators, for `dur` after a second's warm-up.
pub fn latency(
    url_a: &str,
    url_b: &str,
    n: usize,
    rate: f64,
    dur: Duration,
    prefix: &str,
) -> anyhow::Result<Vec<u64>> {
    rt()?.block_on(async {
        let pairs = pairs(url_a, url_b, n, prefix).await?;
        let base = Instant::now();
        let now_us = move || base.elapsed().as_micros() as u64;
        let from = now_us() + 1_000_000;
        let to = from + dur.as_micros() as u64;
        let period = Duration::from_secs_f64(1.0 / rate);
        let mut receivers = Vec::new();
        for (i, (mut a, mut b)) in pairs.into_iter().enumerate() {
            let offset = period.mul_f64(i as f64 / n.max(1) as f64);
            tokio::spawn(async move {
                tokio::time::sleep(offset).await;
                let mut tick = tokio::time::interval(period);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            if now_us() > to + 500_000 { break; }
                            a.send(Message::text(candidate(now_us()))).await?;
                        }
                        msg = a.next() => match msg {
                            Some(Ok(Message::Text(t))) if t.as_str() == PING => a.send(Message::text(PONG)).await?,
                            Some(Ok(_)) => {}
                            _ => break,
                        },
                    }
                }
                anyhow::Ok(())
            });
            receivers.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(2), b.next()).await {
                    let Message::Text(t) = msg else { continue };
                    if t.as_str() == PING {
                        b.send(Message::text(PONG)).await?;
                        continue;
                    }
                    let got = now_us();
                    let v: serde_json::Value = serde_json::from_str(&t)?;
                    let Some(sent) = v["candidate"]["sdpMid"].as_str().and_then(|s| s.parse::<u64>().ok()) else {
                        continue;
                    };
                    if (from..to).contains(&sent) {
                        mine.push(got - sent);
                    }
                    if sent >= to {
                        break;
                    }
                }
                anyhow::Ok(mine)
            }));
        }
        let mut all = Vec::new();
        for r in receivers {
            all.extend(r.await??);
        }
        all.sort_unstable();
        Ok(all)
    })
}

/// For each link, `n` pairs of clients (`a` on its first URL, `b` on its
/// second) that pair, see `paired` on both sides, unpair and see the
/// notice, over and over for `dur`: completed pairings.
pub fn pairings(
    links: &[(&str, &str)],
    n: usize,
    dur: Duration,
    prefix: &str,
) -> anyhow::Result<(u64, f64)> {
    rt()?.block_on(async {
        let mut clients = Vec::new();
        for (k, (url_a, url_b)) in links.iter().enumerate() {
            for i in 0..n {
                let (ia, ib) = (format!("{prefix}{k}a{i}"), format!("{prefix}{k}b{i}"));
                clients.push((connect(url_a, &ia).await?, connect(url_b, &ib).await?, ib));
            }
        }
        let done = Arc::new(AtomicU64::new(0));
        let t0 = Instant::now();
        let end = t0 + dur;
        let mut tasks = Vec::new();
        for (mut a, mut b, ib) in clients {
            let done = done.clone();
            tasks.push(tokio::spawn(async move {
                let pair = json!({"type":"pair","peer_id":ib}).to_string();
                let unpair = json!({"type":"unpair"}).to_string();
                while Instant::now() < end {
                    a.send(Message::text(pair.clone())).await?;
                    wait_for(&mut a, r#"{"type":"paired""#).await?;
                    wait_for(&mut b, r#"{"type":"paired""#).await?;
                    a.send(Message::text(unpair.clone())).await?;
                    wait_for(&mut b, r#"{"type":"peer_disconnected""#).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok((done.load(Ordering::Relaxed), t0.elapsed().as_secs_f64()))
    })
}
