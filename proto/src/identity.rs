//! A peer's identity: the SHA-256 fingerprint of its DTLS certificate.
//!
//! People see it as `sha256:` and 43 characters of unpadded URL-safe
//! base64 (shell- and URL-safe, short enough to read aloud in a pinch);
//! with the peer's ID in front, `alice@sha256:…` is one token to copy. The
//! SDP form (`AB:CD:…`, 32 colon-separated hex bytes, as `a=fingerprint`
//! and browsers show it) is accepted too.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The SHA-256 fingerprint of a certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

const PREFIX: &str = "sha256:";

impl Fingerprint {
    pub fn from_bytes(b: [u8; 32]) -> Fingerprint {
        Fingerprint(b)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses `sha256:<base64url>` or the SDP hex form `AB:CD:…`.
    pub fn parse(s: &str) -> Result<Fingerprint, String> {
        let s = s.trim();
        if let Some(b64) = s.strip_prefix(PREFIX) {
            let bytes = URL_SAFE_NO_PAD
                .decode(b64)
                .map_err(|e| format!("{s:?} is not a fingerprint: {e}"))?;
            return bytes.try_into().map(Fingerprint).map_err(|b: Vec<u8>| {
                format!("{s:?} is not a fingerprint: {} bytes, not 32", b.len())
            });
        }
        Self::from_hex(s).ok_or_else(|| {
            format!(
                "{s:?} is not a fingerprint (expected sha256:… as `p2pctl id` prints it, or 32 hex bytes AB:CD:… as in SDP)"
            )
        })
    }

    /// The SDP form: 32 hex bytes separated by colons, either case.
    fn from_hex(s: &str) -> Option<Fingerprint> {
        let mut out = [0u8; 32];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next()?;
            if p.len() != 2 {
                return None;
            }
            *b = u8::from_str_radix(p, 16).ok()?;
        }
        parts.next().is_none().then_some(Fingerprint(out))
    }

    /// The SDP form, upper case (as `a=fingerprint` carries it).
    pub fn to_sdp_hex(&self) -> String {
        let hex: Vec<String> = self.0.iter().map(|b| format!("{b:02X}")).collect();
        hex.join(":")
    }

    /// The key the SDP's `a=fingerprint` lines name, by its sha-256 line.
    /// A description may name one certificate by several hash functions
    /// (RFC 8122 section 5; aiortc 1.16 sends sha-256, sha-384 and
    /// sha-512): every sha-256 line (session level and each media section)
    /// must agree, and the others are left to DTLS, which checks every
    /// sha-256, sha-384 and sha-512 line against the certificate the peer
    /// presents (vendor/PATCHES.md 15). A description without a sha-256
    /// line is an error here, never a guess.
    pub fn from_sdp(sdp: &str) -> Result<Fingerprint, String> {
        match sdp_key(sdp)? {
            SdpKey::Sha256(fp) => Ok(fp),
            SdpKey::FromDtls => Err(
                "the description names its key only by sha-384 or sha-512 (no sha-256 line)".into(),
            ),
        }
    }
}

/// What a description's `a=fingerprint` lines say of the peer's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpKey {
    /// Its sha-256 fingerprint, from the sha-256 lines (which agree).
    Sha256(Fingerprint),
    /// No sha-256 line, but sha-384 or sha-512 ones: DTLS checks them
    /// against the certificate the peer presents, and the key (the sha-256
    /// of that certificate) is known once the handshake is done.
    FromDtls,
}

/// Reads the key of a description: see [`Fingerprint::from_sdp`] for the
/// rules; a description with sha-384 or sha-512 lines and no sha-256 one
/// gives [`SdpKey::FromDtls`]; md5, sha-1 and unknown hashes alone are an
/// error.
pub fn sdp_key(sdp: &str) -> Result<SdpKey, String> {
    {
        // (a block of its own: the rules were Fingerprint::from_sdp's)
        let mut found: Option<Fingerprint> = None;
        let mut others: Vec<String> = Vec::new();
        for line in sdp.lines() {
            let Some(rest) = line.trim_end().strip_prefix("a=fingerprint:") else {
                continue;
            };
            let (alg, value) = rest
                .trim()
                .split_once(char::is_whitespace)
                .ok_or_else(|| format!("malformed a=fingerprint line {line:?}"))?;
            if !alg.eq_ignore_ascii_case("sha-256") {
                let alg = alg.to_ascii_lowercase();
                if !others.contains(&alg) {
                    others.push(alg);
                }
                continue;
            }
            let fp = Fingerprint::from_hex(value.trim())
                .ok_or_else(|| format!("malformed a=fingerprint value {value:?}"))?;
            match found {
                Some(f) if f != fp => {
                    return Err("the description carries two different sha-256 fingerprints".into());
                }
                _ => found = Some(fp),
            }
        }
        let strong = others.iter().any(|a| a == "sha-384" || a == "sha-512");
        match found {
            Some(fp) => Ok(SdpKey::Sha256(fp)),
            None if strong => Ok(SdpKey::FromDtls),
            None if others.is_empty() => Err("the description carries no a=fingerprint".into()),
            None => Err(format!(
                "the description names its key only by {}, which p2pd does not accept",
                others.join(", ")
            )),
        }
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}", URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        Fingerprint::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `ID@sha256:…`: a peer's ID and fingerprint as one token.
pub fn token(id: &str, fp: &Fingerprint) -> String {
    format!("{id}@{fp}")
}

/// Splits a token made by [`token`].
pub fn parse_token(s: &str) -> Result<(String, Fingerprint), String> {
    let (id, fp) = s.trim().split_once('@').ok_or_else(|| {
        format!("{s:?} is not an ID@fingerprint token (as `p2pctl id` prints it)")
    })?;
    if !crate::signal::valid_id(id) {
        return Err(format!("{id:?} is not a valid ID"));
    }
    Ok((id.to_string(), Fingerprint::parse(fp)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "1E:53:3D:A0:00:FF:10:20:30:40:50:60:70:80:90:A0:B0:C0:D0:E0:F0:01:02:03:04:05:06:07:08:09:0A:0B";

    #[test]
    fn both_forms_parse_to_the_same_fingerprint() {
        let fp = Fingerprint::parse(HEX).unwrap();
        assert_eq!(fp.to_sdp_hex(), HEX);
        let text = fp.to_string();
        assert!(
            text.starts_with("sha256:") && text.len() == 7 + 43,
            "{text}"
        );
        assert_eq!(Fingerprint::parse(&text).unwrap(), fp);
        assert_eq!(Fingerprint::parse(&HEX.to_lowercase()).unwrap(), fp);
        for bad in [
            "",
            "sha256:",
            "sha256:AAAA",
            "1E:53",
            &format!("{HEX}:00"),
            "zz",
        ] {
            assert!(Fingerprint::parse(bad).is_err(), "{bad:?}");
        }
        let json = serde_json::to_string(&fp).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<Fingerprint>(&json).unwrap(), fp);
    }

    #[test]
    fn tokens_round_trip() {
        let fp = Fingerprint::parse(HEX).unwrap();
        let t = token("alice", &fp);
        assert_eq!(parse_token(&t).unwrap(), ("alice".to_string(), fp));
        assert!(parse_token("alice").is_err());
        assert!(parse_token("a b@sha256:x").is_err());
    }

    #[test]
    fn sdp_fingerprints_must_agree_and_be_sha256() {
        let fp = Fingerprint::parse(HEX).unwrap();
        let sdp = |lines: &[&str]| format!("v=0\r\n{}\r\n", lines.join("\r\n"));
        let session = format!("a=fingerprint:sha-256 {HEX}");
        let media = format!("a=fingerprint:SHA-256 {}", HEX.to_lowercase());
        assert_eq!(Fingerprint::from_sdp(&sdp(&[&session])).unwrap(), fp);
        assert_eq!(
            Fingerprint::from_sdp(&sdp(&[
                &session,
                "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
                &media
            ]))
            .unwrap(),
            fp
        );
        let other = session.replace("1E:53", "1E:54");
        assert!(Fingerprint::from_sdp(&sdp(&[&session, &other])).is_err());
        assert!(Fingerprint::from_sdp(&sdp(&["a=fingerprint:sha-1 AB:CD"])).is_err());
        assert!(Fingerprint::from_sdp(&sdp(&["a=mid:0"])).is_err());
    }

    /// aiortc 1.16 names its certificate by three hash functions (RFC 8122
    /// section 5); the sha-256 line is the key, DTLS checks the others.
    #[test]
    fn sdp_with_several_hash_functions_gives_the_sha256_key() {
        let fp = Fingerprint::parse(HEX).unwrap();
        let sdp = |lines: &[&str]| format!("v=0\r\n{}\r\n", lines.join("\r\n"));
        let s384 = format!("a=fingerprint:sha-384 {}", ["AB"; 48].join(":"));
        let s512 = format!("a=fingerprint:sha-512 {}", ["CD"; 64].join(":"));
        let s256 = format!("a=fingerprint:sha-256 {HEX}");
        for lines in [
            vec![s256.as_str(), &s384, &s512],
            vec![&s512, &s384, &s256],
            vec!["a=fingerprint:sha-1 AB:CD", &s256],
        ] {
            assert_eq!(
                Fingerprint::from_sdp(&sdp(&lines)).unwrap(),
                fp,
                "{lines:?}"
            );
        }
        let why = Fingerprint::from_sdp(&sdp(&[&s384, &s512])).unwrap_err();
        assert!(
            why.contains("sha-384 or sha-512") && why.contains("no sha-256"),
            "{why}"
        );
        assert_eq!(sdp_key(&sdp(&[&s384, &s512])), Ok(SdpKey::FromDtls));
        assert_eq!(sdp_key(&sdp(&[&s512])), Ok(SdpKey::FromDtls));
        assert_eq!(sdp_key(&sdp(&[&s256, &s512])), Ok(SdpKey::Sha256(fp)));
        let why = sdp_key(&sdp(&["a=fingerprint:sha-1 AB:CD"])).unwrap_err();
        assert!(why.contains("only by sha-1"), "{why}");
    }
}
