//! Resilience policies that wrap any backend: circuit breaker, retry with backoff and jitter,
//! per-call timeout, outbound rate limit and concurrency limit (bulkhead).
//!
//! The primitives are independent of backends; [`crate::backends::chain`] composes them
//! around each backend in this order, per attempt: rate limit → circuit breaker →
//! concurrency limit → timeout → the call; retries wrap the whole attempt.

pub mod breaker;
pub mod rate_limit;
pub mod retry;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use breaker::{BreakerConfig, BreakerState, CallOutcome, CircuitBreaker};
pub use rate_limit::{RateLimitConfig, RateLimiter};
pub use retry::RetryConfig;

/// The policies around one backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResilienceConfig {
    /// Per-attempt timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retry schedule for *unavailable* errors.
    pub retry: RetryConfig,
    /// Circuit breaker.
    pub breaker: BreakerConfig,
    /// Outbound rate limit; none when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// Maximum calls in flight to the backend; unlimited when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// How long a call may wait for a concurrency slot before it is refused.
    #[serde(with = "humantime_serde")]
    pub concurrency_wait: Duration,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
            rate_limit: None,
            max_concurrency: None,
            concurrency_wait: Duration::from_millis(100),
        }
    }
}
