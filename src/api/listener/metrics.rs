//! Metrics of a TLS listener, for alerting before a certificate expires and on a wave of
//! refused clients (a CA rotated without its callers, say).

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

/// The TLS listener's metric families.
#[derive(Clone, Debug)]
pub struct TlsMetrics {
    expiry: IntGauge,
    reloads: IntCounterVec,
    handshake_failures: IntCounterVec,
}

impl TlsMetrics {
    /// Creates the families and registers them in `registry`. A process has one TLS
    /// listener; a second registration is kept working but unexported.
    pub fn register(registry: &Registry) -> Self {
        let expiry = IntGauge::new(
            "token_service_tls_certificate_expiry_timestamp_seconds",
            "notAfter of the server certificate in use on the gRPC listener, Unix seconds",
        )
        .expect("static metric definition");
        let reloads = IntCounterVec::new(
            Opts::new(
                "token_service_tls_reloads_total",
                "Attempts to load changed TLS files, by result: reloaded, or failed (the previous files stay in use)",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let handshake_failures = IntCounterVec::new(
            Opts::new(
                "token_service_tls_handshake_failures_total",
                "Failed TLS handshakes, by reason: client_certificate (refused or missing), timeout, other",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        for collector in [
            Box::new(expiry.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reloads.clone()),
            Box::new(handshake_failures.clone()),
        ] {
            let _ = registry.register(collector);
        }
        Self {
            expiry,
            reloads,
            handshake_failures,
        }
    }

    pub(super) fn certificate_expires_at(&self, unix_seconds: Option<u64>) {
        self.expiry.set(
            unix_seconds
                .and_then(|s| i64::try_from(s).ok())
                .unwrap_or(0),
        );
    }

    pub(super) fn reload(&self, result: &str) {
        self.reloads.with_label_values(&[result]).inc();
    }

    pub(super) fn handshake_failed(&self, reason: &str) {
        self.handshake_failures.with_label_values(&[reason]).inc();
    }

    /// The certificate expiry gauge's value (for tests).
    pub fn certificate_expiry(&self) -> i64 {
        self.expiry.get()
    }

    /// A reload counter's value (for tests).
    pub fn reload_count(&self, result: &str) -> u64 {
        self.reloads.with_label_values(&[result]).get()
    }
}
