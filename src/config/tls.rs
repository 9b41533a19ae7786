//! `[server.tls]`: TLS, and optionally mTLS, on a gRPC listener (the Token API's and the
//! reference Crypto Service's). The files are read by [`crate::api::listener`], which re-reads
//! them when they change.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

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
    /// PEM certificate revocation lists of that CA: a client certificate listed in them is
    /// refused at the handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_crl_file: Option<PathBuf>,
    /// Refuse every client certificate once a CRL is past its `nextUpdate` (fail closed on
    /// a CRL nobody refreshed). Off by default: a stale CRL then still refuses what it
    /// lists, and the others get in.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enforce_crl_next_update: bool,
    /// How often the files are checked for changes; changed files are read into a new
    /// configuration for new connections (short-lived certificates rotate without a
    /// restart). A change that does not load is logged and the previous files stay in use.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(30)
}

impl ServerTlsConfig {
    /// Checks what can be checked without reading the files; `section` names the table in
    /// messages (`server.tls`, `server.public_tls`).
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        if self.enforce_crl_next_update && self.client_crl_file.is_none() {
            return Err(ConfigError::invalid(
                format!("{section}.enforce_crl_next_update"),
                format!("needs {section}.client_crl_file"),
            ));
        }
        if self.client_crl_file.is_some() && self.client_ca_file.is_none() {
            return Err(ConfigError::invalid(
                format!("{section}.client_crl_file"),
                format!("revocation lists need {section}.client_ca_file (client certificates)"),
            ));
        }
        if self.reload_interval < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                format!("{section}.reload_interval"),
                "expected at least 100ms",
            ));
        }
        Ok(())
    }

    /// Whether callers must present a client certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_ca_file.is_some()
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

/// Checks the caller names of `setting` (`tokens.clients.<id>.callers`,
/// `namespaces.<ns>.callers`): each a SPIFFE ID, DNS name or IP address, and, when there
/// are any, a gRPC listener that asks for client certificates (`tls`), without which no
/// caller could ever be identified and every call would be refused.
pub(super) fn validate_callers(
    setting: String,
    callers: &[String],
    tls: Option<&ServerTlsConfig>,
) -> Result<(), ConfigError> {
    if let Some(bad) = callers
        .iter()
        .find(|name| !crate::caller::is_valid_caller_name(name))
    {
        return Err(ConfigError::invalid(
            setting,
            format!("`{bad}` is not a SPIFFE ID, a DNS name or an IP address (no wildcards)"),
        ));
    }
    if !callers.is_empty() && !tls.is_some_and(ServerTlsConfig::requires_client_certificates) {
        return Err(ConfigError::invalid(
            setting,
            "callers are identified by client certificates: set server.tls with client_ca_file",
        ));
    }
    Ok(())
}
