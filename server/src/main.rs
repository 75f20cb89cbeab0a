//! `signald` command line: flags (each also from `SIGNALD_<NAME>`), bind,
//! readiness line, signals. Only this file prints fatal errors.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use p2p_proto::signal::IceServer;
use p2p_service::LogFormat;
use signald::service;
use signald::{Config, TurnRest, TurnSecret};
use tokio::net::{TcpListener, TcpSocket};
use tokio::signal::unix::{SignalKind, signal};

/// WebSocket signaling server: pairs two clients and relays their WebRTC
/// offers, answers and candidates (protocol v1, see docs/protocol.md).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address to listen on; the WebSocket is at /ws, plus GET /healthz and /metrics.
    #[arg(long, env = "SIGNALD_LISTEN", default_value = "127.0.0.1:8765")]
    listen: SocketAddr,
    /// How often the server sends `ping`.
    #[arg(long, env = "SIGNALD_PING_INTERVAL", default_value = "30s", value_parser = duration)]
    ping_interval: Duration,
    /// A client silent for longer than this is closed with 4000.
    #[arg(long, env = "SIGNALD_PING_TIMEOUT", default_value = "45s", value_parser = duration)]
    ping_timeout: Duration,
    /// ICE server for clients, `URL[,username,credential]`; repeatable. None by default.
    #[arg(long = "ice-server", env = "SIGNALD_ICE_SERVER", value_delimiter = ' ',
          value_parser = IceServer::parse_flag)]
    ice_servers: Vec<IceServer>,
    /// Connected clients at most (a token replacement does not count).
    #[arg(long, env = "SIGNALD_MAX_CLIENTS", default_value_t = 100_000)]
    max_clients: usize,
    /// Largest message in bytes; exactly this size is allowed.
    #[arg(long, env = "SIGNALD_MAX_MESSAGE_BYTES", default_value_t = 65536)]
    max_message_bytes: usize,
    /// Frames per second per connection (token bucket refill).
    #[arg(long, env = "SIGNALD_RATE_LIMIT", default_value_t = 100)]
    rate_limit: u32,
    /// Token bucket size: frames allowed in a burst.
    #[arg(long, env = "SIGNALD_RATE_BURST", default_value_t = 200)]
    rate_burst: u32,
    /// Byte budget of a client's frames, bytes per second: a sender pays
    /// for its own bursts (its frames over it are dropped with
    /// rate_limited, and count toward --rate-close-after).
    #[arg(long, env = "SIGNALD_RATE_LIMIT_BYTES", default_value_t = 65536)]
    rate_limit_bytes: u32,
    /// Byte budget size: bytes allowed in a burst (at least
    /// --max-message-bytes).
    #[arg(long, env = "SIGNALD_RATE_BURST_BYTES", default_value_t = 262144)]
    rate_burst_bytes: u32,
    /// Close with 1008 once this many frames were dropped by the rate limit.
    #[arg(long, env = "SIGNALD_RATE_CLOSE_AFTER", default_value_t = 100)]
    rate_close_after: u32,
    /// Frames queued for one client before it is dropped as not reading.
    #[arg(long, env = "SIGNALD_MAX_QUEUE", default_value_t = 256)]
    max_queue: usize,
    /// Bytes queued for one client (not yet written to its socket) before it
    /// is dropped as not reading (close 1008). An empty queue takes any one frame.
    #[arg(long, env = "SIGNALD_MAX_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    max_queue_bytes: usize,
    /// Bytes queued for all clients together; past it, the clients holding
    /// the most are dropped (close 1008) until it is under seven eighths.
    #[arg(long, env = "SIGNALD_MAX_BUFFERED_BYTES", default_value_t = 256 * 1024 * 1024)]
    max_buffered_bytes: usize,
    /// Open connections per client address (IPv6: per /64); more get HTTP 429. 0: no limit.
    #[arg(long, env = "SIGNALD_MAX_CONNS_PER_IP", default_value_t = 1024)]
    max_conns_per_ip: usize,
    /// Connections per client address with the TLS handshake or request head
    /// unfinished; more get HTTP 429. 0: no limit. The default is 1/64 of
    /// --max-handshakes' default, so that a few addresses cannot fill it.
    #[arg(long, env = "SIGNALD_MAX_HANDSHAKES_PER_IP", default_value_t = 64)]
    max_handshakes_per_ip: usize,
    /// Unfinished handshakes from everyone. When reached, the oldest
    /// handshake of the address holding the most is closed to make room;
    /// if they are spread evenly, the newcomer gets HTTP 503. 0: no limit.
    #[arg(long, env = "SIGNALD_MAX_HANDSHAKES", default_value_t = 4096)]
    max_handshakes: usize,
    /// WebSocket upgrades per client address and second (token bucket
    /// refill, may be fractional); more get HTTP 429. 0: no limit.
    #[arg(long, env = "SIGNALD_REGISTRATIONS_PER_IP", default_value_t = 100.0)]
    registrations_per_ip: f64,
    /// Upgrades per client address in a burst (token bucket size).
    #[arg(long, env = "SIGNALD_REGISTRATION_BURST", default_value_t = 1000)]
    registration_burst: u32,
    /// Reverse proxy address block (CIDR, or one address) whose
    /// X-Forwarded-For names the client; repeatable. None by default.
    #[arg(
        long = "trusted-proxy",
        env = "SIGNALD_TRUSTED_PROXY",
        value_delimiter = ' '
    )]
    trusted_proxies: Vec<signald::Cidr>,
    /// Serve /metrics and /healthz on this address instead; the main
    /// listener then answers /metrics with 404.
    #[arg(long, env = "SIGNALD_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// How long an ID registered with a token stays reserved to that token
    /// after its holder disconnects (0 turns reservations off).
    #[arg(long, env = "SIGNALD_ID_RESERVE", default_value = "24h", value_parser = duration)]
    id_reserve: Duration,
    /// Reserved IDs kept for clients of one address (IPv6: per /64). Past
    /// it the address gives up its own oldest; a full table refuses new
    /// reservations rather than drop another address's. 0: no quota.
    #[arg(long, env = "SIGNALD_ID_RESERVE_PER_IP", default_value_t = 64)]
    id_reserve_per_ip: usize,
    /// File holding the TURN REST shared secret (coturn's
    /// static-auth-secret). Every welcome then carries time-limited
    /// credentials for each turn:/turns: server given without its own.
    #[arg(long, env = "SIGNALD_TURN_SECRET_FILE")]
    turn_secret_file: Option<PathBuf>,
    /// Lifetime of those TURN credentials; a client that stays connected
    /// gets fresh ones (an ice_servers frame) at half of it.
    #[arg(long, env = "SIGNALD_TURN_TTL", default_value = "10m", value_parser = duration,
          requires = "turn_secret_file")]
    turn_ttl: Duration,
    /// Clients of one address (IPv6: per /64) given TURN credentials in a
    /// burst, and again per --turn-ttl; the others are welcomed without
    /// those TURN servers. 0: no limit.
    #[arg(long, env = "SIGNALD_TURN_PER_IP", default_value_t = 16)]
    turn_per_ip: u32,
    /// TLS certificate chain (PEM): the listener then speaks wss:// (and
    /// https for /healthz and /metrics). SIGHUP reloads it and --tls-key.
    #[arg(long, env = "SIGNALD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The TLS certificate's private key (PEM).
    #[arg(long, env = "SIGNALD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Share one ID space with every signald on this Redis:
    /// redis://[USER:PASSWORD@]HOST:PORT[/DB], or rediss://... for TLS.
    /// Without it everything stays in this process.
    #[arg(long, env = "SIGNALD_CLUSTER", value_name = "URL")]
    cluster: Option<String>,
    /// CA certificates (PEM) that a rediss:// Redis's certificate must
    /// chain to, instead of the system's.
    #[arg(
        long,
        env = "SIGNALD_CLUSTER_CA",
        value_name = "PATH",
        requires = "cluster"
    )]
    cluster_ca: Option<PathBuf>,
    /// What every Redis key of this cluster starts with (the same on every
    /// node), so that several clusters can share one Redis or an ACL can
    /// confine signald's user to its keys (`~sd:*`).
    #[arg(long, env = "SIGNALD_CLUSTER_PREFIX", default_value = signald::DEFAULT_PREFIX,
          requires = "cluster")]
    cluster_prefix: String,
    /// This node's name in the cluster's logs and metrics (default: the host name).
    #[arg(long, env = "SIGNALD_NODE_ID", requires = "cluster")]
    node_id: Option<String>,
    /// How often a cluster node tells Redis it is alive.
    #[arg(long, env = "SIGNALD_CLUSTER_HEARTBEAT", default_value = "500ms",
          value_parser = duration, requires = "cluster")]
    cluster_heartbeat: Duration,
    /// A node silent for this long is dead: the others end its pairings and
    /// it fences itself. The same on every node.
    #[arg(long, env = "SIGNALD_CLUSTER_DEAD_AFTER", default_value = "4s",
          value_parser = duration, requires = "cluster")]
    cluster_dead_after: Duration,
    /// Under load, a worker thread that runs out of work waits this long
    /// for more before it sleeps, so that one wake-up reads and writes a
    /// burst of frames at once: less CPU per frame, at most this much more
    /// latency per hop, and only while events come faster than this
    /// (signald's `coalesce` module). With --cluster, also how long a node
    /// under load gathers frames for other nodes between pipelines to
    /// Redis (rounded up to the timer's millisecond). 0 turns it off; at
    /// most 2ms.
    #[arg(long, env = "SIGNALD_COALESCE", default_value = "300us", value_parser = coalesce_window)]
    coalesce: Duration,
    /// Log output: text or json on stderr, or journald. Default: journald
    /// when stderr is the journal (JOURNAL_STREAM), else text.
    #[arg(long, env = "SIGNALD_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Print the man page (roff) on stdout and exit.
    #[arg(long, hide = true)]
    man: bool,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 30s, 100ms)"))
}

fn coalesce_window(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d > signald::coalesce::MAX_WINDOW {
        return Err(format!(
            "{s:?} is over {}: a longer wait would show in pairing and ICE",
            humantime::format_duration(signald::coalesce::MAX_WINDOW)
        ));
    }
    Ok(d)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("signald: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.man {
        clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .context("writing the man page")?;
        return Ok(());
    }
    let fallback = p2p_service::init_logging(
        cli.log_format,
        tracing_subscriber::EnvFilter::try_from_env("SIGNALD_LOG")
            .unwrap_or_else(|_| "info".into()),
        None,
    );
    if let Some(e) = fallback {
        tracing::warn!("journald not reachable ({e}); logging text to stderr");
    }
    let turn = match &cli.turn_secret_file {
        Some(path) => Some(TurnRest {
            secret: TurnSecret::from_file(path)?,
            ttl: cli.turn_ttl,
        }),
        None => None,
    };
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some(signald::Tls::load(cert, key)?),
        _ => None,
    };
    let cfg = Config {
        ping_interval: cli.ping_interval,
        ping_timeout: cli.ping_timeout,
        ice_servers: cli.ice_servers,
        max_clients: cli.max_clients,
        max_message_bytes: cli.max_message_bytes,
        rate_limit: cli.rate_limit,
        rate_burst: cli.rate_burst,
        rate_limit_bytes: cli.rate_limit_bytes,
        rate_burst_bytes: cli.rate_burst_bytes,
        rate_close_after: cli.rate_close_after,
        max_queue: cli.max_queue,
        max_queue_bytes: cli.max_queue_bytes,
        max_buffered_bytes: cli.max_buffered_bytes,
        max_conns_per_ip: cli.max_conns_per_ip,
        max_handshakes_per_ip: cli.max_handshakes_per_ip,
        max_handshakes: cli.max_handshakes,
        registration_rate: cli.registrations_per_ip,
        registration_burst: cli.registration_burst,
        trusted_proxies: cli.trusted_proxies,
        turn,
        id_reserve: cli.id_reserve,
        id_reserve_per_ip: cli.id_reserve_per_ip,
        turn_per_ip: cli.turn_per_ip,
        tls: tls.clone(),
        cluster: match cli.cluster {
            Some(url) => Some(signald::ClusterConfig {
                url,
                ca: cli.cluster_ca,
                prefix: cli.cluster_prefix,
                node_id: match cli.node_id {
                    Some(n) => n,
                    None => host_name()?,
                },
                heartbeat: cli.cluster_heartbeat,
                dead_after: cli.cluster_dead_after,
                gather: cli.coalesce,
            }),
            None => None,
        },
        ..Config::default()
    };
    cfg.validate()?;
    // SAFETY: no other thread exists yet (the runtime is built below).
    let activated = unsafe { service::take_activated_listener()? };
    let rt = signald::coalesce::runtime(cli.coalesce).context("starting the tokio runtime")?;
    let socket_activated = activated.is_some();
    rt.block_on(async {
        let listener = match activated {
            Some(l) => TcpListener::from_std(l).context("adopting the activated socket")?,
            None => bind(cli.listen).with_context(|| format!("binding {}", cli.listen))?,
        };
        let addr = listener.local_addr().context("reading the bound address")?;
        // With --cluster this reaches Redis and joins: a failure exits 1
        // before the readiness line.
        let server = signald::Signald::new(cfg).await?;
        let metrics = match cli.metrics_listen {
            Some(m) => {
                let l = bind(m).with_context(|| format!("binding --metrics-listen {m}"))?;
                let at = l.local_addr().context("reading the metrics address")?;
                // Before the readiness line, which tests and scripts wait for.
                println!("signald metrics on {at}");
                Some(l)
            }
            None => None,
        };
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if let Err(e) = p2p_service::notify("STOPPING=1") {
                tracing::warn!("sd_notify STOPPING=1: {e}");
            }
        };
        // Always: without a handler SIGHUP (systemctl reload) would kill us.
        reload_on_sighup(tls)?;
        // Tests and scripts wait for this exact line.
        println!("signald listening on {addr}");
        tracing::info!(
            %addr,
            socket_activated,
            tls = cli.tls_cert.is_some(),
            coalesce = %humantime::format_duration(cli.coalesce),
            "listening"
        );
        // The socket is listening: connects queue in its backlog from now on,
        // so the service manager may start dependents.
        p2p_service::notify("READY=1").context("sd_notify READY=1")?;
        server.serve(listener, metrics, shutdown).await
    })
}

/// Reloads the TLS certificate and key on every SIGHUP (systemd's
/// `ExecReload=`); a failed reload keeps the old ones and says why.
fn reload_on_sighup(tls: Option<std::sync::Arc<signald::Tls>>) -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match &tls {
                None => tracing::info!("SIGHUP: no TLS certificate to reload"),
                Some(tls) => match tls.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                    Err(e) => tracing::error!(
                        "SIGHUP: TLS certificate not reloaded, the old one stays: {e:#}"
                    ),
                },
            }
        }
    });
    Ok(())
}

/// The default node ID: the kernel's host name, cut to what a node ID
/// may hold.
fn host_name() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the host name for --node-id (give --node-id)")?;
    let name: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .take(64)
        .collect();
    anyhow::ensure!(!name.is_empty(), "no usable host name: give --node-id");
    Ok(name)
}

/// Binds with a deep accept queue: a burst of connects must not overflow it
/// (each overflow costs that client a 1 s SYN retransmission).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
