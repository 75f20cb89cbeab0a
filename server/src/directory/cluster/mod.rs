//! `--cluster redis://HOST:PORT[/DB]`: several signald nodes, one ID space.
//!
//! Redis is the one authority for who holds which ID and who is paired with
//! whom; every change is one Lua script ([`scripts`]), so claims, pairings
//! and endings are atomic across nodes and each ended pairing is announced
//! exactly once. Each node keeps what it needs to serve its own clients
//! ([`local`]): their outboxes ([`Slot`]s, as in one process) and a cache
//! of their pairings, changed only in the order Redis made the changes: by
//! the node's inbox, a Redis stream that the scripts and the other nodes
//! write to and one task reads ([`inbox`]). Relayed frames to a client of
//! another node go into that node's inbox, many to a round trip
//! ([`relay`]); between two clients
//! of one node they go straight into the outbox, without Redis.
//!
//! Liveness ([`node`]): each node heartbeats; a node silent for longer than
//! dead-after is declared dead and reaped by the others (its pairings ended,
//! each survivor told once, its IDs reserved to their tokens). A node that
//! cannot heartbeat in time fences itself: it closes its clients (1013) and
//! rejoins under a new incarnation name, never acting on state it may no
//! longer own; Redis refuses every script from an incarnation past its
//! deadline anyway.
//!
//! The client crate is redis-rs (`redis` 1.x with tokio): its
//! `ConnectionManager` reconnects in the background and multiplexes every
//! task's commands over one connection in the order they were issued (the
//! node's one writer of relayed frames relies on it, see [`relay`]), its
//! `Script` runs `EVALSHA` and reloads a script a restarted Redis forgot,
//! and it adds ten small crates to the build. `fred` has more (pools,
//! managed pub/sub, Sentinel) and brings about twenty new crates, a second
//! `socket2` and `rand` among them; nothing here needs what it adds.

mod inbox;
mod local;
mod node;
mod relay;
mod scripts;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use p2p_proto::signal::{DisconnectReason, ErrorCode, valid_id};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use tungstenite::Utf8Bytes;

use crate::budget::Budget;
use crate::directory::policy::{Outboxes, Relay};
use crate::directory::slot::{Kick, QueueLimits, Slot, lock};
use crate::directory::{Refusal, Relayed};
use crate::id;
use crate::metrics::{ClusterFigures, Counts};
use crate::reserve::Holder;

use local::Local;
use relay::Outgoing;
use scripts::Scripts;

/// How long one Redis command may take before the node gives up on it:
/// a script runs in microseconds, so a second means Redis (or the way to
/// it) is in trouble, and the client waiting for it gets a clear 1013
/// instead of hanging.
const OP_TIMEOUT: Duration = Duration::from_secs(1);

/// Connecting to Redis, at start and on reconnects.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Clients of a dead node freed per reap script: bounded so that one
/// script never holds Redis for long (Redis runs nothing else meanwhile).
const REAP_BATCH: usize = 256;

/// A warning about a failure that repeats every retry (a rejoin, a read of
/// the inbox), said once every few seconds instead of every period.
#[derive(Debug, Default)]
struct Throttled {
    said: Option<Instant>,
}

impl Throttled {
    const EVERY: Duration = Duration::from_secs(5);

    /// Whether to say it now; if so, the next time is [`EVERY`](Self::EVERY) on.
    fn now(&mut self) -> bool {
        let due = self.said.is_none_or(|t| t.elapsed() >= Self::EVERY);
        if due {
            self.said = Some(Instant::now());
        }
        due
    }
}

/// How the node takes part in a cluster (`--cluster` and its companions).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://[USER:PASSWORD@]HOST:PORT[/DB]`, or `rediss://` for TLS.
    pub url: String,
    /// With `rediss://`: the CA certificates (PEM) that Redis's certificate
    /// must chain to, instead of the system's.
    pub ca: Option<PathBuf>,
    /// What every key of this cluster starts with, so that several
    /// clusters (or other users) can share one Redis: 1-64 of
    /// `A-Z a-z 0-9 - _ . :`. The same on every node.
    pub prefix: String,
    /// This node's name in logs and metrics; each incarnation adds a suffix.
    pub node_id: String,
    /// How often the node tells Redis it is alive.
    pub heartbeat: Duration,
    /// A node silent for longer is dead; the same on every node (a node
    /// with another value is refused while others are live).
    pub dead_after: Duration,
    /// Under load, how long the node gathers frames for other nodes after
    /// each pipeline before it sends the next (0: never). signald passes
    /// its `--coalesce` window; the `relay` module says why and what it
    /// costs.
    pub gather: Duration,
}

/// Whether `s` is 1 to `max` of `A-Z a-z 0-9 - _ .`: a node ID, or (with
/// its `.` and eight hex digits) an incarnation.
pub(crate) fn valid_node_name(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The key prefix when `--cluster-prefix` is not given.
pub const DEFAULT_PREFIX: &str = "sd:";

impl ClusterConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=64).contains(&self.prefix.len())
                && self
                    .prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)),
            "--cluster-prefix must be 1-64 of A-Z a-z 0-9 - _ . :"
        );
        anyhow::ensure!(
            valid_node_name(&self.node_id, 64),
            "--node-id must be 1-64 of A-Z a-z 0-9 - _ ."
        );
        anyhow::ensure!(
            !self.heartbeat.is_zero(),
            "--cluster-heartbeat must be positive"
        );
        // Two heartbeats lost in a row (a slow Redis, a short blip) must
        // not kill a node.
        anyhow::ensure!(
            self.dead_after >= self.heartbeat * 3,
            "--cluster-dead-after ({:?}) must be at least three --cluster-heartbeat ({:?})",
            self.dead_after,
            self.heartbeat
        );
        redis::Client::open(self.url.as_str())
            .map_err(|e| anyhow::anyhow!("--cluster {}: {e}", redacted(&self.url)))?;
        Ok(())
    }
}

/// The URL without a password, for logs and errors.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// A peer on another node: where its frames go.
#[derive(Debug)]
pub struct Remote {
    id: Arc<str>,
    conn: u64,
    /// That node's inbox key.
    inbox: String,
}

impl Remote {
    fn new(prefix: &str, id: &str, node: &str, conn: u64) -> Remote {
        Remote {
            id: id.into(),
            conn,
            inbox: relay::inbox_key(prefix, node),
        }
    }

    pub fn id(&self) -> &Arc<str> {
        &self.id
    }
}

/// What the node cannot do without Redis: the client is closed with 1013.
#[derive(Debug)]
pub struct Unavailable;

/// A connection ended while Redis could not be told: retried until it is
/// (or until this incarnation is fenced, when the reaper frees it).
struct Release {
    inc_no: u64,
    id: Arc<str>,
    conn: u64,
    reason: DisconnectReason,
}

/// Cluster counters beside the server's metrics (`crate::metrics`).
#[derive(Default)]
struct Counters {
    joins: AtomicU64,
    fences: AtomicU64,
    redis_errors: AtomicU64,
    relayed_out: AtomicU64,
    relayed_in: AtomicU64,
    stale_dropped: AtomicU64,
    rejected: AtomicU64,
    reaped: AtomicU64,
    /// The last figures read from Redis.
    cluster: Shared,
}

/// The cluster-wide figures the STATS script returns, in its order.
#[derive(Default)]
struct Shared {
    nodes: AtomicU64,
    clients: AtomicU64,
    pairings: AtomicU64,
    reserved: AtomicU64,
    reservations_evicted: AtomicU64,
    reservations_refused: AtomicU64,
    dead_nodes: AtomicU64,
}

impl Shared {
    /// Takes the STATS script's answer.
    fn store(&self, figures: &[String]) {
        let slots = [
            &self.nodes,
            &self.clients,
            &self.pairings,
            &self.reserved,
            &self.reservations_evicted,
            &self.reservations_refused,
            &self.dead_nodes,
        ];
        for (slot, v) in slots.into_iter().zip(figures) {
            slot.store(v.parse().unwrap_or(0), Ordering::Relaxed);
        }
    }
}

struct Inner {
    cfg: ClusterConfig,
    client: redis::Client,
    redis: ConnectionManager,
    scripts: Scripts,
    max_clients: usize,
    reserve_ms: u64,
    reserve_per_addr: usize,
    /// The largest relayed frame a client of this cluster can be sent.
    max_frame: usize,
    outboxes: Outboxes,
    /// Frames for clients of other nodes, on their way to Redis.
    outgoing: Outgoing,
    counters: Counters,
    local: Local,
    /// (incarnation number, last inbox entry applied): what the
    /// barrier after a script waits for.
    seen: watch::Sender<(u64, (u64, u64))>,
    /// Ms since `base` until which this incarnation is surely alive in
    /// Redis's view (its last acknowledged heartbeat was sent before it);
    /// 0 while not live.
    deadline: AtomicU64,
    base: Instant,
    /// Whether the last heartbeat reached Redis.
    redis_ok: AtomicBool,
    conns: AtomicU64,
    pending: std::sync::Mutex<Vec<Release>>,
    /// Wakes the node task (a fence to act on, shutdown).
    wake: Notify,
}

/// This node's handle on the cluster; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl Cluster {
    /// Connects to Redis and joins: a clear error if Redis cannot be
    /// reached or the cluster disagrees with this node's dead-after.
    pub async fn join(
        cfg: ClusterConfig,
        max_clients: usize,
        reserve: Duration,
        reserve_per_addr: usize,
        max_frame: usize,
        queue: QueueLimits,
        budget: Arc<Budget>,
    ) -> anyhow::Result<Cluster> {
        cfg.validate()?;
        let where_ = redacted(&cfg.url);
        let client = match &cfg.ca {
            None => redis::Client::open(cfg.url.as_str()),
            Some(ca) => {
                anyhow::ensure!(
                    cfg.url.starts_with("rediss://"),
                    "--cluster-ca is for a rediss:// URL, and --cluster is {where_}"
                );
                let pem = std::fs::read(ca)
                    .map_err(|e| anyhow::anyhow!("--cluster-ca {}: {e}", ca.display()))?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                redis::Client::build_with_tls(cfg.url.as_str(), certs)
            }
        }
        .map_err(|e| anyhow::anyhow!("--cluster {where_}: {e}"))?;
        let mcfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let redis = client
            .get_connection_manager_with_config(mcfg)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach Redis at {where_}: {e}"))?;
        let inner = Arc::new(Inner {
            cfg,
            client,
            redis,
            scripts: Scripts::new(),
            max_clients,
            reserve_ms: reserve.as_millis() as u64,
            reserve_per_addr,
            max_frame,
            // What waits for Redis is held to an eighth of the budget for
            // what waits for clients.
            outgoing: Outgoing::new(budget.max() / 8),
            outboxes: Outboxes::new(queue, budget),
            counters: Counters::default(),
            local: Local::new(),
            seen: watch::Sender::new((0, (0, 0))),
            deadline: AtomicU64::new(0),
            base: Instant::now(),
            redis_ok: AtomicBool::new(false),
            conns: AtomicU64::new(1),
            pending: std::sync::Mutex::new(Vec::new()),
            wake: Notify::new(),
        });
        node::join(&inner).await.map_err(|e| {
            let e = e.to_string();
            // Redis's own words name neither the prefix nor the fix.
            let hint = if e.contains("NOPERM") || e.contains("can't access") {
                format!(
                    " (the Redis user may not use the keys under --cluster-prefix {:?}: \
                     its ACL needs ~{}*)",
                    inner.cfg.prefix, inner.cfg.prefix
                )
            } else {
                String::new()
            };
            anyhow::anyhow!("joining the cluster at {where_}: {e}{hint}")
        })?;
        tokio::spawn(node::run(inner.clone()));
        tokio::spawn(relay::run(inner.clone()));
        Ok(Cluster { inner })
    }

    pub(in crate::directory) fn outboxes(&self) -> &Outboxes {
        &self.inner.outboxes
    }

    /// Whether `/healthz` may say ok: live, and the last heartbeat arrived.
    pub fn healthy(&self) -> Result<(), &'static str> {
        if !self.inner.local.is_live() {
            return Err("fenced: not part of the cluster now\n");
        }
        if !self.inner.redis_ok.load(Ordering::Relaxed) {
            return Err("cannot reach Redis\n");
        }
        Ok(())
    }

    /// This node's clients, reserved IDs (cluster-wide), reservations
    /// evicted (cluster-wide): the figures `/metrics` always shows.
    pub fn counts(&self) -> Counts {
        let c = &self.inner.counters.cluster;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            clients: self.inner.local.clients(),
            reserved: load(&c.reserved) as usize,
            reservations_evicted: load(&c.reservations_evicted),
            reservations_refused: load(&c.reservations_refused),
        }
    }

    /// Pairings with a side on this node (one between two of its clients
    /// counts once).
    pub fn pairings(&self) -> usize {
        self.inner.local.pairings()
    }

    pub fn figures(&self) -> ClusterFigures {
        let i = &self.inner;
        let c = &i.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (live, incarnation) = i.local.incarnation();
        ClusterFigures {
            node: i.cfg.node_id.clone(),
            incarnation: incarnation.map(|s| s.to_string()).unwrap_or_default(),
            live,
            redis_ok: i.redis_ok.load(Ordering::Relaxed),
            joins: load(&c.joins),
            fences: load(&c.fences),
            redis_errors: load(&c.redis_errors),
            relayed_out: load(&c.relayed_out),
            relayed_in: load(&c.relayed_in),
            stale_dropped: load(&c.stale_dropped),
            rejected: load(&c.rejected),
            reaped: load(&c.reaped),
            pending_releases: lock(&i.pending).len() as u64,
            nodes: load(&c.cluster.nodes),
            clients: load(&c.cluster.clients),
            pairings: load(&c.cluster.pairings),
            dead_nodes: load(&c.cluster.dead_nodes),
        }
    }

    /// Registers a client (see `Directory::register` for the order of
    /// checks, which the claim script keeps).
    pub async fn register(
        &self,
        requested: Option<String>,
        token: Option<String>,
        from: IpAddr,
        welcome: impl Fn(&str) -> Utf8Bytes,
    ) -> Result<Arc<Slot>, Refusal> {
        let i = &self.inner;
        // A random ID is drawn again if taken; 72 bits make a second draw
        // already a rarity.
        for _ in 0..8 {
            let random = requested.is_none();
            let id: Arc<str> = match &requested {
                Some(id) => id.as_str().into(),
                None => id::random_id().into(),
            };
            let holder = token.as_deref().map(|t| Holder::new(&id, t, from));
            let tok = holder.map(|h| h.hash.hex()).unwrap_or_default();
            let addr = holder.map(|h| h.from.to_string()).unwrap_or_default();
            let conn = i.conns.fetch_add(1, Ordering::Relaxed);
            let budget = i.outboxes.budget().clone();
            let slot = Arc::new(Slot::new(id.clone(), holder, conn, budget));
            // Queued and in the table before the claim: once Redis has it,
            // events for it may arrive at once, and must find it.
            i.outboxes.first(&slot, welcome(&id));
            let (inc, inc_no, room) = i.local.insert(&slot, i.max_clients)?;
            let conn_s = conn.to_string();
            let res = i
                .call(
                    &i.scripts.claim,
                    &inc,
                    &[
                        &id,
                        &conn_s,
                        &tok,
                        if room { "1" } else { "0" },
                        if random { "1" } else { "0" },
                        &addr,
                    ],
                )
                .await;
            let refusal = match res.as_deref().map(|v| v.first().map(String::as_str)) {
                Ok(Some("ok")) => {
                    let m = i.outboxes.metrics();
                    m.connected();
                    return Ok(slot);
                }
                Ok(Some("retry")) => None,
                Ok(Some("id_taken")) => Some(Refusal::IdTaken),
                Ok(Some("full")) => Some(Refusal::ServerFull),
                Ok(Some("fenced")) => {
                    i.fence(inc_no, "Redis says this node is dead");
                    Some(Refusal::Unavailable)
                }
                Ok(other) => {
                    warn!("claim: unexpected answer {other:?}");
                    Some(Refusal::Unavailable)
                }
                Err(_) => {
                    // It may have run: undo it, now or once Redis is back.
                    i.defer_release(inc_no, id.clone(), conn, DisconnectReason::Left);
                    Some(Refusal::Unavailable)
                }
            };
            i.local.remove(&slot);
            if let Some(r) = refusal {
                return Err(r);
            }
        }
        Err(Refusal::Unavailable)
    }

    /// Pairs `a` with `peer_id` (the contract's order of checks); on
    /// success returns once `a`'s node has applied the pairing, so the
    /// client's next frame already goes to its peer.
    pub async fn pair(
        &self,
        a: &Arc<Slot>,
        peer_id: &str,
    ) -> Result<Result<(), ErrorCode>, Unavailable> {
        let i = &self.inner;
        let Some((inc, inc_no)) = i.local.owner(a) else {
            // Fenced away or being removed: closing anyway.
            return Ok(Ok(()));
        };
        // An ID nobody can hold is asked for as the empty one (no ID is
        // empty): still `unknown_peer` after `already_paired`, which only
        // Redis knows for sure.
        let peer = if valid_id(peer_id) { peer_id } else { "" };
        let r = i
            .call(
                &i.scripts.pair,
                &inc,
                &[a.id(), &a.conn().to_string(), peer],
            )
            .await;
        self.pair_answer(inc_no, r).await
    }

    async fn pair_answer(
        &self,
        inc_no: u64,
        r: redis::RedisResult<Vec<String>>,
    ) -> Result<Result<(), ErrorCode>, Unavailable> {
        let i = &self.inner;
        let r = r.map_err(|_| Unavailable)?;
        // Whatever the answer, this node first applies what Redis had for
        // its clients by then (see `scripts::tail`).
        if let Some(id) = r.get(1) {
            i.applied(inc_no, id).await?;
        }
        match r.first().map(String::as_str) {
            Some("ok") => Ok(Ok(())),
            Some("already_paired") => Ok(Err(ErrorCode::AlreadyPaired)),
            Some("unknown_peer") => Ok(Err(ErrorCode::UnknownPeer)),
            Some("peer_busy") => Ok(Err(ErrorCode::PeerBusy)),
            Some("not_paired") => Ok(Err(ErrorCode::NotPaired)),
            Some("gone") => Ok(Ok(())),
            Some("fenced") => {
                i.fence(inc_no, "Redis says this node is dead");
                Err(Unavailable)
            }
            other => {
                warn!("unexpected script answer {other:?}");
                Err(Unavailable)
            }
        }
    }

    /// Ends `a`'s pairing; its peer is told `unpaired`, after the frames
    /// `a` relayed before (see [`relay`]).
    pub async fn unpair(&self, a: &Arc<Slot>) -> Result<Result<(), ErrorCode>, Unavailable> {
        let i = &self.inner;
        let Some((inc, inc_no)) = i.local.owner(a) else {
            return Ok(Ok(()));
        };
        i.outgoing.barrier().await?;
        let r = i
            .call(&i.scripts.unpair, &inc, &[a.id(), &a.conn().to_string()])
            .await;
        self.pair_answer(inc_no, r).await
    }

    /// Relays a frame to `a`'s current peer: into its outbox on this node,
    /// into the queue for its node's inbox otherwise. Never waits.
    pub fn relay(&self, a: &Arc<Slot>, frame: Utf8Bytes) -> Result<Relayed, Unavailable> {
        let i = &self.inner;
        if !i.alive_locally() {
            return Err(Unavailable);
        }
        match i.outboxes.relay(a, frame, || i.local.table()) {
            Relay::Here => Ok(Relayed::Ok),
            Relay::NotPaired => Ok(Relayed::NotPaired),
            Relay::Elsewhere { to, pairing, frame } => {
                i.outgoing.send(a, to, pairing, frame)?;
                i.counters.relayed_out.fetch_add(1, Ordering::Relaxed);
                let m = i.outboxes.metrics();
                m.relayed();
                Ok(Relayed::Ok)
            }
        }
    }

    /// Queues a frame for the client itself (see [`crate::directory::policy`]).
    pub fn send_own(&self, slot: &Arc<Slot>, frame: Utf8Bytes) {
        let i = &self.inner;
        i.outboxes.send_own(slot, frame, || i.local.table());
    }

    /// The connection ended: out of the table, and in Redis its pairing
    /// ended (the peer told `reason`) and its ID freed or reserved.
    pub async fn remove(&self, slot: &Arc<Slot>, reason: DisconnectReason) {
        let i = &self.inner;
        slot.end(Kick::Own);
        // Its own view of the pairing goes now: no cycle keeps it alive.
        slot.link().take();
        let Some((inc, inc_no)) = i.local.remove(slot) else {
            // Fenced away: the reaper frees it.
            return;
        };
        // Its notice goes after the frames it relayed. If Redis did not
        // take them, the release may find them first; it is retried below
        // either way.
        let _ = i.outgoing.barrier().await;
        let r = i
            .call(
                &i.scripts.release,
                &inc,
                &[slot.id(), &slot.conn().to_string(), reason.as_str()],
            )
            .await;
        match r.as_deref().map(|v| v.first().map(String::as_str)) {
            Ok(Some("ok" | "gone")) => {}
            Ok(Some("fenced")) => i.fence(inc_no, "Redis says this node is dead"),
            Ok(other) => warn!("release: unexpected answer {other:?}"),
            Err(_) => i.defer_release(inc_no, slot.id().clone(), slot.conn(), reason),
        }
    }

    /// SIGTERM: every client ends with 1001; the connection tasks then
    /// release them (peers on other nodes are told `left`).
    pub fn shutdown(&self) {
        self.inner.local.shutdown();
    }

    /// After the clients closed: leave the cluster (whatever is left is
    /// reaped) and stop the node's tasks.
    pub async fn leave(&self) {
        let i = &self.inner;
        if let Some((inc, _)) = i.local.stop() {
            match i.call(&i.scripts.leave, &inc, &[]).await {
                Ok(_) => info!(incarnation = %inc, "left the cluster"),
                Err(e) => warn!("leaving the cluster: {e} (the others will reap this node)"),
            }
        }
        i.outgoing.stop();
        i.incarnation_over();
        i.wake.notify_one();
    }
}

impl Inner {
    /// Runs a script with the common arguments; counts failures.
    async fn call(
        &self,
        script: &redis::Script,
        inc: &str,
        extra: &[&str],
    ) -> redis::RedisResult<Vec<String>> {
        let mut inv = script.prepare_invoke();
        inv.arg(self.cfg.dead_after.as_millis() as u64)
            .arg(inc)
            .arg(self.reserve_ms)
            .arg(self.max_clients)
            .arg(&self.cfg.prefix)
            .arg(self.reserve_per_addr);
        for a in extra {
            inv.arg(*a);
        }
        let mut con = self.redis.clone();
        let r = inv.invoke_async(&mut con).await;
        if let Err(e) = &r {
            self.counters.redis_errors.fetch_add(1, Ordering::Relaxed);
            debug!("redis: {e}");
        }
        r
    }

    fn ms_since_base(&self, t: Instant) -> u64 {
        (t.saturating_duration_since(self.base).as_millis() as u64).max(1)
    }

    /// Whether this incarnation is still surely alive; past the deadline
    /// the node fences itself at once (before the heartbeat task, which a
    /// pause may have left behind).
    fn alive_locally(&self) -> bool {
        let d = self.deadline.load(Ordering::Relaxed);
        if d == 0 {
            return false;
        }
        if self.ms_since_base(Instant::now()) < d {
            return true;
        }
        if let Some((_, inc_no)) = self.local.current() {
            self.fence(inc_no, "past its deadline without a heartbeat");
        }
        false
    }

    /// Waits until the inbox reader applied entry `id` of incarnation
    /// `inc_no` (the change a script just made to this node's clients).
    async fn applied(&self, inc_no: u64, id: &str) -> Result<(), Unavailable> {
        let Some(target) = relay::entry_pos(id) else {
            return Ok(());
        };
        let mut rx = self.seen.subscribe();
        let waited = tokio::time::timeout(
            OP_TIMEOUT * 2,
            rx.wait_for(|(n, pos)| *n != inc_no || *pos >= target),
        )
        .await;
        match waited {
            Ok(Ok(v)) if v.0 == inc_no => Ok(()),
            _ => Err(Unavailable),
        }
    }

    fn defer_release(&self, inc_no: u64, id: Arc<str>, conn: u64, reason: DisconnectReason) {
        lock(&self.pending).push(Release {
            inc_no,
            id,
            conn,
            reason,
        });
    }

    /// Leaves the cluster's state alone from now on: every client closed
    /// with 1013 and no notice sent; the node task rejoins under a new
    /// incarnation. Only the incarnation `inc_no` is fenced (a late call from
    /// an older one changes nothing).
    fn fence(&self, inc_no: u64, why: &str) {
        if self.local.fence(inc_no) {
            self.deadline.store(0, Ordering::Relaxed);
            lock(&self.pending).clear();
            self.counters.fences.fetch_add(1, Ordering::Relaxed);
            self.incarnation_over();
            warn!("fenced: {why}; clients closed, rejoining as a new incarnation");
            self.wake.notify_one();
        }
    }

    /// Tells barrier waiters and the inbox reader that the incarnation
    /// they wait on is over (numbers start at 1).
    fn incarnation_over(&self) {
        self.seen.send_replace((0, (0, 0)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_repeated_warning_is_said_once_every_few_seconds() {
        let mut t = Throttled::default();
        assert!(t.now(), "the first time");
        assert!(!t.now(), "not again at once");
        tokio::time::advance(Throttled::EVERY - Duration::from_millis(1)).await;
        assert!(!t.now(), "nor just before the period is over");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(t.now(), "then again");
        assert!(!t.now());
    }
}
