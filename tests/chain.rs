//! The chain and its policies, against fault-injecting backends, on tokio's paused clock.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::fault::{FaultBackend, Mode};
use token_service::backends::chain::{Chain, Routes};
use token_service::backends::envelope::{Envelope, EnvelopeKid};
use token_service::backends::{
    Algorithm, Backend, BackendError, ErrorClass, KeyRef, Operation, PublicJwk, UnavailableReason,
    VerificationKey, VerifyRequest,
};
use token_service::context::CallContext;
use token_service::metrics::{Metrics, Outcome};
use token_service::resilience::{
    BreakerConfig, BreakerState, RateLimitConfig, ResilienceConfig, RetryConfig,
};

fn no_retry() -> ResilienceConfig {
    ResilienceConfig {
        retry: RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        },
        ..ResilienceConfig::default()
    }
}

fn chain_of(backends: &[(&Arc<FaultBackend>, ResilienceConfig)], fallback: bool) -> Chain {
    let names: Vec<String> = backends.iter().map(|(b, _)| b.name().to_owned()).collect();
    let routes = Routes {
        sign: names.clone(),
        verify: names.clone(),
        encrypt: names,
    };
    Chain::new(
        backends
            .iter()
            .map(|(b, c)| ((*b).clone() as Arc<dyn Backend>, c.clone()))
            .collect(),
        &routes,
        fallback,
        Metrics::new(),
    )
    .unwrap()
}

fn key() -> KeyRef {
    KeyRef::new("token", "signing").unwrap()
}

async fn sign(chain: &Chain) -> Result<String, BackendError> {
    chain
        .sign(&CallContext::new(), &key(), b"m")
        .await
        .map(|s| s.backend)
}

fn breaker_of(chain: &Chain, name: &str) -> BreakerState {
    chain.backend(name).unwrap().breaker_state()
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_at_threshold_and_then_refuses_without_calling() {
    let a = FaultBackend::new("a", Mode::Unavailable);
    let chain = chain_of(&[(&a, no_retry())], true);
    for i in 0..5 {
        assert_eq!(
            breaker_of(&chain, "a"),
            BreakerState::Closed,
            "after {i} failures"
        );
        assert!(sign(&chain).await.is_err());
    }
    assert_eq!(a.calls(), 5);
    assert_eq!(breaker_of(&chain, "a"), BreakerState::Open);
    assert_eq!(chain.metrics().breaker_gauge("a"), 1);

    a.set_mode(Mode::Ok);
    for _ in 0..10 {
        let error = sign(&chain).await.unwrap_err();
        assert!(matches!(
            error,
            BackendError::Unavailable {
                reason: UnavailableReason::BreakerOpen,
                ..
            }
        ));
    }
    assert_eq!(a.calls(), 5, "an open breaker must not call the backend");
    let m = chain.metrics();
    assert_eq!(
        m.request_count("a", Operation::Sign, Outcome::Unavailable),
        5
    );
    assert_eq!(
        m.request_count("a", Operation::Sign, Outcome::BreakerOpen),
        10
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_bounded_probes_and_closes_after_successes() {
    let a = FaultBackend::new("a", Mode::Unavailable);
    let mut config = no_retry();
    config.breaker = BreakerConfig {
        half_open_max_probes: 2,
        success_threshold: 3,
        ..BreakerConfig::default()
    };
    let chain = Arc::new(chain_of(&[(&a, config)], true));
    for _ in 0..5 {
        let _ = sign(&chain).await;
    }
    assert_eq!(breaker_of(&chain, "a"), BreakerState::Open);

    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(breaker_of(&chain, "a"), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(breaker_of(&chain, "a"), BreakerState::HalfOpen);
    assert_eq!(chain.metrics().breaker_gauge("a"), 2);

    // Five concurrent calls against a slow, healthy backend: only two probes get through.
    a.set_mode(Mode::Slow(Duration::from_millis(500)));
    let calls_before = a.calls();
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let chain = chain.clone();
            tokio::spawn(async move { sign(&chain).await })
        })
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(BackendError::Unavailable {
                reason: UnavailableReason::BreakerOpen,
                ..
            }) => refused += 1,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, refused), (2, 3));
    assert_eq!(a.calls() - calls_before, 2);
    assert_eq!(a.max_in_flight(), 2);
    assert_eq!(breaker_of(&chain, "a"), BreakerState::HalfOpen);

    // The third success closes it.
    assert!(sign(&chain).await.is_ok());
    assert_eq!(breaker_of(&chain, "a"), BreakerState::Closed);
    assert_eq!(chain.metrics().breaker_gauge("a"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_the_breaker() {
    let a = FaultBackend::new("a", Mode::Unavailable);
    let chain = chain_of(&[(&a, no_retry())], true);
    for _ in 0..5 {
        let _ = sign(&chain).await;
    }
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(breaker_of(&chain, "a"), BreakerState::HalfOpen);
    assert!(sign(&chain).await.is_err());
    assert_eq!(a.calls(), 6);
    assert_eq!(breaker_of(&chain, "a"), BreakerState::Open);
    assert_eq!(chain.metrics().breaker_gauge("a"), 1);
    // And it stays open for a full recovery period again.
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(breaker_of(&chain, "a"), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn only_unavailable_errors_are_retried_with_growing_delays() {
    let a = FaultBackend::new("a", Mode::Unavailable);
    let config = ResilienceConfig {
        retry: RetryConfig {
            max_attempts: 4,
            ..RetryConfig::default()
        },
        breaker: BreakerConfig {
            failure_threshold: 100,
            ..BreakerConfig::default()
        },
        ..ResilienceConfig::default()
    };
    let chain = chain_of(&[(&a, config.clone())], true);
    assert!(sign(&chain).await.is_err());
    let starts = a.starts();
    assert_eq!(starts.len(), 4);
    let gaps: Vec<u128> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    for (gap, nominal) in gaps.iter().zip([100u128, 200, 400]) {
        let (lo, hi) = (nominal * 8 / 10, nominal * 12 / 10);
        assert!(
            (lo..=hi).contains(gap),
            "gap {gap} ms outside {lo}..={hi} (gaps {gaps:?})"
        );
    }
    assert_eq!(chain.metrics().retry_count("a", Operation::Sign), 3);

    for mode in [
        Mode::Rejected,
        Mode::VerificationFailed,
        Mode::WrongSignatureLength,
    ] {
        let b = FaultBackend::new("b", mode.clone());
        let chain = chain_of(&[(&b, config.clone())], true);
        assert!(sign(&chain).await.is_err());
        assert_eq!(b.calls(), 1, "{mode:?} must not be retried");
    }
}

#[tokio::test(start_paused = true)]
async fn key_generation_is_never_retried() {
    let a = FaultBackend::new("a", Mode::Unavailable);
    let config = ResilienceConfig {
        retry: RetryConfig {
            max_attempts: 4,
            ..RetryConfig::default()
        },
        ..ResilienceConfig::default()
    };
    let chain = chain_of(&[(&a, config)], true);
    let guarded = chain.backend("a").unwrap();
    let k = key();
    let result = guarded
        .call(&CallContext::new(), Operation::RotateKey, &"k", |b| {
            b.rotate_key(&k)
        })
        .await;
    assert!(result.is_err());
    assert_eq!(a.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn fallback_reaches_the_next_backend_and_is_counted() {
    let a = FaultBackend::new("a", Mode::Unavailable);
    let b = FaultBackend::new("b", Mode::Ok);
    let chain = chain_of(&[(&a, no_retry()), (&b, no_retry())], true);
    assert_eq!(sign(&chain).await.unwrap(), "b");
    assert_eq!((a.calls(), b.calls()), (1, 1));
    assert_eq!(chain.metrics().fallback_count(Operation::Sign, "a", "b"), 1);
    let rendered = chain.metrics().render();
    assert!(rendered.contains(
        "token_service_fallback_activations_total{from=\"a\",operation=\"sign\",to=\"b\"} 1"
    ));

    // Once a's breaker is open, calls go straight to b without touching a.
    for _ in 0..10 {
        assert_eq!(sign(&chain).await.unwrap(), "b");
    }
    assert_eq!(a.calls(), 5);
    assert_eq!(breaker_of(&chain, "a"), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn final_answers_never_fall_back() {
    for (mode, class) in [
        (Mode::Rejected, ErrorClass::Rejected),
        (Mode::VerificationFailed, ErrorClass::VerificationFailed),
        (Mode::WrongSignatureLength, ErrorClass::Security),
    ] {
        let a = FaultBackend::new("a", mode.clone());
        let b = FaultBackend::new("b", Mode::Ok);
        let chain = chain_of(&[(&a, no_retry()), (&b, no_retry())], true);
        let error = sign(&chain).await.unwrap_err();
        assert_eq!(error.class(), class, "{mode:?}: {error}");
        assert_eq!(b.calls(), 0, "{mode:?} fell back");
        assert_eq!(chain.metrics().fallback_count(Operation::Sign, "a", "b"), 0);
        // The backend answered, so the breaker does not count it.
        assert_eq!(breaker_of(&chain, "a"), BreakerState::Closed);
    }
    // A security event is counted as such.
    let a = FaultBackend::new("a", Mode::WrongSignatureLength);
    let chain = chain_of(&[(&a, no_retry())], true);
    let _ = sign(&chain).await;
    assert_eq!(
        chain
            .metrics()
            .request_count("a", Operation::Sign, Outcome::Security),
        1
    );
    assert!(
        chain
            .metrics()
            .render()
            .contains("token_service_security_events_total{backend=\"a\"} 1")
    );
}

#[tokio::test(start_paused = true)]
async fn verification_failure_is_final_on_verify() {
    let a = FaultBackend::new("a", Mode::VerificationFailed);
    let b = FaultBackend::new("b", Mode::Ok);
    let chain = chain_of(&[(&a, no_retry()), (&b, no_retry())], true);
    let jwk = PublicJwk::from_ed25519(&[1; 32]);
    let result = chain
        .verify(
            &CallContext::new(),
            VerifyRequest {
                key: VerificationKey::Jwk(&jwk),
                algorithm: Algorithm::EdDsa,
                message: b"m",
                signature: &[0; 64],
            },
        )
        .await;
    assert_eq!(result, Err(BackendError::VerificationFailed));
    assert_eq!(b.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn with_fallback_disabled_the_error_surfaces() {
    let a = FaultBackend::new("a", Mode::Unavailable);
    let b = FaultBackend::new("b", Mode::Ok);
    let chain = chain_of(&[(&a, no_retry()), (&b, no_retry())], false);
    let error = sign(&chain).await.unwrap_err();
    assert!(matches!(error, BackendError::Unavailable { ref backend, .. } if backend == "a"));
    assert_eq!(b.calls(), 0);
    // Also when the refusal is the open breaker's.
    for _ in 0..5 {
        let _ = sign(&chain).await;
    }
    assert!(matches!(
        sign(&chain).await.unwrap_err(),
        BackendError::Unavailable {
            reason: UnavailableReason::BreakerOpen,
            ..
        }
    ));
    assert_eq!(b.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn all_backends_unavailable_reports_each() {
    let a = FaultBackend::new("a", Mode::Unavailable);
    let b = FaultBackend::new("b", Mode::Unavailable);
    let chain = chain_of(&[(&a, no_retry()), (&b, no_retry())], true);
    let error = sign(&chain).await.unwrap_err();
    let shown = error.to_string();
    assert!(matches!(
        error,
        BackendError::Unavailable {
            reason: UnavailableReason::ChainExhausted { .. },
            ..
        }
    ));
    assert!(shown.contains("a: ") && shown.contains("b: "), "{shown}");
}

#[tokio::test(start_paused = true)]
async fn rate_limit_bounds_what_reaches_a_backend() {
    let a = FaultBackend::new("a", Mode::Ok);
    let b = FaultBackend::new("b", Mode::Ok);
    let mut limited = no_retry();
    limited.rate_limit = Some(RateLimitConfig {
        per_second: 10,
        burst: Some(5),
    });
    let chain = chain_of(&[(&a, limited), (&b, no_retry())], true);
    for _ in 0..20 {
        sign(&chain).await.unwrap();
    }
    assert_eq!((a.calls(), b.calls()), (5, 15));
    assert_eq!(
        chain
            .metrics()
            .request_count("a", Operation::Sign, Outcome::RateLimited),
        15
    );
    // A local refusal is not a backend failure.
    assert_eq!(breaker_of(&chain, "a"), BreakerState::Closed);
    tokio::time::advance(Duration::from_secs(1)).await;
    for _ in 0..20 {
        sign(&chain).await.unwrap();
    }
    assert_eq!(a.calls(), 10);
}

#[tokio::test(start_paused = true)]
async fn concurrency_limit_bounds_calls_in_flight() {
    let a = FaultBackend::new("a", Mode::Slow(Duration::from_secs(1)));
    let mut limited = no_retry();
    limited.max_concurrency = Some(2);
    limited.concurrency_wait = Duration::from_millis(10);
    let chain = Arc::new(chain_of(&[(&a, limited)], false));
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let chain = chain.clone();
            tokio::spawn(async move { sign(&chain).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    assert_eq!(a.max_in_flight(), 2);
    assert_eq!(a.calls(), 2);
    let limited = outcomes
        .iter()
        .filter(|r| {
            matches!(
                r,
                Err(BackendError::Unavailable {
                    reason: UnavailableReason::ConcurrencyLimited,
                    ..
                })
            )
        })
        .count();
    assert_eq!(limited, 4);
    assert_eq!(
        chain
            .metrics()
            .request_count("a", Operation::Sign, Outcome::ConcurrencyLimited),
        4
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_backend_times_out_and_counts_against_the_breaker() {
    let a = FaultBackend::new("a", Mode::Slow(Duration::from_secs(60)));
    let b = FaultBackend::new("b", Mode::Ok);
    let chain = chain_of(&[(&a, no_retry()), (&b, no_retry())], true);
    let started = tokio::time::Instant::now();
    assert_eq!(sign(&chain).await.unwrap(), "b");
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(
        chain
            .metrics()
            .request_count("a", Operation::Sign, Outcome::Unavailable),
        1
    );
    for _ in 0..4 {
        sign(&chain).await.unwrap();
    }
    assert_eq!(breaker_of(&chain, "a"), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_backend_without_the_capability_is_skipped_not_failed() {
    let a = FaultBackend::with_operations("a", Mode::Ok, vec![Operation::Verify]);
    let b = FaultBackend::new("b", Mode::Ok);
    let chain = chain_of(&[(&a, no_retry()), (&b, no_retry())], true);
    assert_eq!(sign(&chain).await.unwrap(), "b");
    assert_eq!(a.calls(), 0);
    assert_eq!(chain.metrics().fallback_count(Operation::Sign, "a", "b"), 0);

    let only = chain_of(&[(&a, no_retry())], true);
    assert!(matches!(
        sign(&only).await.unwrap_err(),
        BackendError::Rejected(token_service::backends::Rejection::NoCapableBackend(
            Operation::Sign
        ))
    ));
}

#[tokio::test(start_paused = true)]
async fn decrypt_goes_to_the_backend_named_in_the_envelope() {
    let a = FaultBackend::new("a", Mode::Ok);
    let b = FaultBackend::new("b", Mode::Ok);
    let chain = chain_of(&[(&a, no_retry()), (&b, no_retry())], true);
    let aes = aws_lc_rs::aead::LessSafeKey::new(
        aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &[9; 32]).unwrap(),
    );
    let envelope = Envelope::seal(
        &EnvelopeKid::parse("b/token-cache/aes/1").unwrap(),
        &aes,
        b"x",
        b"",
    )
    .unwrap();
    let opened = chain
        .decrypt(&CallContext::new(), &envelope, b"")
        .await
        .unwrap();
    assert_eq!(&opened[..], b"b");
    assert_eq!((a.calls(), b.calls()), (0, 1));

    // Unavailable on decrypt does not go elsewhere: no other backend can open it.
    b.set_mode(Mode::Unavailable);
    assert!(
        chain
            .decrypt(&CallContext::new(), &envelope, b"")
            .await
            .is_err()
    );
    assert_eq!(a.calls(), 0);

    let foreign = Envelope::seal(
        &EnvelopeKid::parse("pkcs11/token-cache/aes/1").unwrap(),
        &aes,
        b"x",
        b"",
    )
    .unwrap();
    assert!(matches!(
        chain.decrypt(&CallContext::new(), &foreign, b"").await,
        Err(BackendError::Rejected(
            token_service::backends::Rejection::UnknownEnvelopeBackend(_)
        ))
    ));
}

#[tokio::test]
async fn ensure_key_skips_a_backend_that_is_down_and_fails_only_if_none_answers() {
    let dir = tempfile::tempdir().unwrap();
    let down = FaultBackend::new("down", Mode::Unavailable);
    let local: Arc<dyn Backend> = Arc::new(
        token_service::backends::software::SoftwareBackend::open(
            &dir.path().join("keys"),
            Default::default(),
        )
        .unwrap(),
    );
    let routes = Routes {
        sign: vec!["down".into(), "software".into()],
        verify: vec![],
        encrypt: vec![],
    };
    let chain = Chain::new(
        vec![
            (down.clone() as Arc<dyn Backend>, no_retry()),
            (local, no_retry()),
        ],
        &routes,
        true,
        Metrics::new(),
    )
    .unwrap();
    let ctx = CallContext::new();
    let made = chain
        .ensure_key(&ctx, chain.sign_backends(), &key(), Algorithm::Es256)
        .await
        .unwrap();
    assert_eq!(made.len(), 1);
    assert_eq!(made[0].backend, "software");

    let only_down = chain_of(&[(&down, no_retry())], true);
    let error = only_down
        .ensure_key(&ctx, only_down.sign_backends(), &key(), Algorithm::Es256)
        .await
        .unwrap_err();
    assert_eq!(error.class(), ErrorClass::Unavailable);
}
