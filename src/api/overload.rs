//! Load shedding for the Token API: at most `server.limits.max_in_flight` calls are served
//! at once; a call beyond that is refused at once with UNAVAILABLE instead of waiting.
//! Queueing would make every admitted call late too, and a client told "unavailable" can
//! retry on another instance straight away. Counted in `token_service_grpc_overloaded_total`.

use std::sync::Arc;
use std::task::{Context, Poll};

use prometheus::{IntCounter, IntGauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::server::NamedService;

use super::metrics::ApiMetricFamilies;

/// A tonic server with the HTTP/2 settings of `limits`: the streams a connection may
/// open, keepalive PINGs, and the connection age after which it is sent away.
pub fn server_builder(limits: &crate::config::limits::ServerLimits) -> tonic::transport::Server {
    let builder = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout));
    match limits.max_connection_age {
        Some(age) => builder
            .max_connection_age(age)
            .max_connection_age_grace(limits.max_connection_age_grace),
        None => builder,
    }
}

/// The message of a refused call.
pub const OVERLOADED: &str =
    "server overloaded: too many calls in flight; retry, preferably on another instance";

/// A gRPC service serving at most a fixed number of calls at once.
#[derive(Clone, Debug)]
pub struct Shed<S> {
    inner: S,
    permits: Arc<Semaphore>,
    refused: IntCounter,
    in_flight: IntGauge,
}

impl<S> Shed<S> {
    /// `inner`, serving at most `max_in_flight` calls at once; the limit, the calls in
    /// flight and the refusals are shown in `metrics` (`token_service_grpc_in_flight_limit`,
    /// `token_service_grpc_in_flight`, `token_service_grpc_overloaded_total`).
    pub fn new(inner: S, max_in_flight: usize, metrics: &ApiMetricFamilies) -> Self {
        let max_in_flight = max_in_flight.min(Semaphore::MAX_PERMITS);
        metrics
            .in_flight_limit()
            .set(i64::try_from(max_in_flight).unwrap_or(i64::MAX));
        Self {
            inner,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            refused: metrics.overloaded().clone(),
            in_flight: metrics.in_flight().clone(),
        }
    }
}

/// An admitted call: its slot, given back (and the gauge lowered) when the call ends.
struct Admitted {
    _permit: OwnedSemaphorePermit,
    in_flight: IntGauge,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

impl<S: NamedService> NamedService for Shed<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower_service::Service<http::Request<Body>> for Shed<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = super::ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.refused.inc();
            return Box::pin(std::future::ready(Ok(tonic::Status::unavailable(
                OVERLOADED,
            )
            .into_http())));
        };
        self.in_flight.inc();
        let admitted = Admitted {
            _permit: permit,
            in_flight: self.in_flight.clone(),
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(admitted);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_service::Service;

    /// A service whose calls finish only once the gate is open.
    #[derive(Clone)]
    struct Held {
        gate: tokio::sync::watch::Receiver<bool>,
    }

    impl tower_service::Service<http::Request<Body>> for Held {
        type Response = http::Response<Body>;
        type Error = std::convert::Infallible;
        type Future = crate::api::ResponseFuture<Self::Error>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            let mut gate = self.gate.clone();
            Box::pin(async move {
                let _ = gate.wait_for(|open| *open).await;
                Ok(http::Response::new(Body::empty()))
            })
        }
    }

    fn status_of(response: &http::Response<Body>) -> Option<&str> {
        response.headers().get("grpc-status")?.to_str().ok()
    }

    #[tokio::test]
    async fn calls_beyond_the_limit_are_refused_at_once_and_admitted_again_after() {
        let (open, gate) = tokio::sync::watch::channel(false);
        let metrics = ApiMetricFamilies::register(&prometheus::Registry::new(), &[1.0]);
        let refused = metrics.overloaded().clone();
        let in_flight = metrics.in_flight().clone();
        let mut shed = Shed::new(Held { gate }, 2, &metrics);
        let request = || http::Request::new(Body::empty());
        let first = tokio::spawn(shed.call(request()));
        let second = tokio::spawn(shed.call(request()));
        assert_eq!(in_flight.get(), 2);
        let third = shed.call(request()).await.unwrap();
        assert_eq!(status_of(&third), Some("14"), "UNAVAILABLE");
        assert_eq!(refused.get(), 1);
        assert_eq!(in_flight.get(), 2, "a refused call is not in flight");
        open.send(true).unwrap();
        // Both held calls finish, with their permits returned.
        for held in [first, second] {
            let response = held.await.unwrap().unwrap();
            assert_eq!(status_of(&response), None);
        }
        assert_eq!(in_flight.get(), 0);
        for _ in 0..2 {
            let next = shed.call(request()).await.unwrap();
            assert_eq!(status_of(&next), None);
        }
        assert_eq!(refused.get(), 1);
    }
}
