//! The admin HTTP endpoint (loopback only): liveness, readiness, health and metrics.
//!
//! - `GET /admin/v1/livez`: 200 while the process serves HTTP.
//! - `GET /admin/v1/readyz`: 200 only when the sign chain can sign with the signing key.
//! - `GET /admin/v1/healthz`: JSON with every backend's health, breaker state and capabilities.
//! - `GET /metrics`: Prometheus text format.

use std::future::Future;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::context::CallContext;
use crate::service::Service;

/// Serves the admin routes on `listener` until `shutdown` resolves, then finishes in-flight
/// requests.
pub async fn run(
    listener: tokio::net::TcpListener,
    service: Service,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(service))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves the public routes (`GET /.well-known/jwks.json`) until `shutdown` resolves.
pub async fn run_public<L>(
    listener: L,
    service: Service,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let router = Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .with_state(service);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn jwks(State(service): State<Service>) -> Response {
    let ctx = CallContext::new();
    match service.tokens.jwks(&ctx).await {
        Ok(jwks) => {
            let max_age = service.config.server.jwks_max_age.as_secs();
            (
                [
                    (header::CONTENT_TYPE, "application/jwk-set+json".to_owned()),
                    (header::CACHE_CONTROL, format!("public, max-age={max_age}")),
                ],
                axum::Json(jwks),
            )
                .into_response()
        }
        Err(error) => {
            tracing::warn!(%error, "JWKS unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "JWKS unavailable\n").into_response()
        }
    }
}

/// The admin routes.
pub fn router(service: Service) -> Router {
    Router::new()
        .route("/admin/v1/livez", get(livez))
        .route("/admin/v1/readyz", get(readyz))
        .route("/admin/v1/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(service)
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(service): State<Service>) -> Response {
    let ctx = CallContext::new();
    if let Err(error) = service.store.ping().await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {error}\n"),
        )
            .into_response();
    }
    match service.chain.can_sign(&ctx, &service.signing_key).await {
        Ok(backend) => (StatusCode::OK, format!("ready: {backend} can sign\n")).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

#[derive(Serialize)]
struct BackendReport {
    name: String,
    healthy: bool,
    detail: String,
    breaker: &'static str,
    operations: Vec<&'static str>,
    algorithms: Vec<&'static str>,
}

async fn healthz(State(service): State<Service>) -> Response {
    let mut reports = Vec::new();
    for guarded in service.chain.backends() {
        let health = guarded.backend().health().await;
        let capabilities = guarded.backend().capabilities();
        reports.push(BackendReport {
            name: guarded.name().to_owned(),
            healthy: health.healthy,
            detail: health.detail,
            breaker: guarded.breaker_state().as_str(),
            operations: capabilities.operations.iter().map(|o| o.as_str()).collect(),
            algorithms: capabilities.algorithms.iter().map(|a| a.as_str()).collect(),
        });
    }
    let healthy = reports.iter().any(|r| r.healthy);
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({ "healthy": healthy, "backends": reports })),
    )
        .into_response()
}

async fn metrics(State(service): State<Service>) -> Response {
    // Reading the states moves due breakers from open to half-open, so the gauge is current
    // even when no call has come in.
    let _ = service.chain.breaker_states();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        service.chain.metrics().render(),
    )
        .into_response()
}
