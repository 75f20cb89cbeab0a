//! One WebRTC peer connection and its data channel, built with the settings
//! that `docs/webrtc.md` explains (loopback binding, no mDNS, sized socket
//! buffers and SCTP window, send backpressure, a fast first open).
//!
//! The engine owns the [`Pc`] and drives it through a small API (`offer`,
//! `answer`, `accept_answer`, `add_candidate`, `close`). The crate's
//! callbacks only forward [`PcEvent`]s to the engine, tagged with the
//! connection's generation so that late events from a closed connection
//! are recognised; received messages go from the channel's reader
//! ([`crate::channel`]) straight to the hub, in order.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2p_proto::control::InviteFailure;
use p2p_proto::control::Path;
use p2p_proto::signal::{CandidateInit, IceServer};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::peer_connection::transport::{RTCDtlsRole, RTCSctpTransportState};
use tokio::sync::{mpsc, watch};
use webrtc::data_channel::{DataChannel, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCCertificate,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceConnectionState, RTCIceGatheringState,
    RTCIceServer, RTCIceTransportPolicy, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCSdpType, RTCSessionDescription, RTCStatsReport, RTCStatsReportEntry, SettingEngineBuilder,
    StatsSelector,
};

use crate::channel::{self, Reader};
use crate::counters::Counters;
use crate::hub::Hub;
use crate::invite::handshake::Sides;
use crate::link::{InviteRole, NegotiationError, ice_ufrag};
use crate::udp::BufferedRuntime;

/// Label of the channel p2pd creates (any label is accepted from others).
pub const CHANNEL_LABEL: &str = "p2p";
/// Largest message the data channel carries (SCTP's default
/// max-message-size, and what the crate accepts).
pub const MAX_MESSAGE_BYTES: usize = 65536;
/// Outstanding bytes on the channel before `send` waits (backpressure).
const SEND_BUFFER_LIMIT: usize = 1024 * 1024;
/// Remote candidates one pairing may add (a browser gives a dozen or so;
/// each one costs connectivity checks, so a peer cannot make us check
/// thousands).
pub const MAX_REMOTE_CANDIDATES: usize = 64;
/// Longest candidate line accepted (real ones are about 100 bytes).
pub const MAX_CANDIDATE_BYTES: usize = 512;
/// Data channels a peer may open on one connection (ours, and the
/// invitation's); the others are closed at once. Stream channels are not
/// counted here: the streams' own caps bound them ([`crate::stream`]).
const MAX_PEER_CHANNELS: usize = 2;

/// The session-level attribute by which p2pd's descriptions say that it
/// serves streams (docs/protocol.md, "Streams"). Every stack ignores an
/// attribute it does not know (RFC 8866 §5.13), so a peer without it is
/// one that must never see a stream channel: a browser page, aiortc, or
/// an older p2pd would take it for messages or leave it unanswered.
pub const STREAMS_ATTRIBUTE: &str = "a=x-p2pd-streams:1";

/// Our description as we send it: with [`STREAMS_ATTRIBUTE`], before the
/// first media section (where session attributes belong).
fn with_streams_attribute(mut sdp: String) -> String {
    if let Some(i) = sdp.find("\nm=") {
        sdp.insert_str(i + 1, &format!("{STREAMS_ATTRIBUTE}\r\n"));
    }
    sdp
}

/// Whether the peer's description says it serves streams.
fn serves_streams(sdp: &str) -> bool {
    sdp.lines()
        .take_while(|l| !l.starts_with("m="))
        .any(|l| l.trim_end() == STREAMS_ATTRIBUTE)
}

/// Settings for every peer connection of this daemon.
#[derive(Debug, Clone)]
pub struct PcSettings {
    pub bind: Vec<SocketAddr>,
    pub ice_servers: Vec<IceServer>,
    pub relay_only: bool,
    pub ice_disconnected_timeout: Duration,
    pub runtime: Arc<BufferedRuntime>,
    /// Our key's certificate: the same for every connection, so that our
    /// fingerprint is stable.
    pub certificate: RTCCertificate,
    pub sctp: crate::config::SctpTimers,
    /// How long a relayed pair waits before it may be chosen.
    pub relay_wait: Duration,
    /// The DTLS role we take when answering. p2pd answers as `Server`,
    /// which saves the offerer a round of waiting; tests also answer as
    /// `Client`, the role other stacks take (aiortc always, webrtc-rs by
    /// default), to check that the channel opens either way
    /// (vendor/PATCHES.md 11).
    pub answering_dtls_role: RTCDtlsRole,
}

/// How long SCTP may delay an acknowledgement. libdatachannel's 20 ms
/// (RFC 9260 allows up to 500; the crate used 200): well under every
/// peer's minimum RTO (Chrome's 220 ms, ours), so no peer retransmits
/// while we wait, and a lone last packet is acknowledged promptly.
const SCTP_DELAYED_ACK: Duration = Duration::from_millis(20);
/// The retransmission timeout before SCTP has measured the round trip
/// (what a lost INIT or COOKIE costs): Chrome's 500 ms; the crate's 1 s.
const SCTP_RTO_INITIAL: Duration = Duration::from_millis(500);

/// How long a DTLS handshake flight waits for its answer before it is sent
/// again: what a lost handshake packet costs an open. The crate's 1 s made
/// every such loss on the lab's impaired path cost a second. Browsers start
/// at twice the ICE round trip (at least 50 ms) and back off; the crate's
/// interval is fixed and a flight is sent at most 8 times, so this also
/// bounds how long one flight may go unanswered (4 s) before the handshake
/// fails.
const DTLS_FLIGHT_INTERVAL: Duration = Duration::from_millis(500);

/// How often ICE checks the selected pair (a STUN request, so the peer
/// answers): the crate's 2 s, or a third of the disconnected timeout if
/// that is shorter. An idle link hears nothing else, and with the crate's
/// 2 s a timeout of 1 s declared it silent (and restarted ICE) between any
/// two checks; a third leaves room for one lost check. A check of the path
/// when signald reports the peer gone does not wait for these: it sends
/// its own at once ([`crate::consent`]).
fn keepalive_interval(disconnected_timeout: Duration) -> Duration {
    (disconnected_timeout / 3).min(Duration::from_secs(2))
}

/// The stack's refusal, in its own words, for the link's core.
fn stack(e: impl std::fmt::Display) -> NegotiationError {
    NegotiationError::Stack(format!("{e:#}"))
}

/// The SCTP timers our connections use (vendor/PATCHES.md, "SCTP timers").
fn sctp_timers(t: crate::config::SctpTimers) -> rtc::sctp::TimerConfig {
    let ms = |d: Duration| d.as_millis() as u64;
    rtc::sctp::TimerConfig {
        rto_initial_ms: ms(SCTP_RTO_INITIAL.clamp(t.rto_min, t.rto_max)),
        rto_min_ms: ms(t.rto_min),
        rto_max_ms: ms(t.rto_max),
        ack_interval_ms: ms(SCTP_DELAYED_ACK),
        ..Default::default()
    }
}

/// Where a connection sends what it hears, given once when it is built.
#[derive(Clone)]
pub struct PcContext {
    pub generation: u64,
    pub events: mpsc::UnboundedSender<PcEvent>,
    pub hub: Hub,
    pub counters: Arc<Counters>,
    /// Told of data sent and received, for the watch of the data flow
    /// (`crate::stall`).
    pub flow: crate::stall::Flow,
    /// Where the peer's stream channels go.
    pub streams: crate::stream::Streams,
}

impl PcContext {
    /// Forwards an event to the engine. The engine outlives every
    /// connection it builds; a send error means it is shutting down and
    /// nobody cares about this event.
    pub fn forward(&self, kind: PcEventKind) {
        let _ = self.events.send(PcEvent {
            generation: self.generation,
            kind,
        });
    }
}

pub struct PcEvent {
    pub generation: u64,
    pub kind: PcEventKind,
}

pub enum PcEventKind {
    /// A local candidate to trickle (without `sdpMid`: see
    /// [`Pc::local_candidate`]); `None` at the end of gathering.
    Candidate(Option<CandidateInit>),
    IceState(RTCIceConnectionState),
    PcState(RTCPeerConnectionState),
    /// The answerer's side of the channel arrived.
    DataChannel(Arc<dyn DataChannel>),
    ChannelOpen,
    ChannelClosed,
    /// The invitation handshake asks for the code of invite `number`.
    InviteClaim {
        number: u16,
        reply: tokio::sync::oneshot::Sender<Result<crate::invite::Code, InviteFailure>>,
    },
    /// The invitation handshake ended.
    InviteDone(Result<(), InviteFailure>),
    /// A drain ([`Pc::drain`]) is over.
    Drained,
    /// What a check of the path ([`Pc::check_path`]) found.
    PathChecked(crate::link::PathCheck),
    /// Our data waits for acknowledgement and nothing comes back
    /// (`crate::stall`).
    Stalled,
}

/// The connection's states as its callbacks last reported them.
#[derive(Clone, Copy)]
struct States {
    ice: RTCIceConnectionState,
    pc: RTCPeerConnectionState,
}

/// A peer connection with what the engine needs to know about it.
pub struct Pc {
    ctx: PcContext,
    pc: Arc<dyn PeerConnection>,
    states: Arc<Mutex<States>>,
    channel: Option<Reader>,
    /// Holds the user's channel closed until an invitation's handshake
    /// passed (`None` when no handshake is needed).
    gate: Option<watch::Sender<bool>>,
    /// The invitation handshake's channel and task.
    invite: Invite,
    /// Remote candidates that arrived before the remote description.
    early_candidates: Vec<RTCIceCandidateInit>,
    /// Remote candidates taken so far (early ones included).
    candidates: usize,
    /// An offer or answer was made: closing this connection is a reset.
    used: bool,
    /// `a=mid` of our data section, put into trickled candidates.
    mid: Option<String>,
    /// A check of the path under way ([`Pc::check_path`]).
    check: Option<tokio::task::JoinHandle<()>>,
    /// The peer's first description carried [`STREAMS_ATTRIBUTE`].
    peer_streams: bool,
    /// The watch of the open channel's data flow (`crate::stall`).
    flow: Option<tokio::task::JoinHandle<()>>,
}

/// The `p2p-invite` side of a connection: the channel and the handshake
/// run on it, which may be asked for before the channel arrives.
#[derive(Default)]
struct Invite {
    dc: Option<Arc<dyn DataChannel>>,
    pending: Option<(InviteRole, Sides)>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Invite {
    /// Starts the handshake once both the channel and the request are here.
    fn start_if_ready(&mut self, ctx: &PcContext) {
        if self.task.is_some() {
            return;
        }
        let Some(dc) = &self.dc else { return };
        if let Some((role, sides)) = self.pending.take() {
            self.task = Some(tokio::spawn(crate::invite::wire::run(
                dc.clone(),
                role,
                sides,
                ctx.clone(),
            )));
        }
    }
}

struct Handler {
    ctx: PcContext,
    states: Arc<Mutex<States>>,
    /// Data channels the peer opened so far.
    peer_channels: std::sync::atomic::AtomicUsize,
}

impl Handler {
    fn states(&self) -> std::sync::MutexGuard<'_, States> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => self.ctx.forward(PcEventKind::Candidate(Some(CandidateInit {
                candidate: init.candidate,
                sdp_mid: None,
                sdp_mline_index: Some(0),
                username_fragment: None,
            }))),
            Err(e) => tracing::warn!(error = %e, "cannot encode a local candidate"),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.ctx.forward(PcEventKind::Candidate(None));
        }
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        self.states().ice = state;
        self.ctx.forward(PcEventKind::IceState(state));
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.states().pc = state;
        self.ctx.forward(PcEventKind::PcState(state));
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        if dc.label().await.is_ok_and(|l| l == crate::stream::LABEL) {
            // Straight to the streams, which bound them: never to the
            // engine's queue.
            return self.ctx.streams.incoming(dc, self.ctx.generation);
        }
        let n = self
            .peer_channels
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n >= MAX_PEER_CHANNELS {
            // Never forwarded: a peer opening channels by the thousand
            // must not fill the engine's queue.
            if n == MAX_PEER_CHANNELS {
                tracing::warn!(
                    "the peer opens more data channels than ours; closing the extra ones"
                );
            }
            let _ = dc.close().await;
            return;
        }
        self.ctx.forward(PcEventKind::DataChannel(dc));
    }
}

impl Pc {
    /// Builds a fresh peer connection; no sockets carry traffic until the
    /// offer/answer starts.
    pub async fn build(settings: &PcSettings, ctx: PcContext) -> anyhow::Result<Pc> {
        let window = settings.runtime.sctp_window();
        let setting_engine = SettingEngineBuilder::new()
            // Lab namespaces have no multicast; mDNS would fail there and
            // only hides addresses a daemon has no reason to hide.
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_ice_timeouts(
                Some(settings.ice_disconnected_timeout),
                Some(settings.ice_disconnected_timeout),
                Some(keepalive_interval(settings.ice_disconnected_timeout)),
            )
            // Faster checks while connecting only; the keepalive after
            // connecting stays at the crate's default.
            .with_ice_connection_attempts(Some(Duration::from_millis(10)), Some(140))
            .with_prflx_acceptance_min_wait(Some(Duration::ZERO))
            // A direct pair through a NAT is the best path there is: take
            // it as soon as it works (the crate waits 500 ms). A relay still
            // waits `--ice-relay-wait` (the crate: 2 s) so that a direct pair
            // that needs a few retransmissions is not beaten by TURN; with
            // the handshakes no longer waiting for timer ticks, that wait is
            // all a relayed open costs.
            .with_srflx_acceptance_min_wait(Some(Duration::ZERO))
            .with_relay_acceptance_min_wait(Some(settings.relay_wait))
            .with_answering_dtls_role(settings.answering_dtls_role)
            // Never advertise more window than the socket can hold: overflow
            // drops packets and SCTP's 1 s minimum RTO then stalls the link.
            .with_sctp_max_receive_buffer_size(window)
            .with_sctp_timer_config(sctp_timers(settings.sctp))
            .with_dtls_flight_interval(DTLS_FLIGHT_INTERVAL)
            // An ICE restart binds its UDP sockets again, on the interfaces
            // the host has then: after a move to another network the old
            // address may be gone, and its socket with it (the NAT lab's
            // renumbered host). Its TURN allocations are made again too,
            // with the connection's current ICE servers (renewed first:
            // Pc::set_ice_servers).
            .with_discard_local_candidates_during_ice_restart(true)
            .build();
        let config = ice_config(&settings.ice_servers, settings.relay_only)
            .with_certificates(vec![settings.certificate.clone()]);
        let bind: Vec<SocketAddr> = if settings.bind.is_empty() {
            vec![SocketAddr::from(([0, 0, 0, 0], 0))]
        } else {
            settings.bind.clone()
        };
        let states = Arc::new(Mutex::new(States {
            ice: RTCIceConnectionState::New,
            pc: RTCPeerConnectionState::New,
        }));
        let pc = PeerConnectionBuilder::new()
            .with_configuration(config.build())
            .with_setting_engine(setting_engine)
            .with_runtime(settings.runtime.clone())
            .with_handler(Arc::new(Handler {
                ctx: ctx.clone(),
                states: states.clone(),
                peer_channels: Default::default(),
            }))
            .with_udp_addrs(bind)
            .with_data_channel_send_buffer_limit(SEND_BUFFER_LIMIT)
            .build()
            .await?;
        Ok(Pc {
            ctx,
            pc: Arc::new(pc),
            states,
            channel: None,
            gate: None,
            invite: Invite::default(),
            early_candidates: Vec::new(),
            candidates: 0,
            used: false,
            mid: None,
            check: None,
            peer_streams: false,
            flow: None,
        })
    }

    pub fn generation(&self) -> u64 {
        self.ctx.generation
    }

    /// The initiator's side: creates the channel (ordered, reliable,
    /// negotiated in band) and returns the offer's SDP. With `invite` the
    /// handshake's channel comes first (so the peer sees it before the
    /// user's) and the user's channel stays held until the handshake passed.
    pub async fn offer(&mut self, peer_id: &str, invite: bool) -> Result<String, NegotiationError> {
        self.used = true;
        if invite {
            let dc = self
                .pc
                .create_data_channel(
                    crate::invite::wire::LABEL,
                    Some(RTCDataChannelInit::default()),
                )
                .await
                .map_err(stack)?;
            self.invite.dc = Some(dc);
        }
        let dc = self
            .pc
            .create_data_channel(CHANNEL_LABEL, Some(RTCDataChannelInit::default()))
            .await
            .map_err(stack)?;
        // Held until the link opens (`release`): the peer's key may still
        // be judged then, or an invitation's handshake still to pass.
        let gate = Some(self.hold());
        // The initiator pokes the driver until the channel opens (see
        // `docs/webrtc.md`, "fast open").
        self.channel = Some(channel::start(dc, true, peer_id, &self.ctx, gate));
        let offer = self.pc.create_offer(None).await.map_err(stack)?;
        self.pc
            .set_local_description(offer.clone())
            .await
            .map_err(stack)?;
        self.learn_mid().await;
        Ok(with_streams_attribute(offer.sdp))
    }

    /// An ICE restart of the open connection, by whichever side noticed
    /// the silence: new credentials (the peer's answer carries its own),
    /// candidates gathered again; DTLS, SCTP and the channel are
    /// untouched. Returns the offer's SDP.
    pub async fn restart_offer(&mut self) -> Result<String, NegotiationError> {
        let options = rtc::peer_connection::configuration::RTCOfferOptions { ice_restart: true };
        let offer = self.pc.create_offer(Some(options)).await.map_err(stack)?;
        self.pc
            .set_local_description(offer.clone())
            .await
            .map_err(stack)?;
        // A new ICE generation: the cap counts its candidates afresh.
        self.candidates = 0;
        Ok(with_streams_attribute(offer.sdp))
    }

    /// Our restart offer still waiting for its answer, for a new pairing
    /// at signald: the same offer (with the candidates gathered since),
    /// so that an answer to it already on its way still fits. A new
    /// restart offer if none is pending (an answer came meanwhile).
    pub async fn pending_offer(&mut self) -> Result<String, NegotiationError> {
        match self.pc.pending_local_description().await {
            Some(d) if d.sdp_type == RTCSdpType::Offer => Ok(with_streams_attribute(d.sdp)),
            _ => self.restart_offer().await,
        }
    }

    /// The answerer's side: applies the offer and returns the answer's SDP.
    /// Also the answer to the peer's ICE restart of an open connection.
    pub async fn answer(&mut self, offer: String) -> Result<String, NegotiationError> {
        if self.described().await {
            // A restart: a new ICE generation, its candidates counted afresh.
            self.candidates = 0;
        }
        // Our own restart offer crossed the peer's and gave way (the link
        // decided so): take it back before taking theirs.
        if self
            .pc
            .pending_local_description()
            .await
            .is_some_and(|d| d.sdp_type == RTCSdpType::Offer)
        {
            let rollback = RTCSessionDescription::rollback(None).map_err(stack)?;
            self.pc
                .set_local_description(rollback)
                .await
                .map_err(stack)?;
        }
        if !self.used {
            self.peer_streams = serves_streams(&offer);
        }
        self.used = true;
        let offer = RTCSessionDescription::offer(offer).map_err(stack)?;
        self.pc.set_remote_description(offer).await.map_err(stack)?;
        self.flush_early_candidates().await.map_err(stack)?;
        let answer = self.pc.create_answer(None).await.map_err(stack)?;
        self.pc
            .set_local_description(answer.clone())
            .await
            .map_err(stack)?;
        self.learn_mid().await;
        Ok(with_streams_attribute(answer.sdp))
    }

    /// The initiator applies the peer's answer (also the answer to our ICE
    /// restart).
    pub async fn accept_answer(&mut self, answer: String) -> Result<(), NegotiationError> {
        if self.described().await {
            // The answer to our restart. With its old ICE credentials the
            // peer did not restart ICE (aiortc 1.4 cannot): no check of our
            // new generation can succeed, so say so now rather than wait out
            // --ice-restart-timeout.
            let before = self.pc.remote_description().await;
            let before = before.as_ref().and_then(|d| ice_ufrag(&d.sdp));
            if before.is_some() && before == ice_ufrag(&answer) {
                return Err(NegotiationError::NoIceRestart);
            }
        }
        if !self.described().await {
            self.peer_streams = serves_streams(&answer);
        }
        let answer = RTCSessionDescription::answer(answer).map_err(stack)?;
        self.pc
            .set_remote_description(answer)
            .await
            .map_err(stack)?;
        self.flush_early_candidates().await.map_err(stack)
    }

    /// Whether a description of the peer's is applied: the stack's own
    /// record (the link keeps its own, of the negotiation's progress).
    async fn described(&self) -> bool {
        self.pc.remote_description().await.is_some()
    }

    /// The answerer takes the user's channel the peer opened, held until
    /// the link opens ([`Pc::release`]); false if it already has one (a
    /// second channel is ignored).
    pub fn adopt_channel(&mut self, dc: Arc<dyn DataChannel>, peer_id: &str) -> bool {
        if self.channel.is_some() {
            return false;
        }
        let gate = Some(self.hold());
        self.channel = Some(channel::start(dc, false, peer_id, &self.ctx, gate));
        true
    }

    /// The answerer takes the peer's `p2p-invite` channel.
    pub fn adopt_invite_channel(&mut self, dc: Arc<dyn DataChannel>) -> bool {
        if self.invite.dc.is_some() {
            return false;
        }
        self.invite.dc = Some(dc);
        self.invite.start_if_ready(&self.ctx);
        true
    }

    /// Runs the invitation handshake (as soon as its channel is there).
    pub fn run_invite(&mut self, role: InviteRole, sides: Sides) {
        self.invite.pending = Some((role, sides));
        self.invite.start_if_ready(&self.ctx);
    }

    fn hold(&mut self) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        self.gate = Some(tx);
        rx
    }

    /// Lets the user's channel be read: the handshake passed.
    pub fn release(&mut self) {
        if let Some(g) = self.gate.take() {
            let _ = g.send(true);
        }
    }

    /// A local candidate as the peer needs it: with our data section's mid.
    pub fn local_candidate(&self, mut c: CandidateInit) -> CandidateInit {
        c.sdp_mid = self.mid.clone();
        c
    }

    /// Remembers our data section's `a=mid` from the local description.
    async fn learn_mid(&mut self) {
        if let Some(desc) = self.pc.local_description().await {
            self.mid = desc
                .sdp
                .lines()
                .find_map(|l| l.strip_prefix("a=mid:"))
                .map(|m| m.trim().to_string());
        }
    }

    /// Adds a remote candidate, or keeps it until the remote description.
    /// Beyond [`MAX_REMOTE_CANDIDATES`], or over [`MAX_CANDIDATE_BYTES`],
    /// it is refused.
    pub async fn add_candidate(&mut self, c: CandidateInit) -> anyhow::Result<()> {
        if c.candidate.len() > MAX_CANDIDATE_BYTES {
            anyhow::bail!(
                "a candidate of {} bytes (at most {MAX_CANDIDATE_BYTES})",
                c.candidate.len()
            );
        }
        if self.candidates >= MAX_REMOTE_CANDIDATES {
            anyhow::bail!("more than {MAX_REMOTE_CANDIDATES} candidates from the peer");
        }
        self.candidates += 1;
        let init = RTCIceCandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_mline_index,
            username_fragment: c.username_fragment,
            ..Default::default()
        };
        if !self.described().await {
            self.early_candidates.push(init);
            return Ok(());
        }
        self.pc.add_ice_candidate(init).await?;
        self.nudge().await;
        Ok(())
    }

    /// Adds the candidates that came before the remote description.
    async fn flush_early_candidates(&mut self) -> anyhow::Result<()> {
        for c in std::mem::take(&mut self.early_candidates) {
            self.pc.add_ice_candidate(c).await?;
        }
        self.nudge().await;
        Ok(())
    }

    /// `add_ice_candidate` does not wake the connection's driver; any call
    /// that does makes the new pair's first check go out now rather than at
    /// the next 200 ms tick.
    async fn nudge(&self) {
        if let Some(ch) = &self.channel {
            channel::wake_driver(ch.channel()).await;
        }
    }

    /// The data channel, once there is one.
    pub fn channel(&self) -> Option<Arc<dyn DataChannel>> {
        self.channel.as_ref().map(|c| c.channel().clone())
    }

    /// Starts draining the data channel (see [`channel::drain`]); reports
    /// [`PcEventKind::Drained`] at once when there is no channel.
    pub fn drain(&self, limit: Duration) {
        match self.channel() {
            Some(dc) => channel::drain(dc, limit, self.ctx.clone()),
            None => self.ctx.forward(PcEventKind::Drained),
        }
    }

    /// Checks whether the peer still answers on the path (see
    /// [`crate::consent`]); reports [`PcEventKind::PathChecked`]. A check
    /// already under way is left to finish: its verdict answers both.
    /// Watches the open channel's data flow for a silent path; returns
    /// what `send` tells of the data it sends.
    pub fn watch_flow(&mut self) -> crate::stall::Flow {
        let flow = self.ctx.flow.clone();
        let Some(dc) = self.channel() else {
            return flow;
        };
        if let Some(old) = self.flow.take() {
            old.abort();
        }
        self.flow = Some(crate::stall::watch(self.pc.clone(), dc, self.ctx.clone()));
        flow
    }

    pub fn check_path(&mut self, pace: crate::consent::Pace) {
        if self.check.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let pc = self.pc.clone();
        let ctx = self.ctx.clone();
        self.check = Some(tokio::spawn(async move {
            let verdict = crate::consent::run(pc.as_ref(), pace).await;
            ctx.forward(PcEventKind::PathChecked(verdict));
        }));
    }

    /// The sha-256 of the certificate the peer presented in DTLS, once the
    /// handshake is done: the peer's key, whatever hash its description
    /// named it by.
    pub async fn remote_certificate(&self) -> Option<p2p_proto::identity::Fingerprint> {
        use sha2::Digest;
        let sctp = self.pc.sctp().await?;
        let certs = sctp.transport().get_remote_certificates().await.ok()?;
        let der = certs.first()?;
        Some(p2p_proto::identity::Fingerprint::from_bytes(
            sha2::Sha256::digest(der).into(),
        ))
    }

    /// Takes fresh ICE servers (signald renewed the TURN credentials) for
    /// the next gathering. Only right before an ICE restart: the restart
    /// binds new sockets, so no live allocation is re-signed with the new
    /// username (which coturn refuses, 441; docs/webrtc.md).
    pub async fn set_ice_servers(
        &self,
        servers: &[IceServer],
        relay_only: bool,
    ) -> Result<(), NegotiationError> {
        self.pc
            .set_configuration(ice_config(servers, relay_only).build())
            .await
            .map_err(stack)
    }

    /// An ICE restart found a new path: SCTP sends what the old one lost
    /// now (vendor patch 17).
    pub async fn path_changed(&self) {
        if let Err(e) = self.pc.sctp_path_changed().await {
            tracing::debug!(error = %e, "telling SCTP of the new path");
        }
    }

    /// Whether the peer serves streams (its first description said so).
    pub fn peer_serves_streams(&self) -> bool {
        self.peer_streams
    }

    /// The connection itself, for the streams' channels.
    pub fn connection(&self) -> Arc<dyn PeerConnection> {
        self.pc.clone()
    }

    /// Whether an offer or answer was made with this connection.
    pub fn was_used(&self) -> bool {
        self.used
    }

    pub fn ice_state(&self) -> RTCIceConnectionState {
        self.states.lock().unwrap_or_else(|e| e.into_inner()).ice
    }

    pub fn pc_state(&self) -> RTCPeerConnectionState {
        self.states.lock().unwrap_or_else(|e| e.into_inner()).pc
    }

    /// The data channel's W3C state name, `None` without a channel.
    pub async fn channel_state(&self) -> Option<String> {
        let ch = self.channel.as_ref()?;
        ch.channel().ready_state().await.ok().map(|s| s.to_string())
    }

    /// The selected candidate pair, from the ICE transport; the round-trip
    /// time from the connection's stats when they have it. (The stats alone
    /// do not do: a peer-reflexive remote candidate has no stats entry.)
    pub async fn path(&self) -> Option<Path> {
        let sctp = self.pc.sctp().await?;
        let pair = sctp
            .transport()
            .ice_transport()
            .get_selected_candidate_pair()
            .await
            .ok()??;
        let describe = |c: &webrtc::peer_connection::RTCIceCandidate| {
            (c.typ.to_string(), format!("{}:{}", c.address, c.port))
        };
        let (local_type, local_address) = describe(pair.local());
        let (remote_type, remote_address) = describe(pair.remote());
        Some(Path {
            local_type,
            local_address,
            remote_type,
            remote_address,
            rtt_ms: self.rtt_ms().await,
        })
    }

    /// ICE's current round-trip time on the selected pair, in milliseconds.
    async fn rtt_ms(&self) -> Option<f64> {
        let report = self
            .pc
            .get_stats(std::time::Instant::now(), StatsSelector::None)
            .await;
        selected_rtt(&report).map(|rtt| rtt.as_secs_f64() * 1000.0)
    }

    /// [`Pc::close`], once the peer has closed the connection (so it has
    /// read everything it acknowledged) or after `limit`.
    ///
    /// The peer's close is an SCTP ABORT, which ends our association at
    /// once; the connection's own state notices only when ICE gives up
    /// (seconds later), so the association is what is watched.
    pub async fn close_when_peer_closed(self, limit: Duration) {
        let started = tokio::time::Instant::now();
        while started.elapsed() < limit && self.association_up().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::debug!(waited = ?started.elapsed(), "closing the drained connection");
        self.close().await;
    }

    /// Whether the SCTP association is still established (not closed,
    /// aborted, or gone with the DTLS transport).
    async fn association_up(&self) -> bool {
        if matches!(
            self.pc_state(),
            RTCPeerConnectionState::Closed | RTCPeerConnectionState::Failed
        ) {
            return false;
        }
        match self.pc.sctp().await {
            Some(sctp) => matches!(sctp.state().await, Ok(RTCSctpTransportState::Connected)),
            None => false,
        }
    }

    /// Closes the connection and waits for its reader, so that nothing of
    /// it (tasks, sockets) outlives this call.
    pub async fn close(mut self) {
        for task in [self.invite.task.take(), self.check.take(), self.flow.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
        // A held reader waits on its gate: let it go, to see the close.
        drop(self.gate.take());
        if let Err(e) = self.pc.close().await {
            tracing::warn!(error = %e, "closing the peer connection");
        }
        if let Some(reader) = self.channel {
            reader.join().await;
        }
    }
}

/// ICE's current round-trip time on the selected pair of `report`, once
/// measured.
pub fn selected_rtt(report: &RTCStatsReport) -> Option<Duration> {
    let transport = report.transport()?;
    match report.get(&transport.selected_candidate_pair_id)? {
        RTCStatsReportEntry::IceCandidatePair(p) if p.current_round_trip_time > 0.0 => {
            Some(Duration::from_secs_f64(p.current_round_trip_time))
        }
        _ => None,
    }
}

/// The configuration's ICE part: the servers, and the relay-only policy;
/// the same at build and before a restart, so that a renewal changes the
/// servers and nothing else.
fn ice_config(servers: &[IceServer], relay_only: bool) -> RTCConfigurationBuilder {
    let ice_servers = servers
        .iter()
        .map(|s| RTCIceServer {
            urls: s.urls.clone(),
            username: s.username.clone().unwrap_or_default(),
            credential: s.credential.clone().unwrap_or_default(),
        })
        .collect();
    let config = RTCConfigurationBuilder::new().with_ice_servers(ice_servers);
    if relay_only {
        config.with_ice_transport_policy(RTCIceTransportPolicy::Relay)
    } else {
        config
    }
}

#[cfg(test)]
mod tests;
