//! The node's life in the cluster: joining under a fresh incarnation name,
//! heartbeats, fencing, reaping dead nodes, and the figures for `/metrics`.
//!
//! Every heartbeat period the node task:
//! - heartbeats (the script refuses an incarnation past its deadline: it
//!   is then dead, and the node fences itself);
//! - takes up to a few batches of a dead node's clients (any node may;
//!   each client is taken once), so a dead node's pairings end within
//!   dead-after plus one period, each survivor told once;
//! - retries the releases that Redis missed, then reads the cluster's
//!   figures.
//!
//! A fenced node (declared dead, or unable to heartbeat past its deadline)
//! rejoins as soon as Redis answers: a new incarnation, an empty table.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::{Instant, MissedTickBehavior};
use tracing::{info, warn};

use super::{Inner, REAP_BATCH, Throttled, inbox};
use crate::directory::slot::lock;

/// Batches of a dead node's clients reaped per period at most, so that
/// one node's death does not hold up the heartbeat behind it.
const REAP_ROUNDS: usize = 16;

/// Joins the cluster as a new incarnation and starts its inbox reader.
pub async fn join(i: &Arc<Inner>) -> anyhow::Result<()> {
    let mut suffix = [0u8; 4];
    getrandom::fill(&mut suffix).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let hex: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let inc: Arc<str> = format!("{}.{hex}", i.cfg.node_id).into();
    let sent = Instant::now();
    let r = i.call(&i.scripts.join, &inc, &[]).await?;
    match r.first().map(String::as_str) {
        Some("ok") => {}
        Some("mismatch") => anyhow::bail!(
            "the live nodes use --cluster-dead-after {}ms, this node {}ms: give every node the same",
            r.get(1).map(String::as_str).unwrap_or("?"),
            i.cfg.dead_after.as_millis()
        ),
        other => anyhow::bail!("unexpected answer {other:?}"),
    }
    let start = r.get(1).cloned().unwrap_or_default();
    let Some(inc_no) = i.local.begin(inc.clone()) else {
        // Stopped meanwhile (SIGTERM during a rejoin): leave again.
        i.call(&i.scripts.leave, &inc, &[]).await?;
        return Ok(());
    };
    i.seen
        .send_replace((inc_no, super::relay::entry_pos(&start).unwrap_or((0, 0))));
    i.deadline
        .store(i.ms_since_base(sent + i.cfg.dead_after), Ordering::Relaxed);
    i.redis_ok.store(true, Ordering::Relaxed);
    i.counters.joins.fetch_add(1, Ordering::Relaxed);
    info!(incarnation = %inc, "joined the cluster");
    tokio::spawn(inbox::run(i.clone(), inc, inc_no, start));
    Ok(())
}

/// The node task, until the node leaves the cluster.
pub async fn run(i: Arc<Inner>) {
    let mut tick = tokio::time::interval(i.cfg.heartbeat);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut rejoin_failed = Throttled::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = i.wake.notified() => {}
        }
        if i.local.is_stopped() {
            return;
        }
        match i.local.current() {
            Some((inc, inc_no)) => beat(&i, &inc, inc_no).await,
            None => {
                if let Err(e) = join(&i).await {
                    i.redis_ok.store(false, Ordering::Relaxed);
                    if rejoin_failed.now() {
                        warn!("rejoining the cluster: {e:#}");
                    }
                }
            }
        }
    }
}

async fn beat(i: &Arc<Inner>, inc: &str, inc_no: u64) {
    let sent = Instant::now();
    match i.call(&i.scripts.heartbeat, inc, &[]).await {
        Ok(r) if r.first().map(String::as_str) == Some("ok") => {
            i.redis_ok.store(true, Ordering::Relaxed);
            if i.local.is_current(inc_no) {
                i.deadline
                    .store(i.ms_since_base(sent + i.cfg.dead_after), Ordering::Relaxed);
            }
        }
        Ok(_) => {
            i.redis_ok.store(true, Ordering::Relaxed);
            i.fence(
                inc_no,
                "Redis has declared this node dead (it missed its deadline)",
            );
            return;
        }
        Err(e) => {
            i.redis_ok.store(false, Ordering::Relaxed);
            warn!("heartbeat: {e}");
            // Fences itself once the deadline passes.
            i.alive_locally();
            return;
        }
    }
    reap(i, inc, inc_no).await;
    retry_releases(i, inc, inc_no).await;
    stats(i, inc).await;
}

async fn reap(i: &Arc<Inner>, inc: &str, inc_no: u64) {
    let batch = REAP_BATCH.to_string();
    for _ in 0..REAP_ROUNDS {
        let Ok(r) = i.call(&i.scripts.reap, inc, &[&batch]).await else {
            return;
        };
        match r.first().map(String::as_str) {
            Some("reaped") => {
                let n: u64 = r.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
                let left = r.get(3).map(String::as_str).unwrap_or("?");
                i.counters.reaped.fetch_add(n, Ordering::Relaxed);
                info!(
                    dead = r.get(1).map(String::as_str).unwrap_or("?"),
                    clients = n,
                    left,
                    "reaped a dead node's clients"
                );
            }
            Some("fenced") => return i.fence(inc_no, "Redis has declared this node dead"),
            _ => return,
        }
    }
}

async fn retry_releases(i: &Arc<Inner>, inc: &str, inc_no: u64) {
    let todo = std::mem::take(&mut *lock(&i.pending));
    let mut again = Vec::new();
    for r in todo {
        if r.inc_no != inc_no {
            continue;
        }
        let res = i
            .call(
                &i.scripts.release,
                inc,
                &[&r.id, &r.conn.to_string(), r.reason.as_str()],
            )
            .await;
        if res.is_err() {
            again.push(r);
        }
    }
    lock(&i.pending).extend(again);
}

async fn stats(i: &Arc<Inner>, inc: &str) {
    let Ok(r) = i.call(&i.scripts.stats, inc, &[]).await else {
        return;
    };
    i.counters.cluster.store(&r);
}
