//! Opening a stream: the opener's side ([`Streams::open`]), and the
//! acceptor's, which reads the opener's `Open`, decides where the stream
//! goes (a waiting `accept`, an exposed service, or a refusal with its
//! reason), and for a service reaches its target before it says yes, so
//! that an unreachable one is a refusal rather than a stream that breaks.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use p2p_proto::control::{ErrorBody, ErrorCode, PeerTrust, StreamDirection, Target, check_service};
use tokio::sync::oneshot;
use webrtc::data_channel::{DataChannel, DataChannelEvent};

use super::frame::{self, Frame};
use super::{Opened, Streams, Unwait, Waiting, pump, refusal, socket, verified};
use crate::engine::OpenLink;

/// How long the opener waits for the peer's answer, and the acceptor for
/// the opener's `Open`.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the acceptor tries to reach a service's target.
const TARGET_TIMEOUT: Duration = Duration::from_secs(5);

impl Streams {
    /// Opens a stream to `service` on the open `link`, for `local`.
    pub async fn open(
        &self,
        link: &OpenLink,
        service: &str,
        local: String,
        allow_unverified: bool,
    ) -> Result<Opened, ErrorBody> {
        let peer = link.peer_id().to_string();
        check_service(service).map_err(|m| refusal(ErrorCode::BadRequest, m))?;
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
                pump::last_word(&dc, Frame::Refuse(busy)).await;
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
                    pump::last_word(&dc, Frame::Refuse(e)).await;
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
                    pump::last_word(&opened.channel.dc, Frame::Abort(why)).await;
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
        check_service(service)
            .and_then(|()| p2p_proto::signal::check_id(peer))
            .map_err(|m| refusal(ErrorCode::BadRequest, m))?;
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
    match frame::next(dc).await {
        Some(Ok(f)) => Ok(f),
        Some(Err(e)) => Err(refusal(
            ErrorCode::StreamFailed,
            format!("a bad stream message: {e}"),
        )),
        None => Err(refusal(
            ErrorCode::StreamFailed,
            "the stream's channel closed during its open",
        )),
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
