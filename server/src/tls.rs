//! signald's own TLS (`--tls-cert`, `--tls-key`): rustls with the ring
//! provider, the certificate swapped in place on SIGHUP.
//!
//! The certificate lives behind a resolver that every handshake asks, so a
//! reload changes what new connections see while connected clients keep
//! theirs. TLS 1.3 session tickets are off: a resumed session skips the
//! certificate, and a client would go on trusting a certificate it could
//! not verify any more.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// The listener's TLS: what accepts, and the files it reloads.
pub struct Tls {
    resolver: Arc<Resolver>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.resolver.cert_path)
            .field("key", &self.resolver.key_path)
            .finish()
    }
}

#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain and key, checked to belong together.
fn read(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .with_context(|| format!("reading --tls-cert {}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "--tls-cert {} holds no certificate",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading --tls-key {}", key.display()))?;
    CertifiedKey::from_der(chain, key, &provider())
        .context("--tls-key does not match --tls-cert, or is of a kind rustls cannot use")
}

impl Tls {
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<Tls>> {
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(read(cert, key)?)),
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
        });
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.send_tls13_tickets = 0;
        Ok(Arc::new(Tls {
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }))
    }

    /// Reads the files again; on any error the old certificate stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = read(&self.resolver.cert_path, &self.resolver.key_path)?;
        *self
            .resolver
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}
