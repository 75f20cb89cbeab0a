//! The engine: the one task that owns the daemon's state (signaling state,
//! the link to the peer, the peer connection) and moves it along.
//!
//! Control clients talk to it with [`Cmd`]s through an [`EngineHandle`]; the
//! signaling task and the peer connection's callbacks feed it events. The
//! only state others read directly is the open data channel (a `watch`), so
//! that `send` does not pass every message through this task.

use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p_proto::control::{
    ErrorBody, ErrorCode, EventKind, LinkState, PairOutcome, ServerState, Status, StatusPeer,
    StatusServer,
};
use p2p_proto::signal::{ClientMsg, DisconnectReason, ErrorCode as SigError, IceServer, ServerMsg};
use tokio::sync::{mpsc, oneshot, watch};
use webrtc::data_channel::DataChannel;
use webrtc::peer_connection::{
    RTCIceConnectionState, RTCPeerConnectionState, RTCSessionDescription,
};

use crate::config::Config;
use crate::counters::Counters;
use crate::hub::Hub;
use crate::peer::{Pc, PcEvent, PcEventKind, PcSettings};
use crate::signaling::SigEvent;
use crate::udp::BufferedRuntime;

type PairReply = oneshot::Sender<Result<PairOutcome, ErrorBody>>;

/// Requests to the engine.
pub enum Cmd {
    Status(oneshot::Sender<Status>),
    Pair {
        peer_id: String,
        wait: bool,
        reply: PairReply,
    },
    /// The pair request from this client timed out: give up on `peer_id`
    /// unless its channel opened meanwhile.
    CancelPair {
        peer_id: String,
    },
    /// Replies whether there was a pairing to end.
    Unpair(oneshot::Sender<bool>),
}

/// The open data channel, for the send path.
pub struct OpenLink {
    pub peer_id: String,
    pub dc: Arc<dyn DataChannel>,
}

/// What control clients hold.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Cmd>,
    /// `Some` exactly while a data channel is open.
    pub link: watch::Receiver<Option<Arc<OpenLink>>>,
    pub counters: Arc<Counters>,
    pub hub: Hub,
}

impl EngineHandle {
    /// Sends a command; `None` when the engine has stopped.
    pub async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    pub async fn cancel_pair(&self, peer_id: String) {
        let _ = self.tx.send(Cmd::CancelPair { peer_id }).await;
    }
}

#[derive(Debug, Clone)]
enum Link {
    Idle,
    Requested {
        peer: String,
    },
    Connecting {
        peer: String,
        initiator: bool,
    },
    Open {
        peer: String,
        initiator: bool,
        since: Instant,
    },
}

impl Link {
    fn peer(&self) -> Option<&str> {
        match self {
            Link::Idle => None,
            Link::Requested { peer } | Link::Connecting { peer, .. } | Link::Open { peer, .. } => {
                Some(peer)
            }
        }
    }

    fn state(&self) -> LinkState {
        match self {
            Link::Idle => LinkState::Idle,
            Link::Requested { .. } => LinkState::Requested,
            Link::Connecting { .. } => LinkState::Connecting,
            Link::Open { .. } => LinkState::Open,
        }
    }
}

struct Waiter {
    /// Reply once open (true) or once paired (false).
    wait: bool,
    reply: PairReply,
}

pub struct Engine {
    cfg: Config,
    started: Instant,
    my_id: Option<String>,
    server_state: ServerState,
    server_since: Instant,
    ever_connected: bool,
    reconnects: u64,
    last_error: Option<String>,
    ping: Option<(u64, u64)>,
    welcome_ice: Vec<IceServer>,
    link: Link,
    pc: Option<Pc>,
    /// The ICE servers `pc` was built with.
    pc_ice: Vec<IceServer>,
    /// Whether `pc` has been offered/answered (then closing it is a reset).
    pc_used: bool,
    generation: u64,
    waiters: Vec<Waiter>,
    connect_deadline: Option<tokio::time::Instant>,
    /// Set when the connection was lost: reset then, unless signald's
    /// notice (which names the real reason) arrives first.
    loss_deadline: Option<Loss>,
    sig_out: mpsc::Sender<ClientMsg>,
    pc_tx: mpsc::UnboundedSender<PcEvent>,
    link_tx: watch::Sender<Option<Arc<OpenLink>>>,
    hub: Hub,
    counters: Arc<Counters>,
    runtime: Arc<BufferedRuntime>,
}

/// Everything the engine task reads from.
pub struct Inputs {
    pub cmds: mpsc::Receiver<Cmd>,
    pub sig: mpsc::UnboundedReceiver<SigEvent>,
    pub pc: mpsc::UnboundedReceiver<PcEvent>,
    pub shutdown: watch::Receiver<bool>,
}

impl Engine {
    /// Makes the engine and the handle control clients use.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Config,
        sig_out: mpsc::Sender<ClientMsg>,
        sig: mpsc::UnboundedReceiver<SigEvent>,
        hub: Hub,
        counters: Arc<Counters>,
        runtime: Arc<BufferedRuntime>,
        shutdown: watch::Receiver<bool>,
    ) -> (Engine, Inputs, EngineHandle) {
        let (cmd_tx, cmds) = mpsc::channel(256);
        let (pc_tx, pc_rx) = mpsc::unbounded_channel();
        let (link_tx, link_rx) = watch::channel(None);
        let handle = EngineHandle {
            tx: cmd_tx,
            link: link_rx,
            counters: counters.clone(),
            hub: hub.clone(),
        };
        let now = Instant::now();
        let engine = Engine {
            my_id: cfg.id.clone(),
            cfg,
            started: now,
            server_state: ServerState::Connecting,
            server_since: now,
            ever_connected: false,
            reconnects: 0,
            last_error: None,
            ping: None,
            welcome_ice: Vec::new(),
            link: Link::Idle,
            pc: None,
            pc_ice: Vec::new(),
            pc_used: false,
            generation: 0,
            waiters: Vec::new(),
            connect_deadline: None,
            loss_deadline: None,
            sig_out,
            pc_tx,
            link_tx,
            hub,
            counters,
            runtime,
        };
        let inputs = Inputs {
            cmds,
            sig,
            pc: pc_rx,
            shutdown,
        };
        (engine, inputs, handle)
    }

    pub async fn run(mut self, mut inputs: Inputs) {
        loop {
            let deadline = self.connect_deadline;
            let loss = self.loss_deadline.as_ref().map(|l| l.at);
            tokio::select! {
                _ = sleep_until_opt(loss) => {
                    if let Some(loss) = self.loss_deadline.take() {
                        if loss.tell_signald {
                            self.fail_link(loss.reason, loss.error).await;
                        } else {
                            self.reset(loss.reason, loss.error, true).await;
                        }
                    }
                }
                _ = inputs.shutdown.changed() => break,
                Some(cmd) = inputs.cmds.recv() => self.on_cmd(cmd).await,
                Some(ev) = inputs.sig.recv() => self.on_signal(ev).await,
                Some(ev) = inputs.pc.recv() => self.on_pc(ev).await,
                _ = sleep_until_opt(deadline) => self.on_connect_timeout().await,
                else => break,
            }
        }
        let err = ErrorBody {
            code: ErrorCode::ShuttingDown,
            message: "p2pd is shutting down".into(),
        };
        self.reset("shutdown", err, false).await;
    }

    // ---- commands from control clients ------------------------------------

    async fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Status(reply) => {
                let status = self.status().await;
                let _ = reply.send(status);
            }
            Cmd::Pair {
                peer_id,
                wait,
                reply,
            } => {
                if let Err(e) = self.check_pair(&peer_id) {
                    let _ = reply.send(Err(e));
                    return;
                }
                if !self.signal(ClientMsg::Pair {
                    peer_id: peer_id.clone(),
                }) {
                    let _ = reply.send(Err(err(
                        ErrorCode::NotConnected,
                        "the signaling connection is congested; try again",
                    )));
                    return;
                }
                self.link = Link::Requested {
                    peer: peer_id.clone(),
                };
                self.waiters.push(Waiter { wait, reply });
            }
            Cmd::CancelPair { peer_id } => {
                let pending = !matches!(self.link, Link::Open { .. } | Link::Idle);
                if pending && self.link.peer() == Some(peer_id.as_str()) {
                    let e = self.timeout_error();
                    self.fail_link("timeout", e).await;
                }
            }
            Cmd::Unpair(reply) => {
                let was_paired = !matches!(self.link, Link::Idle);
                if was_paired {
                    let e = err(
                        ErrorCode::Failed,
                        "unpaired locally before the channel opened",
                    );
                    self.fail_link("local_unpair", e).await;
                }
                let _ = reply.send(was_paired);
            }
        }
    }

    fn check_pair(&self, peer_id: &str) -> Result<(), ErrorBody> {
        if self.server_state != ServerState::Connected {
            let why = self.last_error.as_deref().unwrap_or("connecting");
            return Err(err(
                ErrorCode::NotConnected,
                format!("not connected to signald at {}: {why}", self.cfg.server),
            ));
        }
        if !p2p_proto::signal::valid_id(peer_id) {
            return Err(err(
                ErrorCode::BadRequest,
                format!("{peer_id:?} is not a valid peer ID (1-64 of A-Z a-z 0-9 _ -)"),
            ));
        }
        if let Some(peer) = self.link.peer() {
            return Err(err(
                ErrorCode::AlreadyPaired,
                format!("already paired with {peer}; run `p2pctl unpair` first"),
            ));
        }
        if self.my_id.as_deref() == Some(peer_id) {
            return Err(err(ErrorCode::SelfPair, "cannot pair with ourselves"));
        }
        Ok(())
    }

    // ---- signaling ----------------------------------------------------------

    async fn on_signal(&mut self, ev: SigEvent) {
        match ev {
            SigEvent::Up {
                id,
                ping_interval_ms,
                ping_timeout_ms,
                ice_servers,
            } => {
                if self.ever_connected {
                    self.reconnects += 1;
                }
                self.ever_connected = true;
                self.my_id = Some(id.clone());
                self.set_server_state(ServerState::Connected);
                self.last_error = None;
                self.ping = Some((ping_interval_ms, ping_timeout_ms));
                self.welcome_ice = ice_servers;
                self.hub.publish(EventKind::SignalingUp { id }).await;
                if matches!(self.link, Link::Idle)
                    && (self.pc.is_none() || self.pc_ice != self.ice_servers())
                {
                    self.fresh_pc().await;
                }
            }
            SigEvent::Down { reason, .. } => {
                let was_up = self.server_state == ServerState::Connected;
                self.set_server_state(ServerState::Disconnected);
                self.last_error = Some(reason.clone());
                if was_up {
                    self.hub
                        .publish(EventKind::SignalingDown {
                            reason: reason.clone(),
                        })
                        .await;
                }
                if !matches!(self.link, Link::Idle) {
                    let e = err(
                        ErrorCode::Failed,
                        format!("lost the signaling connection: {reason}"),
                    );
                    self.reset("signaling_lost", e, true).await;
                }
            }
            SigEvent::Msg(m) => self.on_server_msg(m).await,
        }
    }

    async fn on_server_msg(&mut self, m: ServerMsg) {
        match m {
            ServerMsg::Paired { peer_id, initiator } => self.on_paired(peer_id, initiator).await,
            ServerMsg::Offer { sdp, from } => {
                if !matches!(&self.link, Link::Connecting { peer, initiator: false } if *peer == from)
                {
                    tracing::debug!(%from, "ignoring an offer from someone we are not answering");
                    return;
                }
                if let Err(e) = self.answer(sdp).await {
                    let e = err(ErrorCode::Failed, format!("answering the offer: {e:#}"));
                    self.fail_link("failed", e).await;
                }
            }
            ServerMsg::Answer { sdp, from } => {
                if !matches!(&self.link, Link::Connecting { peer, initiator: true } if *peer == from)
                {
                    tracing::debug!(%from, "ignoring an answer we did not ask for");
                    return;
                }
                if let Err(e) = self.accept_answer(sdp).await {
                    let e = err(ErrorCode::Failed, format!("applying the answer: {e:#}"));
                    self.fail_link("failed", e).await;
                }
            }
            ServerMsg::Candidate { candidate, from } => {
                if self.link.peer() != Some(from.as_str()) {
                    return;
                }
                // `null` ends the candidates; nothing waits for it.
                let (Some(c), Some(pc)) = (candidate, self.pc.as_mut()) else {
                    return;
                };
                if let Err(e) = pc.add_remote_candidate(c).await {
                    tracing::warn!(error = %e, "ignoring a remote candidate");
                }
            }
            ServerMsg::PeerDisconnected { peer_id, reason } => {
                if self.link.peer() != Some(peer_id.as_str()) {
                    return;
                }
                let open = matches!(self.link, Link::Open { .. });
                // Before any description came back the peer can only have
                // refused (e.g. its --allow-peer list); after it, an unpair
                // means the peer gave up on connecting.
                let negotiated = self.pc.as_ref().is_some_and(|pc| pc.remote_described);
                let e = if reason == DisconnectReason::Unpaired && !open && !negotiated {
                    err(ErrorCode::Refused, format!("{peer_id} refused the pairing"))
                } else if reason == DisconnectReason::Unpaired && !open {
                    let mut e = self.no_path_error();
                    e.message = format!("{} ({peer_id} gave up first)", e.message);
                    e
                } else {
                    err(
                        ErrorCode::Failed,
                        format!(
                            "{peer_id} went away ({}) before the channel opened",
                            reason.as_str()
                        ),
                    )
                };
                self.reset(reason.as_str(), e, true).await;
            }
            ServerMsg::Error { code, message } => {
                if code == SigError::RateLimited && !matches!(self.link, Link::Idle) {
                    // signald dropped a frame this pairing needs (an offer,
                    // a candidate...): it cannot complete, so say why.
                    tracing::warn!(%message, "signald rate-limited us");
                    let e = err(
                        ErrorCode::Failed,
                        format!(
                            "signald dropped a frame of this pairing (rate limited: {message}); try again in a moment"
                        ),
                    );
                    self.fail_link("rate_limited", e).await;
                    return;
                }
                let Link::Requested { peer } = &self.link else {
                    tracing::warn!(%code, %message, "error from signald");
                    return;
                };
                let e = match code {
                    SigError::UnknownPeer => err(
                        ErrorCode::UnknownPeer,
                        format!("no client with ID {peer} is connected to signald"),
                    ),
                    SigError::PeerBusy => err(
                        ErrorCode::PeerBusy,
                        format!("{peer} is busy: it is paired with someone else"),
                    ),
                    SigError::SelfPair => err(ErrorCode::SelfPair, "cannot pair with ourselves"),
                    SigError::AlreadyPaired => err(
                        ErrorCode::AlreadyPaired,
                        format!("signald says we are already paired: {message}"),
                    ),
                    _ => {
                        tracing::warn!(%code, %message, "error from signald");
                        return;
                    }
                };
                self.link = Link::Idle;
                self.fail_waiters(e);
            }
            ServerMsg::Welcome { .. } | ServerMsg::Ping => {}
        }
    }

    async fn on_paired(&mut self, peer_id: String, initiator: bool) {
        if !initiator
            && !self.cfg.allow_peers.is_empty()
            && !self.cfg.allow_peers.contains(&peer_id)
        {
            tracing::warn!(peer = %peer_id, "refusing a pairing from a peer not in --allow-peer");
            self.signal(ClientMsg::Unpair);
            return;
        }
        match std::mem::replace(&mut self.link, Link::Idle) {
            Link::Requested { peer } if peer != peer_id => {
                self.fail_waiters(err(
                    ErrorCode::AlreadyPaired,
                    format!("{peer_id} paired with us before {peer} could"),
                ));
            }
            Link::Connecting { peer, .. } | Link::Open { peer, .. } => {
                tracing::warn!(old = %peer, new = %peer_id, "signald paired us again; dropping the old link");
                self.link = Link::Connecting {
                    peer,
                    initiator: false,
                };
                let e = err(ErrorCode::Failed, "replaced by a new pairing");
                self.reset("replaced", e, false).await;
            }
            _ => {}
        }
        self.link = Link::Connecting {
            peer: peer_id.clone(),
            initiator,
        };
        self.connect_deadline = Some(tokio::time::Instant::now() + self.cfg.connect_timeout);
        self.hub
            .publish(EventKind::Paired {
                peer_id: peer_id.clone(),
                initiator,
            })
            .await;
        let outcome = PairOutcome {
            peer_id: peer_id.clone(),
            state: LinkState::Connecting,
            path: None,
        };
        // `--no-wait` requests are answered now; the others once open.
        let (now, later) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition::<Vec<_>, _>(|w| !w.wait);
        self.waiters = later;
        for w in now {
            let _ = w.reply.send(Ok(outcome.clone()));
        }
        if self.pc.is_none() {
            self.fresh_pc().await;
        }
        if initiator && let Err(e) = self.offer(&peer_id).await {
            let e = err(ErrorCode::Failed, format!("making the offer: {e:#}"));
            self.fail_link("failed", e).await;
        }
    }

    async fn offer(&mut self, peer_id: &str) -> anyhow::Result<()> {
        let pc = self
            .pc
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no peer connection could be built"))?;
        self.pc_used = true;
        let dc = pc.create_channel().await?;
        pc.attach_channel(
            dc,
            true,
            peer_id.to_string(),
            self.hub.clone(),
            self.counters.clone(),
            self.pc_tx.clone(),
        );
        let offer = pc.pc.create_offer(None).await?;
        pc.pc.set_local_description(offer.clone()).await?;
        pc.learn_mid().await;
        self.signal(ClientMsg::Offer { sdp: offer.sdp });
        Ok(())
    }

    async fn answer(&mut self, sdp: String) -> anyhow::Result<()> {
        let pc = self
            .pc
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no peer connection could be built"))?;
        self.pc_used = true;
        pc.pc
            .set_remote_description(RTCSessionDescription::offer(sdp)?)
            .await?;
        pc.remote_described = true;
        pc.flush_early_candidates().await?;
        let answer = pc.pc.create_answer(None).await?;
        pc.pc.set_local_description(answer.clone()).await?;
        pc.learn_mid().await;
        self.signal(ClientMsg::Answer { sdp: answer.sdp });
        Ok(())
    }

    async fn accept_answer(&mut self, sdp: String) -> anyhow::Result<()> {
        let pc = self
            .pc
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no peer connection"))?;
        pc.pc
            .set_remote_description(RTCSessionDescription::answer(sdp)?)
            .await?;
        pc.remote_described = true;
        pc.flush_early_candidates().await?;
        Ok(())
    }

    // ---- the peer connection --------------------------------------------------

    async fn on_pc(&mut self, ev: PcEvent) {
        let Some(pc) = self.pc.as_mut() else { return };
        if ev.generation != pc.generation {
            return; // from a connection already closed
        }
        match ev.kind {
            PcEventKind::Candidate(c) => {
                if matches!(self.link, Link::Connecting { .. } | Link::Open { .. }) {
                    let candidate = c.map(|mut c| {
                        c.sdp_mid = pc.mid.clone();
                        c
                    });
                    self.signal(ClientMsg::Candidate { candidate });
                }
            }
            PcEventKind::IceState(s) => {
                pc.ice_state = s;
                tracing::debug!(state = %s, "ICE connection state");
                if matches!(
                    s,
                    RTCIceConnectionState::Failed | RTCIceConnectionState::Disconnected
                ) {
                    let e = self.no_path_error();
                    self.lost("ice_failed", e, true);
                }
            }
            PcEventKind::PcState(s) => {
                pc.pc_state = s;
                tracing::debug!(state = %s, "peer connection state");
                if matches!(
                    s,
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
                ) {
                    let e = self.no_path_error();
                    // Closed is the peer closing cleanly: it tells signald.
                    let failed = s == RTCPeerConnectionState::Failed;
                    self.lost("ice_failed", e, failed);
                }
            }
            PcEventKind::DataChannel(dc) => {
                let Link::Connecting {
                    peer,
                    initiator: false,
                } = &self.link
                else {
                    return;
                };
                if pc.dc.is_some() {
                    tracing::debug!("ignoring a second data channel from the peer");
                    return;
                }
                let peer = peer.clone();
                pc.attach_channel(
                    dc,
                    false,
                    peer,
                    self.hub.clone(),
                    self.counters.clone(),
                    self.pc_tx.clone(),
                );
            }
            PcEventKind::ChannelOpen => self.on_channel_open().await,
            PcEventKind::ChannelClosed => {
                let e = err(
                    ErrorCode::Failed,
                    "the data channel closed before it opened",
                );
                // A channel closes cleanly only when the peer closed it, and
                // the peer then tells signald itself.
                self.lost("channel_closed", e, false);
            }
        }
    }

    async fn on_channel_open(&mut self) {
        let Link::Connecting { peer, initiator } = self.link.clone() else {
            return;
        };
        let Some(pc) = self.pc.as_mut() else { return };
        let Some(dc) = pc.dc.clone() else { return };
        pc.channel_open = true;
        self.connect_deadline = None;
        self.link = Link::Open {
            peer: peer.clone(),
            initiator,
            since: Instant::now(),
        };
        self.counters
            .pairings
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.link_tx.send_replace(Some(Arc::new(OpenLink {
            peer_id: peer.clone(),
            dc,
        })));
        let path = pc.path().await;
        tracing::info!(%peer, ?path, "data channel open");
        self.hub
            .publish(EventKind::ChannelOpen {
                peer_id: peer.clone(),
                path: path.clone(),
            })
            .await;
        let outcome = PairOutcome {
            peer_id: peer,
            state: LinkState::Open,
            path,
        };
        for w in self.waiters.drain(..) {
            let _ = w.reply.send(Ok(outcome.clone()));
        }
    }

    async fn on_connect_timeout(&mut self) {
        self.connect_deadline = None;
        if matches!(self.link, Link::Connecting { .. }) {
            let e = self.timeout_error();
            self.fail_link("timeout", e).await;
        }
    }

    fn timeout_error(&self) -> ErrorBody {
        let ice_connected = self.pc.as_ref().is_some_and(|pc| {
            matches!(
                pc.ice_state,
                RTCIceConnectionState::Connected | RTCIceConnectionState::Completed
            )
        });
        if matches!(self.link, Link::Connecting { .. }) && !ice_connected {
            let mut e = self.no_path_error();
            e.code = ErrorCode::Timeout;
            return e;
        }
        err(
            ErrorCode::Timeout,
            format!(
                "the data channel did not open within {}",
                humantime::format_duration(self.cfg.connect_timeout)
            ),
        )
    }

    /// The reason a person can act on when ICE finds no path.
    fn no_path_error(&self) -> ErrorBody {
        let servers = self.ice_servers();
        let has_turn = servers
            .iter()
            .flat_map(|s| &s.urls)
            .any(|u| u.starts_with("turn:") || u.starts_with("turns:"));
        let message = if has_turn {
            "no network path to the peer, not even through the TURN relay: check that the relay is reachable from both sides".to_string()
        } else {
            "no network path to the peer: both sides are behind NATs that need a TURN relay; none is configured".to_string()
        };
        err(ErrorCode::Failed, message)
    }

    // ---- resets ---------------------------------------------------------------

    /// The connection to the peer broke. Sends fail from now on; the reset
    /// waits [`LOSS_GRACE`] for signald's notice, which usually follows
    /// within a millisecond and tells why (`unpaired`, `left`, ...).
    ///
    /// `tell_signald` is false when the peer closed the connection cleanly:
    /// it tells signald itself, and an `unpair` of ours, arriving late over
    /// a slow link, could end the *next* pairing signald has made for us
    /// meanwhile (signald's frames carry no pairing identity).
    fn lost(&mut self, reason: &'static str, error: ErrorBody, tell_signald: bool) {
        if matches!(self.link, Link::Idle) || self.loss_deadline.is_some() {
            return;
        }
        self.link_tx.send_replace(None);
        self.loss_deadline = Some(Loss {
            at: tokio::time::Instant::now() + LOSS_GRACE,
            reason,
            error,
            tell_signald,
        });
    }

    /// Ends the link for a local reason: tells signald, then resets.
    async fn fail_link(&mut self, reason: &str, waiter_error: ErrorBody) {
        if self.server_state == ServerState::Connected && !matches!(self.link, Link::Idle) {
            self.signal(ClientMsg::Unpair);
        }
        self.reset(reason, waiter_error, true).await;
    }

    /// Forgets the peer, closes the peer connection, tells followers, and
    /// (with `rebuild`, while signaling is up) builds a fresh connection.
    async fn reset(&mut self, reason: &str, waiter_error: ErrorBody, rebuild: bool) {
        let peer = self.link.peer().map(str::to_string);
        self.link = Link::Idle;
        self.connect_deadline = None;
        self.loss_deadline = None;
        self.link_tx.send_replace(None);
        if let Some(pc) = self.pc.take() {
            pc.close().await;
            if std::mem::take(&mut self.pc_used) {
                self.counters
                    .resets
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.fail_waiters(waiter_error);
        if let Some(peer_id) = peer {
            tracing::info!(peer = %peer_id, %reason, "link ended");
            self.hub
                .publish(EventKind::PeerDisconnected {
                    peer_id,
                    reason: reason.to_string(),
                })
                .await;
        }
        if rebuild && self.server_state == ServerState::Connected {
            self.fresh_pc().await;
        }
    }

    fn fail_waiters(&mut self, e: ErrorBody) {
        for w in self.waiters.drain(..) {
            let _ = w.reply.send(Err(e.clone()));
        }
    }

    async fn fresh_pc(&mut self) {
        if let Some(old) = self.pc.take() {
            old.close().await;
        }
        self.pc_used = false;
        self.generation += 1;
        let settings = PcSettings {
            bind: self.cfg.bind.clone(),
            ice_servers: self.ice_servers(),
            relay_only: self.cfg.relay_only,
            ice_disconnected_timeout: self.cfg.ice_disconnected_timeout,
            runtime: self.runtime.clone(),
        };
        match Pc::build(self.generation, &settings, self.pc_tx.clone()).await {
            Ok(pc) => {
                self.pc = Some(pc);
                self.pc_ice = settings.ice_servers;
            }
            Err(e) => tracing::error!(error = %e, "cannot build a peer connection"),
        }
    }

    /// The welcome's ICE servers plus our own `--ice-server`s.
    fn ice_servers(&self) -> Vec<IceServer> {
        let mut v = self.welcome_ice.clone();
        v.extend(self.cfg.ice_servers.iter().cloned());
        v
    }

    /// Queues a frame for signald; false if it cannot be queued.
    fn signal(&mut self, msg: ClientMsg) -> bool {
        // The signaling task drains this queue while connected and discards
        // it on reconnect; it can only fill if signald stops reading, and
        // then the dead-server timeout is about to fire anyway.
        match self.sig_out.try_send(msg) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "signaling queue full; frame not sent");
                false
            }
        }
    }

    fn set_server_state(&mut self, s: ServerState) {
        if self.server_state != s {
            self.server_state = s;
            self.server_since = Instant::now();
        }
    }

    async fn status(&self) -> Status {
        // An unused connection has no channel and no path, so one branch
        // covers idle and busy alike.
        let (ice, pcs, dcs, path) = match &self.pc {
            Some(pc) => {
                let dcs = match &pc.dc {
                    Some(dc) => dc.ready_state().await.ok().map(|s| s.to_string()),
                    None => None,
                };
                let path = if pc.channel_open {
                    pc.path().await
                } else {
                    None
                };
                (
                    Some(pc.ice_state.to_string()),
                    Some(pc.pc_state.to_string()),
                    dcs,
                    path,
                )
            }
            None => (None, None, None, None),
        };
        let peer = match &self.link {
            Link::Idle => None,
            Link::Requested { peer } => Some(StatusPeer {
                id: peer.clone(),
                initiator: None,
                open_for_ms: None,
                path: None,
            }),
            Link::Connecting { peer, initiator } => Some(StatusPeer {
                id: peer.clone(),
                initiator: Some(*initiator),
                open_for_ms: None,
                path: None,
            }),
            Link::Open {
                peer,
                initiator,
                since,
            } => Some(StatusPeer {
                id: peer.clone(),
                initiator: Some(*initiator),
                open_for_ms: Some(since.elapsed().as_millis() as u64),
                path,
            }),
        };
        Status {
            control_version: p2p_proto::control::CONTROL_VERSION,
            version: env!("CARGO_PKG_VERSION").to_string(),
            id: self.my_id.clone(),
            pid: std::process::id(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            server: StatusServer {
                url: self.cfg.server.clone(),
                state: self.server_state,
                since_ms: self.server_since.elapsed().as_millis() as u64,
                reconnects: self.reconnects,
                last_error: self.last_error.clone(),
                ping_interval_ms: self.ping.map(|p| p.0),
                ping_timeout_ms: self.ping.map(|p| p.1),
                ice_servers: self
                    .ice_servers()
                    .into_iter()
                    .flat_map(|s| s.urls)
                    .collect(),
            },
            peer,
            link: self.link.state(),
            ice_connection_state: ice,
            peer_connection_state: pcs,
            data_channel_state: dcs,
            counters: self.counters.snapshot(),
        }
    }
}

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
    ErrorBody {
        code,
        message: message.into(),
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A lost connection waiting for signald's notice (see `Engine::lost`).
struct Loss {
    at: tokio::time::Instant,
    reason: &'static str,
    error: ErrorBody,
    tell_signald: bool,
}

/// How long a broken connection waits for signald to say why.
const LOSS_GRACE: Duration = Duration::from_millis(250);

/// How long `p2pctl pair` waits by default.
pub const DEFAULT_PAIR_TIMEOUT: Duration = Duration::from_secs(30);
