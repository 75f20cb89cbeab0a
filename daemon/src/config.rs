//! Command-line flags of p2pd (each also read from a `P2PD_*` variable) and
//! the validated [`Config`] the rest of the daemon runs on.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::stream::ServiceSpec;
use anyhow::{Context, bail};
use clap::{ArgAction, Parser};
use p2p_proto::control::TrustPolicy;
use p2p_proto::signal::{IceServer, valid_id};

use crate::paths;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "p2pd",
    version,
    about = "Keeps a signaling link and a WebRTC data channel to one peer; controlled by p2pctl"
)]
pub struct Cli {
    /// signald's WebSocket URL.
    #[arg(long, env = "P2PD_SERVER", default_value = "ws://127.0.0.1:8765/ws")]
    pub server: String,

    /// Extra CA certificates (PEM) to trust for a wss:// server, beside the
    /// system's roots: for a signald with a private CA.
    #[arg(long, env = "P2PD_SERVER_CA")]
    pub server_ca: Option<PathBuf>,

    /// The ID to register at signald (default: a random one from signald).
    #[arg(long, env = "P2PD_ID")]
    pub id: Option<String>,

    /// File holding the token that proves ownership of --id (default:
    /// ID.token in the state directory, made on first use).
    #[arg(long, env = "P2PD_TOKEN_FILE", requires = "id")]
    pub token_file: Option<PathBuf>,

    /// Directory for our key (identity.pem), the trust store (known_peers)
    /// and ID tokens, created 0700 (default: $XDG_STATE_HOME/p2pd, else
    /// ~/.local/state/p2pd).
    #[arg(long, env = "P2PD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Which peers to accept: `known` (only keys pinned with `p2pctl
    /// trust`, both ways), `tofu` (pin the first key seen for an ID, refuse
    /// a changed one), or `any` (accept unknown peers unverified: for peers
    /// without a stable key, such as browsers). Pinned keys are enforced
    /// under every policy.
    #[arg(long, env = "P2PD_TRUST", default_value = "known", value_parser = parse_trust)]
    pub trust: TrustPolicy,

    /// The trust store file (default: known_peers in the state directory).
    #[arg(long, env = "P2PD_KNOWN_PEERS")]
    pub known_peers: Option<PathBuf>,

    /// Control socket path (default: $XDG_RUNTIME_DIR/p2pd/p2pd.sock, else
    /// /tmp/p2pd-$UID/p2pd.sock).
    #[arg(long, env = "P2PD_SOCKET")]
    pub socket: Option<PathBuf>,

    /// Local address for ICE's UDP sockets, IP or IP:PORT (repeatable;
    /// default: every interface).
    #[arg(long = "bind", env = "P2PD_BIND", value_delimiter = ',', value_parser = parse_bind)]
    pub bind: Vec<SocketAddr>,

    // The brackets are usage notation in --help, not doc links.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// Extra STUN/TURN server, URL[,username,credential] (repeatable), used
    /// beside the ones signald's welcome lists.
    #[arg(long = "ice-server", env = "P2PD_ICE_SERVER", value_parser = IceServer::parse_flag)]
    pub ice_servers: Vec<IceServer>,

    /// Use only TURN relays (hides this host's addresses from the peer).
    #[arg(long, env = "P2PD_RELAY_ONLY", action = ArgAction::SetTrue)]
    pub relay_only: bool,

    /// Accept incoming pairings only from this peer ID (repeatable), on top
    /// of --trust. Without it, any trusted peer may pair.
    #[arg(long = "allow-peer", env = "P2PD_ALLOW_PEER", value_delimiter = ',')]
    pub allow_peers: Vec<String>,

    /// Received messages kept for `p2pctl tail -n`.
    #[arg(long, env = "P2PD_HISTORY", default_value_t = 1000)]
    pub history: usize,

    /// Bytes of message payload the history may hold at most (the oldest
    /// messages go first), so that large messages cannot pin memory.
    #[arg(long, env = "P2PD_HISTORY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub history_bytes: usize,

    /// Detach from the terminal and run in the background.
    #[arg(long, env = "P2PD_DAEMONIZE", action = ArgAction::SetTrue)]
    pub daemonize: bool,

    /// With --daemonize: write the daemon's PID here.
    #[arg(long, env = "P2PD_PIDFILE", requires = "daemonize")]
    pub pidfile: Option<PathBuf>,

    /// Longest wait between reconnect attempts to signald (jittered: each
    /// wait is between half of it and all of it).
    #[arg(long, env = "P2PD_RECONNECT_MAX", default_value = "1s", value_parser = humantime::parse_duration)]
    pub reconnect_max: Duration,

    /// ICE: silence on the selected path before the link counts as lost.
    #[arg(long, env = "P2PD_ICE_DISCONNECTED_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub ice_disconnected_timeout: Duration,

    /// Longest a pairing may take to open its data channel before the daemon
    /// gives up and is ready again.
    #[arg(long, env = "P2PD_CONNECT_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// How long ICE waits before it may choose a relayed (TURN) pair, so
    /// that a direct one still being checked can win. Each direct check
    /// round trip must fit in it: raise it on long paths where direct
    /// pairs open slowly and the relay wins.
    #[arg(long, env = "P2PD_ICE_RELAY_WAIT", default_value = "300ms", value_parser = humantime::parse_duration)]
    pub ice_relay_wait: Duration,

    /// An open link whose path went silent restarts ICE (the channel stays
    /// open); after this long without a new path it resets instead.
    #[arg(long, env = "P2PD_ICE_RESTART_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub ice_restart_timeout: Duration,

    /// On `unpair` and on SIGTERM: longest wait for what `send` accepted to
    /// reach the peer before the link is closed anyway (and, when the peer
    /// unpairs, for its last messages to arrive).
    #[arg(long, env = "P2PD_DRAIN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// SCTP's smallest retransmission timeout. Chrome's 220 ms: above the
    /// 200 ms a peer may delay its acknowledgement (lower, and single
    /// packets are sent twice); RFC 9260's 1 s stalls every lost packet
    /// that fast retransmit does not catch.
    #[arg(long, env = "P2PD_SCTP_RTO_MIN", default_value = "220ms", value_parser = humantime::parse_duration)]
    pub sctp_rto_min: Duration,

    /// SCTP's largest retransmission timeout, the ceiling of its backoff:
    /// how soon after an outage (a network change, an ICE restart) the data
    /// flows again. Chrome's 800 ms; RFC 9260's 60 s.
    #[arg(long, env = "P2PD_SCTP_RTO_MAX", default_value = "800ms", value_parser = humantime::parse_duration)]
    pub sctp_rto_max: Duration,

    /// Serve streams to service NAME from the listed peers by connecting to
    /// TARGET: `NAME:PEER[+PEER...][:allow-unverified]=TARGET`, TARGET being
    /// `tcp:HOST:PORT` (`tcp:[::1]:22`) or `unix:/PATH`. Repeatable; in
    /// P2PD_EXPOSE, comma-separated. Nothing is exposed by default.
    #[arg(long = "expose", env = "P2PD_EXPOSE", value_delimiter = ',', value_parser = ServiceSpec::parse_flag)]
    pub expose: Vec<ServiceSpec>,

    // The brackets are usage notation in --help, not doc links.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// Listen on [ADDR:]PORT (default address 127.0.0.1) and open a stream
    /// to PEER's SERVICE per connection:
    /// `[ADDR:]PORT=PEER/SERVICE[:allow-unverified]`. Repeatable; in
    /// P2PD_FORWARD, comma-separated.
    #[arg(long = "forward", env = "P2PD_FORWARD", value_delimiter = ',', value_parser = crate::stream::connect::parse_forward_flag)]
    pub forward: Vec<ForwardSpec>,

    /// Streams open at once, in all.
    #[arg(long, env = "P2PD_MAX_STREAMS", default_value_t = 256)]
    pub max_streams: usize,

    /// Streams open at once to one service (and from us to one service).
    #[arg(long, env = "P2PD_MAX_STREAMS_PER_SERVICE", default_value_t = 128)]
    pub max_streams_per_service: usize,

    /// `p2pctl accept`s waiting at once.
    #[arg(long, env = "P2PD_MAX_ACCEPTS", default_value_t = 16)]
    pub max_accepts: usize,

    /// Connections one forward has open at once; more are reset.
    #[arg(long, env = "P2PD_MAX_FORWARD_CONNECTIONS", default_value_t = 128)]
    pub max_forward_connections: usize,

    /// What one stream may have in flight toward us before we read it:
    /// its receive window. A stream whose reader stopped holds at most
    /// this much here. 2 MiB: 1 MiB moved 161-164 MB/s on loopback, 2 MiB
    /// 185-198, 4 MiB no more (BENCHMARKS.md, round 7).
    #[arg(long, env = "P2PD_STREAM_WINDOW", default_value = "2MiB", value_parser = parse_size)]
    pub stream_window: u32,
}

/// A forward as p2pd's options give it: listen address, peer, service,
/// and whether an unverified peer will do.
pub type ForwardSpec = (SocketAddr, String, String, bool);

/// `1MiB`, `256KiB` or bytes: a window between 64 KiB and 64 MiB.
fn parse_size(s: &str) -> Result<u32, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let n = n * match unit {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        _ => return Err(format!("{s:?}: sizes are bytes, KiB or MiB")),
    };
    if !(64 * 1024..=64 * 1024 * 1024).contains(&n) {
        return Err(format!("{s:?}: a stream window is 64KiB to 64MiB"));
    }
    Ok(n as u32)
}

fn parse_trust(s: &str) -> Result<TrustPolicy, String> {
    match s {
        "known" => Ok(TrustPolicy::Known),
        "tofu" => Ok(TrustPolicy::Tofu),
        "any" => Ok(TrustPolicy::Any),
        _ => Err(format!("{s:?} is not a trust policy (known, tofu or any)")),
    }
}

fn parse_bind(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 0))
        .map_err(|_| format!("{s:?} is neither an IP address nor IP:PORT"))
}

/// Everything the daemon needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: String,
    pub id: Option<String>,
    /// The token for `id`, when one is used.
    pub token: Option<String>,
    pub socket: PathBuf,
    /// The socket path is the default one, in a directory p2pd owns.
    pub socket_is_default: bool,
    /// Our key, the trust store and tokens live here by default.
    pub state_dir: PathBuf,
    /// Our key.
    pub identity: PathBuf,
    pub trust: TrustPolicy,
    pub known_peers: PathBuf,
    /// The TLS client configuration for a wss:// server.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    pub bind: Vec<SocketAddr>,
    pub ice_servers: Vec<IceServer>,
    pub relay_only: bool,
    pub allow_peers: Vec<String>,
    pub history: usize,
    pub history_bytes: usize,
    pub reconnect_max: Duration,
    pub ice_disconnected_timeout: Duration,
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
    pub ice_restart_timeout: Duration,
    pub ice_relay_wait: Duration,
    pub sctp: SctpTimers,
    pub services: Vec<ServiceSpec>,
    pub forwards: Vec<ForwardSpec>,
    pub stream_limits: crate::stream::Limits,
}

/// SCTP's retransmission timeout bounds (`--sctp-rto-min/max`).
#[derive(Debug, Clone, Copy)]
pub struct SctpTimers {
    pub rto_min: Duration,
    pub rto_max: Duration,
}

impl Cli {
    /// Validates flags and resolves paths and the token (creating the token
    /// file on first use).
    pub fn into_config(self) -> anyhow::Result<Config> {
        if !(self.server.starts_with("ws://") || self.server.starts_with("wss://")) {
            bail!("--server {:?} is not a ws:// or wss:// URL", self.server);
        }
        if let Some(id) = &self.id
            && !valid_id(id)
        {
            bail!("--id {id:?} is not 1-64 characters of A-Z a-z 0-9 _ -");
        }
        for p in &self.allow_peers {
            if !valid_id(p) {
                bail!("--allow-peer {p:?} is not a valid ID");
            }
        }
        if self.sctp_rto_min < Duration::from_millis(10) || self.sctp_rto_min > self.sctp_rto_max {
            bail!(
                "--sctp-rto-min {} must be at least 10ms and at most --sctp-rto-max {}",
                humantime::format_duration(self.sctp_rto_min),
                humantime::format_duration(self.sctp_rto_max)
            );
        }
        let state_dir = match self.state_dir {
            Some(d) => std::path::absolute(&d).context("resolving --state-dir")?,
            None => paths::default_state_dir()?,
        };
        paths::check_private(&state_dir, "the state directory", true)?;
        let token = match (&self.id, &self.token_file) {
            (None, _) => None,
            (Some(_), Some(f)) => Some(paths::read_token(f)?),
            (Some(id), None) => {
                let f = state_dir.join(format!("{id}.token"));
                Some(
                    paths::read_or_create_token(&f)
                        .with_context(|| format!("token file {}", f.display()))?,
                )
            }
        };
        let tls = if self.server.starts_with("wss://") {
            Some(crate::tls::client_config(self.server_ca.as_deref())?)
        } else {
            if self.server_ca.is_some() {
                bail!(
                    "--server-ca is for a wss:// server; --server is {}",
                    self.server
                );
            }
            None
        };
        let mut names = std::collections::HashSet::new();
        for s in &self.expose {
            if !names.insert(&s.name) {
                bail!("--expose names service {} twice", s.name);
            }
        }
        let socket_is_default = self.socket.is_none();
        let socket = match self.socket {
            Some(s) => s,
            None => paths::default_socket(),
        };
        Ok(Config {
            server: self.server,
            id: self.id,
            token,
            socket,
            socket_is_default,
            identity: state_dir.join("identity.pem"),
            trust: self.trust,
            tls,
            known_peers: match self.known_peers {
                Some(p) => std::path::absolute(&p).context("resolving --known-peers")?,
                None => state_dir.join("known_peers"),
            },
            state_dir,
            bind: self.bind,
            ice_servers: self.ice_servers,
            relay_only: self.relay_only,
            allow_peers: self.allow_peers,
            history: self.history,
            history_bytes: self.history_bytes,
            reconnect_max: self.reconnect_max.max(Duration::from_millis(50)),
            ice_disconnected_timeout: self.ice_disconnected_timeout,
            connect_timeout: self.connect_timeout,
            drain_timeout: self.drain_timeout,
            ice_restart_timeout: self.ice_restart_timeout,
            ice_relay_wait: self.ice_relay_wait,
            sctp: SctpTimers {
                rto_min: self.sctp_rto_min,
                rto_max: self.sctp_rto_max,
            },
            services: self.expose,
            forwards: self.forward,
            stream_limits: crate::stream::Limits {
                streams: self.max_streams.max(1),
                per_service: self.max_streams_per_service.max(1),
                accepts: self.max_accepts.max(1),
                forward_connections: self.max_forward_connections.max(1),
                window: self.stream_window,
                drain: self.drain_timeout,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bind_accepts_ip_or_socket_address() {
        assert_eq!(
            parse_bind("127.0.0.1").unwrap(),
            "127.0.0.1:0".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            parse_bind("127.0.0.1:5000").unwrap(),
            "127.0.0.1:5000".parse::<SocketAddr>().unwrap()
        );
        assert!(parse_bind("localhost").is_err());
    }

    #[test]
    fn stream_options_parse_ipv6_unix_paths_and_env_lists() {
        let cli = Cli::try_parse_from([
            "p2pd",
            "--expose",
            "ssh:alice+bob=tcp:[::1]:22,db:carol:allow-unverified=unix:/run/db/s.sock",
            "--forward",
            "[::1]:2222=alice/ssh,15432=carol/db:allow-unverified",
        ])
        .unwrap();
        assert_eq!(cli.expose.len(), 2);
        assert_eq!(cli.expose[0].peers, ["alice", "bob"]);
        assert_eq!(cli.expose[0].target.to_string(), "tcp:[::1]:22");
        assert!(cli.expose[1].allow_unverified);
        assert_eq!(cli.expose[1].target.to_string(), "unix:/run/db/s.sock");
        assert_eq!(
            cli.forward[0],
            (
                "[::1]:2222".parse().unwrap(),
                "alice".into(),
                "ssh".into(),
                false
            )
        );
        assert_eq!(
            cli.forward[1].0,
            "127.0.0.1:15432".parse::<SocketAddr>().unwrap()
        );
        assert!(cli.forward[1].3);
        for bad in [
            "ssh=tcp:127.0.0.1:22",
            "ssh:alice",
            "ssh:alice:yes=tcp:127.0.0.1:22",
            "ssh:al ice=tcp:127.0.0.1:22",
            "ssh:alice=tcp:::1:22",
        ] {
            assert!(
                Cli::try_parse_from(["p2pd", "--expose", bad]).is_err(),
                "{bad}"
            );
        }
        for bad in [
            "ssh",
            "2222=alice",
            "localhost:2222=alice/ssh",
            "2222=alice/.x",
        ] {
            assert!(
                Cli::try_parse_from(["p2pd", "--forward", bad]).is_err(),
                "{bad}"
            );
        }
        assert_eq!(parse_size("256KiB"), Ok(256 * 1024));
        assert!(parse_size("1KiB").is_err());
    }
}
