//! A throwaway PKI for TLS tests: a CA, a server certificate for `localhost`, and client
//! certificates with chosen DNS names, as PEM files in a temporary directory.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A CA and the certificates it issued.
pub struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    /// A CA (`ca.pem`), a server certificate for `localhost` (`server.pem`, `server.key`)
    /// and a client certificate named `token-service` (`client.pem`, `client.key`).
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let pki = Self {
            dir,
            issuer: Issuer::new(ca_params, ca_key),
        };
        pki.issue("server", "localhost");
        pki.issue("client", "token-service");
        pki
    }

    /// Issues `<file>.pem` and `<file>.key`: a certificate for the DNS name `san`.
    pub fn issue(&self, file: &str, san: &str) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![san.to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        std::fs::write(self.path(&format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{file}.key")), key.serialize_pem()).unwrap();
    }

    /// A file of this PKI.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `[server.tls]` with this PKI's server certificate, requiring client certificates
    /// from its CA when `mtls`.
    pub fn server_tls_table(&self, mtls: bool) -> String {
        let mut table = format!(
            "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            self.path("server.pem").display(),
            self.path("server.key").display()
        );
        if mtls {
            table.push_str(&format!(
                "client_ca_file = \"{}\"\n",
                self.path("ca.pem").display()
            ));
        }
        table
    }
}
