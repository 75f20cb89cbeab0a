//! Byte streams over the open link: services we expose, `accept`s that
//! wait for one stream, and the streams open now.
//!
//! Each stream is a data channel of its own (label [`LABEL`]) beside the
//! message channel, so that a loss on one stream's SCTP stream does not
//! hold up another's delivery. The opener names the service; the acceptor
//! answers with `Accept` or `Refuse` and a reason (`frame`). Then bytes
//! flow both ways, each direction within the credit its receiver gives
//! (`pump`): SCTP's one receive window per association would otherwise let
//! one stopped reader stall every stream and the message channel.
//!
//! Who may open a stream (docs/security.md): a service lists peer IDs,
//! and the link's key must have been pinned before this pairing or proven
//! by an invite, unless the service opted in with `allow_unverified`. The
//! same rule holds for the opener (`connect`, `forward`).
//!
//! This module owns the table of services, waiting accepts, forwards and
//! open streams; nothing else keeps a copy. A stream's entry lives as long
//! as its [`Slot`].

pub mod connect;
mod frame;
pub mod local;
pub mod pump;
pub mod socket;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p2p_proto::control::{
    AcceptInfo, ErrorBody, ErrorCode, ForwardInfo, PeerTrust, ServiceInfo, StreamDirection,
    StreamInfo, Target, valid_service,
};
use tokio::sync::{mpsc, oneshot, watch};
use webrtc::data_channel::{DataChannel, DataChannelEvent};

use crate::engine::OpenLink;
use frame::Frame;
pub use frame::{LABEL, PROTOCOL};
use pump::Meter;

/// How long the opener waits for the peer's answer, and the acceptor for
/// the opener's `Open`.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the acceptor tries to reach a service's target.
const TARGET_TIMEOUT: Duration = Duration::from_secs(5);

/// The caps and sizes of streams (p2pd's `--max-streams`, ...).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open streams in all (the daemon has one peer).
    pub streams: usize,
    /// Open streams to one service.
    pub per_service: usize,
    /// `accept`s waiting at once.
    pub accepts: usize,
    /// Connections one forward has open at once.
    pub forward_connections: usize,
    /// What we let the peer send on one stream before it hears from us.
    pub window: u32,
    /// How long a stream's end waits for the peer to acknowledge our last
    /// bytes.
    pub drain: Duration,
}

/// Whether a link's key counts for streams: pinned before this pairing,
/// or proven by an invite. A key pinned on this first contact (`tofu`)
/// does not: an impostor could have been first.
pub fn verified(trust: PeerTrust) -> bool {
    matches!(trust, PeerTrust::Pinned | PeerTrust::Invite)
}

fn refusal(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
    ErrorBody {
        code,
        message: message.into(),
    }
}

/// The streams' side of the daemon; cheap to clone.
#[derive(Clone)]
pub struct Streams {
    inner: Arc<Inner>,
}

struct Inner {
    limits: Limits,
    link: watch::Receiver<Option<Arc<OpenLink>>>,
    state: Mutex<State>,
    next_id: AtomicU64,
    handshakes: AtomicUsize,
    /// Generations whose last stream ended while their pairing was one
    /// that `connect` made: it ends (`crate::lib`'s task unpairs).
    unpair: mpsc::UnboundedSender<u64>,
}

#[derive(Default)]
struct State {
    services: BTreeMap<String, Service>,
    waiting: BTreeMap<u64, Waiting>,
    open: BTreeMap<u64, Open>,
    forwards: BTreeMap<u64, Forward>,
    /// The generation of a pairing that `connect` made, and the requests
    /// between their pairing and their stream (they hold it too).
    auto: Option<u64>,
    holds: usize,
}

struct Service {
    target: Target,
    peers: Vec<String>,
    allow_unverified: bool,
    configured: bool,
}

struct Waiting {
    service: String,
    peer: String,
    allow_unverified: bool,
    tx: oneshot::Sender<Opened>,
}

struct Open {
    peer: String,
    service: String,
    direction: StreamDirection,
    local: String,
    started: Instant,
    generation: u64,
    meter: Arc<Meter>,
}

struct Forward {
    listen: String,
    peer: String,
    service: String,
    allow_unverified: bool,
    configured: bool,
    open: usize,
    total: u64,
}

/// A stream's entry in the table; dropping it ends the entry.
pub struct Slot {
    streams: Streams,
    id: u64,
    meter: Arc<Meter>,
}

impl Slot {
    pub fn meter(&self) -> &Meter {
        &self.meter
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.streams.release(self.id);
    }
}

/// An open stream, ready to pump.
pub struct Opened {
    pub channel: pump::Channel,
    pub slot: Slot,
    pub info: StreamInfo,
}

/// A service to expose, as p2pd's options or `expose` give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub target: Target,
    pub peers: Vec<String>,
    pub allow_unverified: bool,
}

impl ServiceSpec {
    /// Checks a service as `expose` gives it.
    pub fn new(
        name: String,
        target: Target,
        peers: Vec<String>,
        allow_unverified: bool,
    ) -> Result<ServiceSpec, String> {
        if !valid_service(&name) {
            return Err(format!(
                "{name:?} is not a valid service name (1-64 of A-Z a-z 0-9 _ - ., not starting with . or -)"
            ));
        }
        if peers.is_empty() {
            return Err(format!(
                "service {name} names no peer: say who may use it (--peer ID)"
            ));
        }
        if let Some(p) = peers.iter().find(|p| !p2p_proto::signal::valid_id(p)) {
            return Err(format!(
                "{p:?} is not a valid peer ID (1-64 of A-Z a-z 0-9 _ -)"
            ));
        }
        Ok(ServiceSpec {
            name,
            target,
            peers,
            allow_unverified,
        })
    }

    /// Parses p2pd's `--expose NAME:PEER[+PEER…][:allow-unverified]=TARGET`:
    /// no commas (the `P2PD_EXPOSE` list is comma-separated), and the
    /// target last, so an IPv6 literal or a unix path is taken whole.
    pub fn parse_flag(s: &str) -> Result<ServiceSpec, String> {
        let usage = "expected NAME:PEER[+PEER...][:allow-unverified]=TARGET, e.g. ssh:alice+bob=tcp:127.0.0.1:22";
        let (head, target) = s.split_once('=').ok_or_else(|| format!("{s:?}: {usage}"))?;
        let target = Target::parse(target)?;
        let mut parts = head.split(':');
        let name = parts.next().unwrap_or_default().to_string();
        let peers = parts.next().ok_or_else(|| format!("{s:?}: {usage}"))?;
        let allow_unverified = match parts.next() {
            None => false,
            Some("allow-unverified") => true,
            Some(other) => return Err(format!("{s:?}: unknown option {other:?}; {usage}")),
        };
        if parts.next().is_some() {
            return Err(format!("{s:?}: {usage}"));
        }
        let peers = peers.split('+').map(str::to_string).collect();
        ServiceSpec::new(name, target, peers, allow_unverified)
    }
}

impl Streams {
    /// The streams of a daemon whose open link `link` shows, serving
    /// `services` from the start. The receiver yields the generations of
    /// pairings to end (see [`Inner::unpair`]).
    pub fn new(
        limits: Limits,
        services: Vec<ServiceSpec>,
        link: watch::Receiver<Option<Arc<OpenLink>>>,
    ) -> (Streams, mpsc::UnboundedReceiver<u64>) {
        let (unpair, rx) = mpsc::unbounded_channel();
        let streams = Streams {
            inner: Arc::new(Inner {
                limits,
                link,
                state: Mutex::default(),
                next_id: AtomicU64::new(1),
                handshakes: AtomicUsize::new(0),
                unpair,
            }),
        };
        for s in services {
            // Options were checked when parsed; a name given twice is
            // refused there too.
            let _ = streams.expose(s, true);
        }
        (streams, rx)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Serves `spec` (replacing a service of that name; its open streams
    /// carry on).
    pub fn expose(&self, spec: ServiceSpec, configured: bool) -> Result<ServiceInfo, ErrorBody> {
        let mut st = self.state();
        if st.waiting.values().any(|w| w.service == spec.name) {
            return Err(refusal(
                ErrorCode::BadRequest,
                format!(
                    "an accept is waiting for {}: expose another name, or end the accept",
                    spec.name
                ),
            ));
        }
        st.services.insert(
            spec.name.clone(),
            Service {
                target: spec.target,
                peers: spec.peers,
                allow_unverified: spec.allow_unverified,
                configured,
            },
        );
        Ok(info(&st, &spec.name).expect("just inserted"))
    }

    pub fn unexpose(&self, name: &str) -> bool {
        self.state().services.remove(name).is_some()
    }

    pub fn services(&self) -> Vec<ServiceInfo> {
        let st = self.state();
        st.services.keys().filter_map(|n| info(&st, n)).collect()
    }

    pub fn accepts(&self) -> Vec<AcceptInfo> {
        self.state()
            .waiting
            .values()
            .map(|w| AcceptInfo {
                service: w.service.clone(),
                peer_id: w.peer.clone(),
                allow_unverified: w.allow_unverified,
            })
            .collect()
    }

    pub fn forwards(&self) -> Vec<ForwardInfo> {
        self.state()
            .forwards
            .values()
            .map(|f| ForwardInfo {
                listen: f.listen.clone(),
                peer_id: f.peer.clone(),
                service: f.service.clone(),
                allow_unverified: f.allow_unverified,
                configured: f.configured,
                open_connections: f.open,
                connections: f.total,
            })
            .collect()
    }

    pub fn open_streams(&self) -> Vec<StreamInfo> {
        let st = self.state();
        st.open.iter().map(|(id, o)| stream_info(*id, o)).collect()
    }

    /// Opens a stream to `service` on the open `link`, for `local`.
    pub async fn open(
        &self,
        link: &OpenLink,
        service: &str,
        local: String,
        allow_unverified: bool,
    ) -> Result<Opened, ErrorBody> {
        let peer = link.peer_id().to_string();
        if !valid_service(service) {
            return Err(refusal(
                ErrorCode::BadRequest,
                format!("{service:?} is not a valid service name"),
            ));
        }
        if !link.serves_streams() {
            return Err(refusal(
                ErrorCode::StreamsUnsupported,
                format!(
                    "{peer} does not serve streams (it is not p2pd, or an older one): nothing was sent"
                ),
            ));
        }
        check_verified(link, allow_unverified)?;
        let slot = self.reserve(
            &peer,
            service,
            StreamDirection::Out,
            local,
            link.generation(),
        )?;
        let dc = link.open_stream_channel().await.map_err(|e| {
            refusal(
                ErrorCode::StreamFailed,
                format!("cannot open a stream channel: {e}"),
            )
        })?;
        let window = self.inner.limits.window;
        let answer = tokio::time::timeout(OPEN_TIMEOUT, async {
            wait_open(&dc).await?;
            dc.send(
                Frame::Open {
                    service: service.to_string(),
                    window,
                }
                .encode(),
            )
            .await
            .map_err(|e| lost(&peer, e))?;
            match first_frame(&dc).await? {
                Frame::Accept { window } => Ok(window),
                Frame::Refuse(e) => Err(e),
                other => Err(refusal(
                    ErrorCode::StreamFailed,
                    format!("{peer} answered the stream's open with {other:?}"),
                )),
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(refusal(
                ErrorCode::Timeout,
                format!(
                    "{peer} did not answer the stream's open within {} s",
                    OPEN_TIMEOUT.as_secs()
                ),
            ))
        });
        match answer {
            Ok(peer_window) => Ok(self.opened(dc, peer_window, slot, true)),
            Err(e) => {
                // A refusal: the acceptor closes (see `pump::close`). Any
                // other failure: it may never, and we do after a second.
                let wait = match e.code {
                    ErrorCode::Timeout => Duration::ZERO,
                    _ => Duration::from_secs(1),
                };
                pump::close(&dc, true, wait).await;
                Err(e)
            }
        }
    }

    /// A stream channel the peer opened, on connection `generation`:
    /// answered in a task of its own.
    pub fn incoming(&self, dc: Arc<dyn DataChannel>, generation: u64) {
        let inner = &self.inner;
        // Streams being opened count against the cap on open streams too:
        // a peer cannot make us hold more channels than it could open.
        let cap = inner.limits.streams;
        if inner.handshakes.fetch_add(1, Ordering::AcqRel) >= cap {
            inner.handshakes.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("the peer opens more streams at once than --max-streams; refusing");
            tokio::spawn(async move {
                let busy = refusal(
                    ErrorCode::Busy,
                    format!("{cap} streams are being opened already (--max-streams)"),
                );
                let _ = dc.send(Frame::Refuse(busy).encode()).await;
                pump::settle(&dc, Duration::from_secs(1)).await;
                pump::close(&dc, false, Duration::ZERO).await;
            });
            return;
        }
        let streams = self.clone();
        tokio::spawn(async move {
            let routed = streams.answer(&dc, generation).await;
            streams.inner.handshakes.fetch_sub(1, Ordering::AcqRel);
            match routed {
                Ok(Routed::Service(served)) => serve_target(served.0, served.1).await,
                Ok(Routed::Accepted) => {}
                Err(e) => {
                    tracing::info!(code = ?e.code, reason = %e.message, "refused a stream");
                    let _ = dc.send(Frame::Refuse(e).encode()).await;
                    // Let it reach the peer before the channel closes.
                    pump::settle(&dc, Duration::from_secs(1)).await;
                    pump::close(&dc, false, Duration::ZERO).await;
                }
            }
        });
    }

    /// Reads the opener's `Open` and decides; for a service, reaches its
    /// target first, so that an unreachable one is a refusal.
    async fn answer(
        &self,
        dc: &Arc<dyn DataChannel>,
        generation: u64,
    ) -> Result<Routed, ErrorBody> {
        let (link, service, peer_window) = tokio::time::timeout(OPEN_TIMEOUT, async {
            let link = self.link_of(generation).await?;
            match first_frame(dc).await? {
                Frame::Open { service, window } => Ok((link, service, window)),
                other => Err(refusal(
                    ErrorCode::BadRequest,
                    format!("a stream starts with Open, not {other:?}"),
                )),
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(refusal(
                ErrorCode::Timeout,
                "no service named in time".to_string(),
            ))
        })?;
        let peer = link.peer_id().to_string();
        let route = self.route(&link, &service)?;
        let window = self.inner.limits.window;
        let accept = || async {
            dc.send(Frame::Accept { window }.encode())
                .await
                .map_err(|e| lost(&peer, e))
        };
        match route {
            Route::Accept(id) => {
                // A place first: over a cap, the accept keeps waiting.
                let slot = self.reserve(
                    &peer,
                    &service,
                    StreamDirection::In,
                    "control".into(),
                    generation,
                )?;
                let gone = || {
                    refusal(
                        ErrorCode::NoSuchService,
                        format!("no service named {service} (its accept went away)"),
                    )
                };
                let waiter = self.state().waiting.remove(&id).ok_or_else(gone)?;
                if waiter.tx.is_closed() {
                    return Err(gone());
                }
                accept().await?;
                if let Err(opened) =
                    waiter
                        .tx
                        .send(self.opened(dc.clone(), peer_window, slot, false))
                {
                    // It left in the moment since: the stream fails.
                    let why = "the accepting client went away".to_string();
                    let _ = opened.channel.dc.send(Frame::Abort(why).encode()).await;
                    pump::settle(dc, Duration::from_secs(1)).await;
                    pump::close(dc, false, Duration::ZERO).await;
                }
                Ok(Routed::Accepted)
            }
            Route::Service(target) => {
                let slot = self.reserve(
                    &peer,
                    &service,
                    StreamDirection::In,
                    target.to_string(),
                    generation,
                )?;
                let socket = socket::reach(&target, TARGET_TIMEOUT).await.map_err(|e| {
                    refusal(
                        ErrorCode::TargetUnreachable,
                        format!("service {service} cannot reach its target {target}: {e}"),
                    )
                })?;
                accept().await?;
                Ok(Routed::Service(Box::new((
                    self.opened(dc.clone(), peer_window, slot, false),
                    socket,
                ))))
            }
        }
    }

    /// Waits (bounded by the caller) until the link of connection
    /// `generation` is open: the peer may open a stream the moment its
    /// side opened, before ours has judged the peer's key.
    async fn link_of(&self, generation: u64) -> Result<Arc<OpenLink>, ErrorBody> {
        let mut rx = self.inner.link.clone();
        let found = rx
            .wait_for(|l| l.as_ref().is_some_and(|l| l.generation() >= generation))
            .await
            .map_err(|_| refusal(ErrorCode::ShuttingDown, "p2pd is shutting down"))?
            .clone()
            .expect("waited for Some");
        if found.generation() != generation {
            return Err(refusal(ErrorCode::StreamFailed, "that connection is gone"));
        }
        Ok(found)
    }

    /// Where a stream to `service` from the link's peer goes, or why not.
    fn route(&self, link: &OpenLink, service: &str) -> Result<Route, ErrorBody> {
        let peer = link.peer_id();
        let ok_key = verified(link.trust());
        let st = self.state();
        let waiting = st
            .waiting
            .iter()
            .find(|(_, w)| w.service == service && w.peer == peer)
            .map(|(id, w)| (*id, w.allow_unverified));
        if let Some((id, allow_unverified)) = waiting {
            if !ok_key && !allow_unverified {
                return Err(not_verified_here(peer, service));
            }
            return Ok(Route::Accept(id));
        }
        let Some(s) = st.services.get(service) else {
            return Err(refusal(
                ErrorCode::NoSuchService,
                format!("no service named {service} is exposed to streams"),
            ));
        };
        if !s.peers.iter().any(|p| p == peer) {
            return Err(refusal(
                ErrorCode::NotAllowed,
                format!("service {service} does not allow {peer}"),
            ));
        }
        if !ok_key && !s.allow_unverified {
            return Err(not_verified_here(peer, service));
        }
        Ok(Route::Service(s.target.clone()))
    }

    /// Waits for one stream from `peer` to `service` (at most `timeout`).
    pub async fn accept(
        &self,
        service: &str,
        peer: &str,
        allow_unverified: bool,
        timeout: Option<Duration>,
    ) -> Result<Opened, ErrorBody> {
        if !valid_service(service) {
            return Err(refusal(
                ErrorCode::BadRequest,
                format!("{service:?} is not a valid service name"),
            ));
        }
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.state();
            if st.services.contains_key(service) {
                return Err(refusal(
                    ErrorCode::BadRequest,
                    format!("{service} is exposed: accept waits only for names that are not"),
                ));
            }
            if st.waiting.len() >= self.inner.limits.accepts {
                return Err(refusal(
                    ErrorCode::Busy,
                    format!(
                        "{} accepts are waiting already (--max-accepts)",
                        st.waiting.len()
                    ),
                ));
            }
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            st.waiting.insert(
                id,
                Waiting {
                    service: service.to_string(),
                    peer: peer.to_string(),
                    allow_unverified,
                    tx,
                },
            );
            id
        };
        let _gone = Unwait(self, id);
        let got = match timeout {
            Some(t) => tokio::time::timeout(t, rx).await.map_err(|_| {
                refusal(
                    ErrorCode::Timeout,
                    format!(
                        "no stream from {peer} to {service} within {}",
                        humantime::format_duration(t)
                    ),
                )
            })?,
            None => rx.await,
        };
        got.map_err(|_| refusal(ErrorCode::ShuttingDown, "p2pd is shutting down"))
    }

    /// Takes a place in the table, within the caps.
    fn reserve(
        &self,
        peer: &str,
        service: &str,
        direction: StreamDirection,
        local: String,
        generation: u64,
    ) -> Result<Slot, ErrorBody> {
        let limits = &self.inner.limits;
        let mut st = self.state();
        if st.open.len() >= limits.streams {
            return Err(refusal(
                ErrorCode::Busy,
                format!("{} streams are open already (--max-streams)", st.open.len()),
            ));
        }
        let to_service = st
            .open
            .values()
            .filter(|o| o.service == service && o.direction == direction)
            .count();
        if to_service >= limits.per_service {
            return Err(refusal(
                ErrorCode::Busy,
                format!(
                    "{to_service} streams to {service} are open already (--max-streams-per-service)"
                ),
            ));
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let meter = Arc::new(Meter::default());
        st.open.insert(
            id,
            Open {
                peer: peer.to_string(),
                service: service.to_string(),
                direction,
                local,
                started: Instant::now(),
                generation,
                meter: meter.clone(),
            },
        );
        Ok(Slot {
            streams: self.clone(),
            id,
            meter,
        })
    }

    fn opened(
        &self,
        dc: Arc<dyn DataChannel>,
        peer_window: u32,
        slot: Slot,
        opener: bool,
    ) -> Opened {
        let info = {
            let st = self.state();
            stream_info(slot.id, &st.open[&slot.id])
        };
        Opened {
            channel: pump::Channel {
                dc,
                peer_window,
                window: self.inner.limits.window,
                peer: info.peer_id.clone(),
                drain: self.inner.limits.drain,
                opener,
            },
            slot,
            info,
        }
    }

    /// A stream's entry ends; the last one of a pairing `connect` made
    /// ends that pairing.
    fn release(&self, id: u64) {
        let mut st = self.state();
        let Some(gone) = st.open.remove(&id) else {
            return;
        };
        self.maybe_unpair(&st, gone.generation);
    }

    fn maybe_unpair(&self, st: &State, generation: u64) {
        let idle = st.holds == 0 && !st.open.values().any(|o| o.generation == generation);
        if st.auto == Some(generation) && idle {
            let _ = self.inner.unpair.send(generation);
        }
    }

    /// A `connect` or forwarded connection is on its way to a stream: a
    /// pairing that `connect` made does not end meanwhile.
    pub fn hold(&self) -> Hold {
        self.state().holds += 1;
        Hold(self.clone())
    }

    /// `connect` made the pairing of connection `generation`: it ends with
    /// its last stream.
    pub fn made_pairing(&self, generation: u64) {
        self.state().auto = Some(generation);
    }

    /// The user asked for the pairing (`pair`): it no longer ends with
    /// its last stream. Whether it was one that `connect` made.
    pub fn keep_pairing(&self) -> bool {
        self.state().auto.take().is_some()
    }

    /// A forward starts listening; its entry lives as long as the guard.
    pub fn add_forward(&self, info: &ForwardInfo) -> ForwardEntry {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.state().forwards.insert(
            id,
            Forward {
                listen: info.listen.clone(),
                peer: info.peer_id.clone(),
                service: info.service.clone(),
                allow_unverified: info.allow_unverified,
                configured: info.configured,
                open: 0,
                total: 0,
            },
        );
        ForwardEntry {
            streams: self.clone(),
            id,
        }
    }
}

/// See [`Streams::hold`].
pub struct Hold(Streams);

impl Drop for Hold {
    fn drop(&mut self) {
        let mut st = self.0.state();
        st.holds -= 1;
        if let Some(generation) = st.auto {
            self.0.maybe_unpair(&st, generation);
        }
    }
}

/// A forward's entry in the table.
pub struct ForwardEntry {
    streams: Streams,
    id: u64,
}

impl ForwardEntry {
    /// A connection arrives: whether it is under the cap (then it counts
    /// until [`ForwardEntry::closed`]).
    pub fn connection(&self) -> bool {
        let cap = self.streams.inner.limits.forward_connections;
        let mut st = self.streams.state();
        let Some(f) = st.forwards.get_mut(&self.id) else {
            return false;
        };
        f.total += 1;
        if f.open >= cap {
            return false;
        }
        f.open += 1;
        true
    }

    pub fn closed(&self) {
        if let Some(f) = self.streams.state().forwards.get_mut(&self.id) {
            f.open -= 1;
        }
    }
}

impl Drop for ForwardEntry {
    fn drop(&mut self) {
        self.streams.state().forwards.remove(&self.id);
    }
}

struct Unwait<'a>(&'a Streams, u64);

impl Drop for Unwait<'_> {
    fn drop(&mut self) {
        self.0.state().waiting.remove(&self.1);
    }
}

enum Route {
    /// The waiting `accept` of this number.
    Accept(u64),
    Service(Target),
}

enum Routed {
    Service(Box<(Opened, socket::Socket)>),
    /// Handed to the waiting `accept`.
    Accepted,
}

fn info(st: &State, name: &str) -> Option<ServiceInfo> {
    let s = st.services.get(name)?;
    Some(ServiceInfo {
        name: name.to_string(),
        target: s.target.clone(),
        peers: s.peers.clone(),
        allow_unverified: s.allow_unverified,
        configured: s.configured,
        open_streams: st
            .open
            .values()
            .filter(|o| o.service == name && o.direction == StreamDirection::In)
            .count(),
    })
}

fn stream_info(id: u64, o: &Open) -> StreamInfo {
    StreamInfo {
        id,
        peer_id: o.peer.clone(),
        service: o.service.clone(),
        direction: o.direction,
        local: o.local.clone(),
        age_ms: o.started.elapsed().as_millis() as u64,
        bytes_in: o.meter.bytes_in.load(Ordering::Relaxed),
        bytes_out: o.meter.bytes_out.load(Ordering::Relaxed),
    }
}

fn not_verified_here(peer: &str, service: &str) -> ErrorBody {
    refusal(
        ErrorCode::NotAllowed,
        format!(
            "{service} refuses {peer}: its key was not pinned before this pairing nor proven by an invite (the service needs --allow-unverified for that)"
        ),
    )
}

/// The opener's side of the rule: the link's key must count.
pub fn check_verified(link: &OpenLink, allow_unverified: bool) -> Result<(), ErrorBody> {
    if verified(link.trust()) || allow_unverified {
        return Ok(());
    }
    let why = match link.trust() {
        PeerTrust::Tofu => {
            "its key was pinned on this first contact (--trust tofu), so an impostor could have been first"
        }
        _ => "its key is not verified (--trust any)",
    };
    Err(refusal(
        ErrorCode::Unverified,
        format!(
            "not sending to {}: {why}; check its fingerprint, or pass --allow-unverified",
            link.peer_id()
        ),
    ))
}

fn lost(peer: &str, e: impl std::fmt::Display) -> ErrorBody {
    refusal(
        ErrorCode::StreamFailed,
        format!("the stream to {peer} closed: {e}"),
    )
}

/// Waits for the channel to open (the opener's side).
async fn wait_open(dc: &Arc<dyn DataChannel>) -> Result<(), ErrorBody> {
    crate::channel::wake_driver(dc).await;
    loop {
        match dc.poll().await {
            Some(DataChannelEvent::OnOpen) => return Ok(()),
            Some(DataChannelEvent::OnClose) | None => {
                return Err(refusal(
                    ErrorCode::StreamFailed,
                    "the stream's channel closed before it opened",
                ));
            }
            Some(_) => {}
        }
    }
}

/// The first message on a stream's channel, decoded.
async fn first_frame(dc: &Arc<dyn DataChannel>) -> Result<Frame, ErrorBody> {
    loop {
        match dc.poll().await {
            Some(DataChannelEvent::OnMessage(m)) => {
                return Frame::decode(m.data).map_err(|e| {
                    refusal(
                        ErrorCode::StreamFailed,
                        format!("a bad stream message: {e}"),
                    )
                });
            }
            Some(DataChannelEvent::OnClose) | None => {
                return Err(refusal(
                    ErrorCode::StreamFailed,
                    "the stream's channel closed during its open",
                ));
            }
            Some(_) => {}
        }
    }
}

/// Runs a stream into a service's target; a failed stream resets it.
async fn serve_target(opened: Opened, socket: socket::Socket) {
    let Opened {
        channel,
        slot,
        info,
    } = opened;
    let result = socket::pump(channel, socket, slot.meter()).await;
    match result {
        Ok(()) => tracing::debug!(id = info.id, service = %info.service, "stream ended"),
        Err(e) => {
            tracing::info!(id = info.id, service = %info.service, reason = %e.message, "stream failed")
        }
    }
}
