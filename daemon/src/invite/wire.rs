//! The handshake on its data channel, `p2p-invite`: the [`Wire`] over a
//! data channel, and the task that runs one side and reports to the engine.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use p2p_proto::control::InviteFailure;
use tokio::sync::oneshot;
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelState};

use super::handshake::{self, Sides, Wire};
use crate::link::InviteRole;
use crate::peer::{PcContext, PcEventKind};

/// The label of the handshake's channel (the joiner opens it first).
pub const LABEL: &str = "p2p-invite";
/// How long the last message may take to be acknowledged before the result
/// is reported anyway (the peer may be gone).
const FLUSH_WAIT: Duration = Duration::from_millis(500);

struct ChannelWire {
    dc: Arc<dyn DataChannel>,
    open: bool,
    /// Messages read while waiting for the open (none arrive before it,
    /// but nothing read is ever dropped).
    early: VecDeque<String>,
}

impl ChannelWire {
    /// The next event that matters: a text message, or the channel's end.
    async fn next(&mut self) -> Result<Option<String>, InviteFailure> {
        match self.dc.poll().await {
            Some(DataChannelEvent::OnOpen) => {
                self.open = true;
                Ok(None)
            }
            Some(DataChannelEvent::OnMessage(m)) if m.is_string => {
                String::from_utf8(m.data.to_vec())
                    .map(Some)
                    .map_err(|_| InviteFailure::Protocol)
            }
            Some(DataChannelEvent::OnMessage(_)) => Err(InviteFailure::Protocol),
            Some(DataChannelEvent::OnClose) | None => Err(InviteFailure::Protocol),
            Some(_) => Ok(None),
        }
    }

    /// Waits until the channel can carry messages (the joiner starts as
    /// soon as the peer's description is applied, before DTLS is up).
    async fn opened(&mut self) -> Result<(), InviteFailure> {
        if !self.open && matches!(self.dc.ready_state().await, Ok(RTCDataChannelState::Open)) {
            self.open = true;
        }
        while !self.open {
            if let Some(text) = self.next().await? {
                self.early.push_back(text);
            }
        }
        Ok(())
    }
}

impl ChannelWire {
    /// Waits (at most `limit`) until the peer acknowledged all we sent.
    async fn flushed(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.dc.outstanding_bytes().await.unwrap_or(0) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[async_trait::async_trait]
impl Wire for ChannelWire {
    async fn send(&mut self, text: String) -> Result<(), InviteFailure> {
        tokio::time::timeout(handshake::STEP_TIMEOUT, self.opened())
            .await
            .map_err(|_| InviteFailure::Timeout)??;
        self.dc
            .send_text(&text)
            .await
            .map_err(|_| InviteFailure::Protocol)
    }

    async fn recv(&mut self) -> Result<String, InviteFailure> {
        if let Some(text) = self.early.pop_front() {
            return Ok(text);
        }
        loop {
            if let Some(text) = self.next().await? {
                return Ok(text);
            }
        }
    }
}

/// Runs our side of the handshake on `dc` and tells the engine how it went
/// (asking it, as inviter, for the code of the invite the peer names).
pub async fn run(dc: Arc<dyn DataChannel>, role: InviteRole, sides: Sides, ctx: PcContext) {
    tracing::debug!(?role, joiner = %sides.joiner, inviter = %sides.inviter, "invitation handshake starts");
    let mut wire = ChannelWire {
        dc,
        open: false,
        early: VecDeque::new(),
    };
    let result = match role {
        InviteRole::Joiner(code) => handshake::join(&mut wire, code, &sides).await,
        InviteRole::Inviter => {
            let claim = |number| {
                let (reply, answer) = oneshot::channel();
                ctx.forward(PcEventKind::InviteClaim { number, reply });
                async move { answer.await.unwrap_or(Err(InviteFailure::Protocol)) }
            };
            handshake::host(&mut wire, claim, &sides).await.1
        }
    };
    tracing::debug!(?result, "invitation handshake ended");
    // The last message (a verdict) must reach the peer before the engine
    // acts on the result: ending the link closes the connection, and a
    // close drops what is still queued.
    wire.flushed(FLUSH_WAIT).await;
    ctx.forward(PcEventKind::InviteDone(result));
}
