//! Property tests: the envelope parser against arbitrary and mutated input, and the circuit
//! breaker against a small reference model of the state machine.

use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, LessSafeKey, UnboundKey};
use proptest::prelude::*;
use token_service::backends::envelope::{Envelope, EnvelopeKid};
use token_service::backends::{BackendError, Rejection};
use token_service::resilience::breaker::{
    BreakerConfig, BreakerState, CallOutcome, CircuitBreaker, Permit,
};

fn key() -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[42; 32]).unwrap())
}

fn kid() -> EnvelopeKid {
    EnvelopeKid::parse("software/token-cache/aes/1").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any string: a typed error or an envelope, never a panic.
    #[test]
    fn parser_never_panics(input in ".{0,400}") {
        match Envelope::parse(&input) {
            Ok(_) | Err(BackendError::Rejected(Rejection::MalformedEnvelope(_))) => {}
            Err(other) => prop_assert!(false, "unexpected error class: {other:?}"),
        }
    }

    /// Dot-structured input of base64url-ish parts exercises the deeper checks.
    #[test]
    fn structured_garbage_is_refused_cleanly(parts in proptest::collection::vec("[A-Za-z0-9_-]{0,40}", 0..8)) {
        let input = parts.join(".");
        match Envelope::parse(&input) {
            Ok(_) | Err(BackendError::Rejected(Rejection::MalformedEnvelope(_))) => {}
            Err(other) => prop_assert!(false, "unexpected error class: {other:?}"),
        }
    }

    /// Sealing then opening returns the plaintext for any plaintext and AAD.
    #[test]
    fn round_trip(plaintext in proptest::collection::vec(any::<u8>(), 0..2048),
                  aad in proptest::collection::vec(any::<u8>(), 0..64)) {
        let sealed = Envelope::seal(&kid(), &key(), &plaintext, &aad).unwrap();
        let opened = Envelope::parse(&sealed).unwrap().open(&key(), &aad).unwrap();
        prop_assert_eq!(&opened[..], &plaintext[..]);
    }

    /// Changing any one character of a sealed envelope never yields a different plaintext:
    /// it is refused as malformed, or fails to authenticate (or, where base64url padding
    /// bits absorb the change, opens to the same plaintext).
    #[test]
    fn single_character_mutations_never_open_to_something_else(
        plaintext in proptest::collection::vec(any::<u8>(), 1..256),
        position in any::<prop::sample::Index>(),
        replacement in prop::sample::select(b"ABCxyz019-_.=+/ ".to_vec()),
    ) {
        let sealed = Envelope::seal(&kid(), &key(), &plaintext, b"").unwrap();
        let mut bytes = sealed.into_bytes();
        let at = position.index(bytes.len());
        bytes[at] = replacement;
        let mutated = String::from_utf8(bytes).unwrap();
        match Envelope::parse(&mutated) {
            Err(BackendError::Rejected(Rejection::MalformedEnvelope(_))) => {}
            Err(other) => prop_assert!(false, "unexpected error: {other:?}"),
            Ok(envelope) => match envelope.open(&key(), b"") {
                Ok(opened) => prop_assert_eq!(&opened[..], &plaintext[..]),
                Err(error) => prop_assert_eq!(error, BackendError::DecryptionFailed),
            },
        }
    }
}

/// The reference model: the state machine as the design brief states it, written plainly.
#[derive(Debug, Clone, PartialEq)]
enum Model {
    Closed(Vec<u64>),
    Open(u64),
    HalfOpen {
        in_flight: u32,
        successes: u32,
        episode: u64,
    },
}

struct Reference {
    config: BreakerConfig,
    now: u64,
    state: Model,
    episodes: u64,
}

impl Reference {
    fn ms(d: Duration) -> u64 {
        d.as_millis() as u64
    }

    fn refresh(&mut self) {
        if let Model::Open(until) = self.state
            && self.now >= until
        {
            self.episodes += 1;
            self.state = Model::HalfOpen {
                in_flight: 0,
                successes: 0,
                episode: self.episodes,
            };
        }
    }

    fn state(&mut self) -> BreakerState {
        self.refresh();
        match self.state {
            Model::Closed(_) => BreakerState::Closed,
            Model::Open(_) => BreakerState::Open,
            Model::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Some(probe episode, if a probe) if admitted.
    fn acquire(&mut self) -> Option<Option<u64>> {
        self.refresh();
        match &mut self.state {
            Model::Closed(_) => Some(None),
            Model::Open(_) => None,
            Model::HalfOpen {
                in_flight, episode, ..
            } => {
                if *in_flight < self.config.half_open_max_probes {
                    *in_flight += 1;
                    Some(Some(*episode))
                } else {
                    None
                }
            }
        }
    }

    /// A probe counts only in its own half-open episode; any other call is a late call.
    fn finish(&mut self, probe: Option<u64>, outcome: Option<CallOutcome>) {
        let open_until = self.now + Self::ms(self.config.open_duration);
        let window = Self::ms(self.config.failure_window);
        match &mut self.state {
            Model::Closed(failures) => {
                if outcome == Some(CallOutcome::Failure) {
                    failures.push(self.now);
                    let now = self.now;
                    failures.retain(|t| now - t < window);
                    if failures.len() >= self.config.failure_threshold as usize {
                        self.state = Model::Open(open_until);
                    }
                }
            }
            Model::HalfOpen {
                in_flight,
                successes,
                episode,
            } => {
                let probe = probe == Some(*episode);
                if probe {
                    *in_flight -= 1;
                }
                match outcome {
                    Some(CallOutcome::Failure) => self.state = Model::Open(open_until),
                    Some(CallOutcome::Success) if probe => {
                        *successes += 1;
                        if *successes >= self.config.success_threshold {
                            self.state = Model::Closed(Vec::new());
                        }
                    }
                    _ => {}
                }
            }
            Model::Open(_) => {}
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// Acquire and finish at once.
    Call(bool),
    /// Acquire and keep the permit pending.
    Hold,
    /// Finish the oldest pending permit: Some(success?) or None for a cancelled call.
    Release(Option<bool>),
    /// Let time pass (ms).
    Advance(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => any::<bool>().prop_map(Step::Call),
        1 => Just(Step::Hold),
        1 => proptest::option::of(any::<bool>()).prop_map(Step::Release),
        2 => (0u64..4000).prop_map(Step::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn breaker_matches_the_reference_model(
        threshold in 1u32..5,
        probes in 1u32..3,
        successes in 1u32..3,
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let config = BreakerConfig {
            failure_threshold: threshold,
            failure_window: Duration::from_secs(5),
            open_duration: Duration::from_secs(3),
            half_open_max_probes: probes,
            success_threshold: successes,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let breaker = CircuitBreaker::new(config.clone());
            let mut reference = Reference { config, now: 0, state: Model::Closed(Vec::new()), episodes: 0 };
            let mut held: Vec<(Permit<'_>, Option<u64>)> = Vec::new();
            for (i, s) in steps.iter().enumerate() {
                let outcome = |ok: bool| if ok { CallOutcome::Success } else { CallOutcome::Failure };
                match s {
                    Step::Call(ok) => {
                        let expected = reference.acquire();
                        let actual = breaker.try_acquire();
                        prop_assert_eq!(expected.is_some(), actual.is_ok(), "step {} {:?}", i, s);
                        if let (Some(probe), Ok(permit)) = (expected, actual) {
                            permit.record(outcome(*ok));
                            reference.finish(probe, Some(outcome(*ok)));
                        }
                    }
                    Step::Hold => {
                        let expected = reference.acquire();
                        let actual = breaker.try_acquire();
                        prop_assert_eq!(expected.is_some(), actual.is_ok(), "step {} {:?}", i, s);
                        if let (Some(probe), Ok(permit)) = (expected, actual) {
                            held.push((permit, probe));
                        }
                    }
                    Step::Release(result) => {
                        if !held.is_empty() {
                            let (permit, probe) = held.remove(0);
                            match result {
                                Some(ok) => {
                                    permit.record(outcome(*ok));
                                    reference.finish(probe, Some(outcome(*ok)));
                                }
                                None => {
                                    drop(permit);
                                    reference.finish(probe, None);
                                }
                            }
                        }
                    }
                    Step::Advance(ms) => {
                        tokio::time::advance(Duration::from_millis(*ms)).await;
                        reference.now += ms;
                    }
                }
                prop_assert_eq!(reference.state(), breaker.state(), "after step {} {:?}", i, s);
            }
            Ok(())
        })?;
    }
}
