//! Tracing of backend calls. In its own test binary: tracing caches per-callsite interest
//! globally, and a test on another thread with no subscriber could disable the callsites
//! this test's thread-local subscriber needs.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use support::capture::Captured;
use support::fault::{FaultBackend, Mode};
use token_service::backends::chain::{Chain, Routes};
use token_service::backends::{Backend, KeyRef};
use token_service::context::CallContext;
use token_service::metrics::Metrics;
use token_service::resilience::{ResilienceConfig, RetryConfig};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

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

/// Counts the `backend_call` spans opened.
#[derive(Clone, Default)]
struct SpanCount(Arc<AtomicUsize>);

impl SpanCount {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for SpanCount {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: Context<'_, S>,
    ) {
        if attrs.metadata().name() == "backend_call" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Captures INFO lines as text and counts backend-call spans, until the guard drops.
fn capture() -> (Captured, SpanCount, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let spans = SpanCount::default();
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(captured.clone())
                .with_ansi(false)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        )
        .with(spans.clone());
    let guard = tracing::subscriber::set_default(subscriber);
    (captured, spans, guard)
}

/// Backend `a` (unavailable) then `b` (answers), both of the given kind.
fn chain_of(in_process: bool) -> (Chain, Arc<FaultBackend>, Arc<FaultBackend>) {
    let a = FaultBackend::new("a", Mode::Unavailable);
    let b = FaultBackend::new("b", Mode::Ok);
    a.set_in_process(in_process);
    b.set_in_process(in_process);
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
    (chain, a, b)
}

/// The failure and fallback lines carry the call's fields, whether the backend runs in this
/// process (span opened only to log) or not (the call runs inside the span).
async fn failure_is_logged_with_backend_operation_key_and_correlation_id(in_process: bool) {
    let (captured, _spans, _guard) = capture();
    let (chain, _a, _b) = chain_of(in_process);
    let ctx = CallContext::with_correlation_id("req-7f3a");
    chain.sign(&ctx, &key(), b"secret-claims").await.unwrap();

    let log = captured.text();
    let unavailable = log
        .lines()
        .find(|l| l.contains("backend unavailable"))
        .unwrap_or_else(|| panic!("no warning logged:\n{log}"));
    for field in [
        "backend_call{",
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

#[tokio::test(start_paused = true)]
async fn a_remote_backends_failure_is_logged_with_the_calls_fields() {
    failure_is_logged_with_backend_operation_key_and_correlation_id(false).await;
}

#[tokio::test(start_paused = true)]
async fn an_in_process_backends_failure_is_logged_with_the_calls_fields() {
    failure_is_logged_with_backend_operation_key_and_correlation_id(true).await;
}

#[tokio::test(start_paused = true)]
async fn every_call_to_a_remote_backend_runs_in_a_span() {
    let (_captured, spans, _guard) = capture();
    sign_three_times(false).await;
    // The span is there for the backend's own lines, which carry the correlation id.
    assert_eq!(spans.get(), 3);
}

/// A chain whose first backend answers, of the given kind, after three signs through it.
async fn sign_three_times(in_process: bool) -> (Chain, Arc<FaultBackend>, CallContext) {
    let (chain, a, _b) = chain_of(in_process);
    a.set_mode(Mode::Ok);
    let ctx = CallContext::with_correlation_id("req-1");
    for _ in 0..3 {
        chain.sign(&ctx, &key(), b"m").await.unwrap();
    }
    (chain, a, ctx)
}

#[tokio::test(start_paused = true)]
async fn an_in_process_key_use_opens_a_span_only_to_log() {
    let (_captured, spans, _guard) = capture();
    let (chain, a, ctx) = sign_three_times(true).await;
    assert_eq!(spans.get(), 0, "successful in-process signs open no span");

    a.set_mode(Mode::Unavailable);
    chain.sign(&ctx, &key(), b"m").await.unwrap();
    assert_eq!(
        spans.get(),
        1,
        "one span, opened for the failure line of `a`"
    );

    // Key management calls run in a span even on an in-process backend.
    let before = spans.get();
    chain.public_keys(&ctx, &key()).await.unwrap();
    assert_eq!(spans.get(), before + 2, "one span per backend asked");
}
