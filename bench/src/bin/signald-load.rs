//! `signald-load`: WebSocket load against signald, or with `--protocol
//! peerjs` against the PeerJS server, one scenario per run.
//!
//! Prints one JSON object per line on stdout (`connected`, `start`, `done`)
//! so that `signald-bench` can time its measurements of the server.
//! - `idle`: N clients answer every `ping` (PeerJS: send a `HEARTBEAT`
//!   every 5 s) until stdin closes.
//! - `relay`: P pairs bounce candidate-sized frames, W in flight per pair.
//! - `latency`: P pairs, each initiator sends R frames/s; send→receipt times.

use std::io::BufRead;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use p2p_bench::frames::{PING, PONG, Proto, Side, Ws, relay_window};

#[derive(Parser)]
struct Cli {
    /// signald's WebSocket URL, e.g. ws://127.0.0.1:8765/ws
    #[arg(long)]
    url: String,
    /// Local address to connect from (several 127.0.0.x spread the ports).
    #[arg(long)]
    source_ip: Option<IpAddr>,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Prefix of the IDs this process asks for.
    #[arg(long, default_value = "load")]
    prefix: String,
    /// The server's protocol.
    #[arg(long, value_enum, default_value = "signald")]
    protocol: Proto,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Hold N idle clients that answer pings, until stdin closes.
    Idle {
        #[arg(long)]
        clients: usize,
    },
    /// Hold N pairs that each exchanged an offer and an answer of
    /// `sdp_bytes`, then stay idle answering pings, until stdin closes.
    Signaled {
        #[arg(long)]
        pairs: usize,
        #[arg(long, default_value_t = 4096)]
        sdp_bytes: usize,
    },
    /// Bounce frames between paired clients with a bounded window.
    Relay {
        #[arg(long)]
        pairs: usize,
        #[arg(long, default_value_t = 8)]
        window: usize,
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Each initiator sends `rate` frames/s; the receiver measures latency.
    Latency {
        #[arg(long)]
        pairs: usize,
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

fn emit(v: serde_json::Value) {
    println!("{v}");
}

struct Target {
    url: String,
    addr: SocketAddr,
    source: Option<IpAddr>,
    proto: Proto,
}

impl Target {
    fn new(url: &str, source: Option<IpAddr>, proto: Proto) -> anyhow::Result<Self> {
        let hostport = url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .context("URL must be ws://HOST:PORT/ws")?;
        Ok(Self {
            url: url.to_string(),
            addr: hostport
                .parse()
                .context("HOST:PORT must be an IP address")?,
            source,
            proto,
        })
    }

    /// Connects (as `id` if given) and reads the server's greeting.
    async fn connect(&self, id: Option<&str>) -> anyhow::Result<Ws> {
        let sock = if self.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = self.source {
            // Without this, bind() picks a port unique for the address alone,
            // which gets slow with thousands of sockets; with it the port is
            // picked at connect() for the whole 4-tuple.
            let one: libc::c_int = 1;
            // SAFETY: a valid socket fd and a c_int option value.
            let rc = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error()).context("IP_BIND_ADDRESS_NO_PORT");
            }
            sock.bind(SocketAddr::new(ip, 0)).context("bind source")?;
        }
        let stream = sock.connect(self.addr).await.context("connect")?;
        stream.set_nodelay(true)?;
        let url = match self.proto.query(id) {
            Some(q) => format!("{}?{q}", self.url),
            None => self.url.clone(),
        };
        // Small buffers: thousands of clients live in this process.
        let cfg = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(
            url,
            MaybeTlsStream::Plain(stream),
            Some(cfg),
        )
        .await
        .context("upgrade")?;
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.starts_with(self.proto.greeting()) => Ok(ws),
            other => bail!("expected {}, got {other:?}", self.proto.greeting()),
        }
    }
}

/// Reads text frames until one starts with `prefix`.
async fn wait_for(ws: &mut Ws, prefix: &str) -> anyhow::Result<()> {
    while let Some(msg) = ws.next().await {
        if let Message::Text(t) = msg? {
            if t.starts_with(prefix) {
                return Ok(());
            }
            if t.contains("\"error\"") {
                bail!("server error: {t}");
            }
        }
    }
    bail!("closed while waiting for {prefix}")
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    epoch();
    // One thread per process: connection set-up from a multi-threaded
    // runtime measured ten times slower here, and the bench runs several
    // processes anyway.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let target = Arc::new(Target::new(&cli.url, cli.source_ip, cli.protocol)?);
        match cli.mode {
            Mode::Idle { clients } => idle(target, clients, &cli.prefix, cli.concurrency).await,
            Mode::Signaled { pairs, sdp_bytes } => {
                let pairs = connect_pairs(&target, pairs, &cli.prefix, cli.concurrency).await?;
                signaled(pairs, sdp_bytes).await
            }
            Mode::Relay {
                pairs,
                window,
                warmup,
                duration,
            } => {
                let pairs = connect_pairs(&target, pairs, &cli.prefix, cli.concurrency).await?;
                relay(pairs, window, warmup, duration, cli.protocol).await
            }
            Mode::Latency {
                pairs,
                rate,
                warmup,
                duration,
            } => {
                let pairs = connect_pairs(&target, pairs, &cli.prefix, cli.concurrency).await?;
                latency(pairs, rate, warmup, duration, cli.protocol).await
            }
        }
    })
}

async fn idle(
    target: Arc<Target>,
    clients: usize,
    prefix: &str,
    concurrency: usize,
) -> anyhow::Result<()> {
    let sem = Arc::new(Semaphore::new(concurrency));
    let pings = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut setups = Vec::with_capacity(clients);
    for k in 0..clients {
        // signald draws IDs; a PeerJS client names its own.
        let id =
            (target.proto == Proto::Peerjs).then(|| format!("{prefix}{}-{k}", std::process::id()));
        // Keepalives spread over their period, as clients that came and
        // went at random would send them.
        let offset = Duration::from_secs(5).mul_f64(k as f64 / clients.max(1) as f64);
        let (target, sem, pings, closed, failed) = (
            target.clone(),
            sem.clone(),
            pings.clone(),
            closed.clone(),
            failed.clone(),
        );
        setups.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await.expect("semaphore open");
            let ws = target.connect(id.as_deref()).await;
            drop(permit);
            let ws = match ws {
                Ok(ws) => ws,
                Err(e) => {
                    if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("signald-load: connect: {e:#}");
                    }
                    return;
                }
            };
            tokio::spawn(hold(ws, target.proto, offset, pings, closed));
        }));
    }
    for s in setups {
        s.await?;
    }
    let failed_n = failed.load(Ordering::Relaxed);
    emit(
        json!({"event":"connected","clients":clients - failed_n,"failed":failed_n,
                "secs":t0.elapsed().as_secs_f64()}),
    );
    until_stdin_closes().await?;
    emit(json!({"event":"done","pings":pings.load(Ordering::Relaxed),
                "unexpected_closes":closed.load(Ordering::Relaxed)}));
    Ok(())
}

/// Answers pings (or sends PeerJS's keepalive, the first after `offset`)
/// until the connection ends.
async fn hold(
    mut ws: Ws,
    proto: Proto,
    offset: Duration,
    pings: Arc<AtomicU64>,
    closed: Arc<AtomicUsize>,
) {
    let (alive, every) = proto.keepalive().unwrap_or(("", Duration::from_secs(3600)));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
    loop {
        let msg = tokio::select! {
            msg = ws.next() => msg,
            _ = tick.tick() => {
                // A PeerJS keepalive counts as a ping answered.
                pings.fetch_add(1, Ordering::Relaxed);
                if ws.send(Message::text(alive)).await.is_err() {
                    closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                continue;
            }
        };
        match msg {
            Some(Ok(Message::Text(t))) if t.as_str() == PING => {
                pings.fetch_add(1, Ordering::Relaxed);
                if ws.send(Message::text(PONG)).await.is_err() {
                    closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Each pair exchanges an offer and an answer of `sdp_bytes` (as a p2pd
/// does once per pairing), then both stay connected and idle, as p2pd
/// stays on its signaling link, until stdin closes.
async fn signaled(pairs: Vec<Pair>, sdp_bytes: usize) -> anyhow::Result<()> {
    let sdp = "v=0 ".repeat(sdp_bytes / 4);
    let offer = json!({"type":"offer","sdp":sdp}).to_string();
    let answer = json!({"type":"answer","sdp":sdp}).to_string();
    let pings = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let n = pairs.len();
    for (i, mut p) in pairs.into_iter().enumerate() {
        p.a.send(Message::text(offer.clone())).await?;
        wait_for(&mut p.b, r#"{"type":"offer""#).await?;
        p.b.send(Message::text(answer.clone())).await?;
        wait_for(&mut p.a, r#"{"type":"answer""#).await?;
        let offset = Duration::from_secs(5).mul_f64(i as f64 / n.max(1) as f64);
        for ws in [p.a, p.b] {
            tokio::spawn(hold(
                ws,
                Proto::Signald,
                offset,
                pings.clone(),
                closed.clone(),
            ));
        }
    }
    emit(json!({"event":"signaled","clients":2 * n}));
    until_stdin_closes().await?;
    emit(json!({"event":"done","pings":pings.load(Ordering::Relaxed),
                "unexpected_closes":closed.load(Ordering::Relaxed)}));
    Ok(())
}

/// Holds until the orchestrator closes stdin.
async fn until_stdin_closes() -> anyhow::Result<()> {
    tokio::task::spawn_blocking(|| {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            if line.is_err() {
                break;
            }
        }
    })
    .await?;
    Ok(())
}

/// Two clients that relay to each other.
struct Pair {
    a: Ws,
    b: Ws,
    a_id: String,
    b_id: String,
}

/// Connects `n` pairs `{prefix}a{i}` ↔ `{prefix}b{i}` and pairs them
/// (PeerJS has no pairing: a frame names its peer).
async fn connect_pairs(
    target: &Arc<Target>,
    n: usize,
    prefix: &str,
    concurrency: usize,
) -> anyhow::Result<Vec<Pair>> {
    let sem = Arc::new(Semaphore::new(concurrency));
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (target, sem) = (target.clone(), sem.clone());
        let (a_id, b_id) = (format!("{prefix}a{i}"), format!("{prefix}b{i}"));
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore open");
            let mut a = target.connect(Some(&a_id)).await?;
            let mut b = target.connect(Some(&b_id)).await?;
            if target.proto == Proto::Signald {
                a.send(Message::text(
                    json!({"type":"pair","peer_id":b_id}).to_string(),
                ))
                .await?;
                wait_for(&mut a, r#"{"type":"paired""#).await?;
                wait_for(&mut b, r#"{"type":"paired""#).await?;
            }
            anyhow::Ok(Pair { a, b, a_id, b_id })
        }));
    }
    let mut pairs = Vec::with_capacity(n);
    for t in tasks {
        pairs.push(t.await??);
    }
    emit(json!({"event":"connected","clients":2 * n,"secs":t0.elapsed().as_secs_f64()}));
    Ok(pairs)
}

async fn relay(
    pairs: Vec<Pair>,
    window: usize,
    warmup: Duration,
    duration: Duration,
    proto: Proto,
) -> anyhow::Result<()> {
    let sides = pairs
        .into_iter()
        .map(|p| {
            let a = Side {
                ws: p.a,
                frame: proto.candidate(&p.b_id, 0),
            };
            let b = Side {
                ws: p.b,
                frame: proto.candidate(&p.a_id, 0),
            };
            (a, b)
        })
        .collect();
    let received = relay_window(sides, window, proto);
    tokio::time::sleep(warmup).await;
    let c0 = received.load(Ordering::Relaxed);
    let t0 = Instant::now();
    emit(json!({"event":"start"}));
    tokio::time::sleep(duration).await;
    let frames = received.load(Ordering::Relaxed) - c0;
    let secs = t0.elapsed().as_secs_f64();
    emit(json!({"event":"done","frames":frames,"secs":secs}));
    Ok(())
}

async fn latency(
    pairs: Vec<Pair>,
    rate: f64,
    warmup: Duration,
    duration: Duration,
    proto: Proto,
) -> anyhow::Result<()> {
    let samples = Arc::new(Mutex::new(Vec::<u32>::new()));
    let measure_from = now_us() + warmup.as_micros() as u64;
    let measure_to = measure_from + duration.as_micros() as u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    let n = pairs.len().max(1) as u64;
    let mut receivers = Vec::new();
    let (alive, every) = proto.keepalive().unwrap_or(("", Duration::from_secs(3600)));
    for (i, p) in pairs.into_iter().enumerate() {
        let Pair {
            mut a, mut b, b_id, ..
        } = p;
        // Spread the senders evenly over one period.
        let offset = period.mul_f64(i as f64 / n as f64);
        tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut keep = tokio::time::interval(every);
            keep.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if now_us() > measure_to + 500_000 { break; }
                        a.send(Message::text(proto.candidate(&b_id, now_us()))).await?;
                    }
                    _ = keep.tick() => a.send(Message::text(alive)).await?,
                    msg = a.next() => match msg {
                        Some(Ok(Message::Text(t))) if t.as_str() == PING => {
                            a.send(Message::text(PONG)).await?;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    },
                }
            }
            anyhow::Ok(())
        });
        let samples = samples.clone();
        receivers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut keep = tokio::time::interval(every);
            keep.tick().await;
            loop {
                let msg = tokio::select! {
                    msg = tokio::time::timeout(Duration::from_secs(2), b.next()) => msg,
                    _ = keep.tick() => {
                        b.send(Message::text(alive)).await?;
                        continue;
                    }
                };
                let Ok(Some(Ok(msg))) = msg else { break };
                let Message::Text(t) = msg else { continue };
                if let Some(r) = proto.reply(&t) {
                    b.send(Message::text(r)).await?;
                    continue;
                }
                if !proto.is_candidate(&t) {
                    continue;
                }
                let now = now_us();
                let v: serde_json::Value = serde_json::from_str(&t)?;
                let Some(sent) = proto.stamp(&v) else {
                    continue;
                };
                if sent >= measure_from && sent < measure_to {
                    mine.push((now - sent) as u32);
                }
                if sent >= measure_to {
                    break;
                }
            }
            samples.lock().expect("samples lock").extend(mine);
            anyhow::Ok(())
        }));
    }
    emit(json!({"event":"start"}));
    for r in receivers {
        r.await??;
    }
    let s = std::mem::take(&mut *samples.lock().expect("samples lock"));
    // Raw samples: the orchestrator merges several processes.
    emit(json!({"event":"done","latencies_us":s}));
    Ok(())
}
