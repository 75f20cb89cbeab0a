//! A throw-away certificate authority, made in the test: nothing from the
//! internet, nothing that outlives the test.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA whose certificate is written to `ca.pem` in its own directory.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("a CA certificate");
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).expect("writing ca.pem");
        Ca {
            issuer: Issuer::new(params, key),
            dir,
        }
    }

    /// The CA's certificate (PEM), what a client passes as its extra root.
    pub fn pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A server certificate for 127.0.0.1 and localhost, written as
    /// `STEM.crt` and `STEM.key` into `dir`; returns their paths.
    pub fn issue(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("a server key");
        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("server params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a server certificate");
        let (crt, pem_key) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&crt, cert.pem()).expect("writing the certificate");
        std::fs::write(&pem_key, key.serialize_pem()).expect("writing the key");
        (crt, pem_key)
    }
}
