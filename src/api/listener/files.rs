//! The files of a TLS listener: read together, fingerprinted, and built into a rustls
//! server configuration.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio_rustls::rustls;
use zeroize::Zeroizing;

use super::tls::{ListenerKind, TlsSetupError};
use crate::config::tls::{ServerTlsConfig, TlsFileError};

fn content(setting: &'static str) -> impl Fn(String) -> TlsSetupError {
    move |detail| TlsSetupError::Content { setting, detail }
}

/// The files' bytes, read together; a reload compares their digest with the last loaded.
pub(super) struct Files {
    cert: Vec<u8>,
    key: Zeroizing<Vec<u8>>,
    ca: Option<Vec<u8>>,
    crl: Option<Vec<u8>>,
}

impl Files {
    pub(super) fn read(
        settings: &ServerTlsConfig,
        kind: ListenerKind,
    ) -> Result<Self, TlsFileError> {
        let names = kind.setting_names();
        let read = |path: &std::path::PathBuf, setting: &'static str| {
            std::fs::read(path).map_err(|source| TlsFileError {
                setting,
                path: path.display().to_string(),
                source,
            })
        };
        Ok(Self {
            cert: read(&settings.cert_file, names.cert_file)?,
            key: Zeroizing::new(read(&settings.key_file, names.key_file)?),
            ca: match &settings.client_ca_file {
                Some(path) => Some(read(path, names.client_ca_file)?),
                None => None,
            },
            crl: match &settings.client_crl_file {
                Some(path) => Some(read(path, names.client_crl_file)?),
                None => None,
            },
        })
    }

    pub(super) fn digest(&self) -> aws_lc_rs::digest::Digest {
        let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for part in [
            Some(self.cert.as_slice()),
            Some(self.key.as_slice()),
            self.ca.as_deref(),
            self.crl.as_deref(),
        ] {
            // Length-prefixed, absent distinct from empty: no two file sets hash alike.
            match part {
                Some(bytes) => {
                    context.update(&[1]);
                    context.update(&(bytes.len() as u64).to_be_bytes());
                    context.update(bytes);
                }
                None => context.update(&[0]),
            }
        }
        context.finish()
    }

    /// The `notAfter` of the first (the server's own) certificate in the chain file.
    pub(super) fn certificate_expiry(&self) -> Option<u64> {
        let first = CertificateDer::pem_slice_iter(&self.cert).next()?.ok()?;
        super::expiry::not_after(&first)
    }

    /// The rustls configuration of these files for a listener of `kind`; with
    /// `enforce_crl_next_update`, a CRL past its `nextUpdate` refuses every client.
    pub(super) fn server_config(
        &self,
        kind: ListenerKind,
        enforce_crl_next_update: bool,
    ) -> Result<rustls::ServerConfig, TlsSetupError> {
        let names = kind.setting_names();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| content(names.cert_file)(e.to_string()))?;
        if chain.is_empty() {
            return Err(content(names.cert_file)(
                "no PEM certificate in the file".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key)
            .map_err(|e| content(names.key_file)(e.to_string()))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| content(names.section)(e.to_string()))?;
        let builder = match &self.ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca) {
                    let cert = cert.map_err(|e| content(names.client_ca_file)(e.to_string()))?;
                    roots
                        .add(cert)
                        .map_err(|e| content(names.client_ca_file)(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(content(names.client_ca_file)(
                        "no PEM certificate in the file".into(),
                    ));
                }
                let crls = match &self.crl {
                    None => Vec::new(),
                    Some(pem) => {
                        let crls = CertificateRevocationListDer::pem_slice_iter(pem)
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| content(names.client_crl_file)(e.to_string()))?;
                        if crls.is_empty() {
                            return Err(content(names.client_crl_file)(
                                "no PEM X509 CRL in the file".into(),
                            ));
                        }
                        crls
                    }
                };
                let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.into(),
                    provider,
                )
                .with_crls(crls);
                if enforce_crl_next_update {
                    verifier = verifier.enforce_revocation_expiration();
                }
                let verifier = verifier
                    .build()
                    .map_err(|e| content(names.client_crl_file)(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| content(names.key_file)(e.to_string()))?;
        config.alpn_protocols = vec![kind.alpn().to_vec()];
        Ok(config)
    }
}
