//! Retry schedule: exponential backoff with a cap and ±jitter.
//!
//! Only the schedule lives here; the chain decides *whether* to retry (only *unavailable*
//! errors from the backend itself, only idempotent operations). `backon` was considered; its
//! jitter only adds delay (0..+100 %), while the brief asks for ±20 % around the schedule.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Retry settings; the defaults are the design brief's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Total attempts, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Growth factor per retry.
    pub multiplier: f64,
    /// Cap on any one delay (before jitter).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Relative jitter: each delay is scaled by a random factor in `[1 - jitter, 1 + jitter]`.
    pub jitter: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(2),
            jitter: 0.2,
        }
    }
}

impl RetryConfig {
    /// The delay before retry number `retry` (1 = the first retry), given `unit`, a uniform
    /// random number in `[0, 1)`.
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let exponent = retry.saturating_sub(1).min(64) as i32;
        let base = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = base.min(self.max_backoff.as_secs_f64());
        let factor = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((capped * factor).max(0.0))
    }

    /// The delay before retry number `retry`, with fresh randomness.
    pub fn jittered_delay(&self, retry: u32) -> Duration {
        let mut bytes = [0u8; 4];
        // Jitter only spreads load; if the RNG fails, the midpoint (no jitter) is fine.
        let unit = match aws_lc_rs::rand::fill(&mut bytes) {
            Ok(()) => f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
            Err(_) => 0.5,
        };
        self.delay(retry, unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_up_to_the_cap() {
        let c = RetryConfig::default();
        let mid = |n| c.delay(n, 0.5).as_millis();
        assert_eq!(
            [mid(1), mid(2), mid(3), mid(5), mid(6), mid(40)],
            [100, 200, 400, 1600, 2000, 2000]
        );
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let c = RetryConfig::default();
        assert_eq!(c.delay(1, 0.0).as_millis(), 80);
        assert!(c.delay(1, 0.999_999_999) <= Duration::from_millis(120));
        for _ in 0..1000 {
            let d = c.jittered_delay(2).as_secs_f64();
            assert!((0.16..=0.24).contains(&d), "{d}");
        }
    }
}
