//! One backend inside its policies: rate limit → circuit breaker → concurrency limit →
//! timeout → the call, with retries around the whole attempt, metrics per attempt and a
//! tracing span per call (opened lazily for in-process key uses).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant as WallInstant;

use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::backends::Backend;
use crate::backends::error::{BackendError, ErrorClass, UnavailableReason};
use crate::backends::types::Operation;
use crate::context::CallContext;
use crate::metrics::{BackendMetrics, Metrics, Outcome};
use crate::resilience::{BreakerState, CallOutcome, CircuitBreaker, RateLimiter, ResilienceConfig};

/// A boxed future borrowing for `'a`, as the call closures return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A backend with its policies and metric handles.
#[derive(Debug)]
pub struct GuardedBackend {
    backend: Arc<dyn Backend>,
    config: ResilienceConfig,
    breaker: Arc<CircuitBreaker>,
    rate_limiter: Option<RateLimiter>,
    concurrency: Option<Arc<Semaphore>>,
    metrics: BackendMetrics,
}

fn outcome_of(error: &BackendError) -> Outcome {
    match error {
        BackendError::Unavailable { reason, .. } => match reason {
            UnavailableReason::BreakerOpen => Outcome::BreakerOpen,
            UnavailableReason::RateLimited => Outcome::RateLimited,
            UnavailableReason::ConcurrencyLimited => Outcome::ConcurrencyLimited,
            _ => Outcome::Unavailable,
        },
        other => match other.class() {
            ErrorClass::Unavailable => Outcome::Unavailable,
            ErrorClass::Rejected => Outcome::Rejected,
            ErrorClass::VerificationFailed => Outcome::VerificationFailed,
            ErrorClass::Security => Outcome::Security,
        },
    }
}

impl GuardedBackend {
    /// Wraps `backend` in the policies of `config`, reporting to `metrics`.
    pub fn new(backend: Arc<dyn Backend>, config: ResilienceConfig, metrics: &Metrics) -> Self {
        let handles = metrics.for_backend(backend.name());
        let gauge = handles.clone();
        let breaker = CircuitBreaker::with_listener(
            config.breaker.clone(),
            Some(Box::new(move |state: BreakerState| {
                gauge.breaker_state(state.gauge_value())
            })),
        );
        handles.breaker_state(BreakerState::Closed.gauge_value());
        Self {
            rate_limiter: config.rate_limit.as_ref().map(RateLimiter::new),
            concurrency: config
                .max_concurrency
                .map(|n| Arc::new(Semaphore::new(n.max(1) as usize))),
            breaker,
            backend,
            config,
            metrics: handles,
        }
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        self.backend.name()
    }

    /// The wrapped backend, for calls that must bypass the policies (none in the service).
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The policies.
    pub fn config(&self) -> &ResilienceConfig {
        &self.config
    }

    /// The breaker's current state (refreshing the gauge if open → half-open is due).
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    fn refuse(&self, operation: Operation, reason: UnavailableReason) -> BackendError {
        let error = BackendError::Unavailable {
            backend: self.name().to_owned(),
            reason,
        };
        self.metrics.outcome(operation, outcome_of(&error));
        error
    }

    /// Runs `call` against the backend under every policy, retrying *unavailable* errors of
    /// idempotent operations with backoff. `key` only labels the tracing span; it is
    /// formatted only if a subscriber records the span.
    pub async fn call<'a, T, F>(
        &'a self,
        ctx: &CallContext,
        operation: Operation,
        key: &(dyn std::fmt::Display + Sync),
        call: F,
    ) -> Result<T, BackendError>
    where
        F: Fn(&'a dyn Backend) -> BoxFuture<'a, Result<T, BackendError>>,
    {
        let span = CallSpan {
            backend: self.name(),
            operation,
            key,
            ctx,
            around_call: !(self.backend.is_in_process() && operation.is_key_use()),
        };
        // The context is made current so that a remote backend can send the correlation
        // id and trace context with its request.
        let attempts = async {
            let mut retries = 0u32;
            loop {
                let result = self.attempt(operation, &call, &span).await;
                match result {
                    Err(error)
                        if operation.is_idempotent()
                            && error.is_retryable()
                            && retries + 1 < self.config.retry.max_attempts =>
                    {
                        retries += 1;
                        self.metrics.retry(operation);
                        let delay = self.config.retry.jittered_delay(retries);
                        span.log(|| tracing::debug!(%error, retry = retries, delay_ms = delay.as_millis() as u64, "retrying"));
                        tokio::time::sleep(delay).await;
                    }
                    other => return other,
                }
            }
        };
        if span.around_call {
            ctx.scope(attempts).instrument(span.open()).await
        } else {
            ctx.scope(attempts).await
        }
    }

    async fn attempt<'a, T, F>(
        &'a self,
        operation: Operation,
        call: &F,
        span: &CallSpan<'_>,
    ) -> Result<T, BackendError>
    where
        F: Fn(&'a dyn Backend) -> BoxFuture<'a, Result<T, BackendError>>,
    {
        if let Some(limiter) = &self.rate_limiter
            && !limiter.try_acquire()
        {
            return Err(self.refuse(operation, UnavailableReason::RateLimited));
        }
        let Ok(permit) = self.breaker.try_acquire() else {
            return Err(self.refuse(operation, UnavailableReason::BreakerOpen));
        };
        let _slot = match &self.concurrency {
            Some(semaphore) => {
                match tokio::time::timeout(
                    self.config.concurrency_wait,
                    semaphore.clone().acquire_owned(),
                )
                .await
                {
                    Ok(Ok(slot)) => Some(slot),
                    // The permit is dropped unrecorded: a local refusal says nothing about
                    // the backend's health.
                    _ => return Err(self.refuse(operation, UnavailableReason::ConcurrencyLimited)),
                }
            }
            None => None,
        };
        let started = WallInstant::now();
        let result = match tokio::time::timeout(self.config.timeout, call(&*self.backend)).await {
            Ok(result) => result,
            Err(_) => Err(BackendError::Unavailable {
                backend: self.name().to_owned(),
                reason: UnavailableReason::Timeout,
            }),
        };
        self.metrics
            .latency(operation, started.elapsed().as_secs_f64());
        let (outcome, health) = match &result {
            Ok(_) => (Outcome::Ok, CallOutcome::Success),
            Err(error) => {
                let outcome = outcome_of(error);
                let health = if error.class() == ErrorClass::Unavailable {
                    CallOutcome::Failure
                } else {
                    CallOutcome::Success
                };
                (outcome, health)
            }
        };
        permit.record(health);
        self.metrics.outcome(operation, outcome);
        if let Err(error) = &result {
            span.log(|| match error.class() {
                ErrorClass::Security => {
                    tracing::error!(target: "security", %error, "security event: backend response refused")
                }
                ErrorClass::Unavailable => tracing::warn!(%error, "backend unavailable"),
                _ => tracing::debug!(%error, "backend refused the call"),
            });
        }
        result
    }
}

/// The tracing span of one backend call: backend, operation, key and correlation id.
///
/// Usually the call runs inside it. A key use of an in-process backend runs without it
/// ([`Backend::is_in_process`]): such a call logs nothing unless the chain does, so the
/// chain opens the span only around its own lines, which therefore read the same either way.
struct CallSpan<'c> {
    backend: &'c str,
    operation: Operation,
    key: &'c (dyn std::fmt::Display + Sync),
    ctx: &'c CallContext,
    /// Whether the call runs inside the span (else it is opened only to log).
    around_call: bool,
}

impl CallSpan<'_> {
    fn open(&self) -> tracing::Span {
        tracing::info_span!(
            "backend_call",
            backend = self.backend,
            operation = self.operation.as_str(),
            key = %self.key,
            correlation_id = self.ctx.correlation_id(),
        )
    }

    /// Emits the line(s) of `log` inside the span, opening it if the call runs without it.
    fn log(&self, log: impl FnOnce()) {
        if self.around_call {
            log()
        } else {
            self.open().in_scope(log)
        }
    }
}
