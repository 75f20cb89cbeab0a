//! The engine: the one task that owns the link's state machine
//! ([`crate::link::Core`]) and the peer connection, and carries out what the
//! state machine asks for.
//!
//! Control clients talk to it with [`Cmd`]s through an [`EngineHandle`]; the
//! signaling task and the peer connection's callbacks feed it events. The
//! only state others read directly is the open data channel (a `watch`), so
//! that `send` does not pass every message through this task. Events go to
//! the hub without waiting ([`Hub::publish_event`]): no `tail` follower can
//! delay this task.
//!
//! What the core cannot hold lives here: who is waiting for an answer (the
//! core names requests by [`ReqId`] and answers with `Effect::Reply`), the
//! trust store's file (the core decides from `Pins` snapshots, handed to
//! it whenever the file changed, and asks for pins to be written with
//! `Effect::Pin`), and the clock (every input is handed the instant it
//! happens at).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use p2p_proto::control::{
    DisconnectReason, ErrorBody, ErrorCode, EventKind, IdentityInfo, OkBody, PeerTrust, Status,
};
use p2p_proto::identity;
use p2p_proto::signal::{ClientMsg, IceServer};
use rtc::peer_connection::transport::RTCDtlsRole;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use webrtc::data_channel::DataChannel;
use webrtc::peer_connection::{PeerConnection, RTCIceConnectionState, RTCPeerConnectionState};

use crate::config::Config;
use crate::counters::Counters;
use crate::hub::Hub;
use crate::identity::Identity;
use crate::invite::Code;
use crate::invite::handshake::Sides;
use crate::link::{
    Core, Effect, Input, InviteRole, NegotiationError, PathCheck, Policy, Reply, ReqId,
    SignalError, Verb,
};
use crate::peer::{Pc, PcContext, PcEvent, PcEventKind, PcSettings};
use crate::signaling::SigEvent;
use crate::status::ServerView;
use crate::stream::Streams;
use crate::throttle::Throttle;
use crate::trust::{TrustEdit, TrustStore};
use crate::udp::BufferedRuntime;

/// Renewed ICE servers rebuild the idle connection at most this often.
const MIN_RENEWAL_GAP: Duration = Duration::from_secs(1);

/// How often the trust file is looked at while a link exists (a `stat`).
const TRUST_CHECK: Duration = Duration::from_secs(1);

/// Requests to the engine.
pub enum Cmd {
    Status(oneshot::Sender<Status>),
    /// Our ID and fingerprint (after a new key, with `rotate`).
    Identity {
        rotate: bool,
        reply: oneshot::Sender<Result<IdentityInfo, ErrorBody>>,
    },
    /// An edit or listing of the trust store: done here, the link told of
    /// the new content.
    Trust {
        edit: TrustEdit,
        reply: oneshot::Sender<Result<OkBody, ErrorBody>>,
    },
    /// A verb the link decides, handed to the core as it is; its answer
    /// comes back on `reply`.
    Link {
        verb: Verb,
        reply: oneshot::Sender<Reply>,
    },
}

/// Who waits for the answer to a request the core is deciding.
enum Asker {
    Control(oneshot::Sender<Reply>),
    /// The invitation handshake's claim of an invite.
    Handshake(oneshot::Sender<Result<Code, p2p_proto::control::InviteFailure>>),
}

/// The open data channel, for the send path, and its connection, for
/// streams.
pub struct OpenLink {
    peer_id: String,
    dc: Arc<dyn DataChannel>,
    /// How far the peer's key is trusted.
    trust: PeerTrust,
    /// Told of every send, for the watch of the data flow.
    flow: crate::stall::Flow,
    /// The connection's generation (its events carry it too).
    generation: u64,
    pc: Arc<dyn PeerConnection>,
    /// The peer's description said it serves streams.
    serves_streams: bool,
}

impl OpenLink {
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// The peer's key is pinned: a guarded `send --to` may use this link.
    pub fn verified(&self) -> bool {
        self.trust != PeerTrust::Unverified
    }

    pub fn trust(&self) -> PeerTrust {
        self.trust
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn serves_streams(&self) -> bool {
        self.serves_streams
    }

    /// A new stream's channel (ordered, reliable), beside the message
    /// channel.
    pub async fn open_stream_channel(&self) -> webrtc::error::Result<Arc<dyn DataChannel>> {
        let init = webrtc::data_channel::RTCDataChannelInit {
            protocol: crate::stream::PROTOCOL.to_string(),
            ..Default::default()
        };
        self.pc
            .create_data_channel(crate::stream::LABEL, Some(init))
            .await
    }

    pub fn channel(&self) -> &Arc<dyn DataChannel> {
        &self.dc
    }

    /// Data was handed to the channel.
    pub fn sent(&self) {
        self.flow.sent();
    }
}

/// What control clients hold.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Cmd>,
    link: watch::Receiver<Option<Arc<OpenLink>>>,
    counters: Arc<Counters>,
    hub: Hub,
    streams: Streams,
}

impl EngineHandle {
    /// Sends a command; `None` when the engine has stopped.
    pub async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    /// The open data channel, if there is one now.
    pub fn open_link(&self) -> Option<Arc<OpenLink>> {
        self.link.borrow().clone()
    }

    /// Wakes when the open link changes.
    pub fn link_changes(&self) -> watch::Receiver<Option<Arc<OpenLink>>> {
        self.link.clone()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn streams(&self) -> &Streams {
        &self.streams
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }
}

/// Everything the engine task reads from.
pub struct Inputs {
    cmds: mpsc::Receiver<Cmd>,
    sig: mpsc::Receiver<SigEvent>,
    pc: mpsc::UnboundedReceiver<PcEvent>,
    /// The host's addresses or default routes changed (`crate::netwatch`).
    net: mpsc::Receiver<()>,
    shutdown: watch::Receiver<bool>,
}

pub struct Engine {
    cfg: Config,
    /// Warnings about the peer's candidates, at most one a second.
    bad_candidates: Throttle,
    identity: Identity,
    started: std::time::Instant,
    core: Core,
    /// The trust store's file: the engine reads and writes it, the core
    /// decides from the snapshots it is handed.
    trust: TrustStore,
    /// [`TrustStore::reads`] when the core was last handed the content.
    pins_read: u64,
    server: ServerView,
    pc: Option<Pc>,
    /// The ICE servers `pc` was built with.
    pc_ice: Vec<IceServer>,
    /// When renewed ICE servers last rebuilt the idle connection.
    renewed_at: Option<Instant>,
    generation: u64,
    /// Requests the core has not answered yet, by the number it knows
    /// them by.
    asked: HashMap<ReqId, Asker>,
    next_req: u64,
    sig_out: mpsc::Sender<ClientMsg>,
    /// Checks (and remakes) the signaling connection on demand.
    sig_live: crate::signaling::Liveness,
    /// A check of the signaling connection went unanswered, and the data
    /// path has not been found silent (yet): a slow signald, or a network
    /// change whose verdict is still to come.
    sig_unanswered: bool,
    pc_tx: mpsc::UnboundedSender<PcEvent>,
    link_tx: watch::Sender<Option<Arc<OpenLink>>>,
    hub: Hub,
    counters: Arc<Counters>,
    runtime: Arc<BufferedRuntime>,
    /// Drained connections waiting for their peer to close them.
    retiring: Vec<tokio::task::JoinHandle<()>>,
    streams: Streams,
}

/// What the engine is made of, from `lib.rs`'s wiring.
pub struct Parts {
    pub cfg: Config,
    pub identity: Identity,
    /// Frames to signald, and what the signaling task hears.
    pub sig_out: mpsc::Sender<ClientMsg>,
    /// Checks (and remakes) the signaling connection on demand.
    pub sig_live: crate::signaling::Liveness,
    pub sig: mpsc::Receiver<SigEvent>,
    pub hub: Hub,
    pub counters: Arc<Counters>,
    pub runtime: Arc<BufferedRuntime>,
    pub shutdown: watch::Receiver<bool>,
}

/// The engine's handle, and the generations of pairings that `connect`
/// made whose last stream ended ([`Streams::new`]).
pub type Made = (Engine, Inputs, EngineHandle, mpsc::UnboundedReceiver<u64>);

impl Engine {
    /// Makes the engine and the handle control clients use.
    pub fn new(parts: Parts) -> Made {
        let Parts {
            cfg,
            identity,
            sig_out,
            sig_live,
            sig,
            hub,
            counters,
            runtime,
            shutdown,
        } = parts;
        let (cmd_tx, cmds) = mpsc::channel(256);
        let (pc_tx, pc_rx) = mpsc::unbounded_channel();
        let (link_tx, link_rx) = watch::channel(None);
        let (streams, unpairs) = Streams::new(
            cfg.stream_limits.clone(),
            cfg.services.clone(),
            link_rx.clone(),
        );
        let handle = EngineHandle {
            tx: cmd_tx,
            link: link_rx,
            counters: counters.clone(),
            hub: hub.clone(),
            streams: streams.clone(),
        };
        let mut trust = TrustStore::open(cfg.known_peers.clone(), cfg.trust);
        let core = Core::new(
            Policy {
                allow_peers: cfg.allow_peers.clone(),
                connect_timeout: cfg.connect_timeout,
                drain_timeout: cfg.drain_timeout,
                restart_timeout: cfg.ice_restart_timeout,
                server: cfg.server.clone(),
            },
            trust.snapshot(),
            Instant::now(),
        );
        let engine = Engine {
            bad_candidates: Throttle::new(),
            identity,
            started: std::time::Instant::now(),
            server: ServerView::new(cfg.server.clone(), cfg.id.clone()),
            cfg,
            core,
            pins_read: trust.reads(),
            trust,
            pc: None,
            pc_ice: Vec::new(),
            renewed_at: None,
            generation: 0,
            asked: HashMap::new(),
            next_req: 0,
            sig_out,
            sig_live,
            sig_unanswered: false,
            pc_tx,
            link_tx,
            hub,
            counters,
            runtime,
            retiring: Vec::new(),
            streams,
        };
        let (net_tx, net) = mpsc::channel(1);
        crate::netwatch::start(net_tx);
        let inputs = Inputs {
            cmds,
            sig,
            pc: pc_rx,
            net,
            shutdown,
        };
        (engine, inputs, handle, unpairs)
    }

    /// Runs until shutdown, and after it until an open link has drained
    /// (bounded by the drain timeout): `Input::Shutdown` starts that.
    pub async fn run(mut self, mut inputs: Inputs) {
        let mut stopping = false;
        // A hand edit of the trust store reaches the link with its next
        // input; while there is a link, at least this often, so that
        // removing its peer's pin by hand ends it promptly.
        let mut trust_check = tokio::time::interval(TRUST_CHECK);
        trust_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.core.deadline();
            let paired = self.core.link().is_paired();
            tokio::select! {
                _ = trust_check.tick(), if paired => self.step_pins().await,
                _ = inputs.shutdown.changed(), if !stopping => {
                    stopping = true;
                    self.step(Input::Shutdown).await;
                }
                Some(cmd) = inputs.cmds.recv() => self.on_cmd(cmd).await,
                Some(ev) = inputs.sig.recv() => self.on_signal(ev).await,
                Some(ev) = inputs.pc.recv() => self.on_pc(ev).await,
                Some(()) = inputs.net.recv() => self.step(Input::NetworkChanged).await,
                _ = sleep_until_opt(deadline) => self.step(Input::Tick).await,
                else => break,
            }
            if stopping && !self.core.link().is_paired() {
                break;
            }
        }
        if let Some(pc) = self.pc.take() {
            pc.close().await;
        }
        // A drained connection's peer may still be reading (bounded by the
        // drain timeout in each task).
        for task in self.retiring.drain(..) {
            let _ = task.await;
        }
    }

    async fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Status(reply) => {
                let ice_servers = self.ice_servers();
                let status = crate::status::build(crate::status::Parts {
                    started: self.started,
                    fingerprint: self.identity.fingerprint(),
                    server: &self.server,
                    core: &self.core,
                    trust: &mut self.trust,
                    pc: self.pc.as_ref(),
                    ice_servers: &ice_servers,
                    counters: &self.counters,
                    streams: &self.streams,
                })
                .await;
                let _ = reply.send(status);
            }
            Cmd::Trust { edit, reply } => {
                let _ = reply.send(self.trust.edit(edit));
                // The link hears of the new content with the next input,
                // which this is.
                self.step_pins().await;
            }
            Cmd::Link { verb, reply } => {
                let id = self.ask(Asker::Control(reply));
                self.step(Input::Verb { id, verb }).await
            }
            Cmd::Identity { rotate, reply } => {
                let rotated = match rotate {
                    true => self.identity.rotate().map_err(|e| ErrorBody {
                        code: ErrorCode::StoreFailed,
                        message: format!("could not make a new key: {e:#}"),
                    }),
                    false => Ok(()),
                };
                // The next connection presents the new key; one that is in
                // use keeps the old one until it ends.
                if rotated.is_ok() && rotate && self.core.link().peer().is_none() {
                    self.fresh_pc().await;
                }
                let id = self.server.id().map(str::to_string);
                let fingerprint = self.identity.fingerprint();
                let _ = reply.send(rotated.map(|()| IdentityInfo {
                    token: id.as_deref().map(|i| identity::token(i, &fingerprint)),
                    id,
                    fingerprint,
                }));
            }
        }
    }

    async fn on_signal(&mut self, ev: SigEvent) {
        match ev {
            SigEvent::Up {
                id,
                ping_interval_ms,
                ping_timeout_ms,
                ice_servers,
            } => {
                self.sig_unanswered = false;
                self.server
                    .up(&id, (ping_interval_ms, ping_timeout_ms), ice_servers);
                self.hub
                    .publish_event(EventKind::SignalingUp { id: id.clone() });
                let turn = self
                    .ice_servers()
                    .iter()
                    .flat_map(|s| &s.urls)
                    .any(|u| u.starts_with("turn:") || u.starts_with("turns:"));
                self.step(Input::SignalingUp { id, turn }).await;
                self.take_ice_servers().await;
            }
            SigEvent::IceServers(ice_servers) => {
                self.server.renewed(ice_servers);
                // signald renews at half the credentials' lifetime (a
                // second at the least); a flood of renewals must not make us
                // build connection after connection. The latest is kept
                // for the next rebuild or restart; the idle connection's
                // are then at most a second older, and still valid.
                let now = Instant::now();
                if self
                    .renewed_at
                    .is_none_or(|at| now.duration_since(at) >= MIN_RENEWAL_GAP)
                {
                    self.renewed_at = Some(now);
                    self.take_ice_servers().await;
                }
            }
            // Both the path and signald silent: our network changed; a
            // new connection may well reach signald at once.
            SigEvent::Unanswered if self.core.link().restarting() => self.sig_live.reconnect(),
            SigEvent::Unanswered => self.sig_unanswered = true,
            SigEvent::Down { reason, .. } => {
                // A check of the connection that ended says nothing of the
                // next one.
                self.sig_unanswered = false;
                let was_up = self.core.signald_id().is_some();
                self.server.down(&reason, was_up);
                if was_up {
                    self.hub.publish_event(EventKind::SignalingDown {
                        reason: reason.clone(),
                    });
                }
                self.step(Input::SignalingDown { why: reason }).await;
            }
            SigEvent::Msg(m) => {
                self.sig_unanswered = false;
                self.step(Input::Server(m)).await
            }
        }
    }

    async fn on_pc(&mut self, ev: PcEvent) {
        let Some(pc) = self.pc.as_mut() else { return };
        if ev.generation != pc.generation() {
            return; // from a connection already closed
        }
        let input = match ev.kind {
            PcEventKind::Candidate(c) => Input::LocalCandidate(c.map(|c| pc.local_candidate(c))),
            PcEventKind::IceState(s) => {
                tracing::debug!(state = %s, "ICE connection state");
                match s {
                    RTCIceConnectionState::Connected | RTCIceConnectionState::Completed => {
                        Input::IceConnected
                    }
                    RTCIceConnectionState::Failed | RTCIceConnectionState::Disconnected => {
                        Input::Lost {
                            reason: DisconnectReason::IceFailed,
                            clean: false,
                        }
                    }
                    _ => return,
                }
            }
            PcEventKind::PcState(s) => {
                tracing::debug!(state = %s, "peer connection state");
                match s {
                    RTCPeerConnectionState::Failed => Input::Lost {
                        reason: DisconnectReason::IceFailed,
                        clean: false,
                    },
                    // Closed is the peer closing cleanly: it tells signald.
                    RTCPeerConnectionState::Closed => Input::Lost {
                        reason: DisconnectReason::ChannelClosed,
                        clean: true,
                    },
                    _ => return,
                }
            }
            PcEventKind::DataChannel(dc) => {
                let Some(peer) = self.core.answering() else {
                    tracing::debug!("ignoring a data channel we did not expect");
                    return;
                };
                let label = dc.label().await.unwrap_or_default();
                tracing::debug!(%label, "the peer opened a data channel");
                if label == crate::invite::wire::LABEL {
                    if !pc.adopt_invite_channel(dc) {
                        tracing::debug!("ignoring a second invite channel from the peer");
                        return;
                    }
                    Input::InviteChannel
                } else {
                    if !pc.adopt_channel(dc, peer) {
                        tracing::debug!(%label, "ignoring a second data channel from the peer");
                    }
                    return;
                }
            }
            PcEventKind::InviteClaim { number, reply } => Input::InviteClaim {
                id: self.ask(Asker::Handshake(reply)),
                number,
            },
            PcEventKind::InviteDone(result) => Input::InviteDone(result),
            PcEventKind::Drained => Input::Drained,
            PcEventKind::PathChecked(result) => {
                if result == PathCheck::Answered {
                    // The network is fine: signald was only slow.
                    self.sig_unanswered = false;
                }
                Input::PathChecked(result)
            }
            PcEventKind::Stalled => Input::Stalled,
            PcEventKind::ChannelOpen => Input::ChannelOpen {
                path: pc.path().await,
                certificate: pc.remote_certificate().await,
            },
            // A channel closes cleanly only when the peer closed it, and
            // the peer then tells signald itself.
            PcEventKind::ChannelClosed => Input::Lost {
                reason: DisconnectReason::ChannelClosed,
                clean: true,
            },
        };
        self.step(input).await;
    }

    /// Feeds one input to the state machine and carries out its effects;
    /// the results of effects that can fail are fed back in turn.
    ///
    /// The trust store's content goes first when it changed (a hand edit
    /// applies at the next input: the core never reads the file itself).
    async fn step(&mut self, input: Input) {
        self.step_pins().await;
        self.feed(input).await;
    }

    /// Hands the core the trust store's content if it changed.
    async fn step_pins(&mut self) {
        self.trust.refresh();
        if self.trust.reads() != self.pins_read {
            let pins = self.pins();
            self.feed(Input::Pins(pins)).await;
        }
    }

    /// The trust store's content, noted as handed to the core.
    fn pins(&mut self) -> crate::trust::Pins {
        let pins = self.trust.snapshot();
        self.pins_read = self.trust.reads();
        pins
    }

    async fn feed(&mut self, input: Input) {
        let mut queue: VecDeque<Effect> = self.core.handle(input, Instant::now()).into();
        while let Some(effect) = queue.pop_front() {
            if let Some(result) = self.execute(effect).await {
                queue.extend(self.core.handle(result, Instant::now()));
            }
        }
    }

    /// Numbers a request for the core, and remembers who asked.
    fn ask(&mut self, asker: Asker) -> ReqId {
        let id = ReqId(self.next_req);
        self.next_req += 1;
        self.asked.insert(id, asker);
        id
    }

    /// Hands the core's answer to whoever asked (who may have hung up).
    fn answer(&mut self, to: ReqId, reply: Reply) {
        match (self.asked.remove(&to), reply) {
            (Some(Asker::Control(tx)), reply) => {
                let _ = tx.send(reply);
            }
            (Some(Asker::Handshake(tx)), Reply::Claim(claimed)) => {
                let _ = tx.send(claimed);
            }
            (asker, reply) => tracing::error!(
                ?to,
                known = asker.is_some(),
                ?reply,
                "an answer for no request of its kind (a bug)"
            ),
        }
    }

    /// Carries out one effect; returns its result when the core wants it.
    async fn execute(&mut self, effect: Effect) -> Option<Input> {
        match effect {
            Effect::Reply { to, reply } => {
                self.answer(to, reply);
                None
            }
            Effect::Pin {
                peer,
                fingerprint,
                comment,
                first,
            } => {
                let result = match first {
                    true => self.trust.pin_first(&peer, fingerprint, comment),
                    false => self
                        .trust
                        .set(&peer, fingerprint, Some(comment.to_string()))
                        .map(|_| crate::trust::FirstPin::Added),
                };
                Some(Input::Pinned {
                    result,
                    pins: self.pins(),
                })
            }
            Effect::Signal(msg) => self.signal(msg),
            Effect::Publish(kind) => {
                self.hub.publish_event(kind);
                None
            }
            Effect::Offer { peer, invite } => {
                Some(Input::Offered(match self.pc_for_pairing().await {
                    Ok(pc) => pc.offer(&peer, invite).await,
                    Err(e) => Err(e),
                }))
            }
            Effect::RunInvite {
                role,
                me,
                peer,
                peer_key,
            } => {
                let own = self.identity.fingerprint();
                let sides = match role {
                    InviteRole::Joiner(_) => Sides {
                        joiner: me,
                        inviter: peer,
                        joiner_key: own,
                        inviter_key: peer_key,
                    },
                    InviteRole::Inviter => Sides {
                        joiner: peer,
                        inviter: me,
                        joiner_key: peer_key,
                        inviter_key: own,
                    },
                };
                if let Some(pc) = self.pc.as_mut() {
                    pc.run_invite(role, sides);
                }
                None
            }
            Effect::Answer { sdp } => {
                // The answer to a restart gathers again: with the TURN
                // credentials signald renewed since the connection was made.
                if self.core.link().open_since().is_some() {
                    self.renew_ice_servers().await;
                }
                Some(Input::Answered(match self.pc_for_pairing().await {
                    Ok(pc) => pc.answer(sdp).await,
                    Err(e) => Err(e),
                }))
            }
            Effect::AcceptAnswer { sdp } => {
                Some(Input::AnswerApplied(match self.pc_for_pairing().await {
                    Ok(pc) => pc.accept_answer(sdp).await,
                    Err(e) => Err(e),
                }))
            }
            Effect::AddCandidate(c) => {
                if let Some(pc) = self.pc.as_mut()
                    && let Err(e) = pc.add_candidate(c).await
                    && let Some(n) = self.bad_candidates.allow()
                {
                    tracing::warn!(error = %e, suppressed = n, "ignoring a remote candidate");
                }
                None
            }
            Effect::Expose { peer, trust } => {
                let pc = self.pc.as_mut()?;
                pc.release();
                let dc = pc.channel()?;
                let flow = pc.watch_flow();
                self.counters.pairings.fetch_add(1, Ordering::Relaxed);
                self.link_tx.send_replace(Some(Arc::new(OpenLink {
                    peer_id: peer,
                    dc,
                    trust,
                    flow,
                    generation: pc.generation(),
                    pc: pc.connection(),
                    serves_streams: pc.peer_serves_streams(),
                })));
                None
            }
            Effect::Withdraw => {
                self.link_tx.send_replace(None);
                None
            }
            Effect::RestartIce => {
                // The offer goes through signald: is our connection to it
                // still there? (After a network change it is most likely
                // dead without knowing it.) A check already unanswered
                // decides now: the path is silent too.
                if std::mem::take(&mut self.sig_unanswered) {
                    self.sig_live.reconnect();
                } else {
                    self.sig_live.check();
                }
                self.renew_ice_servers().await;
                Some(Input::Offered(match self.pc.as_mut() {
                    Some(pc) => pc.restart_offer().await,
                    None => Err(NegotiationError::NoConnection),
                }))
            }
            Effect::ResendOffer => Some(Input::Offered(match self.pc.as_mut() {
                Some(pc) => pc.pending_offer().await,
                None => Err(NegotiationError::NoConnection),
            })),
            Effect::Restarted { peer } => {
                if let Some(pc) = &self.pc {
                    pc.path_changed().await;
                }
                self.counters.ice_restarts.fetch_add(1, Ordering::Relaxed);
                let path = match &self.pc {
                    Some(pc) => pc.path().await,
                    None => None,
                };
                self.hub.publish_event(EventKind::IceRestarted {
                    peer_id: peer,
                    path,
                });
                None
            }
            Effect::CheckPath { quick } => match &mut self.pc {
                Some(pc) => {
                    pc.check_path(if quick {
                        crate::consent::Pace::Quick
                    } else {
                        crate::consent::Pace::Careful
                    });
                    // A silent path may mean our network changed; then our
                    // WebSocket to signald is most likely dead too, and an
                    // ICE restart needs it. Checked now, acted on only if
                    // the path turns out silent.
                    self.sig_live.check();
                    None
                }
                None => Some(Input::PathChecked(PathCheck::Silent)),
            },
            Effect::Drain => match &self.pc {
                Some(pc) => {
                    pc.drain(self.cfg.drain_timeout);
                    None
                }
                None => Some(Input::Drained),
            },
            Effect::Reset => {
                if self.core.signald_id().is_some() {
                    self.fresh_pc().await;
                } else if let Some(pc) = self.pc.take() {
                    self.close_pc(pc).await;
                }
                None
            }
            Effect::ResetAfterDrain => {
                if let Some(pc) = self.pc.take() {
                    self.retire(pc);
                }
                if self.core.signald_id().is_some() {
                    self.fresh_pc().await;
                }
                None
            }
        }
    }

    /// The connection for a new pairing, built now if none is ready (the
    /// last build failed).
    async fn pc_for_pairing(&mut self) -> Result<&mut Pc, NegotiationError> {
        if self.pc.is_none() {
            self.fresh_pc().await;
        }
        self.pc.as_mut().ok_or(NegotiationError::NoConnection)
    }

    /// Queues a frame for signald; on failure, the result for the core.
    fn signal(&mut self, msg: ClientMsg) -> Option<Input> {
        let what = match &msg {
            ClientMsg::Pong => "pong",
            ClientMsg::Pair { .. } => "pair request",
            ClientMsg::Unpair => "unpair",
            ClientMsg::Offer { .. } => "offer",
            ClientMsg::Answer { .. } => "answer",
            ClientMsg::Candidate { .. } => "candidate",
        };
        match self.sig_out.try_send(msg) {
            Ok(()) => None,
            Err(e) => Some(Input::SignalFailed {
                what,
                why: match e {
                    mpsc::error::TrySendError::Full(_) => SignalError::QueueFull,
                    mpsc::error::TrySendError::Closed(_) => SignalError::Stopped,
                },
            }),
        }
    }

    /// Closes a drained connection in the background, once the peer has
    /// closed it (it read everything) or after the drain timeout.
    fn retire(&mut self, pc: Pc) {
        if pc.was_used() {
            self.counters.resets.fetch_add(1, Ordering::Relaxed);
        }
        self.retiring.retain(|t| !t.is_finished());
        self.retiring.push(tokio::spawn(
            pc.close_when_peer_closed(self.cfg.drain_timeout),
        ));
    }

    async fn close_pc(&mut self, pc: Pc) {
        let used = pc.was_used();
        pc.close().await;
        if used {
            self.counters.resets.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn fresh_pc(&mut self) {
        if let Some(old) = self.pc.take() {
            self.close_pc(old).await;
        }
        self.generation += 1;
        let settings = PcSettings {
            bind: self.cfg.bind.clone(),
            ice_servers: self.ice_servers(),
            relay_only: self.cfg.relay_only,
            ice_disconnected_timeout: self.cfg.ice_disconnected_timeout,
            runtime: self.runtime.clone(),
            certificate: self.identity.certificate(),
            sctp: self.cfg.sctp,
            relay_wait: self.cfg.ice_relay_wait,
            // As the DTLS server the answerer saves a round of waiting.
            answering_dtls_role: RTCDtlsRole::Server,
        };
        let ctx = PcContext {
            flow: crate::stall::Flow::default(),
            generation: self.generation,
            events: self.pc_tx.clone(),
            hub: self.hub.clone(),
            counters: self.counters.clone(),
            streams: self.streams.clone(),
        };
        match Pc::build(&settings, ctx).await {
            Ok(pc) => {
                self.pc = Some(pc);
                self.pc_ice = settings.ice_servers;
            }
            Err(e) => tracing::error!(error = %e, "cannot build a peer connection"),
        }
    }

    /// Hands the connection in use the ICE servers signald renewed since it
    /// was built, right before an ICE restart (which binds new sockets and
    /// allocates again, docs/webrtc.md).
    async fn renew_ice_servers(&mut self) {
        let now = self.ice_servers();
        if self.pc_ice == now {
            return;
        }
        if let Some(pc) = &self.pc {
            match pc.set_ice_servers(&now, self.cfg.relay_only).await {
                Ok(()) => self.pc_ice = now,
                Err(e) => tracing::warn!(error = %e, "cannot take the renewed ICE servers"),
            }
        }
    }

    /// Makes the idle connection again when its ICE servers are out of
    /// date (a new welcome, or signald renewed the TURN credentials), so
    /// that the next pairing allocates with fresh credentials.
    ///
    /// A connection in use keeps what it has: its allocations were made
    /// with the old credentials, and TURN requires every later request of
    /// an allocation to carry the same username (RFC 8656, 441 Wrong
    /// Credentials), while webrtc 0.21.1, given new ones by
    /// `set_configuration`, re-signs the live allocations with them and
    /// coturn then refuses their refreshes (seen in the NAT lab). An ICE
    /// restart reuses the allocations it has, which coturn keeps
    /// refreshing past the credentials' expiry.
    async fn take_ice_servers(&mut self) {
        let idle = self.core.link().peer().is_none();
        let stale = self.pc_ice != self.ice_servers();
        if idle && (stale || self.pc.is_none()) {
            self.fresh_pc().await;
        }
    }

    /// The welcome's ICE servers plus our own `--ice-server`s.
    fn ice_servers(&self) -> Vec<IceServer> {
        let mut v = self.server.welcome_ice().to_vec();
        v.extend(self.cfg.ice_servers.iter().cloned());
        v
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// How long `p2pctl pair` waits by default.
pub const DEFAULT_PAIR_TIMEOUT: Duration = Duration::from_secs(30);
