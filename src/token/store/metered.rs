//! Metrics of the token store, by operation: how long each call took and how it ended
//! (`token_service_store_request_duration_seconds{operation}`,
//! `token_service_store_requests_total{operation,outcome}`). With Redis these are the first
//! thing to read when issuance slows down or fails as unavailable.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};

use super::{FamilyRecord, Rotation, Store, StoreError};
use crate::token::refresh::{FamilyId, SecretHash};

/// The store's operations, as the `operation` label.
const OPERATIONS: [&str; 9] = [
    "create_family",
    "get_family",
    "rotate",
    "revoke_family",
    "family_active",
    "deny_jti",
    "is_denied",
    "first_use",
    "ping",
];

/// How a call ended, as the `outcome` label.
const OUTCOMES: [&str; 4] = ["ok", "unavailable", "full", "exists"];

fn outcome_index<T>(result: &Result<T, StoreError>) -> usize {
    match result {
        Ok(_) => 0,
        // Unsafe is a connection-time refusal; no call returns it.
        Err(StoreError::Unavailable(_) | StoreError::Unsafe(_)) => 1,
        Err(StoreError::Full) => 2,
        Err(StoreError::Exists) => 3,
    }
}

#[derive(Debug)]
struct OperationMetrics {
    duration: Histogram,
    outcomes: [IntCounter; 4],
}

/// The metric families, registered once per registry (see
/// [`crate::metrics::Metrics::store`]).
#[derive(Clone, Debug)]
pub struct StoreMetricFamilies {
    requests: IntCounterVec,
    /// Per operation, in [`OPERATIONS`] order, resolved once.
    operations: Arc<[OperationMetrics]>,
}

impl StoreMetricFamilies {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &prometheus::Registry, buckets: &[f64]) -> Self {
        let requests = IntCounterVec::new(
            Opts::new(
                "token_service_store_requests_total",
                "Token store calls by operation and outcome (ok, unavailable, full, exists)",
            ),
            &["operation", "outcome"],
        )
        .expect("static metric definition");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "token_service_store_request_duration_seconds",
                "Token store call duration by operation",
            )
            .buckets(buckets.to_vec()),
            &["operation"],
        )
        .expect("static metric definition");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique within a fresh registry");
        }
        let operations = OPERATIONS
            .iter()
            .map(|operation| OperationMetrics {
                duration: duration.with_label_values(&[*operation]),
                outcomes: OUTCOMES.map(|o| requests.with_label_values(&[*operation, o])),
            })
            .collect();
        Self {
            requests,
            operations,
        }
    }

    /// Calls of `operation` that ended with `outcome` (for tests).
    pub fn request_count(&self, operation: &str, outcome: &str) -> u64 {
        self.requests.with_label_values(&[operation, outcome]).get()
    }

    fn record<T>(&self, operation: usize, started: Instant, result: &Result<T, StoreError>) {
        let metrics = &self.operations[operation];
        metrics.duration.observe(started.elapsed().as_secs_f64());
        metrics.outcomes[outcome_index(result)].inc();
    }
}

/// A store whose calls are timed and counted.
#[derive(Debug)]
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: StoreMetricFamilies,
}

impl MeteredStore {
    /// `inner`, measured in `metrics`.
    pub fn new(inner: Arc<dyn Store>, metrics: StoreMetricFamilies) -> Self {
        Self { inner, metrics }
    }
}

/// Runs one store call and records it under the operation at `index` of [`OPERATIONS`].
macro_rules! measured {
    ($self:ident, $index:expr, $call:expr) => {{
        let started = Instant::now();
        let result = $call.await;
        $self.metrics.record($index, started, &result);
        result
    }};
}

#[async_trait]
impl Store for MeteredStore {
    async fn create_family(
        &self,
        family: &FamilyId,
        record: FamilyRecord,
    ) -> Result<(), StoreError> {
        measured!(self, 0, self.inner.create_family(family, record))
    }

    async fn get_family(
        &self,
        family: &FamilyId,
        now: u64,
    ) -> Result<Option<FamilyRecord>, StoreError> {
        measured!(self, 1, self.inner.get_family(family, now))
    }

    async fn rotate(
        &self,
        family: &FamilyId,
        presented: &SecretHash,
        next: SecretHash,
        now: u64,
    ) -> Result<Rotation, StoreError> {
        measured!(self, 2, self.inner.rotate(family, presented, next, now))
    }

    async fn revoke_family(&self, family: &FamilyId, now: u64) -> Result<bool, StoreError> {
        measured!(self, 3, self.inner.revoke_family(family, now))
    }

    async fn family_active(&self, family: &FamilyId, now: u64) -> Result<bool, StoreError> {
        measured!(self, 4, self.inner.family_active(family, now))
    }

    async fn deny_jti(&self, jti: &str, until: u64) -> Result<(), StoreError> {
        measured!(self, 5, self.inner.deny_jti(jti, until))
    }

    async fn is_denied(&self, jti: &str, now: u64) -> Result<bool, StoreError> {
        measured!(self, 6, self.inner.is_denied(jti, now))
    }

    async fn first_use(&self, key: &str, until: u64, now: u64) -> Result<bool, StoreError> {
        measured!(self, 7, self.inner.first_use(key, until, now))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        measured!(self, 8, self.inner.ping())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::refresh::RefreshToken;
    use crate::token::store::memory::MemoryStore;

    #[tokio::test]
    async fn each_call_is_counted_under_its_operation_and_outcome() {
        let registry = prometheus::Registry::new();
        let metrics = StoreMetricFamilies::register(&registry, &[0.001, 1.0]);
        let store = MeteredStore::new(Arc::new(MemoryStore::new(2)), metrics.clone());
        let family = FamilyId::generate().unwrap();
        let record = FamilyRecord {
            current: RefreshToken::generate(family.clone()).unwrap().hash(),
            retired: Vec::new(),
            generation: 0,
            revoked: false,
            expires_at: u64::MAX,
            client_id: "web".into(),
            data: "sealed".into(),
        };
        store.create_family(&family, record.clone()).await.unwrap();
        assert_eq!(
            store.create_family(&family, record.clone()).await,
            Err(StoreError::Exists)
        );
        let other = FamilyId::generate().unwrap();
        store.create_family(&other, record.clone()).await.unwrap();
        let third = FamilyId::generate().unwrap();
        assert_eq!(
            store.create_family(&third, record).await,
            Err(StoreError::Full)
        );
        assert!(store.get_family(&family, 0).await.unwrap().is_some());
        assert_eq!(metrics.request_count("create_family", "ok"), 2);
        assert_eq!(metrics.request_count("create_family", "exists"), 1);
        assert_eq!(metrics.request_count("create_family", "full"), 1);
        assert_eq!(metrics.request_count("get_family", "ok"), 1);
        assert_eq!(metrics.request_count("rotate", "ok"), 0);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains(
                "token_service_store_request_duration_seconds_count{operation=\"create_family\"} 4"
            ),
            "{text}"
        );
    }
}
