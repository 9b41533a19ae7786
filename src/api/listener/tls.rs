//! The TLS configuration of a listener, built from its files and replaced when they change
//! (new connections use the new one; a change that does not load leaves the old one).

use std::sync::{Arc, RwLock};

use tokio_rustls::rustls;

use super::files::Files;
use super::metrics::TlsMetrics;
use crate::config::tls::{ServerTlsConfig, TlsFileError};

/// Why the TLS settings could not be put into use.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A file could not be read.
    #[error(transparent)]
    File(#[from] TlsFileError),
    /// A file was read but its content cannot be used.
    #[error("{setting}: {detail}")]
    Content {
        /// The setting naming the file.
        setting: &'static str,
        /// Why.
        detail: String,
    },
}

/// The TLS configuration in use, replaced when its files change.
pub struct ReloadingTls {
    settings: ServerTlsConfig,
    kind: ListenerKind,
    current: RwLock<(Arc<rustls::ServerConfig>, aws_lc_rs::digest::Digest)>,
    metrics: TlsMetrics,
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("cert_file", &self.settings.cert_file)
            .finish_non_exhaustive()
    }
}

/// The listeners that may speak TLS: where their settings live, the one application
/// protocol each offers in ALPN, and their metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// A gRPC API (`[server.tls]`): HTTP/2 only.
    Grpc,
    /// The public JWKS endpoint (`[server.public_tls]`): HTTP/1.1.
    Public,
}

/// The names of a listener's TLS settings, for error messages.
#[derive(Debug)]
pub(super) struct SettingNames {
    /// The table.
    pub section: &'static str,
    /// Its `cert_file`.
    pub cert_file: &'static str,
    /// Its `key_file`.
    pub key_file: &'static str,
    /// Its `client_ca_file`.
    pub client_ca_file: &'static str,
    /// Its `client_crl_file`.
    pub client_crl_file: &'static str,
}

impl ListenerKind {
    pub(super) fn alpn(self) -> &'static [u8] {
        match self {
            ListenerKind::Grpc => b"h2",
            ListenerKind::Public => b"http/1.1",
        }
    }

    /// The `listener` label of its metrics.
    pub fn label(self) -> &'static str {
        match self {
            ListenerKind::Grpc => "grpc",
            ListenerKind::Public => "public",
        }
    }

    /// The names of its settings.
    pub(super) fn setting_names(self) -> &'static SettingNames {
        match self {
            ListenerKind::Grpc => &SettingNames {
                section: "server.tls",
                cert_file: "server.tls.cert_file",
                key_file: "server.tls.key_file",
                client_ca_file: "server.tls.client_ca_file",
                client_crl_file: "server.tls.client_crl_file",
            },
            ListenerKind::Public => &SettingNames {
                section: "server.public_tls",
                cert_file: "server.public_tls.cert_file",
                key_file: "server.public_tls.key_file",
                client_ca_file: "server.public_tls.client_ca_file",
                client_crl_file: "server.public_tls.client_crl_file",
            },
        }
    }
}

/// What a reload found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The files are the ones in use.
    Unchanged,
    /// The files changed and are now in use for new connections.
    Reloaded,
}

impl ReloadingTls {
    /// Reads and checks the files named by `settings`.
    pub fn load(
        settings: &ServerTlsConfig,
        kind: ListenerKind,
        metrics: TlsMetrics,
    ) -> Result<Arc<Self>, TlsSetupError> {
        let files = Files::read(settings, kind)?;
        let config = Arc::new(files.server_config(kind, settings.enforce_crl_next_update)?);
        metrics.certificate_expires_at(files.certificate_expiry());
        Ok(Arc::new(Self {
            settings: settings.clone(),
            kind,
            current: RwLock::new((config, files.digest())),
            metrics,
        }))
    }

    /// Reads and checks the files named by `settings` as [`ReloadingTls::load`] does, without
    /// serving: the `notAfter` of the certificate (for `doctor`).
    pub fn check(
        settings: &ServerTlsConfig,
        kind: ListenerKind,
    ) -> Result<Option<u64>, TlsSetupError> {
        let files = Files::read(settings, kind)?;
        files.server_config(kind, settings.enforce_crl_next_update)?;
        Ok(files.certificate_expiry())
    }

    /// As [`ReloadingTls::load`] for a listener whose TLS table may be absent (plaintext),
    /// with its metrics from `metrics` under the listener's label.
    pub fn load_configured(
        settings: Option<&ServerTlsConfig>,
        kind: ListenerKind,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Option<Arc<Self>>, TlsSetupError> {
        settings
            .map(|settings| Self::load(settings, kind, metrics.tls(kind.label())))
            .transpose()
    }

    /// The listener's metrics.
    pub(super) fn metrics(&self) -> &TlsMetrics {
        &self.metrics
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Reads the files; if they changed and load, new connections use them. On an error
    /// the configuration in use stays. Blocking file reads: call off the async workers.
    pub fn reload_if_changed(&self) -> Result<Reload, TlsSetupError> {
        let files = Files::read(&self.settings, self.kind)
            .inspect_err(|_| self.metrics.reload("failed"))?;
        let digest = files.digest();
        let unchanged = |current: &aws_lc_rs::digest::Digest| current.as_ref() == digest.as_ref();
        if unchanged(&self.current.read().unwrap_or_else(|p| p.into_inner()).1) {
            return Ok(Reload::Unchanged);
        }
        let config = match files.server_config(self.kind, self.settings.enforce_crl_next_update) {
            Ok(config) => Arc::new(config),
            Err(error) => {
                self.metrics.reload("failed");
                return Err(error);
            }
        };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (config, digest);
        self.metrics
            .certificate_expires_at(files.certificate_expiry());
        self.metrics.reload("reloaded");
        Ok(Reload::Reloaded)
    }

    /// Checks the files every `reload_interval`, logging each change and each distinct
    /// failure once.
    pub(super) async fn watch(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.settings.reload_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        ticker.tick().await;
        let mut last_failure: Option<String> = None;
        loop {
            ticker.tick().await;
            let this = self.clone();
            let Ok(outcome) = tokio::task::spawn_blocking(move || this.reload_if_changed()).await
            else {
                continue;
            };
            match outcome {
                Ok(Reload::Reloaded) => {
                    last_failure = None;
                    tracing::info!(
                        cert_file = %self.settings.cert_file.display(),
                        "TLS files changed: reloaded; new connections use them"
                    );
                }
                Ok(Reload::Unchanged) => last_failure = None,
                Err(error) => {
                    let text = error.to_string();
                    if last_failure.as_ref() != Some(&text) {
                        tracing::error!(%error, "TLS files changed but cannot be used; the previous ones stay in use");
                        last_failure = Some(text);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use super::*;

    /// A self-signed server certificate and key in `dir`, and settings naming them.
    pub(in crate::api::listener) fn files(dir: &std::path::Path, name: &str) -> ServerTlsConfig {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        ServerTlsConfig {
            cert_file: dir.join("server.pem"),
            key_file: dir.join("server.key"),
            client_ca_file: None,
            client_crl_file: None,
            enforce_crl_next_update: false,
            reload_interval: Duration::from_secs(30),
        }
    }

    pub(in crate::api::listener) fn test_metrics() -> TlsMetrics {
        crate::metrics::Metrics::new().tls("grpc")
    }

    fn setting_of(error: TlsSetupError) -> &'static str {
        match error {
            TlsSetupError::File(e) => e.setting,
            TlsSetupError::Content { setting, .. } => setting,
        }
    }

    #[test]
    fn a_reload_swaps_the_configuration_only_when_the_files_changed_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let settings = files(dir.path(), "one.internal");
        let metrics = test_metrics();
        let tls = ReloadingTls::load(&settings, ListenerKind::Grpc, metrics.clone()).unwrap();
        let first = tls.current();
        assert!(
            metrics.certificate_expiry() > 1_700_000_000,
            "notAfter exported"
        );
        assert_eq!(first.alpn_protocols, vec![b"h2".to_vec()]);
        assert_eq!(tls.reload_if_changed().unwrap(), Reload::Unchanged);
        assert!(Arc::ptr_eq(&first, &tls.current()));

        std::fs::write(&settings.cert_file, "not a certificate").unwrap();
        assert_eq!(
            setting_of(tls.reload_if_changed().unwrap_err()),
            "server.tls.cert_file"
        );
        assert!(Arc::ptr_eq(&first, &tls.current()), "the old one stays");
        assert_eq!(metrics.reload_count("failed"), 1);

        files(dir.path(), "two.internal");
        assert_eq!(tls.reload_if_changed().unwrap(), Reload::Reloaded);
        assert!(!Arc::ptr_eq(&first, &tls.current()));
        assert_eq!(metrics.reload_count("reloaded"), 1);
    }

    #[test]
    fn unusable_files_name_their_setting() {
        let dir = tempfile::tempdir().unwrap();
        let good = files(dir.path(), "one.internal");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let cases = [
            (
                ServerTlsConfig {
                    key_file: dir.path().join("missing.key"),
                    ..good.clone()
                },
                "server.tls.key_file",
            ),
            (
                ServerTlsConfig {
                    cert_file: empty.clone(),
                    ..good.clone()
                },
                "server.tls.cert_file",
            ),
            (
                ServerTlsConfig {
                    client_ca_file: Some(empty.clone()),
                    ..good.clone()
                },
                "server.tls.client_ca_file",
            ),
            (
                ServerTlsConfig {
                    client_ca_file: Some(dir.path().join("ca.pem")),
                    client_crl_file: Some(empty),
                    ..good.clone()
                },
                "server.tls.client_crl_file",
            ),
        ];
        for (settings, setting) in cases {
            assert_eq!(
                setting_of(
                    ReloadingTls::load(&settings, ListenerKind::Grpc, test_metrics()).unwrap_err()
                ),
                setting
            );
        }
        // The key of another certificate.
        let other = tempfile::tempdir().unwrap();
        let other = files(other.path(), "two.internal");
        let mismatched = ServerTlsConfig {
            key_file: other.key_file,
            ..good
        };
        assert_eq!(
            setting_of(
                ReloadingTls::load(&mismatched, ListenerKind::Grpc, test_metrics()).unwrap_err()
            ),
            "server.tls.key_file"
        );
    }
}
