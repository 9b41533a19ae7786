//! Request metrics of the Token API, by method and gRPC status code: the rate, errors and
//! duration an SRE alerts on (`token_service_grpc_requests_total{method,code}`,
//! `token_service_grpc_request_duration_seconds{method}`).
//!
//! Written here rather than taken from a crate: the method label must stay bounded when a
//! client sends any path it likes (unknown paths count as `unknown`), the families live in
//! the instance's own registry (tests run several servers in one process), and the status
//! of a successful call is only known from its trailers, after the body.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
};
use tonic::Code;
use tonic::body::Body;
use tonic::server::NamedService;

/// The Token API's methods, as they appear in request paths (`/<service>/<method>`).
pub const METHODS: [&str; 6] = [
    "GenerateTokens",
    "RefreshTokens",
    "RevokeToken",
    "GetJWKS",
    "IntrospectToken",
    "ValidateDPoP",
];

/// The label of a path that names no method of the API.
const UNKNOWN_METHOD: &str = "unknown";

/// Every gRPC status code, in numeric order (the index is the code).
const CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

/// The `code` label: the canonical name, as gRPC's own tools print it.
fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The handles of one method, resolved once so a call does no label lookups.
#[derive(Debug)]
struct MethodMetrics {
    duration: Histogram,
    calls: [IntCounter; 17],
}

/// The metric families, registered once per registry (see [`crate::metrics::Metrics::api`]).
#[derive(Clone, Debug)]
pub struct ApiMetricFamilies {
    calls: IntCounterVec,
    overloaded: IntCounter,
    in_flight: IntGauge,
    in_flight_limit: IntGauge,
    duration: HistogramVec,
    /// Per method in [`METHODS`] order, then the unknown method.
    methods: Arc<[MethodMetrics]>,
}

impl ApiMetricFamilies {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &prometheus::Registry, buckets: &[f64]) -> Self {
        let calls = IntCounterVec::new(
            Opts::new(
                "token_service_grpc_requests_total",
                "Token API calls finished, by method and gRPC status code (CANCELLED: the caller went away first)",
            ),
            &["method", "code"],
        )
        .expect("static metric definition");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "token_service_grpc_request_duration_seconds",
                "Token API call duration, from the request to the end of the response",
            )
            .buckets(buckets.to_vec()),
            &["method"],
        )
        .expect("static metric definition");
        let overloaded = IntCounter::new(
            "token_service_grpc_overloaded_total",
            "Token API calls refused at once because server.limits.max_in_flight calls were in flight",
        )
        .expect("static metric definition");
        let in_flight = IntGauge::new(
            "token_service_grpc_in_flight",
            "Token API calls being served now (at most server.limits.max_in_flight)",
        )
        .expect("static metric definition");
        // The limit beside the gauge, so an alert can warn before calls are refused.
        let in_flight_limit = IntGauge::new(
            "token_service_grpc_in_flight_limit",
            "server.limits.max_in_flight: the most Token API calls served at once",
        )
        .expect("static metric definition");
        for collector in [
            Box::new(calls.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(overloaded.clone()),
            Box::new(in_flight.clone()),
            Box::new(in_flight_limit.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique within a fresh registry");
        }
        let methods = METHODS
            .iter()
            .chain(std::iter::once(&UNKNOWN_METHOD))
            .map(|method| MethodMetrics {
                duration: duration.with_label_values(&[*method]),
                calls: CODES.map(|code| calls.with_label_values(&[*method, code_label(code)])),
            })
            .collect();
        Self {
            calls,
            overloaded,
            in_flight,
            in_flight_limit,
            duration,
            methods,
        }
    }

    /// The counter of calls refused by the in-flight limit (see [`super::overload`]).
    pub fn overloaded(&self) -> &IntCounter {
        &self.overloaded
    }

    /// The gauge of calls admitted and not yet answered (see [`super::overload`]).
    pub fn in_flight(&self) -> &IntGauge {
        &self.in_flight
    }

    /// The gauge of the in-flight limit (see [`super::overload`]).
    pub fn in_flight_limit(&self) -> &IntGauge {
        &self.in_flight_limit
    }

    /// Calls of `method` that ended with `code` (for tests and `doctor`).
    pub fn call_count(&self, method: &str, code: Code) -> u64 {
        self.calls
            .with_label_values(&[method, code_label(code)])
            .get()
    }

    /// Calls of `method` whose duration was observed.
    pub fn duration_count(&self, method: &str) -> u64 {
        self.duration
            .with_label_values(&[method])
            .get_sample_count()
    }

    /// The index into `methods` of a request path of `service`.
    fn method_index(service: &str, path: &str) -> usize {
        path.strip_prefix('/')
            .and_then(|p| p.strip_prefix(service))
            .and_then(|p| p.strip_prefix('/'))
            .and_then(|method| METHODS.iter().position(|m| *m == method))
            .unwrap_or(METHODS.len())
    }
}

/// A gRPC service whose calls are counted and timed.
#[derive(Clone, Debug)]
pub struct Metered<S> {
    inner: S,
    methods: Arc<[MethodMetrics]>,
}

impl<S> Metered<S> {
    /// `inner`, counted in `families`.
    pub fn new(inner: S, families: &ApiMetricFamilies) -> Self {
        Self {
            inner,
            methods: families.methods.clone(),
        }
    }
}

impl<S: NamedService> NamedService for Metered<S> {
    const NAME: &'static str = S::NAME;
}

/// One call being measured: recorded exactly once, when its status is known or when it is
/// dropped unfinished.
struct Call {
    methods: Arc<[MethodMetrics]>,
    method: usize,
    started: Instant,
    recorded: bool,
}

impl Call {
    fn record(&mut self, code: Code) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let metrics = &self.methods[self.method];
        metrics
            .duration
            .observe(self.started.elapsed().as_secs_f64());
        metrics.calls[code as usize].inc();
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // The response was dropped before its trailers: the caller reset the stream.
        self.record(Code::Cancelled);
    }
}

/// The status a header map carries, if any (`grpc-status`).
fn status_in(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from(value.parse::<i32>().ok()?))
}

impl<S> tower_service::Service<http::Request<Body>> for Metered<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>> + NamedService,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = super::ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let mut call = Call {
            methods: self.methods.clone(),
            method: ApiMetricFamilies::method_index(S::NAME, request.uri().path()),
            started: Instant::now(),
            recorded: false,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            // An error is sent as a response of headers alone; a success's status comes
            // in the trailers after the body.
            if let Some(code) = status_in(response.headers()) {
                call.record(code);
                return Ok(response);
            }
            Ok(response.map(|body| Body::new(MeteredBody { inner: body, call })))
        })
    }
}

/// A response body that records its call when the trailers (the status) go by.
struct MeteredBody {
    inner: Body,
    call: Call,
}

impl http_body::Body for MeteredBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    self.call
                        .record(status_in(trailers).unwrap_or(Code::Unknown));
                }
            }
            Poll::Ready(Some(Err(status))) => self.call.record(status.code()),
            // A gRPC response always ends with trailers; one that does not is unknown.
            Poll::Ready(None) => self.call.record(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_names_a_method_of_the_service_or_is_unknown() {
        let service = "token.v1.TokenService";
        let index = |path| ApiMetricFamilies::method_index(service, path);
        assert_eq!(index("/token.v1.TokenService/GenerateTokens"), 0);
        assert_eq!(index("/token.v1.TokenService/ValidateDPoP"), 5);
        for path in [
            "/token.v1.TokenService/Nope",
            "/token.v1.TokenService/GenerateTokens/x",
            "/other.Service/GenerateTokens",
            "/token.v1.TokenServiceX/GenerateTokens",
            "",
            "/",
        ] {
            assert_eq!(index(path), METHODS.len(), "{path}");
        }
    }

    #[test]
    fn the_methods_are_those_of_the_proto() {
        let proto = include_str!("../../proto/token_service.proto");
        let declared: Vec<&str> = proto
            .lines()
            .filter_map(|line| line.trim().strip_prefix("rpc "))
            .filter_map(|rest| rest.split('(').next())
            .map(str::trim)
            .collect();
        assert_eq!(declared, METHODS);
    }

    /// A service answering every call with `headers`, then a body of `frames`: a message
    /// for `None`, trailers with the status for `Some`.
    #[derive(Clone)]
    struct Answer {
        headers: http::HeaderMap,
        frames: Vec<Option<Code>>,
    }

    impl NamedService for Answer {
        const NAME: &'static str = "token.v1.TokenService";
    }

    struct Frames(std::collections::VecDeque<http_body::Frame<bytes::Bytes>>);

    impl http_body::Body for Frames {
        type Data = bytes::Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    impl tower_service::Service<http::Request<Body>> for Answer {
        type Response = http::Response<Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            let frames = self.frames.iter().map(|frame| match frame {
                None => http_body::Frame::data(bytes::Bytes::from_static(b"message")),
                Some(code) => trailers(*code),
            });
            let mut response = http::Response::new(Body::new(Frames(frames.collect())));
            *response.headers_mut() = self.headers.clone();
            std::future::ready(Ok(response))
        }
    }

    fn trailers(code: Code) -> http_body::Frame<bytes::Bytes> {
        let mut map = http::HeaderMap::new();
        map.insert("grpc-status", (code as i32).to_string().parse().unwrap());
        http_body::Frame::trailers(map)
    }

    /// Calls GenerateTokens on `answer` and reads `frames_read` frames of the response body
    /// before dropping it.
    async fn call(answer: Answer, frames_read: usize) -> ApiMetricFamilies {
        use http_body::Body as _;
        use tower_service::Service;
        let families = ApiMetricFamilies::register(&prometheus::Registry::new(), &[1.0]);
        let mut metered = Metered::new(answer, &families);
        let request = http::Request::builder()
            .uri("/token.v1.TokenService/GenerateTokens")
            .body(Body::empty())
            .unwrap();
        let mut body = metered.call(request).await.unwrap().into_body();
        for _ in 0..frames_read {
            std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        }
        families
    }

    #[tokio::test]
    async fn a_call_is_recorded_once_with_the_status_it_ended_with() {
        let ok = Answer {
            headers: http::HeaderMap::new(),
            frames: vec![None, Some(Code::Ok)],
        };
        let read_all = call(ok.clone(), 3).await;
        assert_eq!(read_all.call_count("GenerateTokens", Code::Ok), 1);
        assert_eq!(read_all.call_count("GenerateTokens", Code::Cancelled), 0);
        assert_eq!(read_all.duration_count("GenerateTokens"), 1);

        // The caller went away after the message, before the trailers.
        let cut = call(ok, 1).await;
        assert_eq!(cut.call_count("GenerateTokens", Code::Ok), 0);
        assert_eq!(cut.call_count("GenerateTokens", Code::Cancelled), 1);

        // An error: the status in the headers, no body.
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", "14".parse().unwrap());
        let error = Answer {
            headers,
            frames: Vec::new(),
        };
        let failed = call(error, 0).await;
        assert_eq!(failed.call_count("GenerateTokens", Code::Unavailable), 1);
        assert_eq!(failed.call_count("GenerateTokens", Code::Cancelled), 0);
        assert_eq!(failed.duration_count("GenerateTokens"), 1);

        // A body that ends without trailers did not finish as gRPC.
        let truncated = Answer {
            headers: http::HeaderMap::new(),
            frames: vec![None],
        };
        let ended = call(truncated, 2).await;
        assert_eq!(ended.call_count("GenerateTokens", Code::Unknown), 1);
        assert_eq!(ended.duration_count("GenerateTokens"), 1);
    }

    #[test]
    fn every_code_is_at_its_own_index() {
        for (index, code) in CODES.iter().enumerate() {
            assert_eq!(*code as usize, index);
        }
    }
}
