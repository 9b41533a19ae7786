//! Circuit breaker: closed → open after `failure_threshold` failures within `failure_window`;
//! open → half-open once `open_duration` has passed; half-open admits at most
//! `half_open_max_probes` concurrent calls; `success_threshold` successes close it, any
//! failure re-opens it.
//!
//! Written here rather than taken from `failsafe` (its state is private and its half-open
//! lets every call through) or a tower layer (our calls are trait methods, not `Service`s).
//! Time is `tokio::time::Instant`, so tests drive it with the paused clock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Breaker settings; the defaults are the design brief's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Failures within the window that open the breaker.
    pub failure_threshold: u32,
    /// The sliding window failures are counted in.
    #[serde(with = "humantime_serde")]
    pub failure_window: Duration,
    /// How long the breaker stays open before probing.
    #[serde(with = "humantime_serde")]
    pub open_duration: Duration,
    /// Concurrent probe calls admitted while half-open.
    pub half_open_max_probes: u32,
    /// Successful probes that close the breaker.
    pub success_threshold: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            failure_window: Duration::from_secs(60),
            open_duration: Duration::from_secs(30),
            half_open_max_probes: 1,
            success_threshold: 2,
        }
    }
}

/// The breaker's state, with the gauge values the design brief fixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are refused without reaching the backend.
    Open,
    /// A bounded number of probe calls are let through.
    HalfOpen,
}

impl BreakerState {
    /// Gauge value: 0 closed, 1 open, 2 half-open.
    pub fn gauge_value(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed {
        failures: VecDeque<Instant>,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        in_flight: u32,
        successes: u32,
        /// Identifies this half-open period: a probe admitted in an earlier one (and still
        /// running across a re-open) must not count in this one.
        episode: u64,
    },
}

/// What a finished call tells the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// The backend answered (including "rejected" and "invalid signature": it is alive).
    Success,
    /// The backend was unavailable.
    Failure,
}

type Listener = Box<dyn Fn(BreakerState) + Send + Sync>;

/// A circuit breaker. Cheap to share: clone the `Arc`.
pub struct CircuitBreaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
    /// Mirror of the state, written under the lock at every transition, read without it:
    /// the common case (closed, call succeeds) then takes no lock and reads no clock.
    closed: AtomicU8,
    episodes: AtomicU64,
    on_transition: Option<Listener>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("config", &self.config)
            .field("state", &self.state())
            .finish()
    }
}

/// Permission to make one call. Report how it went with [`Permit::record`]; a permit dropped
/// unrecorded (the call was cancelled) frees its half-open probe slot and counts as nothing.
#[must_use = "a permit must be recorded or dropped"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    /// The half-open episode this permit probes, if it is a probe.
    probe: Option<u64>,
    recorded: bool,
}

/// The breaker refused the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerOpen;

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Arc<Self> {
        Self::with_listener(config, None)
    }

    /// A closed breaker that calls `on_transition` with each new state (for metrics).
    pub fn with_listener(config: BreakerConfig, on_transition: Option<Listener>) -> Arc<Self> {
        Arc::new(Self {
            config,
            inner: Mutex::new(Inner::Closed {
                failures: VecDeque::new(),
            }),
            closed: AtomicU8::new(1),
            episodes: AtomicU64::new(0),
            on_transition,
        })
    }

    /// The breaker's settings.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state is always left consistent, so a panic elsewhere cannot poison it
        // meaningfully: keep going with what is there.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn transition(&self, inner: &mut Inner, to: Inner) {
        *inner = to;
        self.closed.store(
            u8::from(matches!(inner, Inner::Closed { .. })),
            Ordering::Release,
        );
        if let Some(listener) = &self.on_transition {
            listener(Self::state_of(inner));
        }
    }

    fn state_of(inner: &Inner) -> BreakerState {
        match inner {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Moves open → half-open when the open period is over. Called on every read so the
    /// state is right even when no call has come in.
    fn refresh(&self, inner: &mut Inner, now: Instant) {
        if let Inner::Open { until } = inner
            && now >= *until
        {
            let episode = self.episodes.fetch_add(1, Ordering::Relaxed);
            self.transition(
                inner,
                Inner::HalfOpen {
                    in_flight: 0,
                    successes: 0,
                    episode,
                },
            );
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        let mut inner = self.lock();
        self.refresh(&mut inner, Instant::now());
        Self::state_of(&inner)
    }

    /// Asks to make a call.
    pub fn try_acquire(&self) -> Result<Permit<'_>, BreakerOpen> {
        if self.closed.load(Ordering::Acquire) == 1 {
            // Closed admits everything; a call racing a transition to open is admitted as
            // if it had arrived a moment earlier.
            return Ok(Permit {
                breaker: self,
                probe: None,
                recorded: false,
            });
        }
        let mut inner = self.lock();
        self.refresh(&mut inner, Instant::now());
        let probe = match &mut *inner {
            Inner::Closed { .. } => None,
            Inner::Open { .. } => return Err(BreakerOpen),
            Inner::HalfOpen {
                in_flight, episode, ..
            } => {
                if *in_flight >= self.config.half_open_max_probes {
                    return Err(BreakerOpen);
                }
                *in_flight += 1;
                Some(*episode)
            }
        };
        Ok(Permit {
            breaker: self,
            probe,
            recorded: false,
        })
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        self.transition(
            inner,
            Inner::Open {
                until: now + self.config.open_duration,
            },
        );
    }

    fn finish(&self, probe: Option<u64>, outcome: Option<CallOutcome>) {
        // Only failures and probes change anything: a success or cancellation of an ordinary
        // call is a no-op in every state, so it needs neither the lock nor the clock.
        if probe.is_none() && outcome != Some(CallOutcome::Failure) {
            return;
        }
        let now = Instant::now();
        let mut inner = self.lock();
        match &mut *inner {
            Inner::Closed { failures } => {
                if outcome == Some(CallOutcome::Failure) {
                    failures.push_back(now);
                    while failures
                        .front()
                        .is_some_and(|t| now.duration_since(*t) >= self.config.failure_window)
                    {
                        failures.pop_front();
                    }
                    if failures.len() >= self.config.failure_threshold as usize {
                        self.open(&mut inner, now);
                    }
                }
            }
            Inner::HalfOpen {
                in_flight,
                successes,
                episode,
            } => {
                // A call admitted before this episode (while closed, or as a probe of an
                // earlier one) is a late call: its failure still re-opens, its success
                // proves nothing about this episode.
                let current_probe = probe == Some(*episode);
                if current_probe {
                    *in_flight -= 1;
                }
                match outcome {
                    Some(CallOutcome::Failure) => self.open(&mut inner, now),
                    Some(CallOutcome::Success) if current_probe => {
                        *successes += 1;
                        if *successes >= self.config.success_threshold {
                            self.transition(
                                &mut inner,
                                Inner::Closed {
                                    failures: VecDeque::new(),
                                },
                            );
                        }
                    }
                    _ => {}
                }
            }
            // A call admitted before the breaker opened finished late: its outcome changes
            // nothing (the breaker is already open).
            Inner::Open { .. } => {}
        }
    }
}

impl Permit<'_> {
    /// Reports the call's outcome.
    pub fn record(mut self, outcome: CallOutcome) {
        self.recorded = true;
        self.breaker.finish(self.probe, Some(outcome));
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.finish(self.probe, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            failure_window: Duration::from_secs(10),
            open_duration: Duration::from_secs(5),
            half_open_max_probes: 1,
            success_threshold: 2,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_outside_the_window_do_not_add_up() {
        let b = CircuitBreaker::new(config());
        for _ in 0..2 {
            b.try_acquire().unwrap().record(CallOutcome::Failure);
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        b.try_acquire().unwrap().record(CallOutcome::Failure);
        assert_eq!(b.state(), BreakerState::Closed);
        b.try_acquire().unwrap().record(CallOutcome::Failure);
        b.try_acquire().unwrap().record(CallOutcome::Failure);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_probe_frees_its_slot() {
        let b = CircuitBreaker::new(config());
        for _ in 0..3 {
            b.try_acquire().unwrap().record(CallOutcome::Failure);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_err());
        drop(probe);
        assert!(b.try_acquire().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_from_an_earlier_episode_does_not_count_in_the_next() {
        let b = CircuitBreaker::new(BreakerConfig {
            half_open_max_probes: 2,
            success_threshold: 1,
            ..config()
        });
        for _ in 0..3 {
            b.try_acquire().unwrap().record(CallOutcome::Failure);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        let stale = b.try_acquire().unwrap();
        b.try_acquire().unwrap().record(CallOutcome::Failure); // re-opens
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let p1 = b.try_acquire().unwrap();
        let p2 = b.try_acquire().unwrap();
        // The stale probe finishing must not free a slot of this episode...
        drop(stale);
        assert!(b.try_acquire().is_err());
        drop((p1, p2));
        // ...nor may its success close the breaker.
        let stale_success = {
            let b2 = CircuitBreaker::new(BreakerConfig {
                success_threshold: 1,
                ..config()
            });
            for _ in 0..3 {
                b2.try_acquire().unwrap().record(CallOutcome::Failure);
            }
            tokio::time::advance(Duration::from_secs(5)).await;
            let stale = b2.try_acquire().unwrap();
            let failing = b2.try_acquire();
            assert!(failing.is_err()); // one probe only
            drop(failing);
            // Re-open through a late failure of another call, then half-open again.
            b2.finish(None, Some(CallOutcome::Failure));
            tokio::time::advance(Duration::from_secs(5)).await;
            assert_eq!(b2.state(), BreakerState::HalfOpen);
            stale.record(CallOutcome::Success);
            b2.state()
        };
        assert_eq!(stale_success, BreakerState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn transitions_reach_the_listener() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let b = CircuitBreaker::with_listener(
            config(),
            Some(Box::new(move |s| sink.lock().unwrap().push(s))),
        );
        for _ in 0..3 {
            b.try_acquire().unwrap().record(CallOutcome::Failure);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..2 {
            b.try_acquire().unwrap().record(CallOutcome::Success);
        }
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                BreakerState::Open,
                BreakerState::HalfOpen,
                BreakerState::Closed
            ]
        );
    }
}
