//! The `status` object: the daemon's whole state, stable within a control version.

use serde::{Deserialize, Serialize};

use crate::identity::Fingerprint;

/// State of the signaling connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    Connecting,
    Connected,
    /// Waiting before the next reconnect attempt.
    Disconnected,
}

/// State of the link to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// No peer; a fresh peer connection waits for the next pairing.
    Idle,
    /// `pair` was sent; signald has not answered yet.
    Requested,
    /// Paired; offer/answer and ICE under way.
    Connecting,
    /// The data channel is open.
    Open,
    /// The connection to the peer broke; p2pd waits up to 250 ms for
    /// signald's notice (which names the real reason), then resets. Sends
    /// fail meanwhile.
    Closing,
}

/// The selected ICE candidate pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Path {
    /// `host`, `srflx`, `prflx` or `relay`.
    pub local_type: String,
    pub local_address: String,
    pub remote_type: String,
    pub remote_address: String,
    /// Round-trip time ICE measured, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
}

/// How far a peer's key is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerTrust {
    /// It matched the key pinned for the peer's ID.
    Pinned,
    /// First contact under `--trust tofu`: pinned now.
    Tofu,
    /// Proven by an invite code on this pairing, and pinned now.
    Invite,
    /// Not checked (`--trust any`, or no pin and nothing to compare).
    Unverified,
}

/// Which peers p2pd accepts (`--trust`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustPolicy {
    /// Only pinned peers, both ways.
    Known,
    /// The first key seen for an ID is pinned; later ones must match.
    Tofu,
    /// Unknown peers are accepted unverified (pins still hold).
    Any,
}

/// The trust part of [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusTrust {
    pub policy: TrustPolicy,
    /// The trust store's path.
    pub known_peers: String,
    /// Pinned peers.
    pub pinned: usize,
    /// Lines of the store that could not be read (they pin nothing).
    pub problems: Vec<String>,
}

/// `status`: the daemon's whole state. Stable: fields are only added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// [`CONTROL_VERSION`](super::CONTROL_VERSION).
    pub control_version: u32,
    /// The daemon's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Our ID at signald (the one asked for, until a `welcome` says otherwise;
    /// `null` before the first welcome when no `--id` was given).
    pub id: Option<String>,
    pub pid: u32,
    pub uptime_ms: u64,
    /// Our key's fingerprint, and `ID@fingerprint` once we have an ID.
    pub fingerprint: Fingerprint,
    pub identity: Option<String>,
    pub trust: StatusTrust,
    pub server: StatusServer,
    /// `null` when idle.
    pub peer: Option<StatusPeer>,
    pub link: LinkState,
    /// The peer connection's states, as the W3C names them (`new`,
    /// `checking`, `connected`, ...), `null` when there is none.
    pub ice_connection_state: Option<String>,
    pub peer_connection_state: Option<String>,
    /// `connecting`, `open`, `closing`, `closed`, or `null` with no channel.
    pub data_channel_state: Option<String>,
    pub counters: Counters,
    /// Exposed services, waiting accepts, forwards and open streams.
    #[serde(default)]
    pub services: Vec<super::ServiceInfo>,
    #[serde(default)]
    pub accepts: Vec<super::AcceptInfo>,
    #[serde(default)]
    pub forwards: Vec<super::ForwardInfo>,
    #[serde(default)]
    pub streams: Vec<super::StreamInfo>,
}

/// Signaling half of [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusServer {
    pub url: String,
    pub state: ServerState,
    /// Milliseconds since the state last changed.
    pub since_ms: u64,
    /// Successful connections after the first one.
    pub reconnects: u64,
    /// Why the last connection attempt or connection failed.
    pub last_error: Option<String>,
    /// Ping timings the `welcome` gave.
    pub ping_interval_ms: Option<u64>,
    pub ping_timeout_ms: Option<u64>,
    /// ICE server URLs in use (welcome's plus `--ice-server`), no credentials.
    pub ice_servers: Vec<String>,
}

/// Peer half of [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusPeer {
    pub id: String,
    /// Whether we made the offer and the channel.
    pub initiator: Option<bool>,
    /// Milliseconds since the data channel opened.
    pub open_for_ms: Option<u64>,
    /// An ICE restart is looking for a new path (the channel stays open).
    #[serde(default)]
    pub ice_restarting: bool,
    /// Whether signald holds the pairing; false while an open link waits
    /// for it to be made again (after a network change or a signald
    /// restart).
    #[serde(default = "super::yes")]
    pub paired_at_signald: bool,
    /// Whether the open link's path answers: `true` when the last check
    /// was answered, `false` while it is silent (an ICE restart is looking
    /// for a new path, and a `pair` with another peer may replace the
    /// link), `null` while a check is under way or the link is not open.
    /// With `paired_at_signald: false`, `true` means the peer is there but
    /// not at signald.
    #[serde(default)]
    pub reachable: Option<bool>,
    /// The selected ICE path, once connected.
    pub path: Option<Path>,
    /// The key the peer's description carries, once it has been checked,
    /// and how far it is trusted.
    pub fingerprint: Option<Fingerprint>,
    pub trust: Option<PeerTrust>,
}

/// Counters since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub messages_sent: u64,
    pub bytes_sent: u64,
    pub messages_received: u64,
    pub bytes_received: u64,
    /// Pairings whose data channel opened.
    pub pairings: u64,
    /// Peer connections torn down and rebuilt.
    pub resets: u64,
    /// ICE restarts that found a new path for an open link (no reset).
    #[serde(default)]
    pub ice_restarts: u64,
    /// Connected `tail` followers right now.
    pub subscribers: u64,
    /// Events that slow followers missed (each was told how many).
    pub missed_by_subscribers: u64,
    /// Requests answered with an error.
    pub control_errors: u64,
}
