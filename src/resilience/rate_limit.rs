//! Outbound rate limit: a token bucket refilled continuously at `per_second`, holding at most
//! `burst` tokens. A call that finds no token is refused at once (the chain then falls back)
//! rather than queued: queueing would turn an overloaded backend into latency for every caller.
//!
//! Written here because it must run on `tokio::time` (tests drive it with the paused clock);
//! `governor` keeps its own clock.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Rate-limit settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained calls per second.
    pub per_second: u32,
    /// Calls allowed in a burst; defaults to one second's worth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// A token bucket.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(config: &RateLimitConfig) -> Self {
        let burst = f64::from(config.burst.unwrap_or(config.per_second).max(1));
        Self {
            per_second: f64::from(config.per_second),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes a token if one is available; otherwise says how long until one will be.
    pub fn try_acquire_or_wait_time(&self) -> Result<(), std::time::Duration> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = &mut *state;
        let refill = now.duration_since(*last).as_secs_f64() * self.per_second;
        *tokens = (*tokens + refill).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(std::time::Duration::from_secs_f64(
                (1.0 - *tokens) / self.per_second.max(f64::MIN_POSITIVE),
            ))
        }
    }

    /// Takes a token if one is available.
    pub fn try_acquire(&self) -> bool {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = &mut *state;
        let refill = now.duration_since(*last).as_secs_f64() * self.per_second;
        *tokens = (*tokens + refill).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn admits_the_burst_then_the_rate() {
        let limiter = RateLimiter::new(&RateLimitConfig {
            per_second: 10,
            burst: Some(5),
        });
        let burst = (0..20).filter(|_| limiter.try_acquire()).count();
        assert_eq!(burst, 5);
        tokio::time::advance(Duration::from_millis(500)).await;
        let after = (0..20).filter(|_| limiter.try_acquire()).count();
        assert_eq!(after, 5);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(limiter.try_acquire());
        assert!(!limiter.try_acquire());
    }
}
