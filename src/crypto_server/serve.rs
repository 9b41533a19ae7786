//! Running the reference Crypto Service: listeners, TLS, health, admin endpoint, shutdown.

use std::sync::Arc;

use super::CryptoServer;
use crate::api::crypto_proto::crypto_service_server::CryptoServiceServer;
use crate::api::listener::{ListenerKind, ReloadingTls};
use crate::backends::chain::Chain;

/// Errors starting or running the reference server.
#[derive(Debug, thiserror::Error)]
pub enum CryptoServerError {
    /// The chain could not be assembled.
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
    /// A TLS file could not be read or used.
    #[error("TLS: {0}")]
    Tls(String),
    /// An address could not be bound or served.
    #[error("{addr}: {detail}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        detail: String,
    },
}

/// Serves the reference Crypto Service described by `config` until SIGTERM or SIGINT.
pub async fn serve(config: crate::config::CryptoServerConfig) -> Result<(), CryptoServerError> {
    let metrics = crate::metrics::Metrics::new();
    let routes = crate::service::routes(&config.chain, &config.backends);
    let chain = Arc::new(
        Chain::new(
            crate::service::open_backends(&config.backends, None).await?,
            &routes,
            config.fallback_enabled,
            metrics,
        )
        .map_err(crate::service::ServiceError::from)?,
    );
    let listen = config.server.listen;
    let listener =
        tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| CryptoServerError::Listen {
                addr: listen,
                detail: e.to_string(),
            })?;
    let grpc_addr = listener
        .local_addr()
        .map_err(|e| CryptoServerError::Listen {
            addr: listen,
            detail: e.to_string(),
        })?;
    let admin_listener = tokio::net::TcpListener::bind(config.admin.listen)
        .await
        .map_err(|e| CryptoServerError::Listen {
            addr: config.admin.listen,
            detail: e.to_string(),
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|e| CryptoServerError::Listen {
            addr: config.admin.listen,
            detail: e.to_string(),
        })?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<CryptoServiceServer<CryptoServer>>()
        .await;
    let tls = ReloadingTls::load_configured(
        config.server.tls.as_ref(),
        ListenerKind::Grpc,
        chain.metrics(),
    )
    .map_err(|e| CryptoServerError::Tls(e.to_string()))?;
    let scheme = crate::api::listener::scheme(tls.as_ref());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let signal = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let limits = &config.server.limits;
    let crypto = crate::api::overload::Shed::new(
        CryptoServer::new(chain.clone(), config.server.max_payload)
            .with_namespaces(config.namespaces.clone())
            .into_server(),
        limits.max_in_flight,
        chain.metrics().api(),
    );
    let router = crate::api::overload::server_builder(limits)
        .add_service(health_service)
        .add_service(crypto);
    let grpc = crate::api::listener::serve(router, listener, tls, signal());
    let admin = axum::serve(admin_listener, admin_router(chain))
        .with_graceful_shutdown(signal())
        .into_future();
    tracing::info!(%grpc_addr, "Crypto Service gRPC listening on {scheme}://{grpc_addr}");
    tracing::info!(%admin_addr, "admin endpoint listening on http://{admin_addr}");
    let grace = config.server.shutdown_grace;
    let (deadline_tx, deadline) = tokio::sync::oneshot::channel::<()>();
    let stopper = tokio::spawn(async move {
        crate::service::shutdown_signal().await;
        let _ = stop.send(true);
        tokio::time::sleep(grace).await;
        let _ = deadline_tx.send(());
    });
    let (grpc, admin) = tokio::select! {
        both = async { tokio::join!(grpc, admin) } => both,
        _ = deadline => {
            tracing::warn!("calls still open after the shutdown grace period; dropping them");
            return Ok(());
        }
    };
    stopper.abort();
    grpc.map_err(|e| CryptoServerError::Listen {
        addr: grpc_addr,
        detail: e.to_string(),
    })?;
    admin.map_err(|e| CryptoServerError::Listen {
        addr: admin_addr,
        detail: e.to_string(),
    })?;
    tracing::info!("shut down cleanly");
    Ok(())
}

fn admin_router(chain: Arc<Chain>) -> axum::Router {
    use axum::extract::State;
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;

    async fn readyz(State(chain): State<Arc<Chain>>) -> axum::response::Response {
        let usable = chain
            .backends()
            .iter()
            .any(|g| g.breaker_state() != crate::resilience::BreakerState::Open);
        if usable {
            (StatusCode::OK, "ready\n").into_response()
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: every breaker is open\n",
            )
                .into_response()
        }
    }
    async fn metrics(State(chain): State<Arc<Chain>>) -> axum::response::Response {
        let _ = chain.breaker_states();
        (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            chain.metrics().render(),
        )
            .into_response()
    }
    axum::Router::new()
        .route("/admin/v1/livez", get(|| async { "ok\n" }))
        .route("/admin/v1/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(chain)
}
