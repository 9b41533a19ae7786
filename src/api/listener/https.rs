//! The public JWKS endpoint over TLS: an axum listener yielding connections that completed
//! the handshake (HTTP/1.1 in ALPN), with the gRPC listener's reloading files, handshake
//! deadline and port closing at shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt;

use super::{ListenerTasks, ReloadingTls, TlsIncoming};

/// A TLS listener for `axum::serve`.
#[derive(Debug)]
pub struct HttpsListener {
    incoming: TlsIncoming,
    local: SocketAddr,
    _tasks: ListenerTasks,
}

impl HttpsListener {
    /// Accepts on `listener` until `stop` turns true.
    pub fn new(
        listener: TcpListener,
        tls: Arc<ReloadingTls>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (incoming, tasks) = super::accept(listener, tls, stop);
        Ok(Self {
            incoming,
            local,
            _tasks: tasks,
        })
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(stream)) => {
                    let peer = stream.get_ref().0.peer_addr().unwrap_or(self.local);
                    return (stream, peer);
                }
                Some(Err(_)) => continue,
                // Stopped: axum's graceful shutdown ends the serving loop meanwhile.
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
