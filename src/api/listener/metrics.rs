//! Metrics of the TLS listeners, for alerting before a certificate expires and on a wave of
//! refused clients (a CA rotated without its callers, say). Every series carries the
//! listener (`grpc`, `public`).

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

/// The metric families, registered once per registry (see [`crate::metrics::Metrics::tls`]).
#[derive(Clone, Debug)]
pub struct TlsMetricFamilies {
    expiry: IntGaugeVec,
    reloads: IntCounterVec,
    handshake_failures: IntCounterVec,
}

impl TlsMetricFamilies {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &Registry) -> Self {
        let expiry = IntGaugeVec::new(
            Opts::new(
                "token_service_tls_certificate_expiry_timestamp_seconds",
                "notAfter of the server certificate in use, Unix seconds",
            ),
            &["listener"],
        )
        .expect("static metric definition");
        let reloads = IntCounterVec::new(
            Opts::new(
                "token_service_tls_reloads_total",
                "Attempts to load changed TLS files, by result: reloaded, or failed (the previous files stay in use)",
            ),
            &["listener", "result"],
        )
        .expect("static metric definition");
        let handshake_failures = IntCounterVec::new(
            Opts::new(
                "token_service_tls_handshake_failures_total",
                "Failed TLS handshakes, by reason: client_certificate (refused or missing), timeout, other",
            ),
            &["listener", "reason"],
        )
        .expect("static metric definition");
        for collector in [
            Box::new(expiry.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reloads.clone()),
            Box::new(handshake_failures.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique within a fresh registry");
        }
        Self {
            expiry,
            reloads,
            handshake_failures,
        }
    }

    /// The handles of one listener.
    pub fn listener(&self, listener: &'static str) -> TlsMetrics {
        TlsMetrics {
            families: self.clone(),
            listener,
        }
    }
}

/// The TLS metrics of one listener.
#[derive(Clone, Debug)]
pub struct TlsMetrics {
    families: TlsMetricFamilies,
    listener: &'static str,
}

impl TlsMetrics {
    pub(super) fn certificate_expires_at(&self, unix_seconds: Option<u64>) {
        self.families
            .expiry
            .with_label_values(&[self.listener])
            .set(
                unix_seconds
                    .and_then(|s| i64::try_from(s).ok())
                    .unwrap_or(0),
            );
    }

    pub(super) fn reload(&self, result: &str) {
        self.families
            .reloads
            .with_label_values(&[self.listener, result])
            .inc();
    }

    pub(super) fn handshake_failed(&self, reason: &str) {
        self.families
            .handshake_failures
            .with_label_values(&[self.listener, reason])
            .inc();
    }

    /// The certificate expiry gauge's value (for tests).
    pub fn certificate_expiry(&self) -> i64 {
        self.families
            .expiry
            .with_label_values(&[self.listener])
            .get()
    }

    /// A handshake failure counter's value (for tests).
    pub fn handshake_failure_count(&self, reason: &str) -> u64 {
        self.families
            .handshake_failures
            .with_label_values(&[self.listener, reason])
            .get()
    }

    /// A reload counter's value (for tests).
    pub fn reload_count(&self, result: &str) -> u64 {
        self.families
            .reloads
            .with_label_values(&[self.listener, result])
            .get()
    }
}
