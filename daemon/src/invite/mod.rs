//! Invitations: a short one-time code instead of copying fingerprints, for
//! first contact (`p2pctl invite` here, `p2pctl pair ID --code CODE` there).
//!
//! A code is `N-word-word`: `N` (1-99) names the invite and is not secret;
//! the two words (of [`words::WORDS`], 376 of them: 141,376 pairs, 17.1
//! bits) are the password of a PAKE run over the new connection
//! ([`handshake`]). Invites live in memory only, for their TTL, and are
//! used up by one attempt, good or bad: an attacker gets one online guess
//! per code. An invite that ended is remembered for a while so that the
//! peer who comes late is told why ("expired", not just "wrong").

pub mod handshake;
pub mod wire;
mod words;

use std::time::Duration;

use p2p_proto::control::{InviteFailure, InviteInfo};
use tokio::time::Instant;

pub use words::WORDS;

/// Invites open at once at most.
pub const MAX_OPEN: usize = 16;
/// The longest TTL an invite may have.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// The TTL of `p2pctl invite` without `--ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// How long an invite that ended (expired, used, cancelled) is remembered.
const REMEMBER: Duration = Duration::from_secs(600);
/// Ended invites remembered at most.
const REMEMBER_MAX: usize = 32;
/// The highest invite number.
const MAX_NUMBER: u16 = 99;

/// An invite code: its number and its two secret words (indices).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Code {
    number: u16,
    words: [u16; 2],
}

impl Code {
    fn random(number: u16) -> Code {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).expect("the OS random source works");
        // 32 random bits per word, scaled by multiply-and-shift: every word
        // is as likely as any other to within one part in ten million.
        let pick = |b: &[u8]| {
            let r = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64;
            ((r * WORDS.len() as u64) >> 32) as u16
        };
        Code {
            number,
            words: [pick(&r[..4]), pick(&r[4..])],
        }
    }

    pub fn number(&self) -> u16 {
        self.number
    }

    /// Reads `N-word-word`, case and spacing forgiven (`7 Amber canyon`).
    pub fn parse(s: &str) -> Result<Code, String> {
        let bad = || format!("{s:?} is not an invite code (like 7-maple-otter)");
        let parts: Vec<String> = s
            .split(['-', ' ', '_'])
            .filter(|p| !p.is_empty())
            .map(str::to_lowercase)
            .collect();
        let [n, a, b] = parts.as_slice() else {
            return Err(bad());
        };
        let number: u16 = n.parse().map_err(|_| bad())?;
        if !(1..=MAX_NUMBER).contains(&number) {
            return Err(bad());
        }
        let index = |w: &str| {
            WORDS
                .iter()
                .position(|x| *x == w)
                .map(|i| i as u16)
                .ok_or_else(|| format!("{w:?} is not a word of invite codes (check the spelling)"))
        };
        Ok(Code {
            number,
            words: [index(a)?, index(b)?],
        })
    }

    /// The PAKE password: the whole code in its one written form.
    pub fn password(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b] = self.words;
        write!(
            f,
            "{}-{}-{}",
            self.number, WORDS[a as usize], WORDS[b as usize]
        )
    }
}

struct Open {
    code: Code,
    expires: Instant,
    for_peer: Option<String>,
    /// A handshake with it is under way.
    claimed: bool,
}

struct Ended {
    number: u16,
    why: InviteFailure,
    until: Instant,
}

/// The open invites, and those that ended recently.
#[derive(Default)]
pub struct Invites {
    open: Vec<Open>,
    ended: Vec<Ended>,
}

impl Invites {
    /// Opens an invite for `ttl` (clamped to at most [`MAX_TTL`]).
    pub fn create(
        &mut self,
        ttl: Duration,
        for_peer: Option<String>,
        now: Instant,
    ) -> Result<InviteInfo, String> {
        self.sweep(now);
        if self.open.len() >= MAX_OPEN {
            return Err(format!(
                "{MAX_OPEN} invites are open already; cancel one (p2pctl invite --cancel N)"
            ));
        }
        if ttl.is_zero() {
            return Err("an invite needs a TTL above zero".into());
        }
        // The lowest number neither open nor remembered, so that a late
        // peer is never mistaken for the new invite's.
        let number = (1..=MAX_NUMBER)
            .find(|n| {
                self.open.iter().all(|o| o.code.number != *n)
                    && self.ended.iter().all(|e| e.number != *n)
            })
            .or_else(|| (1..=MAX_NUMBER).find(|n| self.open.iter().all(|o| o.code.number != *n)))
            .expect("MAX_OPEN is below the numbers there are");
        self.ended.retain(|e| e.number != number);
        let invite = Open {
            code: Code::random(number),
            expires: now + ttl.min(MAX_TTL),
            for_peer,
            claimed: false,
        };
        let info = describe(&invite, now);
        self.open.push(invite);
        Ok(info)
    }

    pub fn list(&mut self, now: Instant) -> Vec<InviteInfo> {
        self.sweep(now);
        self.open.iter().map(|o| describe(o, now)).collect()
    }

    /// Cancels the invite given by its code or its number.
    pub fn cancel(&mut self, code_or_number: &str, now: Instant) -> Result<u16, String> {
        self.sweep(now);
        let number = match code_or_number.trim().parse::<u16>() {
            Ok(n) => n,
            Err(_) => Code::parse(code_or_number)?.number,
        };
        let i = self
            .open
            .iter()
            .position(|o| o.code.number == number)
            .ok_or_else(|| format!("no open invite numbered {number}"))?;
        self.end(i, InviteFailure::Cancelled, now);
        Ok(number)
    }

    /// Whether an unknown `peer` may pair with us for a handshake: only
    /// while an invite it may use is open. Once none is, unknown peers are
    /// refused before any negotiation (no connection, no candidates), and
    /// the joiner's `pair --code` says there is no open invite.
    pub fn admits(&mut self, peer: &str, now: Instant) -> bool {
        self.sweep(now);
        self.open
            .iter()
            .any(|o| !o.claimed && o.for_peer.as_deref().is_none_or(|f| f == peer))
    }

    /// `peer` names invite `number` in its handshake: its code, if it may.
    /// A wrong peer ID does not use the invite up (no guess was made).
    pub fn claim(&mut self, number: u16, peer: &str, now: Instant) -> Result<Code, InviteFailure> {
        self.sweep(now);
        if let Some(o) = self.open.iter_mut().find(|o| o.code.number == number) {
            if o.for_peer.as_deref().is_some_and(|f| f != peer) {
                return Err(InviteFailure::NotForYou);
            }
            if o.claimed {
                return Err(InviteFailure::Used);
            }
            o.claimed = true;
            return Ok(o.code);
        }
        Err(self
            .ended
            .iter()
            .find(|e| e.number == number)
            .map_or(InviteFailure::Unknown, |e| e.why))
    }

    /// The handshake with claimed invite `number` is over: either way the
    /// invite is used up.
    pub fn finish(&mut self, number: u16, now: Instant) {
        if let Some(i) = self.open.iter().position(|o| o.code.number == number) {
            self.end(i, InviteFailure::Used, now);
        }
    }

    fn end(&mut self, i: usize, why: InviteFailure, now: Instant) {
        let o = self.open.swap_remove(i);
        self.ended.push(Ended {
            number: o.code.number,
            why,
            until: now + REMEMBER,
        });
        if self.ended.len() > REMEMBER_MAX {
            self.ended.remove(0);
        }
    }

    fn sweep(&mut self, now: Instant) {
        while let Some(i) = self
            .open
            .iter()
            .position(|o| o.expires <= now && !o.claimed)
        {
            self.end(i, InviteFailure::Expired, now);
        }
        self.ended.retain(|e| e.until > now);
    }
}

fn describe(o: &Open, now: Instant) -> InviteInfo {
    InviteInfo {
        code: o.code.to_string(),
        number: o.code.number,
        expires_in_ms: o.expires.saturating_duration_since(now).as_millis() as u64,
        for_peer: o.for_peer.clone(),
    }
}

#[cfg(test)]
mod tests;
