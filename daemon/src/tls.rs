//! TLS to signald (`wss://`): rustls with the ring provider that DTLS
//! already uses, trusting the system's roots plus `--server-ca FILE`; and a
//! certificate failure told in plain words.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite;

/// The client configuration for `wss://`.
pub fn client_config(extra_ca: Option<&Path>) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!("system root certificates: {e}");
    }
    let (added, _) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, "system root certificates");
    if let Some(path) = extra_ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .with_context(|| format!("reading --server-ca {}", path.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "--server-ca {} holds no certificate",
            path.display()
        );
        for c in certs {
            roots
                .add(c)
                .with_context(|| format!("--server-ca {}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// What a person can act on when the TLS handshake with signald failed
/// over its certificate; `None` for other errors.
pub fn explain(e: &tungstenite::Error, host: &str) -> Option<String> {
    let rustls_err = match e {
        tungstenite::Error::Tls(tungstenite::error::TlsError::Rustls(r)) => Some(&**r),
        tungstenite::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        _ => None,
    }?;
    let rustls::Error::InvalidCertificate(ce) = rustls_err else {
        return Some(format!(
            "the TLS handshake with {host} failed: {rustls_err}"
        ));
    };
    Some(match ce {
        CertificateError::UnknownIssuer => format!(
            "{host}'s TLS certificate is not signed by a certificate authority we trust (if it uses a private CA, pass --server-ca FILE)"
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("{host}'s TLS certificate is not valid for the name {host}")
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            format!("{host}'s TLS certificate has expired")
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            format!("{host}'s TLS certificate is not valid yet (check this machine's clock)")
        }
        CertificateError::Revoked => format!("{host}'s TLS certificate has been revoked"),
        other => format!("{host}'s TLS certificate was refused: {other:?}"),
    })
}

/// Whether `url`'s host is this machine (plain `ws://` is fine there).
pub fn is_loopback(url: &str) -> bool {
    let host = host_of(url);
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host part of a `ws://` or `wss://` URL.
pub fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or(authority);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_loopback() {
        assert_eq!(host_of("ws://127.0.0.1:8765/ws"), "127.0.0.1");
        assert_eq!(
            host_of("wss://signal.example.net/ws?x=1"),
            "signal.example.net"
        );
        assert_eq!(host_of("ws://[::1]:80/ws"), "[::1]");
        assert!(is_loopback("ws://127.0.0.1:8765/ws"));
        assert!(is_loopback("ws://localhost/ws"));
        assert!(is_loopback("ws://[::1]:1/ws"));
        assert!(!is_loopback("ws://198.51.100.1:8765/ws"));
        assert!(!is_loopback("ws://signal.example.net/ws"));
    }
}
