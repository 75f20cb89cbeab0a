//! Our key: one ECDSA P-256 key pair (what browsers use for DTLS) with its
//! self-signed certificate, made on first start and kept in the state
//! directory (mode 0600), so that every peer connection presents the same
//! certificate and our fingerprint is stable. It changes only by an
//! explicit rotation (`p2pctl id --rotate`).
//!
//! The file is the `webrtc` crate's own PEM serialisation (an `EXPIRES`
//! block, the PKCS#8 key as `PRIVATE_KEY`, the certificate), read back with
//! the same crate.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use p2p_proto::identity::Fingerprint;
use rtc::peer_connection::certificate::CertificateParams;
use webrtc::peer_connection::RTCCertificate;
use webrtc::peer_connection::crypto::{self, SignatureScheme};

/// The certificate is valid until then: the peer checks only the
/// fingerprint, and the crate refuses to build a connection with an expired
/// certificate (on 32-bit ARM it would otherwise pick now + 48 h).
const NOT_AFTER_SECS: u64 = 64_060_588_800; // 4000-01-01

pub struct Identity {
    path: PathBuf,
    cert: RTCCertificate,
    fingerprint: Fingerprint,
}

impl Identity {
    /// Reads the key at `path`, or makes one and stores it there.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Identity> {
        crate::paths::check_private(path, "our key", false)?;
        let cert = match std::fs::read_to_string(path) {
            Ok(pem) => {
                let provider = crypto::default_provider().context("the crypto provider")?;
                RTCCertificate::from_pem(&pem, provider.crypto()).with_context(|| {
                    format!(
                        "{} does not hold a p2pd key (move it away to make a new one)",
                        path.display()
                    )
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let cert = generate()?;
                match store(path, &cert, true) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "made a new key");
                        cert
                    }
                    // Another p2pd on the same state directory made one
                    // first: that is the key of this directory.
                    Err(Placed::Exists) => return Self::load_or_create(path),
                    Err(Placed::Failed(e)) => return Err(e),
                }
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let fingerprint = fingerprint_of(&cert)?;
        Ok(Identity {
            path: path.to_path_buf(),
            cert,
            fingerprint,
        })
    }

    /// Replaces the key with a new one, on disk first.
    pub fn rotate(&mut self) -> anyhow::Result<()> {
        let cert = generate()?;
        store(&self.path, &cert, false).map_err(|e| match e {
            Placed::Exists => unreachable!("a rotation replaces the file"),
            Placed::Failed(e) => e,
        })?;
        self.fingerprint = fingerprint_of(&cert)?;
        self.cert = cert;
        tracing::warn!(fingerprint = %self.fingerprint, "rotated our key: peers must trust the new fingerprint");
        Ok(())
    }

    pub fn certificate(&self) -> RTCCertificate {
        self.cert.clone()
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

fn generate() -> anyhow::Result<RTCCertificate> {
    let provider = crypto::default_provider().context("the crypto provider")?;
    let params = CertificateParams::new(vec!["p2pd".to_owned()]).context("certificate params")?;
    let mut cert =
        RTCCertificate::generate(provider.crypto(), SignatureScheme::EcdsaP256Sha256, params)
            .context("making a key")?;
    cert.expires = SystemTime::UNIX_EPOCH + Duration::from_secs(NOT_AFTER_SECS);
    Ok(cert)
}

/// The certificate's SHA-256, as the crate puts it into SDP.
fn fingerprint_of(cert: &RTCCertificate) -> anyhow::Result<Fingerprint> {
    let provider = crypto::default_provider().context("the crypto provider")?;
    let fps = cert
        .get_fingerprints(provider.crypto())
        .context("fingerprinting our certificate")?;
    let fp = fps
        .iter()
        .find(|f| f.algorithm.eq_ignore_ascii_case("sha-256"))
        .context("no sha-256 fingerprint for our certificate")?;
    Fingerprint::parse(&fp.value).map_err(|e| anyhow::anyhow!(e))
}

/// Why [`store`] did not place the key.
enum Placed {
    /// `new`, and a key is there already.
    Exists,
    Failed(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Placed {
    fn from(e: E) -> Placed {
        Placed::Failed(e.into())
    }
}

/// Writes the key atomically (a 0600 file beside it, then a rename), so
/// that a crash never leaves half a key. With `new`, an existing file is
/// never overwritten.
fn store(path: &Path, cert: &RTCCertificate, new: bool) -> Result<(), Placed> {
    let pem = cert.serialize_pem().context("serialising the key")?;
    let dir = path.parent().unwrap_or(Path::new("."));
    crate::paths::ensure_private_dir(dir, true)?;
    let tmp = crate::paths::temp_beside(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let written = f.write_all(pem.as_bytes()).and_then(|()| f.sync_all());
    let placed = written.and_then(|()| {
        if new {
            // hard_link refuses to replace: the first key made wins.
            std::fs::hard_link(&tmp, path)
        } else {
            std::fs::rename(&tmp, path)
        }
    });
    let _ = std::fs::remove_file(&tmp);
    match placed {
        Ok(()) => Ok(()),
        Err(e) if new && e.kind() == std::io::ErrorKind::AlreadyExists => Err(Placed::Exists),
        Err(e) => Err(Placed::Failed(
            anyhow::Error::new(e).context(format!("writing {}", path.display())),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_is_made_once_kept_private_and_rotated_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("identity.pem");
        let first = Identity::load_or_create(&path).unwrap();
        let again = Identity::load_or_create(&path).unwrap();
        assert_eq!(first.fingerprint(), again.fingerprint());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let mut rotated = again;
        rotated.rotate().unwrap();
        assert_ne!(rotated.fingerprint(), first.fingerprint());
        let reread = Identity::load_or_create(&path).unwrap();
        assert_eq!(reread.fingerprint(), rotated.fingerprint());
        // No temporary files are left beside the key.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["identity.pem"]);
    }

    #[test]
    fn two_daemons_starting_on_one_directory_end_up_with_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.pem");
        let racers: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || Identity::load_or_create(&path).unwrap().fingerprint())
            })
            .collect();
        let fps: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(fps.windows(2).all(|w| w[0] == w[1]), "{fps:?}");
        assert_eq!(
            Identity::load_or_create(&path).unwrap().fingerprint(),
            fps[0]
        );
    }

    #[test]
    fn a_damaged_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.pem");
        std::fs::write(&path, "not a key").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = Identity::load_or_create(&path).err().unwrap();
        assert!(
            format!("{e:#}").contains("does not hold a p2pd key"),
            "{e:#}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key");
    }
}
