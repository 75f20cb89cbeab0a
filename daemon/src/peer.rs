//! One WebRTC peer connection and its data channel, built with the settings
//! that `docs/webrtc.md` explains (loopback binding, no mDNS, sized socket
//! buffers and SCTP window, send backpressure, a fast first open).
//!
//! The engine owns the [`Pc`]; the crate's callbacks and the channel reader
//! only forward [`PcEvent`]s to it (tagged with the connection's generation
//! so that late events from a closed connection are recognised), except for
//! received messages, which go straight to the hub in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use p2p_proto::control::{EventKind, Path};
use p2p_proto::signal::{CandidateInit, IceServer};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::peer_connection::transport::RTCDtlsRole;
use tokio::sync::mpsc;
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceConnectionState, RTCIceGatheringState, RTCIceServer,
    RTCIceTransportPolicy, RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCStatsReportEntry,
    SettingEngineBuilder, StatsSelector,
};

use crate::counters::Counters;
use crate::hub::Hub;
use crate::udp::BufferedRuntime;

/// Label of the channel p2pd creates (any label is accepted from others).
pub const CHANNEL_LABEL: &str = "p2p";
/// Largest message the data channel carries (SCTP's default
/// max-message-size, and what the crate accepts).
pub const MAX_MESSAGE_BYTES: usize = 65536;
/// Outstanding bytes on the channel before `send` waits (backpressure).
const SEND_BUFFER_LIMIT: usize = 1024 * 1024;

/// Settings for every peer connection of this daemon.
#[derive(Debug, Clone)]
pub struct PcSettings {
    pub bind: Vec<SocketAddr>,
    pub ice_servers: Vec<IceServer>,
    pub relay_only: bool,
    pub ice_disconnected_timeout: Duration,
    pub runtime: Arc<BufferedRuntime>,
}

pub struct PcEvent {
    pub generation: u64,
    pub kind: PcEventKind,
}

pub enum PcEventKind {
    /// A local candidate to trickle; `None` at the end of gathering.
    Candidate(Option<CandidateInit>),
    IceState(RTCIceConnectionState),
    PcState(RTCPeerConnectionState),
    /// The answerer's side of the channel arrived.
    DataChannel(Arc<dyn DataChannel>),
    ChannelOpen,
    ChannelClosed,
}

/// A peer connection with what the engine tracks about it.
pub struct Pc {
    pub generation: u64,
    pub pc: Arc<dyn PeerConnection>,
    pub dc: Option<Arc<dyn DataChannel>>,
    reader: Option<tokio::task::JoinHandle<()>>,
    /// Remote candidates that arrived before the remote description.
    pub early_candidates: Vec<RTCIceCandidateInit>,
    pub ice_state: RTCIceConnectionState,
    pub pc_state: RTCPeerConnectionState,
    pub channel_open: bool,
    /// The peer's offer or answer has been applied.
    pub remote_described: bool,
    /// `a=mid` of our data section, put into trickled candidates.
    pub mid: Option<String>,
}

#[derive(Clone)]
struct Handler {
    generation: u64,
    tx: mpsc::UnboundedSender<PcEvent>,
}

impl Handler {
    fn forward(&self, kind: PcEventKind) {
        // The engine outlives every connection it builds; a send error means
        // it is shutting down and nobody cares about this event.
        let _ = self.tx.send(PcEvent {
            generation: self.generation,
            kind,
        });
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => self.forward(PcEventKind::Candidate(Some(CandidateInit {
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
            self.forward(PcEventKind::Candidate(None));
        }
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        self.forward(PcEventKind::IceState(state));
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.forward(PcEventKind::PcState(state));
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        self.forward(PcEventKind::DataChannel(dc));
    }
}

impl Pc {
    /// Builds a fresh peer connection; no sockets carry traffic until the
    /// offer/answer starts.
    pub async fn build(
        generation: u64,
        settings: &PcSettings,
        events: mpsc::UnboundedSender<PcEvent>,
    ) -> anyhow::Result<Pc> {
        let window = settings.runtime.sctp_window();
        let setting_engine = SettingEngineBuilder::new()
            // Lab namespaces have no multicast; mDNS would fail there and
            // only hides addresses a daemon has no reason to hide.
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_ice_timeouts(
                Some(settings.ice_disconnected_timeout),
                Some(settings.ice_disconnected_timeout),
                None,
            )
            // Faster checks while connecting only; the keepalive after
            // connecting stays at the crate's default.
            .with_ice_connection_attempts(Some(Duration::from_millis(10)), Some(140))
            .with_prflx_acceptance_min_wait(Some(Duration::ZERO))
            // A direct pair through a NAT is the best path there is: take
            // it as soon as it works (the crate waits 500 ms). A relay still
            // waits, so that a direct pair that needs a few retransmissions
            // is not beaten by TURN (the crate waits 2 s; 1 s measured in
            // the NAT lab keeps cone NATs direct).
            .with_srflx_acceptance_min_wait(Some(Duration::ZERO))
            .with_relay_acceptance_min_wait(Some(Duration::from_secs(1)))
            // The answerer as DTLS server saves a round of waiting.
            .with_answering_dtls_role(RTCDtlsRole::Server)
            // Never advertise more window than the socket can hold: overflow
            // drops packets and SCTP's 1 s minimum RTO then stalls the link.
            .with_sctp_max_receive_buffer_size(window)
            .build();
        let ice_servers = settings
            .ice_servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            })
            .collect();
        let mut config = RTCConfigurationBuilder::new().with_ice_servers(ice_servers);
        if settings.relay_only {
            config = config.with_ice_transport_policy(RTCIceTransportPolicy::Relay);
        }
        let bind: Vec<SocketAddr> = if settings.bind.is_empty() {
            vec!["0.0.0.0:0".parse().expect("valid")]
        } else {
            settings.bind.clone()
        };
        let pc = PeerConnectionBuilder::new()
            .with_configuration(config.build())
            .with_setting_engine(setting_engine)
            .with_runtime(settings.runtime.clone())
            .with_handler(Arc::new(Handler {
                generation,
                tx: events,
            }))
            .with_udp_addrs(bind)
            .with_data_channel_send_buffer_limit(SEND_BUFFER_LIMIT)
            .build()
            .await?;
        Ok(Pc {
            generation,
            pc: Arc::new(pc),
            dc: None,
            reader: None,
            early_candidates: Vec::new(),
            ice_state: RTCIceConnectionState::New,
            pc_state: RTCPeerConnectionState::New,
            channel_open: false,
            remote_described: false,
            mid: None,
        })
    }

    /// The initiator's channel: ordered and reliable, negotiated in band.
    pub async fn create_channel(&mut self) -> anyhow::Result<Arc<dyn DataChannel>> {
        let dc = self
            .pc
            .create_data_channel(CHANNEL_LABEL, Some(RTCDataChannelInit::default()))
            .await?;
        Ok(dc)
    }

    /// Starts the task that reads `dc`: messages to the hub, open/close to
    /// the engine. `nudge` makes it poke the connection's driver until the
    /// channel opens (see `docs/webrtc.md`, "fast open").
    pub fn attach_channel(
        &mut self,
        dc: Arc<dyn DataChannel>,
        nudge: bool,
        peer_id: String,
        hub: Hub,
        counters: Arc<Counters>,
        events: mpsc::UnboundedSender<PcEvent>,
    ) {
        self.dc = Some(dc.clone());
        let generation = self.generation;
        self.reader = Some(tokio::spawn(read_channel(
            dc, nudge, generation, peer_id, hub, counters, events,
        )));
    }

    /// Remembers our data section's `a=mid` from the local description.
    pub async fn learn_mid(&mut self) {
        if let Some(desc) = self.pc.local_description().await {
            self.mid = desc
                .sdp
                .lines()
                .find_map(|l| l.strip_prefix("a=mid:"))
                .map(|m| m.trim().to_string());
        }
    }

    /// Adds a remote candidate, or keeps it until the remote description.
    pub async fn add_remote_candidate(&mut self, c: CandidateInit) -> anyhow::Result<()> {
        let init = RTCIceCandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_mline_index,
            username_fragment: c.username_fragment,
            ..Default::default()
        };
        if self.pc.remote_description().await.is_none() {
            self.early_candidates.push(init);
            return Ok(());
        }
        self.pc.add_ice_candidate(init).await?;
        self.nudge().await;
        Ok(())
    }

    /// Adds the candidates that came before the remote description.
    pub async fn flush_early_candidates(&mut self) -> anyhow::Result<()> {
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
        if let Some(dc) = &self.dc {
            let _ = dc.set_buffered_amount_low_threshold(0).await;
        }
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
        let transport = report.transport()?;
        match report.get(&transport.selected_candidate_pair_id)? {
            RTCStatsReportEntry::IceCandidatePair(p) if p.current_round_trip_time > 0.0 => {
                Some(p.current_round_trip_time * 1000.0)
            }
            _ => None,
        }
    }

    /// Closes the connection and waits for its reader, so that nothing of
    /// it (tasks, sockets) outlives this call.
    pub async fn close(mut self) {
        if let Err(e) = self.pc.close().await {
            tracing::warn!(error = %e, "closing the peer connection");
        }
        if let Some(reader) = self.reader.take() {
            match tokio::time::timeout(Duration::from_secs(2), reader).await {
                Ok(_) => {}
                Err(_) => tracing::warn!("data channel reader did not stop in 2 s"),
            }
        }
    }
}

async fn read_channel(
    dc: Arc<dyn DataChannel>,
    mut nudge: bool,
    generation: u64,
    peer_id: String,
    hub: Hub,
    counters: Arc<Counters>,
    events: mpsc::UnboundedSender<PcEvent>,
) {
    let forward = |kind| {
        let _ = events.send(PcEvent { generation, kind });
    };
    let nudge_until = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    loop {
        let event = if nudge {
            tokio::select! {
                ev = dc.poll() => ev,
                _ = tick.tick() => {
                    if tokio::time::Instant::now() > nudge_until {
                        nudge = false;
                    }
                    // Wakes the driver so queued handshake packets leave now.
                    let _ = dc.set_buffered_amount_low_threshold(0).await;
                    continue;
                }
            }
        } else {
            dc.poll().await
        };
        match event {
            Some(DataChannelEvent::OnOpen) => {
                nudge = false;
                forward(PcEventKind::ChannelOpen);
            }
            Some(DataChannelEvent::OnMessage(msg)) => {
                counters.messages_received.fetch_add(1, Ordering::Relaxed);
                counters
                    .bytes_received
                    .fetch_add(msg.data.len() as u64, Ordering::Relaxed);
                let (text, data_b64) = if msg.is_string {
                    match String::from_utf8(msg.data.to_vec()) {
                        Ok(t) => (Some(t), None),
                        Err(e) => (
                            None,
                            Some(base64::engine::general_purpose::STANDARD.encode(e.as_bytes())),
                        ),
                    }
                } else {
                    (
                        None,
                        Some(base64::engine::general_purpose::STANDARD.encode(&msg.data)),
                    )
                };
                hub.publish(EventKind::Message {
                    from: peer_id.clone(),
                    text,
                    data_b64,
                })
                .await;
            }
            Some(DataChannelEvent::OnClose) | None => {
                forward(PcEventKind::ChannelClosed);
                return;
            }
            Some(_) => {}
        }
    }
}
