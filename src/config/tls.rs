//! `[server.tls]`: TLS, and optionally mTLS, on a gRPC listener (the Token API's and the
//! reference Crypto Service's).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[server.tls]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// PEM CA whose certificates clients must present (mTLS). Without it any client that
    /// reaches the port may call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
}

impl ServerTlsConfig {
    /// Reads the files into tonic's server TLS settings. A client certificate is required
    /// when `client_ca_file` is set. The key's bytes are zeroized once handed over.
    pub fn load(&self) -> Result<tonic::transport::ServerTlsConfig, TlsFileError> {
        let read = |path: &PathBuf, setting: &'static str| {
            std::fs::read(path).map_err(|source| TlsFileError {
                setting,
                path: path.display().to_string(),
                source,
            })
        };
        let key = zeroize::Zeroizing::new(read(&self.key_file, "server.tls.key_file")?);
        let identity = tonic::transport::Identity::from_pem(
            read(&self.cert_file, "server.tls.cert_file")?,
            &*key,
        );
        let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca_file {
            config = config
                .client_ca_root(tonic::transport::Certificate::from_pem(read(
                    ca,
                    "server.tls.client_ca_file",
                )?))
                .client_auth_optional(false);
        }
        Ok(config)
    }
}

/// A TLS file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{setting} `{path}`: {source}")]
pub struct TlsFileError {
    /// The setting naming the file.
    pub setting: &'static str,
    /// The file.
    pub path: String,
    /// Why.
    pub source: std::io::Error,
}
