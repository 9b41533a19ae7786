//! A throwaway PKI for TLS tests: a CA, a server certificate for `localhost`, and client
//! certificates with chosen DNS names, as PEM files in a temporary directory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A CA and the certificates it issued.
pub struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    /// Serial number of each issued file, for revocation lists.
    serials: Mutex<HashMap<String, u64>>,
}

impl Pki {
    /// A CA (`ca.pem`), a server certificate for `localhost` (`server.pem`, `server.key`)
    /// and a client certificate named `token-service` (`client.pem`, `client.key`).
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Names of their own: OpenSSL (Redis) takes a certificate whose subject is its
        // issuer's name for a self-signed one, and rcgen's default name is the same for all.
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "token-service test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let pki = Self {
            dir,
            issuer: Issuer::new(ca_params, ca_key),
            serials: Mutex::new(HashMap::new()),
        };
        pki.issue("server", "localhost");
        pki.issue("client", "token-service");
        pki
    }

    /// Issues `<file>.pem` and `<file>.key`: a certificate for the DNS name `san`.
    pub fn issue(&self, file: &str, san: &str) {
        self.issue_with(file, san, |_| {});
    }

    /// As [`Pki::issue`], valid from 2020 until `year`-01-01 (in the past for an expired one).
    pub fn issue_until(&self, file: &str, san: &str, year: i32) {
        self.issue_with(file, san, |params| {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(year, 1, 1);
        });
    }

    fn issue_with(&self, file: &str, san: &str, adjust: impl FnOnce(&mut CertificateParams)) {
        let key = KeyPair::generate().unwrap();
        let serial = {
            let mut serials = self.serials.lock().unwrap();
            let serial = 1000 + serials.len() as u64;
            serials.insert(file.to_owned(), serial);
            serial
        };
        let mut params = CertificateParams::new(vec![san.to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, san);
        params.serial_number = Some(serial.into());
        adjust(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(self.path(&format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{file}.key")), key.serialize_pem()).unwrap();
    }

    /// Writes `crl.pem`: a revocation list of this CA naming the certificates issued as
    /// `files`, due to be renewed in 2035.
    pub fn revoke(&self, files: &[&str]) {
        self.revoke_until(files, 2035);
    }

    /// As [`Pki::revoke`], with the list's `nextUpdate` on `year`-01-01 (in the past for a
    /// stale list).
    pub fn revoke_until(&self, files: &[&str], year: i32) {
        let serials = self.serials.lock().unwrap();
        let crl = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(year, 1, 1),
            crl_number: 1u64.into(),
            issuing_distribution_point: None,
            revoked_certs: files
                .iter()
                .map(|file| rcgen::RevokedCertParams {
                    serial_number: serials[*file].into(),
                    revocation_time: rcgen::date_time_ymd(2020, 6, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap();
        std::fs::write(self.path("crl.pem"), crl.pem().unwrap()).unwrap();
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

/// An HTTP/1.1 GET over TLS to `addr`, trusting only the CA in `ca_file` and checking the
/// certificate is for `server_name`: (status, body), or why the connection failed.
pub fn https_get(
    addr: std::net::SocketAddr,
    server_name: &str,
    ca_file: &std::path::Path,
    path: &str,
) -> Result<(u16, String), String> {
    use std::io::{Read, Write};

    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;

    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls_pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .map_err(|e| e.to_string())?;
    let tcp = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .ok();
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    // A server may close without close_notify once the response is complete.
    if let Err(error) = tls.read_to_end(&mut response)
        && (error.kind() != std::io::ErrorKind::UnexpectedEof || response.is_empty())
    {
        return Err(error.to_string());
    }
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
