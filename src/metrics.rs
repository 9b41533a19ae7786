//! Prometheus metrics of the framework. Each [`Metrics`] owns its own registry (no global
//! state), so several chains — and tests — can coexist in one process.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::backends::types::Operation;

/// How one attempt on one backend ended, as the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Success.
    Ok,
    /// The backend was unavailable (including timeouts).
    Unavailable,
    /// The request was rejected.
    Rejected,
    /// A signature or ciphertext did not verify.
    VerificationFailed,
    /// A security check failed.
    Security,
    /// Refused by the open circuit breaker, without a call.
    BreakerOpen,
    /// Refused by the rate limit, without a call.
    RateLimited,
    /// Refused by the concurrency limit, without a call.
    ConcurrencyLimited,
}

impl Outcome {
    const ALL: [Outcome; 8] = [
        Outcome::Ok,
        Outcome::Unavailable,
        Outcome::Rejected,
        Outcome::VerificationFailed,
        Outcome::Security,
        Outcome::BreakerOpen,
        Outcome::RateLimited,
        Outcome::ConcurrencyLimited,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Unavailable => "unavailable",
            Outcome::Rejected => "rejected",
            Outcome::VerificationFailed => "verification_failed",
            Outcome::Security => "security",
            Outcome::BreakerOpen => "breaker_open",
            Outcome::RateLimited => "rate_limited",
            Outcome::ConcurrencyLimited => "concurrency_limited",
        }
    }
}

/// The registry and every metric family of the framework.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    fallbacks: IntCounterVec,
    breaker_state: IntGaugeVec,
    retries: IntCounterVec,
    security_events: IntCounterVec,
    dpop: IntCounterVec,
    cpu_seconds: prometheus::Gauge,
    tls: crate::api::listener::TlsMetricFamilies,
    api: crate::api::metrics::ApiMetricFamilies,
    store: crate::token::store::metered::StoreMetricFamilies,
    tokens: crate::token::events::TokenEventFamilies,
}

/// CPU time (user + system) of this process in seconds, from `/proc/self/stat`, with the
/// 10 ms resolution of the kernel's clock ticks (USER_HZ is 100 on Linux).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Latency buckets in seconds: from a local ECDSA signature (~20 µs) to a slow remote call.
const LATENCY_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

impl Metrics {
    /// Creates and registers every metric family in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "token_service_backend_requests_total",
                "Backend call attempts by backend, operation and outcome",
            ),
            &["backend", "operation", "outcome"],
        )
        .expect("static metric definition");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "token_service_backend_request_duration_seconds",
                "Latency of backend call attempts that reached the backend",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["backend", "operation"],
        )
        .expect("static metric definition");
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "token_service_fallback_activations_total",
                "Calls passed to the next backend because the previous one was unavailable",
            ),
            &["operation", "from", "to"],
        )
        .expect("static metric definition");
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "token_service_breaker_state",
                "Circuit breaker state per backend: 0 closed, 1 open, 2 half-open",
            ),
            &["backend"],
        )
        .expect("static metric definition");
        let retries = IntCounterVec::new(
            Opts::new(
                "token_service_backend_retries_total",
                "Retries after an unavailable backend",
            ),
            &["backend", "operation"],
        )
        .expect("static metric definition");
        let security_events = IntCounterVec::new(
            Opts::new(
                "token_service_security_events_total",
                "Responses refused by a security check",
            ),
            &["backend"],
        )
        .expect("static metric definition");
        let dpop = IntCounterVec::new(
            Opts::new(
                "token_service_dpop_validations_total",
                "DPoP proofs checked, by result (valid, invalid_dpop_proof, use_dpop_nonce, temporarily_unavailable) and reason",
            ),
            &["result", "reason"],
        )
        .expect("static metric definition");
        // Memory and file descriptors of this process (process_*). Its CPU counter counts
        // whole seconds only, so token_service_process_cpu_seconds gives it finer.
        #[cfg(target_os = "linux")]
        {
            let _ = registry.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        let cpu_seconds = prometheus::Gauge::new(
            "token_service_process_cpu_seconds",
            "CPU time of this process (user + system), 10 ms resolution",
        )
        .expect("static metric definition");
        let _ = registry.register(Box::new(cpu_seconds.clone()));
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(fallbacks.clone()),
            Box::new(breaker_state.clone()),
            Box::new(retries.clone()),
            Box::new(security_events.clone()),
            Box::new(dpop.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique within a fresh registry");
        }
        let tls = crate::api::listener::TlsMetricFamilies::register(&registry);
        let api = crate::api::metrics::ApiMetricFamilies::register(&registry, &LATENCY_BUCKETS);
        let store = crate::token::store::metered::StoreMetricFamilies::register(
            &registry,
            &LATENCY_BUCKETS,
        );
        let tokens = crate::token::events::TokenEventFamilies::register(&registry);
        Self {
            registry,
            requests,
            latency,
            fallbacks,
            breaker_state,
            retries,
            security_events,
            dpop,
            cpu_seconds,
            tls,
            api,
            store,
            tokens,
        }
    }

    /// The TLS metrics of one listener (`grpc`, `public`).
    pub fn tls(&self, listener: &'static str) -> crate::api::listener::TlsMetrics {
        self.tls.listener(listener)
    }

    /// The Token API's request metrics.
    pub fn api(&self) -> &crate::api::metrics::ApiMetricFamilies {
        &self.api
    }

    /// The token store's request metrics.
    pub fn store(&self) -> &crate::token::store::metered::StoreMetricFamilies {
        &self.store
    }

    /// Token issuance and lifecycle counters.
    pub fn tokens(&self) -> &crate::token::events::TokenEventFamilies {
        &self.tokens
    }

    /// Counts one DPoP validation by result and reason.
    pub fn dpop_validation(&self, result: &str, reason: &str) {
        self.dpop.with_label_values(&[result, reason]).inc();
    }

    /// The DPoP counter's value (for tests).
    pub fn dpop_count(&self, result: &str, reason: &str) -> u64 {
        self.dpop.with_label_values(&[result, reason]).get()
    }

    /// The registry, for exposition or for registering more metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Text exposition format of every metric.
    pub fn render(&self) -> String {
        if let Some(seconds) = process_cpu_seconds() {
            self.cpu_seconds.set(seconds);
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Counts one fallback from `from` to `to`.
    pub fn fallback(&self, operation: Operation, from: &str, to: &str) {
        self.fallbacks
            .with_label_values(&[operation.as_str(), from, to])
            .inc();
    }

    /// The fallback counter's value (for tests and `doctor`).
    pub fn fallback_count(&self, operation: Operation, from: &str, to: &str) -> u64 {
        self.fallbacks
            .with_label_values(&[operation.as_str(), from, to])
            .get()
    }

    /// The request counter's value for one backend, operation and outcome.
    pub fn request_count(&self, backend: &str, operation: Operation, outcome: Outcome) -> u64 {
        self.requests
            .with_label_values(&[backend, operation.as_str(), outcome.as_str()])
            .get()
    }

    /// The breaker gauge's value for one backend.
    pub fn breaker_gauge(&self, backend: &str) -> i64 {
        self.breaker_state.with_label_values(&[backend]).get()
    }

    /// The retry counter's value for one backend and operation.
    pub fn retry_count(&self, backend: &str, operation: Operation) -> u64 {
        self.retries
            .with_label_values(&[backend, operation.as_str()])
            .get()
    }

    /// Handles for one backend, resolved once so the call path does no label lookups.
    pub fn for_backend(&self, backend: &str) -> BackendMetrics {
        let ops = Operation::ALL.map(|op| OpMetrics {
            latency: self.latency.with_label_values(&[backend, op.as_str()]),
            outcomes: Outcome::ALL.map(|o| {
                self.requests
                    .with_label_values(&[backend, op.as_str(), o.as_str()])
            }),
            retries: self.retries.with_label_values(&[backend, op.as_str()]),
        });
        BackendMetrics {
            ops,
            breaker_state: self.breaker_state.with_label_values(&[backend]),
            security_events: self.security_events.with_label_values(&[backend]),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone, Debug)]
struct OpMetrics {
    latency: Histogram,
    outcomes: [IntCounter; 8],
    retries: IntCounter,
}

/// Pre-resolved metric handles of one backend.
#[derive(Clone, Debug)]
pub struct BackendMetrics {
    ops: [OpMetrics; 9],
    breaker_state: IntGauge,
    security_events: IntCounter,
}

impl BackendMetrics {
    /// Counts an attempt's outcome.
    pub fn outcome(&self, operation: Operation, outcome: Outcome) {
        let index = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.ops[operation.index()].outcomes[index].inc();
        if outcome == Outcome::Security {
            self.security_events.inc();
        }
    }

    /// Records the latency of an attempt that reached the backend.
    pub fn latency(&self, operation: Operation, seconds: f64) {
        self.ops[operation.index()].latency.observe(seconds);
    }

    /// Counts a retry.
    pub fn retry(&self, operation: Operation) {
        self.ops[operation.index()].retries.inc();
    }

    /// Sets the breaker gauge.
    pub fn breaker_state(&self, value: i64) {
        self.breaker_state.set(value);
    }
}
