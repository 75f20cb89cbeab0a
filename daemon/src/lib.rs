//! p2pd: keeps a signaling link and a WebRTC data channel to one peer, and
//! serves a local control socket for p2pctl.
//!
//! Tasks, each owning its state: [`signaling`] (the WebSocket), [`engine`]
//! (the link's state machine, [`link`], and the peer connection, [`peer`]),
//! the data channel's reader ([`channel`]) and [`control`] (one task per
//! socket client). [`hub`] (history and `tail` followers) is shared state
//! behind a lock that nothing awaits under; [`status`] assembles what
//! `p2pctl status` prints. [`consent`] finds out whether the peer still
//! answers on the data path when signald says it went away. [`stream`]
//! carries byte streams beside the messages: its table of services and
//! streams, and a task per stream.

pub mod channel;
pub mod config;
pub mod consent;
pub mod control;
pub mod counters;
pub mod engine;
pub mod hub;
pub mod identity;
pub mod invite;
pub mod link;
pub mod netwatch;
pub mod paths;
pub mod peer;
pub mod signaling;
pub mod stall;
pub mod status;
pub mod stream;
pub mod throttle;
pub mod tls;
pub mod trust;
pub mod udp;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};

pub use config::{Cli, Config};

/// Runs the daemon until `shutdown` resolves. `ready` is called once the
/// control socket accepts connections.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let listener = control::bind(&cfg.socket, cfg.socket_is_default)?;
    if cfg.server.starts_with("ws://") && !tls::is_loopback(&cfg.server) {
        tracing::warn!(
            server = %cfg.server,
            "talking to signald over plain ws:// across the network: our token and who we pair with travel unencrypted (use wss://)"
        );
    }
    let identity = identity::Identity::load_or_create(&cfg.identity)
        .with_context(|| format!("our key {}", cfg.identity.display()))?;
    let runtime = Arc::new(udp::BufferedRuntime::new().context("probing UDP socket buffers")?);
    tracing::info!(
        socket = %cfg.socket.display(),
        server = %cfg.server,
        sctp_window = runtime.sctp_window(),
        "p2pd ready"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    // The signaling task stops only after the engine: a draining link
    // still says `unpair` to signald once its data has left.
    let (sig_stop_tx, sig_stop_rx) = watch::channel(false);
    let drain_timeout = cfg.drain_timeout;
    let counters = Arc::new(counters::Counters::default());
    let hub = hub::Hub::new(
        hub::HistoryLimits {
            messages: cfg.history,
            bytes: cfg.history_bytes,
        },
        counters.clone(),
    );
    // Bounded: signald cannot make us queue without limit; the signaling
    // task waits while the engine catches up.
    let (sig_tx, sig_rx) = mpsc::channel(1024);
    let (sig_out, sig_live, sig_task) = signaling::start(
        signaling::SigConfig {
            server: cfg.server.clone(),
            id: cfg.id.clone(),
            token: cfg.token.clone(),
            reconnect_max: cfg.reconnect_max,
            tls: cfg.tls.clone(),
        },
        sig_tx,
        stop_rx.clone(),
        sig_stop_rx,
    );
    let socket = cfg.socket.clone();
    tracing::info!(fingerprint = %identity.fingerprint(), trust = ?cfg.trust, known_peers = %cfg.known_peers.display(), "identity");
    let forwards = cfg.forwards.clone();
    let (engine, inputs, handle, unpairs) = engine::Engine::new(engine::Parts {
        cfg,
        identity,
        sig_out,
        sig_live,
        sig: sig_rx,
        hub,
        counters,
        runtime,
        shutdown: stop_rx.clone(),
    });
    let engine_task = tokio::spawn(engine.run(inputs));
    tokio::spawn(stream_pairings_end(handle.clone(), unpairs));
    for (listen, peer, service, allow_unverified) in forwards {
        let listener = stream::connect::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("--forward: {}", e.message))?;
        let info = p2p_proto::control::ForwardInfo {
            listen: listener.local_addr()?.to_string(),
            peer_id: peer,
            service,
            allow_unverified,
            configured: true,
            open_connections: 0,
            connections: 0,
        };
        tracing::info!(listen = %info.listen, peer = %info.peer_id, service = %info.service, "forwarding");
        let mut stop = stop_rx.clone();
        tokio::spawn(stream::connect::forward(
            handle.clone(),
            listener,
            info,
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ));
    }
    let control_task = tokio::spawn(control::serve(listener, socket, handle, stop_rx));
    ready();

    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    // The drain, then a drained connection's wait for its peer (each
    // bounded by the drain timeout), then the rest.
    let limit = drain_timeout * 2 + Duration::from_secs(5);
    let joined = tokio::time::timeout(limit, async {
        let _ = control_task.await;
        let _ = engine_task.await;
        let _ = sig_stop_tx.send(true);
        let _ = sig_task.await;
    })
    .await;
    if joined.is_err() {
        tracing::warn!(?limit, "some tasks did not stop in time");
    }
    Ok(())
}

/// Ends each pairing that `connect` made once its last stream ended (and
/// it is still the open one).
async fn stream_pairings_end(
    engine: engine::EngineHandle,
    mut unpairs: mpsc::UnboundedReceiver<u64>,
) {
    while let Some(generation) = unpairs.recv().await {
        if engine
            .open_link()
            .is_some_and(|l| l.generation() == generation)
        {
            tracing::info!("the last stream of a pairing that connect made ended: unpairing");
            let _ = engine
                .call(|reply| engine::Cmd::Link {
                    verb: link::Verb::Unpair,
                    reply,
                })
                .await;
        }
    }
}
