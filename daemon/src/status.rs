//! What `status` reports: the signaling connection as the engine saw it
//! ([`ServerView`]) and the link as the state machine holds it, assembled
//! into the documented [`Status`] object.

use std::time::Instant;

use p2p_proto::control::{ServerState, Status, StatusPeer, StatusServer, StatusTrust};
use p2p_proto::identity::{self, Fingerprint};
use p2p_proto::signal::IceServer;

use crate::counters::Counters;
use crate::link::Core;
use crate::peer::Pc;
use crate::trust::TrustStore;

/// The signaling connection's history, for `status.server`. Whether it is
/// up now is the core's to say ([`Core::signald_id`]); this keeps what
/// only `status` needs: since when, how often, the last error.
pub struct ServerView {
    url: String,
    /// Our ID: the one asked for until a welcome names it.
    id: Option<String>,
    /// When the connection last came up or went down.
    since: Instant,
    /// Whether an attempt has ended (else the first is under way).
    tried: bool,
    ever_connected: bool,
    reconnects: u64,
    last_error: Option<String>,
    ping: Option<(u64, u64)>,
    welcome_ice: Vec<IceServer>,
}

impl ServerView {
    pub fn new(url: String, id: Option<String>) -> ServerView {
        ServerView {
            url,
            id,
            since: Instant::now(),
            tried: false,
            ever_connected: false,
            reconnects: 0,
            last_error: None,
            ping: None,
            welcome_ice: Vec::new(),
        }
    }

    /// Welcomed as `id`.
    pub fn up(&mut self, id: &str, ping: (u64, u64), ice: Vec<IceServer>) {
        if self.ever_connected {
            self.reconnects += 1;
        }
        self.ever_connected = true;
        self.id = Some(id.to_string());
        self.since = Instant::now();
        self.last_error = None;
        self.ping = Some(ping);
        self.welcome_ice = ice;
    }

    /// The connection ended (`was_up`) or an attempt failed.
    pub fn down(&mut self, reason: &str, was_up: bool) {
        if was_up || !self.tried {
            self.since = Instant::now();
        }
        self.tried = true;
        self.last_error = Some(reason.to_string());
    }

    /// Our ID, as asked for or as signald named it.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// signald renewed the TURN credentials: they replace the welcome's.
    pub fn renewed(&mut self, ice: Vec<IceServer>) {
        self.welcome_ice = ice;
    }

    pub fn welcome_ice(&self) -> &[IceServer] {
        &self.welcome_ice
    }

    /// The state `status` shows, given whether the core has us
    /// registered.
    fn state(&self, up: bool) -> ServerState {
        match (up, self.tried) {
            (true, _) => ServerState::Connected,
            (false, true) => ServerState::Disconnected,
            (false, false) => ServerState::Connecting,
        }
    }
}

/// What the engine knows, for [`build`].
pub struct Parts<'a> {
    pub started: Instant,
    pub fingerprint: Fingerprint,
    pub server: &'a ServerView,
    pub core: &'a Core,
    /// The trust store, for its problems (re-read if it changed).
    pub trust: &'a mut TrustStore,
    pub pc: Option<&'a Pc>,
    pub ice_servers: &'a [IceServer],
    pub counters: &'a Counters,
    pub streams: &'a crate::stream::Streams,
}

/// The whole `status` object.
pub async fn build(parts: Parts<'_>) -> Status {
    let Parts {
        started,
        fingerprint,
        server,
        core,
        trust: store,
        pc,
        ice_servers,
        counters,
        streams,
    } = parts;
    let trust = StatusTrust {
        policy: store.policy(),
        known_peers: store.path().display().to_string(),
        pinned: store.list().map_or(0, |pins| pins.len()),
        problems: store.problems(),
    };
    let link = core.link();
    // An unused connection has no channel and no path, so one branch
    // covers idle and busy alike.
    let (ice, pcs, dcs, path) = match pc {
        Some(pc) => {
            let path = match link.open_since() {
                Some(_) => pc.path().await,
                None => None,
            };
            (
                Some(pc.ice_state().to_string()),
                Some(pc.pc_state().to_string()),
                pc.channel_state().await,
                path,
            )
        }
        None => (None, None, None, None),
    };
    let peer = link.peer().map(|id| StatusPeer {
        id: id.to_string(),
        initiator: link.initiator(),
        open_for_ms: link
            .open_since()
            .map(|since| since.elapsed().as_millis() as u64),
        ice_restarting: link.restarting(),
        paired_at_signald: link.paired_at_signald(),
        reachable: link.reachable(),
        path,
        fingerprint: link.identity().map(|i| i.fingerprint),
        trust: link.identity().map(|i| i.trust),
    });
    Status {
        control_version: p2p_proto::control::CONTROL_VERSION,
        version: env!("CARGO_PKG_VERSION").to_string(),
        id: server.id.clone(),
        pid: std::process::id(),
        uptime_ms: started.elapsed().as_millis() as u64,
        fingerprint,
        identity: server
            .id
            .as_deref()
            .map(|id| identity::token(id, &fingerprint)),
        trust,
        server: StatusServer {
            url: server.url.clone(),
            state: server.state(core.signald_id().is_some()),
            since_ms: server.since.elapsed().as_millis() as u64,
            reconnects: server.reconnects,
            last_error: server.last_error.clone(),
            ping_interval_ms: server.ping.map(|p| p.0),
            ping_timeout_ms: server.ping.map(|p| p.1),
            ice_servers: ice_servers.iter().flat_map(|s| s.urls.clone()).collect(),
        },
        peer,
        link: link.state(),
        ice_connection_state: ice,
        peer_connection_state: pcs,
        data_channel_state: dcs,
        counters: counters.snapshot(),
        services: streams.services(),
        accepts: streams.accepts(),
        forwards: streams.forwards(),
        streams: streams.open_streams(),
    }
}
