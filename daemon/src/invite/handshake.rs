//! The invitation handshake: SPAKE2 with the invite code as password, then
//! key confirmation with MACs over both DTLS fingerprints as each side saw
//! them. It runs on its own data channel, `p2p-invite`, which the joining
//! side opens before the user's channel; the user's channel is neither
//! read nor handed to `send` until the handshake succeeded.
//!
//! Messages are JSON text messages of at most [`MAX_MESSAGE`] bytes:
//!
//! ```text
//! joiner  -> inviter  {"t":"hello","v":1,"invite":7,"spake":B64}
//! inviter -> joiner   {"t":"reply","spake":B64,"confirm":B64}     or {"t":"fail","why":...}
//! joiner  -> inviter  {"t":"confirm","confirm":B64}               or {"t":"fail","why":...}
//! inviter -> joiner   {"t":"done"}                                or {"t":"fail","why":...}
//! ```
//!
//! SPAKE2 is RustCrypto's `spake2` in its A/B form (the joiner is A, the
//! inviter B; each side's identity is `p2p invite v1 joiner:ID` and `p2p
//! invite v1 inviter:ID`, so a server that introduced them under other IDs
//! breaks the exchange). The crate does no key confirmation; we add it:
//! `kc = HMAC-SHA256(K, "p2p invite v1 confirm")`, and each side's tag is
//! `HMAC-SHA256(kc, ROLE ‖ its own fingerprint ‖ the other's ‖ msgA ‖
//! msgB)` with the fingerprints as *this* side saw them (its certificate,
//! and the one the peer's description named, which DTLS proved). A wrong
//! code gives different keys; a server that swapped a fingerprint gives
//! different fingerprints: either way a tag fails, on both sides. Tags name
//! their role, so a reflected tag fails too.

use std::future::Future;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use p2p_proto::control::InviteFailure;
use p2p_proto::identity::Fingerprint;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use spake2::{Ed25519Group, Identity, Password, Spake2};

use super::Code;

/// The protocol's version, in `hello`.
pub const VERSION: u32 = 1;
/// Longest handshake message read.
pub const MAX_MESSAGE: usize = 4096;
/// How long each step may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// How handshake messages travel: the `p2p-invite` data channel in the
/// daemon, channels in tests.
#[async_trait::async_trait]
pub trait Wire: Send {
    async fn send(&mut self, text: String) -> Result<(), InviteFailure>;
    /// The next message; `Protocol` if the channel closed.
    async fn recv(&mut self) -> Result<String, InviteFailure>;
}

/// The two peers, with the keys as this side saw them.
#[derive(Clone, Debug)]
pub struct Sides {
    pub joiner: String,
    pub inviter: String,
    pub joiner_key: Fingerprint,
    pub inviter_key: Fingerprint,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Msg {
    Hello { v: u32, invite: u16, spake: String },
    Reply { spake: String, confirm: String },
    Confirm { confirm: String },
    Done,
    Fail { why: InviteFailure },
}

type HmacSha256 = Hmac<Sha256>;

/// The joining side (`pair ID --code CODE`).
pub async fn join(wire: &mut dyn Wire, code: Code, sides: &Sides) -> Result<(), InviteFailure> {
    let (spake, msg_a) = Spake2::<Ed25519Group>::start_a(
        &Password::new(code.password()),
        &identity("joiner", &sides.joiner),
        &identity("inviter", &sides.inviter),
    );
    send(
        wire,
        Msg::Hello {
            v: VERSION,
            invite: code.number(),
            spake: B64.encode(&msg_a),
        },
    )
    .await?;
    let (msg_b, their_tag) = match recv(wire).await? {
        Msg::Reply { spake, confirm } => (decode(&spake)?, decode(&confirm)?),
        Msg::Fail { why } => return Err(why),
        _ => return fail(wire, InviteFailure::Protocol).await,
    };
    let Ok(key) = spake.finish(&msg_b) else {
        return fail(wire, InviteFailure::Protocol).await;
    };
    let kc = confirmation_key(&key);
    let transcript = [msg_a.as_slice(), msg_b.as_slice()];
    if !verify(
        &kc,
        "inviter",
        &sides.inviter_key,
        &sides.joiner_key,
        &transcript,
        &their_tag,
    ) {
        return fail(wire, InviteFailure::WrongCode).await;
    }
    let mine = tag(
        &kc,
        "joiner",
        &sides.joiner_key,
        &sides.inviter_key,
        &transcript,
    );
    send(
        wire,
        Msg::Confirm {
            confirm: B64.encode(mine),
        },
    )
    .await?;
    match recv(wire).await? {
        Msg::Done => Ok(()),
        Msg::Fail { why } => Err(why),
        _ => Err(InviteFailure::Protocol),
    }
}

/// The inviting side: `claim` turns the invite number the joiner named
/// into its code (or why not). Returns the number named, if any, and how
/// it went.
pub async fn host<F, Fut>(
    wire: &mut dyn Wire,
    claim: F,
    sides: &Sides,
) -> (Option<u16>, Result<(), InviteFailure>)
where
    F: FnOnce(u16) -> Fut,
    Fut: Future<Output = Result<Code, InviteFailure>>,
{
    let (number, msg_a) = match recv(wire).await {
        Ok(Msg::Hello {
            v: VERSION,
            invite,
            spake,
        }) => match decode(&spake) {
            Ok(m) => (invite, m),
            Err(e) => return (None, fail(wire, e).await),
        },
        Ok(_) => return (None, fail(wire, InviteFailure::Protocol).await),
        Err(e) => return (None, Err(e)),
    };
    let code = match claim(number).await {
        Ok(c) => c,
        Err(why) => return (Some(number), fail(wire, why).await),
    };
    (Some(number), host_with(wire, code, msg_a, sides).await)
}

async fn host_with(
    wire: &mut dyn Wire,
    code: Code,
    msg_a: Vec<u8>,
    sides: &Sides,
) -> Result<(), InviteFailure> {
    let (spake, msg_b) = Spake2::<Ed25519Group>::start_b(
        &Password::new(code.password()),
        &identity("joiner", &sides.joiner),
        &identity("inviter", &sides.inviter),
    );
    let Ok(key) = spake.finish(&msg_a) else {
        return fail(wire, InviteFailure::Protocol).await;
    };
    let kc = confirmation_key(&key);
    let transcript = [msg_a.as_slice(), msg_b.as_slice()];
    let mine = tag(
        &kc,
        "inviter",
        &sides.inviter_key,
        &sides.joiner_key,
        &transcript,
    );
    send(
        wire,
        Msg::Reply {
            spake: B64.encode(&msg_b),
            confirm: B64.encode(mine),
        },
    )
    .await?;
    let their_tag = match recv(wire).await? {
        Msg::Confirm { confirm } => decode(&confirm)?,
        Msg::Fail { why } => return Err(why),
        _ => return fail(wire, InviteFailure::Protocol).await,
    };
    if !verify(
        &kc,
        "joiner",
        &sides.joiner_key,
        &sides.inviter_key,
        &transcript,
        &their_tag,
    ) {
        return fail(wire, InviteFailure::WrongCode).await;
    }
    send(wire, Msg::Done).await
}

fn identity(role: &str, id: &str) -> Identity {
    Identity::new(format!("p2p invite v1 {role}:{id}").as_bytes())
}

fn confirmation_key(spake_key: &[u8]) -> [u8; 32] {
    let mut m = <HmacSha256 as Mac>::new_from_slice(spake_key).expect("HMAC takes any key length");
    m.update(b"p2p invite v1 confirm");
    m.finalize().into_bytes().into()
}

fn tagger(
    kc: &[u8; 32],
    role: &str,
    own: &Fingerprint,
    other: &Fingerprint,
    transcript: &[&[u8]; 2],
) -> HmacSha256 {
    let mut m = <HmacSha256 as Mac>::new_from_slice(kc).expect("HMAC takes any key length");
    m.update(role.as_bytes());
    m.update(own.as_bytes());
    m.update(other.as_bytes());
    for part in transcript {
        m.update(part);
    }
    m
}

fn tag(
    kc: &[u8; 32],
    role: &str,
    own: &Fingerprint,
    other: &Fingerprint,
    t: &[&[u8]; 2],
) -> [u8; 32] {
    tagger(kc, role, own, other, t)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a tag in constant time.
fn verify(
    kc: &[u8; 32],
    role: &str,
    own: &Fingerprint,
    other: &Fingerprint,
    t: &[&[u8]; 2],
    got: &[u8],
) -> bool {
    tagger(kc, role, own, other, t).verify_slice(got).is_ok()
}

fn decode(b64: &str) -> Result<Vec<u8>, InviteFailure> {
    B64.decode(b64).map_err(|_| InviteFailure::Protocol)
}

async fn send(wire: &mut dyn Wire, msg: Msg) -> Result<(), InviteFailure> {
    wire.send(serde_json::to_string(&msg).expect("handshake messages serialise"))
        .await
}

async fn recv(wire: &mut dyn Wire) -> Result<Msg, InviteFailure> {
    let text = tokio::time::timeout(STEP_TIMEOUT, wire.recv())
        .await
        .map_err(|_| InviteFailure::Timeout)??;
    if text.len() > MAX_MESSAGE {
        return Err(InviteFailure::Protocol);
    }
    serde_json::from_str(&text).map_err(|_| InviteFailure::Protocol)
}

/// Tells the peer why (best effort: it may be gone) and fails.
async fn fail<T>(wire: &mut dyn Wire, why: InviteFailure) -> Result<T, InviteFailure> {
    let _ = send(wire, Msg::Fail { why }).await;
    Err(why)
}

#[cfg(test)]
mod tests;
