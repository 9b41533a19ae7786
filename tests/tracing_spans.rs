//! Tracing of backend calls. In its own test binary: tracing caches per-callsite interest
//! globally, and a test on another thread with no subscriber could disable the callsites
//! this test's thread-local subscriber needs.

mod support;

use std::sync::Arc;

use support::capture::Captured;
use support::fault::{FaultBackend, Mode};
use token_service::backends::chain::{Chain, Routes};
use token_service::backends::{Backend, KeyRef};
use token_service::context::CallContext;
use token_service::metrics::Metrics;
use token_service::resilience::{ResilienceConfig, RetryConfig};

fn no_retry() -> ResilienceConfig {
    ResilienceConfig {
        retry: RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        },
        ..ResilienceConfig::default()
    }
}

fn key() -> KeyRef {
    KeyRef::new("token", "signing").unwrap()
}

#[tokio::test(start_paused = true)]
async fn every_backend_call_is_traced_with_backend_operation_key_and_correlation_id() {
    let (captured, _guard) = Captured::install();

    let a = FaultBackend::new("a", Mode::Unavailable);
    let b = FaultBackend::new("b", Mode::Ok);
    let routes = Routes {
        sign: vec!["a".into(), "b".into()],
        verify: vec![],
        encrypt: vec![],
    };
    let chain = Chain::new(
        vec![
            (a.clone() as Arc<dyn Backend>, no_retry()),
            (b.clone() as Arc<dyn Backend>, no_retry()),
        ],
        &routes,
        true,
        Metrics::new(),
    )
    .unwrap();
    let ctx = CallContext::with_correlation_id("req-7f3a");
    chain.sign(&ctx, &key(), b"secret-claims").await.unwrap();

    let log = captured.text();
    let unavailable = log
        .lines()
        .find(|l| l.contains("backend unavailable"))
        .unwrap_or_else(|| panic!("no warning logged:\n{log}"));
    for field in [
        "backend=\"a\"",
        "operation=\"sign\"",
        "key=token/signing",
        "correlation_id=\"req-7f3a\"",
    ] {
        assert!(
            unavailable.contains(field),
            "{field} missing from: {unavailable}"
        );
    }
    let fallback = log
        .lines()
        .find(|l| l.contains("falling back"))
        .unwrap_or_else(|| panic!("no fallback logged:\n{log}"));
    assert!(
        fallback.contains("correlation_id=\"req-7f3a\"") && fallback.contains("to=\"b\""),
        "{fallback}"
    );
    // The message being signed never reaches the log.
    assert!(!log.contains("secret-claims"));
}
