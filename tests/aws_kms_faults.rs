//! The AWS KMS backend when the server misbehaves or dies: plain moto (which signs the
//! digest as if it were the message) caught by the local check of every signature, and the
//! server killed under concurrent signing with the chain falling back.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::kms::{Flavour, MotoKms};
use token_service::backends::aws_kms::NAME;
use token_service::backends::chain::{Chain, Routes};
use token_service::backends::envelope::Envelope;
use token_service::backends::software::{SoftwareBackend, SoftwareOptions};
use token_service::backends::{Algorithm, Backend, ErrorClass, KeyRef};
use token_service::context::CallContext;
use token_service::metrics::Metrics;
use token_service::resilience::{BreakerConfig, ResilienceConfig, RetryConfig};

fn key(name: &str) -> KeyRef {
    KeyRef::new("token", name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_ignores_digest_signing_is_a_security_error() {
    // Plain moto hashes the digest again (facts.md): its signatures are over the wrong
    // bytes. The backend verifies every KMS signature before using it, so this is caught.
    let Some(kms) = MotoKms::start_flavour(Flavour::PlainMoto) else {
        return;
    };
    let backend = kms.backend(kms.options());
    let ring = key("signing");
    backend.generate_key(&ring, Algorithm::Es256).await.unwrap();
    let (captured, _guard) = support::capture::Captured::install();
    let error = backend.sign(&ring, b"message").await.unwrap_err();
    assert_eq!(error.class(), ErrorClass::Security, "{error}");
    assert!(error.to_string().contains("does not verify"), "{error}");
    assert!(captured.text().contains("KMS answer refused"));
}

fn policies() -> ResilienceConfig {
    ResilienceConfig {
        timeout: Duration::from_secs(2),
        retry: RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        },
        breaker: BreakerConfig {
            failure_threshold: 3,
            failure_window: Duration::from_secs(60),
            open_duration: Duration::from_secs(30),
            half_open_max_probes: 1,
            success_threshold: 2,
        },
        ..ResilienceConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_kms_server_makes_calls_unavailable_and_the_chain_falls_back() {
    let Some(mut kms) = MotoKms::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let remote = Arc::new(kms.backend(kms.options()));
    let local = Arc::new(
        SoftwareBackend::open(&dir.path().join("keys"), SoftwareOptions::default()).unwrap(),
    );
    let metrics = Metrics::new();
    let chain = Arc::new(
        Chain::new(
            vec![
                (remote.clone() as Arc<dyn Backend>, policies()),
                (local as Arc<dyn Backend>, policies()),
            ],
            &Routes {
                sign: vec![NAME.into(), "software".into()],
                verify: vec!["software".into()],
                encrypt: vec![],
            },
            true,
            metrics.clone(),
        )
        .unwrap(),
    );
    let ring = key("signing");
    let ctx = CallContext::new();
    chain
        .ensure_key(&ctx, chain.sign_backends(), &ring, Algorithm::Es256)
        .await
        .unwrap();
    let published_before = chain.public_keys(&ctx, &ring).await.unwrap();
    assert_eq!(
        published_before.len(),
        2,
        "both backends' keys are published"
    );

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let signers: Vec<_> = (0..4)
        .map(|_| {
            let (chain, ring, stop) = (chain.clone(), ring.clone(), stop.clone());
            tokio::spawn(async move {
                let mut made = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let signature = chain
                        .sign(&CallContext::new(), &ring, b"steady")
                        .await
                        .expect("the software fallback signs");
                    made.push(signature);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                made
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    kms.kill();
    // The backend alone now reports the outage as unavailable.
    let direct = remote.sign(&ring, b"direct").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut signatures = Vec::new();
    for signer in signers {
        signatures.extend(signer.await.unwrap());
    }
    let direct = direct.unwrap_err();
    assert_eq!(direct.class(), ErrorClass::Unavailable, "{direct}");
    assert_eq!(
        metrics.breaker_gauge(NAME),
        1,
        "breaker open after the kill"
    );
    assert!(metrics.fallback_count(token_service::backends::Operation::Sign, NAME, "software") > 0);
    let by_kms = signatures.iter().filter(|s| s.backend == NAME).count();
    let by_software = signatures
        .iter()
        .filter(|s| s.backend == "software")
        .count();
    assert!(
        by_kms > 0 && by_software > 0,
        "kms {by_kms}, software {by_software}"
    );
    // Every signature verifies against the keys published before the outage.
    for signature in &signatures {
        let jwk = published_before
            .iter()
            .find(|j| j.kid.as_deref() == Some(signature.kid.as_str()))
            .expect("published kid");
        jwk.verifier(Algorithm::Es256)
            .unwrap()
            .verify_sig(b"steady", &signature.bytes)
            .unwrap();
    }
    assert!(!remote.health().await.healthy);
    let rendered = metrics.render();
    assert!(
        rendered.contains("backend=\"aws_kms\""),
        "metrics name the backend"
    );
}

/// A Decrypt answer without Plaintext is a security error, for both envelope forms: never
/// an empty plaintext (direct) nor a mere decryption failure (data key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decrypt_answer_without_plaintext_is_a_security_error() {
    let Some(kms) = MotoKms::start_flavour(Flavour::DecryptWithoutPlaintext) else {
        return;
    };
    let backend = kms.backend(kms.options());
    let (ring, plaintexts) = support::kms::aes_ring_and_plaintexts(&backend).await;
    for plaintext in plaintexts {
        let sealed = backend.encrypt(&ring, &plaintext, b"aad").await.unwrap();
        let envelope = Envelope::parse(&sealed).unwrap();
        let (captured, _guard) = support::capture::Captured::install();
        let error = backend.decrypt(&envelope, b"aad").await.unwrap_err();
        assert_eq!(error.class(), ErrorClass::Security, "{error}");
        assert!(error.to_string().contains("gave no plaintext"), "{error}");
        assert!(captured.text().contains("KMS answer refused"));
    }
}
