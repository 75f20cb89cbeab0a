//! TURN REST credentials (the coturn `use-auth-secret` scheme): for each
//! client, username `<unix expiry>:<client id>` and credential
//! `base64(HMAC-SHA1(secret, username))`, which coturn checks with the same
//! shared secret and no per-user state.
//!
//! The secret lives only in [`TurnSecret`], whose `Debug` is redacted, so no
//! `{:?}` of the config can leak it; the credentials made from it are only
//! ever written into `welcome` and `ice_servers` frames, never logged.
//!
//! Credentials are not for anyone who opens a WebSocket (issue 21): each
//! address has an allowance (`--turn-per-ip` in a burst, as many again per
//! lifetime), the lifetime is short (`--turn-ttl`, 10 minutes), and a
//! client that stays connected gets fresh ones at half of it, so that an
//! ICE restart an hour into a relayed link still gathers a relay. An
//! allocation made earlier lives on: coturn checks the expiry when it is
//! made, then keeps the session's key for its refreshes.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use base64::Engine;
use hmac::{Hmac, Mac};
use p2p_proto::signal::IceServer;
use sha1::Sha1;

/// The shared secret, as coturn's `static-auth-secret` holds it.
#[derive(Clone)]
pub struct TurnSecret(Box<[u8]>);

impl fmt::Debug for TurnSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TurnSecret(<redacted>)")
    }
}

impl TurnSecret {
    pub fn new(secret: impl Into<Vec<u8>>) -> anyhow::Result<Self> {
        let secret = secret.into();
        if secret.is_empty() {
            bail!("the TURN secret is empty");
        }
        Ok(Self(secret.into_boxed_slice()))
    }

    /// Reads the secret from a file: its whole content less one trailing
    /// line ending, so `echo secret > file` works. The error names the file,
    /// never its content.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let mut bytes = std::fs::read(path)
            .with_context(|| format!("reading the TURN secret file {}", path.display()))?;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        Self::new(bytes).with_context(|| format!("TURN secret file {}", path.display()))
    }

    /// The credential for `username`: base64 of HMAC-SHA1 under the secret.
    pub fn credential(&self, username: &str) -> String {
        // HMAC takes a key of any length; this cannot fail.
        let mut mac = Hmac::<Sha1>::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(username.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }
}

/// Time-limited TURN credentials: the secret and how long they last.
#[derive(Debug, Clone)]
pub struct TurnRest {
    pub secret: TurnSecret,
    pub ttl: Duration,
}

fn is_turn(url: &str) -> bool {
    url.starts_with("turn:") || url.starts_with("turns:")
}

/// Whether signald issues this server's credentials (a TURN server given
/// without its own).
fn issued(s: &IceServer) -> bool {
    s.username.is_none() && s.credential.is_none() && s.urls.iter().any(|u| is_turn(u))
}

/// `servers` for a client given no credentials (its address used its
/// allowance): the TURN servers whose credentials signald issues are left
/// out, as they would only refuse it; the others stay.
pub fn without_issued(servers: &[IceServer]) -> Vec<IceServer> {
    servers.iter().filter(|s| !issued(s)).cloned().collect()
}

impl TurnRest {
    /// `servers` as client `id` receives them at `now`: each TURN server
    /// that has no username and credential of its own gets fresh ones;
    /// STUN servers and TURN servers with static credentials are unchanged.
    pub fn for_client(&self, servers: &[IceServer], id: &str, now: SystemTime) -> Vec<IceServer> {
        let expiry = now
            .checked_add(self.ttl)
            .unwrap_or(now)
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let username = format!("{expiry}:{id}");
        let credential = self.secret.credential(&username);
        servers
            .iter()
            .map(|s| {
                if issued(s) {
                    IceServer {
                        urls: s.urls.clone(),
                        username: Some(username.clone()),
                        credential: Some(credential.clone()),
                    }
                } else {
                    s.clone()
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2202_hmac_sha1_vector() {
        // RFC 2202 test case 2: key "Jefe".
        let s = TurnSecret::new("Jefe").unwrap();
        let want = base64::engine::general_purpose::STANDARD
            .encode(hex("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"));
        assert_eq!(s.credential("what do ya want for nothing?"), want);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn only_turn_servers_without_credentials_get_them() {
        let rest = TurnRest {
            secret: TurnSecret::new("s3cret").unwrap(),
            ttl: Duration::from_secs(3600),
        };
        let servers = [
            IceServer::parse_flag("stun:127.0.0.1:3478").unwrap(),
            IceServer::parse_flag("turn:127.0.0.1:3478").unwrap(),
            IceServer::parse_flag("turns:127.0.0.1:5349,u,p").unwrap(),
        ];
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let out = rest.for_client(&servers, "alice", now);
        assert_eq!(out[0], servers[0]);
        assert_eq!(out[1].username.as_deref(), Some("1003600:alice"));
        assert_eq!(
            out[1].credential.as_deref(),
            Some(rest.secret.credential("1003600:alice").as_str())
        );
        assert_eq!(out[2], servers[2]);
        assert_eq!(
            without_issued(&servers),
            vec![servers[0].clone(), servers[2].clone()]
        );
    }

    #[test]
    fn secret_is_redacted_and_file_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "hunter2-secret\r\n").unwrap();
        let s = TurnSecret::from_file(&f).unwrap();
        assert_eq!(&*s.0, b"hunter2-secret");
        assert!(!format!("{s:?}").contains("hunter2"));
        std::fs::write(&f, "\n").unwrap();
        assert!(TurnSecret::from_file(&f).is_err());
    }
}
