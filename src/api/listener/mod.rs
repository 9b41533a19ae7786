//! The listeners of the gRPC APIs (the Token API and the reference Crypto Service) and of
//! the public JWKS endpoint ([`HttpsListener`]): plaintext, or TLS.
//!
//! They accept in a loop of their own rather than tonic's, so that at shutdown the port
//! closes at once: new connections are refused (and go to another instance) while tonic
//! finishes the calls in flight.
//!
//! TLS is done here rather than by tonic's built-in acceptor, which reads its files once and
//! has no handshake deadline by default, so that:
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
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

mod expiry;
mod files;
mod https;
mod metrics;
mod tls;

pub use https::HttpsListener;
pub use metrics::{TlsMetricFamilies, TlsMetrics};
pub use tls::{ListenerKind, Reload, ReloadingTls, TlsSetupError};

/// How long a client may take to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; further connections wait in the listen backlog.
pub const MAX_CONCURRENT_HANDSHAKES: usize = 1024;

/// The bounds on handshakes: [`HANDSHAKE_TIMEOUT`] and [`MAX_CONCURRENT_HANDSHAKES`] when
/// serving; smaller in tests.
#[derive(Clone, Copy, Debug)]
struct HandshakeLimits {
    timeout: Duration,
    concurrent: usize,
}

const SERVING_LIMITS: HandshakeLimits = HandshakeLimits {
    timeout: HANDSHAKE_TIMEOUT,
    concurrent: MAX_CONCURRENT_HANDSHAKES,
};

/// The background tasks of a listener (accepting, and for TLS watching the files); stopped
/// when dropped.
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

/// The next connection on `listener`, with TCP_NODELAY set; None once `stop` turns true
/// (the caller then drops the listener, which closes the port).
async fn next_connection(
    listener: &TcpListener,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                // Without TCP_NODELAY, Nagle's algorithm meets the client's delayed ACKs and
                // every small response waits ~40 ms (measured: 44 ms p50, 728 tokens/s).
                let _ = tcp.set_nodelay(true);
                return Some((tcp, peer));
            }
            Err(error) => {
                // Out of file descriptors, say: back off instead of spinning.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A stream of plaintext connections, for tonic's `serve_with_incoming_shutdown`.
pub type PlainIncoming = ReceiverStream<std::io::Result<TcpStream>>;

/// Accepts plaintext connections on `listener` until `stop` turns true: then the listener
/// is closed, so new connections are refused at once (and go to another instance) while
/// tonic finishes the calls in flight. Keep the tasks alive as long as the server runs.
pub fn accept_plain(
    listener: TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (PlainIncoming, ListenerTasks) {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    let accepting = tokio::spawn(async move {
        while let Some((tcp, _)) = next_connection(&listener, &mut stop).await {
            if sender.send(Ok(tcp)).await.is_err() {
                return;
            }
        }
    });
    (
        ReceiverStream::new(receiver),
        ListenerTasks(vec![accepting]),
    )
}

/// As [`accept_plain`], with a TLS handshake on each connection, using the configuration in
/// use at the time.
pub fn accept(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (TlsIncoming, ListenerTasks) {
    accept_within(listener, tls, stop, SERVING_LIMITS)
}

fn accept_within(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    stop: tokio::sync::watch::Receiver<bool>,
    limits: HandshakeLimits,
) -> (TlsIncoming, ListenerTasks) {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    let accepting = tokio::spawn(accept_loop(listener, tls.clone(), sender, stop, limits));
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
    limits: HandshakeLimits,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(limits.concurrent));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let Some((tcp, peer)) = next_connection(&listener, &mut stop).await else {
            return;
        };
        if sender.is_closed() {
            return;
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let sender = sender.clone();
        let metrics = tls.metrics().clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(limits.timeout, acceptor.accept(tcp)).await;
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

/// The URL scheme of a listener with or without TLS, for its start-up log line.
pub fn scheme(tls: Option<&Arc<ReloadingTls>>) -> &'static str {
    if tls.is_some() { "https" } else { "http" }
}

/// Serves `router` on `listener` until `signal`: over TLS, with the files re-read as they
/// change, when `tls` is given; else plaintext. At the signal the port closes and the calls
/// in flight finish.
pub async fn serve(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    tls: Option<Arc<ReloadingTls>>,
    signal: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (stop_accepting, stopped) = tokio::sync::watch::channel(false);
    let signal = async move {
        signal.await;
        let _ = stop_accepting.send(true);
    };
    match tls {
        Some(tls) => {
            let (incoming, _tasks) = accept(listener, tls, stopped);
            router.serve_with_incoming_shutdown(incoming, signal).await
        }
        None => {
            let (incoming, _tasks) = accept_plain(listener, stopped);
            router.serve_with_incoming_shutdown(incoming, signal).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tls::tests::{files, test_metrics};
    use super::*;

    /// Connects until the port refuses (a connection caught in the backlog as the listener
    /// closes is reset first); panics if it stays open.
    async fn wait_until_refused(addr: SocketAddr) {
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
    }

    /// A TLS client of `addr` trusting the self-signed certificate in `dir` (named
    /// `one.internal`): the time its handshake took, or why it failed.
    async fn handshake(addr: SocketAddr, dir: &std::path::Path) -> Result<Duration, String> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let started = std::time::Instant::now();
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("one.internal".try_into().unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        Ok(started.elapsed())
    }

    #[tokio::test]
    async fn a_stalled_handshake_is_cut_off_and_holds_a_slot_until_then() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let metrics = test_metrics();
        let tls = ReloadingTls::load(
            &files(dir.path(), "one.internal"),
            ListenerKind::Grpc,
            metrics.clone(),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let limits = HandshakeLimits {
            timeout: Duration::from_millis(300),
            concurrent: 1,
        };
        let (_incoming, _tasks) = accept_within(listener, tls, stopped, limits);

        // A client that connects and says nothing takes the one slot...
        let mut silent = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // ...so a real client's handshake waits for it to be cut off.
        let waited = tokio::time::timeout(Duration::from_secs(5), handshake(addr, dir.path()))
            .await
            .expect("the stalled handshake is cut off, freeing the slot")
            .unwrap();
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        // The silent one was closed by the server at its deadline.
        let mut buffer = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buffer))
            .await
            .expect("closed by the server");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert_eq!(metrics.handshake_failure_count("timeout"), 1);
    }

    #[tokio::test]
    async fn once_stopped_the_listener_closes_and_connections_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tls = ReloadingTls::load(
            &files(dir.path(), "one.internal"),
            ListenerKind::Grpc,
            test_metrics(),
        )
        .unwrap();
        for tls in [Some(tls), None] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let tasks = match tls {
                Some(tls) => accept(listener, tls, stopped).1,
                None => accept_plain(listener, stopped).1,
            };
            TcpStream::connect(addr)
                .await
                .expect("accepting while running");
            stop.send(true).unwrap();
            wait_until_refused(addr).await;
            drop(tasks);
        }
    }
}
