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
//! This file owns the table of services, waiting accepts, forwards and
//! open streams; nothing else keeps a copy. A stream's entry lives as long
//! as its [`Slot`]. The rest, in the order a stream meets it: `frame`
//! (what travels in a stream's channel), `handshake` (opening, and the
//! acceptor's decision), `pump` (the bytes both ways, with credit),
//! `local` and `socket` (our end: a control connection or a socket), and
//! `connect` (the opener's requests: `connect`, each connection of a
//! `forward`, and the pairing they may make).

pub mod connect;
mod frame;
mod handshake;
pub mod local;
pub mod pump;
mod service;
pub mod socket;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p2p_proto::control::{
    AcceptInfo, ErrorBody, ErrorCode, ForwardInfo, PeerTrust, ServiceInfo, StreamDirection,
    StreamInfo, Target,
};
use tokio::sync::{mpsc, oneshot, watch};
use webrtc::data_channel::DataChannel;

use crate::engine::OpenLink;
pub use frame::{LABEL, PROTOCOL};
pub use handshake::{OPEN_TIMEOUT, check_verified};
use pump::Meter;
pub use service::ServiceSpec;

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

impl Streams {
    /// The streams of a daemon whose open link `link` shows, serving
    /// `services` from the start. The receiver yields the generations of
    /// pairings to end (see `Inner::unpair`).
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

#[cfg(test)]
mod tests;
