//! TLS on the gRPC listeners (the Token API and the reference Crypto Service).
//!
//! Done here rather than by tonic's built-in acceptor, which reads its files once and has no
//! handshake deadline by default, so that:
//! - the certificate, key, client CA and revocation lists are re-read when their files
//!   change, and new connections use them: certificates that live for hours rotate without
//!   a restart, and a change that does not load leaves the previous files in use;
//! - a client certificate listed in a CRL is refused at the handshake;
//! - a handshake has a deadline and at most [`MAX_CONCURRENT_HANDSHAKES`] run at once, so
//!   idle or slow connections cannot pile up.
//!
//! Completed connections are handed to tonic, which reads the client's verified
//! certificates from them (`Request::peer_certs`).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::tls::{ServerTlsConfig, TlsFileError};

mod expiry;
mod files;
mod metrics;

use files::Files;
pub use metrics::TlsMetrics;

/// How long a client may take to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; further connections wait in the listen backlog.
pub const MAX_CONCURRENT_HANDSHAKES: usize = 1024;

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
        metrics: TlsMetrics,
    ) -> Result<Arc<Self>, TlsSetupError> {
        let files = Files::read(settings)?;
        let config = Arc::new(files.server_config()?);
        metrics.certificate_expires_at(files.certificate_expiry());
        Ok(Arc::new(Self {
            settings: settings.clone(),
            current: RwLock::new((config, files.digest())),
            metrics,
        }))
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
        let files = Files::read(&self.settings).inspect_err(|_| self.metrics.reload("failed"))?;
        let digest = files.digest();
        let unchanged = |current: &aws_lc_rs::digest::Digest| current.as_ref() == digest.as_ref();
        if unchanged(&self.current.read().unwrap_or_else(|p| p.into_inner()).1) {
            return Ok(Reload::Unchanged);
        }
        let config = match files.server_config() {
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
    async fn watch(self: Arc<Self>) {
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

/// The background tasks of a TLS listener (accepting, and watching the files); stopped when
/// dropped.
#[derive(Debug)]
pub struct ListenerTasks(Vec<JoinHandle<()>>);

impl Drop for ListenerTasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// A stream of connections that completed the handshake, for tonic's
/// `serve_with_incoming_shutdown`.
pub type TlsIncoming = ReceiverStream<std::io::Result<TlsStream<TcpStream>>>;

/// Accepts on `listener` and runs handshakes with the configuration in use at the time,
/// until `stop` turns true: then the listener is closed, so new connections are refused at
/// once (and go to another instance) while tonic finishes the calls in flight. Keep the
/// tasks alive as long as the server runs.
pub fn accept(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (TlsIncoming, ListenerTasks) {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    let accepting = tokio::spawn(accept_loop(listener, tls.clone(), sender, stop));
    let watching = tokio::spawn(tls.watch());
    (
        ReceiverStream::new(receiver),
        ListenerTasks(vec![accepting, watching]),
    )
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    sender: tokio::sync::mpsc::Sender<std::io::Result<TlsStream<TcpStream>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            // Returning drops the listener: the port closes.
            _ = stop.wait_for(|stopped| *stopped) => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, say: back off instead of spinning.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if sender.is_closed() {
            return;
        }
        // Without TCP_NODELAY small responses wait for delayed ACKs (see service.rs).
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let sender = sender.clone();
        let metrics = tls.metrics.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(permit);
            match handshake {
                Ok(Ok(stream)) => {
                    let _ = sender.send(Ok(stream)).await;
                }
                Ok(Err(error)) => metrics.handshake_failed(log_refused_handshake(peer, &error)),
                Err(_) => {
                    metrics.handshake_failed("timeout");
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        });
    }
}

/// A refused client certificate is an audit event; other failed handshakes (a plaintext
/// client, a scanner, a dropped connection) are noise, logged at debug. Returns the reason
/// label for the failure metric.
fn log_refused_handshake(peer: SocketAddr, error: &std::io::Error) -> &'static str {
    let tls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls_error {
        Some(
            reason
            @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented),
        ) => {
            tracing::warn!(
                target: "audit",
                event = "tls_client_refused",
                %peer,
                %reason,
                "client certificate refused at the TLS handshake"
            );
            "client_certificate"
        }
        _ => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            "other"
        }
    }
}

/// Serves `router` on `listener` until `signal`: over TLS, with the files re-read as they
/// change, when `tls` is given; else plaintext.
pub async fn serve(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    tls: Option<Arc<ReloadingTls>>,
    signal: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    match tls {
        Some(tls) => {
            let (stop_accepting, stopped) = tokio::sync::watch::channel(false);
            let (incoming, _tasks) = accept(listener, tls, stopped);
            let signal = async move {
                signal.await;
                let _ = stop_accepting.send(true);
            };
            router.serve_with_incoming_shutdown(incoming, signal).await
        }
        None => {
            // Without TCP_NODELAY, Nagle's algorithm meets the client's delayed ACKs and
            // every small response waits ~40 ms (measured: 44 ms p50, 728 tokens/s).
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            router.serve_with_incoming_shutdown(incoming, signal).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed server certificate and key in `dir`, and settings naming them.
    fn files(dir: &std::path::Path, name: &str) -> ServerTlsConfig {
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
            reload_interval: Duration::from_secs(30),
        }
    }

    fn test_metrics() -> TlsMetrics {
        TlsMetrics::register(&prometheus::Registry::new())
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
        let tls = ReloadingTls::load(&settings, metrics.clone()).unwrap();
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

    #[tokio::test]
    async fn once_stopped_the_listener_closes_and_connections_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tls = ReloadingTls::load(&files(dir.path(), "one.internal"), test_metrics()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (_incoming, tasks) = accept(listener, tls, stopped);
        TcpStream::connect(addr)
            .await
            .expect("accepting while running");
        stop.send(true).unwrap();
        // A connection caught in the backlog as the listener closes is reset; after that,
        // the port is closed.
        let refused = async {
            while TcpStream::connect(addr).await.map_err(|e| e.kind()).err()
                != Some(std::io::ErrorKind::ConnectionRefused)
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), refused)
            .await
            .expect("the port closes after the stop");
        drop(tasks);
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
                setting_of(ReloadingTls::load(&settings, test_metrics()).unwrap_err()),
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
            setting_of(ReloadingTls::load(&mismatched, test_metrics()).unwrap_err()),
            "server.tls.key_file"
        );
    }
}
