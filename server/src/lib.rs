//! signald: the WebSocket signaling server of the project.
//!
//! It gives each client an ID, pairs two clients on request and relays their
//! WebRTC `offer`, `answer` and `candidate` frames, re-serialised, to the
//! current peer only. `docs/protocol.md` is the contract in prose.
//!
//! [`run`] serves an already bound listener until `shutdown` resolves, so
//! tests run the real server in-process on `127.0.0.1:0`.

mod budget;
pub mod coalesce;
mod conn;
mod directory;
mod http;
mod id;
mod limits;
mod metrics;
pub mod proxy;
mod read_ahead;
mod reserve;
pub mod service;
pub mod tls;
pub mod turn;
mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use p2p_proto::signal::{IceServer, PROTOCOL_VERSION, ServerMsg};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{info, warn};
use tungstenite::Utf8Bytes;
use tungstenite::protocol::WebSocketConfig;

use crate::directory::Directory;
pub use crate::directory::cluster::{ClusterConfig, DEFAULT_PREFIX};
use crate::limits::{IpLimits, Limits, Refused};
use crate::metrics::Gauges;
pub use crate::proxy::Cidr;
pub use crate::tls::Tls;
pub use crate::turn::{TurnRest, TurnSecret};

/// jemalloc, not glibc's malloc. A frame is allocated by the task that
/// reads it and freed by the one that writes it, often on the other
/// worker thread; glibc frees it into the arena it came from, under that
/// arena's lock, and with two workers the lock was contended thousands
/// of times a second (a `futex` wake per contention: most of a cluster
/// node's `futex` calls in a profile). jemalloc's thread caches take such
/// frees without a lock. Measured (BENCHMARKS.md, round 11): 8-25 % less
/// CPU per relayed frame, and less memory per idle client. Set here, in
/// the library, so that the in-process tests run on it too.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Longest ping slot, in milliseconds.
const SLOT_MS: u64 = 20;

/// Everything the server needs to know; `main` builds it from the flags.
#[derive(Debug, Clone)]
pub struct Config {
    /// How often the server sends `ping`.
    pub ping_interval: Duration,
    /// A client silent for longer than this is closed with 4000.
    /// Must be longer than `ping_interval`.
    pub ping_timeout: Duration,
    /// Sent in every `welcome`; empty means none (never a default server).
    pub ice_servers: Vec<IceServer>,
    /// Registered clients at most; a replacement does not count.
    pub max_clients: usize,
    /// Largest message in bytes; exactly this many is allowed.
    pub max_message_bytes: usize,
    /// Token bucket refill, frames per second.
    pub rate_limit: u32,
    /// Token bucket size.
    pub rate_burst: u32,
    /// Byte budget of a client's frames: refill in bytes per second. A
    /// sender pays for its own bursts: one client cannot flood its peer's
    /// queue (and get the peer dropped as a slow reader) faster than this.
    pub rate_limit_bytes: u32,
    /// Byte budget size: bytes allowed in a burst (at least
    /// `max_message_bytes`, so that one largest message always fits).
    pub rate_burst_bytes: u32,
    /// Dropped frames after which the client is closed with 1008.
    pub rate_close_after: u32,
    /// Frames queued for one client before it is dropped as not reading.
    pub max_queue: usize,
    /// Bytes queued for one client (what its connection took and has not
    /// yet written included) before it is dropped as not reading. An empty
    /// queue always takes one frame, whatever its size.
    pub max_queue_bytes: usize,
    /// Bytes queued for all clients together; past it, the clients holding
    /// the most are dropped until the total is under seven eighths of it.
    pub max_buffered_bytes: usize,
    /// Open connections per client address (an IPv6 client counts by its
    /// /64); 0: no limit.
    pub max_conns_per_ip: usize,
    /// Connections per client address whose TLS handshake or request head
    /// is not complete; 0: no limit.
    pub max_handshakes_per_ip: usize,
    /// Handshakes in progress from everyone; 0: no limit.
    pub max_handshakes: usize,
    /// WebSocket upgrades per client address and second (token bucket
    /// refill; may be fractional); 0: no limit.
    pub registration_rate: f64,
    /// Upgrades per client address in a burst (token bucket size).
    pub registration_burst: u32,
    /// TCP peers whose `X-Forwarded-For` names the client (reverse
    /// proxies). Their own address is not limited; the client they name is.
    pub trusted_proxies: Vec<Cidr>,
    /// Time allowed for the HTTP request head.
    pub handshake_timeout: Duration,
    /// Time allowed for flushing and the close handshake when closing.
    pub close_grace: Duration,
    /// When set, a `welcome` carries fresh time-limited credentials for
    /// each TURN server in `ice_servers` that has none of its own, renewed
    /// (an `ice_servers` frame) at half their lifetime while the client
    /// stays connected.
    pub turn: Option<TurnRest>,
    /// Clients of one address given TURN credentials in a burst, and per
    /// credential lifetime after it (IPv6: per /64); the others get the
    /// welcome without those servers. 0: no limit.
    pub turn_per_ip: u32,
    /// How long an ID registered with a token stays reserved to that token
    /// after its holder leaves (zero: not at all).
    pub id_reserve: Duration,
    /// Reservations held for clients of one address (an IPv6 client
    /// counts by its /64); past it the address's own oldest is dropped,
    /// never another's. 0: no quota (only `max_clients` in all).
    pub id_reserve_per_ip: usize,
    /// When set, the listener speaks TLS (`wss://`, and https for
    /// `/healthz` and `/metrics`); the handshake is bounded by
    /// `handshake_timeout` like the request head.
    pub tls: Option<Arc<Tls>>,
    /// When set, this node shares one ID space with every other node on
    /// the same Redis (`--cluster`); otherwise everything is in memory.
    pub cluster: Option<ClusterConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(45),
            ice_servers: Vec::new(),
            max_clients: 100_000,
            max_message_bytes: 64 * 1024,
            rate_limit: 100,
            rate_burst: 200,
            rate_limit_bytes: 64 * 1024,
            rate_burst_bytes: 256 * 1024,
            rate_close_after: 100,
            max_queue: 256,
            max_queue_bytes: 1024 * 1024,
            max_buffered_bytes: 256 * 1024 * 1024,
            max_conns_per_ip: 1024,
            max_handshakes_per_ip: 64,
            max_handshakes: 4096,
            registration_rate: 100.0,
            registration_burst: 1000,
            trusted_proxies: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            close_grace: Duration::from_secs(2),
            turn: None,
            turn_per_ip: 16,
            id_reserve: Duration::from_secs(24 * 3600),
            id_reserve_per_ip: 64,
            tls: None,
            cluster: None,
        }
    }
}

/// The largest frame signald relays for a client message of at most
/// `max_message` bytes: its `type` renamed and a `from` of at most 64
/// bytes added (and their JSON escapes, at most 6 bytes per byte of ID).
fn relayed_frame_max(max_message: usize) -> usize {
    max_message + 512
}

impl Config {
    /// Checks the relations between fields that flags cannot express.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.ping_interval.is_zero(),
            "--ping-interval must be positive"
        );
        anyhow::ensure!(
            self.ping_timeout > self.ping_interval,
            "--ping-timeout ({:?}) must be longer than --ping-interval ({:?})",
            self.ping_timeout,
            self.ping_interval
        );
        anyhow::ensure!(
            self.max_message_bytes > 0,
            "--max-message-bytes must be positive"
        );
        if let Some(t) = &self.turn {
            // Renewals go out at ping times, at half the lifetime.
            anyhow::ensure!(
                t.ttl >= self.ping_interval * 4 && t.ttl >= Duration::from_secs(2),
                "--turn-ttl ({:?}) must be at least 2s and four --ping-interval ({:?}): credentials are renewed at half their lifetime, at a ping",
                t.ttl,
                self.ping_interval
            );
        }
        anyhow::ensure!(self.rate_limit > 0, "--rate-limit must be positive");
        anyhow::ensure!(self.rate_burst > 0, "--rate-burst must be positive");
        anyhow::ensure!(
            self.rate_limit_bytes > 0,
            "--rate-limit-bytes must be positive"
        );
        anyhow::ensure!(
            self.rate_burst_bytes as usize >= self.max_message_bytes,
            "--rate-burst-bytes ({}) must be at least --max-message-bytes ({}), or the largest message could never pass",
            self.rate_burst_bytes,
            self.max_message_bytes
        );
        anyhow::ensure!(
            self.rate_close_after > 0,
            "--rate-close-after must be positive"
        );
        anyhow::ensure!(self.max_queue > 0, "--max-queue must be positive");
        anyhow::ensure!(
            self.max_queue_bytes > 0,
            "--max-queue-bytes must be positive"
        );
        anyhow::ensure!(
            self.max_buffered_bytes > 0,
            "--max-buffered-bytes must be positive"
        );
        anyhow::ensure!(
            self.registration_rate.is_finite() && self.registration_rate >= 0.0,
            "--registrations-per-ip must be a number of upgrades per second, 0 for no limit"
        );
        anyhow::ensure!(
            self.registration_rate == 0.0 || self.registration_burst > 0,
            "--registration-burst must be positive (or --registrations-per-ip 0)"
        );
        if let Some(turn) = &self.turn {
            anyhow::ensure!(!turn.ttl.is_zero(), "--turn-ttl must be positive");
            anyhow::ensure!(
                self.ice_servers.iter().any(|s| s.username.is_none()
                    && s.urls
                        .iter()
                        .any(|u| u.starts_with("turn:") || u.starts_with("turns:"))),
                "--turn-secret-file needs at least one --ice-server turn: or turns: URL \
                 without its own username and credential"
            );
        }
        if let Some(c) = &self.cluster {
            c.validate()?;
        }
        Ok(())
    }
}

/// State shared by every connection task.
struct Shared {
    cfg: Config,
    directory: Directory,
    limits: Arc<Limits>,
    /// Connections refused at accept that are still being answered.
    lingering: AtomicUsize,
    /// Whether the main listener serves `/metrics` (no `--metrics-listen`).
    metrics_public: bool,
    ws_config: WebSocketConfig,
    /// Origin of the ping slots.
    ping_origin: tokio::time::Instant,
    /// Pings are due on multiples of this, so that one timer wake-up sends
    /// many of them: idle clients then cost a batch, not a wake-up each.
    ping_slot: Duration,
}

impl Shared {
    /// Rounds a ping time up to the next slot: at most 20 ms, a twentieth of
    /// the interval, or a quarter of (timeout − interval) late. Deadlines
    /// are never rounded.
    fn ping_slot(&self, t: tokio::time::Instant) -> tokio::time::Instant {
        let slot = self.ping_slot.as_nanos().max(1);
        let since = t.saturating_duration_since(self.ping_origin).as_nanos();
        let up = since.div_ceil(slot) * slot;
        self.ping_origin + Duration::from_nanos(up as u64)
    }

    /// `/metrics`.
    fn render_metrics(&self) -> String {
        let counts = self.directory.counts();
        let budget = self.directory.budget();
        let mut body = self.directory.metrics().render(&Gauges {
            clients: counts.clients,
            pairings: self.directory.pairings(),
            reserved: counts.reserved,
            reservations_evicted: counts.reservations_evicted,
            reservations_refused: counts.reservations_refused,
            buffered: budget.used(),
            buffered_peak: budget.peak(),
            handshakes: self.limits.handshakes(),
            handshakes_shed: self.limits.shed(),
            turn_withheld: self.limits.turn_refused(),
            tracked_addresses: self.limits.tracked(),
            refused: Refused::ALL
                .iter()
                .map(|r| (*r, self.limits.refused(*r)))
                .collect(),
        });
        self.directory.render_metrics(&mut body);
        body
    }

    /// The ICE servers client `id` is given: with fresh TURN credentials
    /// (`turn`: its address had some left), else without the TURN servers
    /// that need them.
    fn ice_servers_for(&self, id: &str, turn: bool) -> Vec<p2p_proto::signal::IceServer> {
        match (&self.cfg.turn, turn) {
            (Some(t), true) => {
                t.for_client(&self.cfg.ice_servers, id, std::time::SystemTime::now())
            }
            (Some(_), false) => turn::without_issued(&self.cfg.ice_servers),
            (None, _) => self.cfg.ice_servers.clone(),
        }
    }

    /// The `welcome` for client `id` (see [`Shared::ice_servers_for`]).
    fn welcome(&self, id: &str, turn: bool) -> Utf8Bytes {
        ServerMsg::Welcome {
            id: id.to_string(),
            ping_interval_ms: self.cfg.ping_interval.as_millis() as u64,
            ping_timeout_ms: self.cfg.ping_timeout.as_millis() as u64,
            ice_servers: self.ice_servers_for(id, turn),
            protocol: PROTOCOL_VERSION,
        }
        .to_json()
        .into()
    }

    /// An `ice_servers` frame with fresh TURN credentials for client `id`.
    fn ice_servers_frame(&self, id: &str) -> Utf8Bytes {
        let ice_servers = self.ice_servers_for(id, true);
        ServerMsg::IceServers { ice_servers }.to_json().into()
    }
}

/// Serves `listener` until `shutdown` resolves, then closes every client with
/// 1001 and returns once they are closed (or the close grace has passed).
pub async fn run(
    listener: TcpListener,
    cfg: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    serve(listener, None, cfg, shutdown).await
}

/// Like [`run`]; with `metrics` (`--metrics-listen`), `/metrics` and
/// `/healthz` are served there, and `listener` answers `/metrics` with 404.
pub async fn serve(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    cfg: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    Signald::new(cfg)
        .await?
        .serve(listener, metrics, shutdown)
        .await
}

/// A server ready to serve: the configuration checked and, with
/// `--cluster`, Redis reached and the cluster joined (so that `main` can
/// fail before it says it is listening).
pub struct Signald {
    cfg: Config,
    directory: Directory,
}

impl Signald {
    pub async fn new(cfg: Config) -> anyhow::Result<Signald> {
        cfg.validate()?;
        let directory = Directory::open(&cfg).await?;
        Ok(Signald { cfg, directory })
    }

    /// Serves until `shutdown` resolves (see [`serve`]).
    pub async fn serve(
        self,
        listener: TcpListener,
        metrics: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        serve_ready(listener, metrics, self.cfg, self.directory, shutdown).await
    }
}

async fn serve_ready(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    cfg: Config,
    directory: Directory,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // The library's own limit sits above ours so that `too_large` is sent
    // before the close; small buffers keep an idle client at a few KiB.
    let lib_limit = cfg.max_message_bytes.saturating_mul(2).max(64 * 1024);
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(128)
        .write_buffer_size(conn::WRITE_BUFFER)
        // Never reached: frames are handed to the library only while it has
        // written what it had (`poll_ready`), and in pieces of at most
        // `FRAGMENT`, so it holds at most its buffer plus one piece and a
        // control frame. A bug would close the connection, not grow memory.
        .max_write_buffer_size(conn::WRITE_BUFFER + conn::FRAGMENT + 1024)
        .max_message_size(Some(lib_limit))
        .max_frame_size(Some(lib_limit));
    let grace = cfg.close_grace;
    let limits = Limits::new(IpLimits {
        conns_per_ip: cfg.max_conns_per_ip,
        handshakes_per_ip: cfg.max_handshakes_per_ip,
        handshakes: cfg.max_handshakes,
        registration_rate: cfg.registration_rate,
        registration_burst: cfg.registration_burst,
        turn_burst: cfg.turn_per_ip,
        turn_rate: match &cfg.turn {
            Some(t) => f64::from(cfg.turn_per_ip) / t.ttl.as_secs_f64(),
            None => 0.0,
        },
    });
    let shared = Arc::new(Shared {
        directory,
        limits,
        lingering: AtomicUsize::new(0),
        metrics_public: metrics.is_none(),
        ping_origin: tokio::time::Instant::now(),
        ping_slot: (cfg.ping_interval / 20)
            .min((cfg.ping_timeout - cfg.ping_interval) / 4)
            .min(Duration::from_millis(SLOT_MS)),
        cfg,
        ws_config,
    });
    // Each connection task holds a clone; when all are dropped, all are done.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let mut trim = tokio::time::interval(Duration::from_secs(1));
    trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retrim = 0;
    tokio::pin!(shutdown);
    loop {
        let metrics_accept = async {
            match &metrics {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => break,
            _ = trim.tick() => {
                // After a burst the freed buffers go back to the OS, not
                // only to the allocator; once more when the clients dropped
                // for it have closed (the close grace), taking the
                // library's buffers with them.
                if shared.directory.budget().should_trim() {
                    budget::trim_heap();
                    retrim = grace.as_secs() + 1;
                } else if retrim > 0 {
                    retrim -= 1;
                    if retrim == 0 {
                        budget::trim_heap();
                    }
                }
            }
            res = listener.accept() => match res {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        warn!("set TCP_NODELAY: {e}");
                    }
                    let per_ip = !proxy::is_trusted(peer.ip(), &shared.cfg.trusted_proxies);
                    let admitted = shared.limits.admit(peer.ip(), per_ip);
                    let srv = shared.clone();
                    let done = done_tx.clone();
                    // A plain connection's task is `conn::handle` itself:
                    // each layer of futures around it would keep its own
                    // copy of what it was given, for the connection's life.
                    match (admitted, srv.cfg.tls.clone()) {
                        (Ok(ticket), None) => {
                            tokio::spawn(conn::handle(stream, peer.ip(), ticket, srv, done));
                        }
                        // Boxed: the TLS stream's state (rustls's connection)
                        // is large, and unboxed every connection's task
                        // would be sized for it.
                        (Ok(ticket), Some(tls)) => {
                            tokio::spawn(Box::pin(serve_tls(stream, peer, ticket, srv, tls, done)));
                        }
                        (Err(why), _) => {
                            tokio::spawn(async move {
                                conn::refuse_unread(stream, why, &srv).await;
                                drop(done);
                            });
                        }
                    }
                }
                Err(e) => {
                    // Out of file descriptors, usually: back off, keep serving.
                    warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            res = metrics_accept => match res {
                Ok((stream, _)) => {
                    let srv = shared.clone();
                    let done = done_tx.clone();
                    tokio::spawn(async move {
                        conn::serve_metrics(stream, &srv).await;
                        drop(done);
                    });
                }
                Err(e) => {
                    warn!("accept on the metrics listener: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(metrics);
    drop(listener);
    info!(
        clients = shared.directory.clients(),
        "shutting down: closing every client with 1001"
    );
    shared.directory.shutdown();
    drop(done_tx);
    if tokio::time::timeout(grace * 2, done_rx.recv())
        .await
        .is_err()
    {
        warn!("some connections did not close in time");
    }
    shared.directory.leave().await;
    Ok(())
}

/// One admitted connection over TLS: the handshake, then HTTP.
async fn serve_tls(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    ticket: limits::Ticket,
    srv: Arc<Shared>,
    tls: Arc<Tls>,
    done: conn::Done,
) {
    let accept = tls.acceptor().accept(stream);
    let accepted = tokio::select! {
        r = tokio::time::timeout(srv.cfg.handshake_timeout, accept) => r,
        // Shed for a newcomer (limits.rs).
        _ = ticket.shed() => return,
    };
    match accepted {
        Ok(Ok(stream)) => conn::handle(stream, peer.ip(), ticket, srv, done).await,
        Ok(Err(e)) => tracing::debug!("TLS handshake: {e}"),
        Err(_) => tracing::debug!("TLS handshake not complete in time"),
    }
}
