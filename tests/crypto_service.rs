//! The Crypto Service client backend against the reference server, over real loopback
//! sockets: every operation and algorithm; correlation id and traceparent seen by the server;
//! TLS and mTLS; failover when the server is killed and recovery when it returns; rotation
//! seen by the client; bad input answered with the right codes.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::crypto_server::{CryptoServerProcess, config};
use support::pki::Pki;
use token_service::api::crypto_proto as pb;
use token_service::api::crypto_proto::crypto_service_client::CryptoServiceClient;
use token_service::backends::chain::{Chain, Routes};
use token_service::backends::crypto_service::{
    ClientTls, CryptoServiceBackend, CryptoServiceOptions, NAME,
};
use token_service::backends::software::{SoftwareBackend, SoftwareOptions};
use token_service::backends::{
    Algorithm, Backend, BackendError, ErrorClass, KeyRef, VerificationKey, VerifyRequest,
};
use token_service::context::CallContext;
use token_service::metrics::Metrics;
use token_service::resilience::{BreakerConfig, ResilienceConfig, RetryConfig};
use tonic::Code;

fn options(address: &str, tls: Option<ClientTls>, ttl: Duration) -> CryptoServiceOptions {
    let mut options = CryptoServiceOptions::new(address);
    options.channel.connect_timeout = Duration::from_secs(1);
    options.channel.tls = tls;
    options.metadata_ttl = ttl;
    options
}

fn client(address: &str) -> Arc<CryptoServiceBackend> {
    Arc::new(
        CryptoServiceBackend::connect(options(address, None, Duration::from_secs(30))).unwrap(),
    )
}

fn policies(open_for: Duration) -> ResilienceConfig {
    ResilienceConfig {
        timeout: Duration::from_secs(2),
        retry: RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        },
        breaker: BreakerConfig {
            failure_threshold: 3,
            failure_window: Duration::from_secs(60),
            open_duration: open_for,
            half_open_max_probes: 1,
            success_threshold: 2,
        },
        ..ResilienceConfig::default()
    }
}

fn software(dir: &std::path::Path) -> Arc<SoftwareBackend> {
    Arc::new(SoftwareBackend::open(&dir.join("local-keys"), SoftwareOptions::default()).unwrap())
}

fn key(name: &str) -> KeyRef {
    KeyRef::new("token", name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_and_algorithm_round_trips_with_correlation_and_trace() {
    let dir = tempfile::tempdir().unwrap();
    let server = CryptoServerProcess::start(dir.path(), &config(dir.path(), "127.0.0.1:0", ""));
    let remote = client(&server.url("http"));
    let chain = Chain::new(
        vec![(
            remote.clone() as Arc<dyn Backend>,
            policies(Duration::from_secs(30)),
        )],
        &Routes {
            sign: vec![NAME.into()],
            verify: vec![NAME.into()],
            encrypt: vec![NAME.into()],
        },
        true,
        Metrics::new(),
    )
    .unwrap();
    let ctx = CallContext::with_correlation_id("corr-round-trip-1").with_trace_headers(
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        None,
    );
    for algorithm in Algorithm::SIGNING {
        let key = key(&format!("k-{}", algorithm.as_str().to_ascii_lowercase()));
        chain
            .ensure_key(&ctx, chain.sign_backends(), &key, algorithm)
            .await
            .unwrap();
        let message = b"header.payload";
        let signature = chain.sign(&ctx, &key, message).await.unwrap();
        assert_eq!(signature.backend, NAME);
        assert_eq!(signature.algorithm, algorithm);
        // Remotely, by managed key and by JWK; locally from the listed public keys.
        chain
            .verify(
                &ctx,
                VerifyRequest {
                    key: VerificationKey::Managed {
                        key: &key,
                        kid: Some(&signature.kid),
                    },
                    algorithm,
                    message,
                    signature: &signature.bytes,
                },
            )
            .await
            .unwrap();
        let published = chain.public_keys(&ctx, &key).await.unwrap();
        let jwk = published
            .iter()
            .find(|j| j.kid.as_deref() == Some(signature.kid.as_str()))
            .expect("signing key listed");
        let local = jwk.verifier(algorithm).unwrap();
        token_service::backends::jwk::verify_with(&local, message, &signature.bytes).unwrap();
        let mut forged = signature.bytes.clone();
        forged[5] ^= 1;
        let refused = chain
            .verify(
                &ctx,
                VerifyRequest {
                    key: VerificationKey::Jwk(jwk),
                    algorithm,
                    message,
                    signature: &forged,
                },
            )
            .await;
        assert_eq!(refused, Err(BackendError::VerificationFailed));
    }
    let aes = KeyRef::new("token-cache", "aes").unwrap();
    chain
        .ensure_key(&ctx, chain.encrypt_backends(), &aes, Algorithm::A256Gcm)
        .await
        .unwrap();
    let sealed = chain
        .encrypt(&ctx, &aes, b"family record", b"fam:1")
        .await
        .unwrap();
    assert!(sealed.contains('.'));
    let opened = chain.decrypt(&ctx, &sealed, b"fam:1").await.unwrap();
    assert_eq!(&opened[..], b"family record");
    assert_eq!(
        chain.decrypt(&ctx, &sealed, b"fam:2").await,
        Err(BackendError::DecryptionFailed)
    );

    // The server saw the correlation id and the caller's trace id, and logged no payload.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = server.log();
    assert!(log.contains("corr-round-trip-1"), "{log}");
    assert!(log.contains("4bf92f3577b34da6a3ce929d0e0e4736"), "{log}");
    assert!(!log.contains("family record"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_status_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = CryptoServerProcess::start(dir.path(), &config(dir.path(), "127.0.0.1:0", ""));
    let mut raw = CryptoServiceClient::connect(server.url("http"))
        .await
        .unwrap();
    raw.generate_key(pb::GenerateKeyRequest {
        correlation_id: "bad-1".into(),
        key_id: "token/signing".into(),
        algorithm: pb::Algorithm::Es256 as i32,
    })
    .await
    .unwrap();
    let sign = |key_id: &str, algorithm: pb::Algorithm, message: Vec<u8>| pb::SignRequest {
        correlation_id: "bad-2".into(),
        key_id: key_id.into(),
        key_version: 0,
        algorithm: algorithm as i32,
        message,
    };
    let cases = [
        (
            sign("token/nope", pb::Algorithm::Unspecified, b"m".to_vec()),
            Code::NotFound,
        ),
        (
            sign("token/signing", pb::Algorithm::Ps256, b"m".to_vec()),
            Code::FailedPrecondition,
        ),
        (
            sign("token/signing", pb::Algorithm::Unspecified, vec![]),
            Code::InvalidArgument,
        ),
        (
            sign("token/signing", pb::Algorithm::Unspecified, vec![7; 70_000]),
            Code::InvalidArgument,
        ),
        (
            sign("not-a-key-id", pb::Algorithm::Unspecified, b"m".to_vec()),
            Code::InvalidArgument,
        ),
    ];
    for (request, code) in cases {
        let status = raw.sign(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(!status.message().is_empty());
    }
    for ciphertext in [
        b"not an envelope".to_vec(),
        vec![0xff, 0xfe],
        b"a.b.c.d.e".to_vec(),
    ] {
        let status = raw
            .decrypt(pb::DecryptRequest {
                correlation_id: "bad-3".into(),
                ciphertext,
                aad: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    let status = raw
        .generate_key(pb::GenerateKeyRequest {
            correlation_id: "bad-4".into(),
            key_id: "token/signing".into(),
            algorithm: pb::Algorithm::Es256 as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    // Still serving after all of that.
    raw.sign(sign("token/signing", pb::Algorithm::Es256, b"m".to_vec()))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_on_the_server_is_seen_and_published() {
    let dir = tempfile::tempdir().unwrap();
    let server = CryptoServerProcess::start(dir.path(), &config(dir.path(), "127.0.0.1:0", ""));
    let signer = client(&server.url("http"));
    let admin = client(&server.url("http"));
    let key = key("signing");
    signer.generate_key(&key, Algorithm::Es256).await.unwrap();
    let before = signer.sign(&key, b"m").await.unwrap();
    assert_eq!(before.key_version, 1);
    let rotated = admin.rotate_key(&key).await.unwrap();
    assert_eq!(rotated.version, 2);
    // The signer's metadata still says version 1 is active; the answer names version 2:
    // a rotation, so the client refreshes and accepts it.
    let after = signer.sign(&key, b"m").await.unwrap();
    assert_eq!(after.key_version, 2);
    assert_ne!(after.kid, before.kid);
    let published = signer.public_keys(&key).await.unwrap();
    let kids: Vec<_> = published.iter().filter_map(|j| j.kid.clone()).collect();
    assert!(
        kids.contains(&before.kid) && kids.contains(&after.kid),
        "{kids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_falls_back_and_traffic_returns_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = CryptoServerProcess::start(dir.path(), &config(dir.path(), "127.0.0.1:0", ""));
    let remote = client(&server.url("http"));
    let metrics = Metrics::new();
    let local = software(dir.path());
    let chain = Arc::new(
        Chain::new(
            vec![
                (
                    remote.clone() as Arc<dyn Backend>,
                    policies(Duration::from_secs(1)),
                ),
                (local as Arc<dyn Backend>, policies(Duration::from_secs(1))),
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
    let key = key("signing");
    let ctx = CallContext::new();
    chain
        .ensure_key(&ctx, chain.sign_backends(), &key, Algorithm::Es256)
        .await
        .unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let signers: Vec<_> = (0..4)
        .map(|_| {
            let (chain, key, stop) = (chain.clone(), key.clone(), stop.clone());
            tokio::spawn(async move {
                let mut made = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let ctx = CallContext::new();
                    let signature = chain
                        .sign(&ctx, &key, b"steady")
                        .await
                        .expect("no call fails while a fallback can sign");
                    made.push(signature);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                made
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A JWKS fetch before the outage, as resource servers make all the time.
    let signed_before = chain.sign(&ctx, &key, b"steady").await.unwrap();
    assert_eq!(signed_before.backend, NAME);
    chain.public_keys(&ctx, &key).await.unwrap();
    server.kill();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        metrics.breaker_gauge(NAME),
        1,
        "breaker open after the kill"
    );
    assert!(metrics.fallback_count(token_service::backends::Operation::Sign, NAME, "software") > 0);
    // During the outage the JWKS still holds the primary's keys (the ones it last
    // published), so tokens it signed before going down keep verifying.
    let during = chain.public_keys(&CallContext::new(), &key).await.unwrap();
    assert!(
        during
            .iter()
            .any(|jwk| jwk.kid.as_deref() == Some(signed_before.kid.as_str())),
        "the primary's key is published during the outage: {during:?}"
    );
    server.restart();
    // Half-open after 1 s, closed after 2 good probes: traffic returns to the primary.
    let mut back = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if metrics.breaker_gauge(NAME) == 0 {
            back = true;
            break;
        }
    }
    assert!(back, "breaker closed again after the restart");
    let after = chain
        .sign(&CallContext::new(), &key, b"steady")
        .await
        .unwrap();
    assert_eq!(after.backend, NAME);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = Vec::new();
    for signer in signers {
        all.extend(signer.await.unwrap());
    }
    let backends: std::collections::BTreeSet<_> = all.iter().map(|s| s.backend.clone()).collect();
    assert!(
        backends.contains(NAME) && backends.contains("software"),
        "{backends:?}"
    );
    // Every signature verifies against the union of keys the chain publishes.
    let published = chain.public_keys(&CallContext::new(), &key).await.unwrap();
    for signature in all.iter().chain([&after]) {
        let jwk = published
            .iter()
            .find(|j| j.kid.as_deref() == Some(signature.kid.as_str()))
            .expect("kid published");
        let verifier = jwk.verifier(Algorithm::Es256).unwrap();
        token_service::backends::jwk::verify_with(&verifier, b"steady", &signature.bytes).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_admits_a_client_with_a_certificate_only() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let tls = pki.server_tls_table(true);
    let server = CryptoServerProcess::start(dir.path(), &config(dir.path(), "127.0.0.1:0", &tls));
    let address = format!("https://localhost:{}", server.addr.port());
    let with_cert = CryptoServiceBackend::connect(options(
        &address,
        Some(ClientTls {
            ca_file: pki.path("ca.pem"),
            cert_file: Some(pki.path("client.pem")),
            key_file: Some(pki.path("client.key")),
            domain_name: None,
        }),
        Duration::from_secs(30),
    ))
    .unwrap();
    let key = key("signing");
    with_cert
        .generate_key(&key, Algorithm::Es256)
        .await
        .unwrap();
    with_cert.sign(&key, b"m").await.unwrap();

    let without_cert = CryptoServiceBackend::connect(options(
        &address,
        Some(ClientTls {
            ca_file: pki.path("ca.pem"),
            cert_file: None,
            key_file: None,
            domain_name: None,
        }),
        Duration::from_secs(30),
    ))
    .unwrap();
    let refused = without_cert.key_metadata(&key).await.unwrap_err();
    assert_eq!(refused.class(), ErrorClass::Unavailable, "{refused}");

    let plaintext = client(&format!("http://127.0.0.1:{}", server.addr.port()));
    let refused = plaintext.key_metadata(&key).await.unwrap_err();
    assert_eq!(refused.class(), ErrorClass::Unavailable);
    let message = refused.to_string();
    assert!(message.contains("TLS"), "{message}");
    eprintln!("plaintext client against the TLS server: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_reports_health_and_metrics_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = CryptoServerProcess::start(dir.path(), &config(dir.path(), "127.0.0.1:0", ""));
    let remote = client(&server.url("http"));
    assert!(remote.health().await.healthy);
    let key = key("signing");
    remote.generate_key(&key, Algorithm::Es256).await.unwrap();
    remote.sign(&key, b"m").await.unwrap();

    let admin = server.admin;
    let (ready, body) =
        tokio::task::spawn_blocking(move || support::process::http_get(admin, "/admin/v1/readyz"))
            .await
            .unwrap();
    assert_eq!(ready, 200, "{body}");
    let (code, metrics) =
        tokio::task::spawn_blocking(move || support::process::http_get(admin, "/metrics"))
            .await
            .unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("token_service_backend_requests_total{backend=\"software\",operation=\"sign\",outcome=\"ok\"} 1"),
        "{metrics}"
    );

    assert!(server.terminate().success(), "{}", server.log());
    assert!(server.log().contains("shut down cleanly"));
    assert!(!remote.health().await.healthy);
}

#[test]
fn the_server_needs_a_config_file() {
    let output = std::process::Command::new(support::process::binary())
        .arg("crypto-service")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--config"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_naming_its_callers_lends_its_keys_to_them_only() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(); // `client` is named token-service
    pki.issue("other", "other-team.internal");
    let text = config(dir.path(), "127.0.0.1:0", &pki.server_tls_table(true))
        + "\n[namespaces.token]\ncallers = [\"token-service\"]\n";
    let server = CryptoServerProcess::start(dir.path(), &text);
    let address = format!("https://localhost:{}", server.addr.port());
    let as_named = |name: &str| {
        CryptoServiceBackend::connect(options(
            &address,
            Some(ClientTls {
                ca_file: pki.path("ca.pem"),
                cert_file: Some(pki.path(&format!("{name}.pem"))),
                key_file: Some(pki.path(&format!("{name}.key"))),
                domain_name: None,
            }),
            Duration::from_secs(30),
        ))
        .unwrap()
    };
    let (token_service, other) = (as_named("client"), as_named("other"));
    let signing = key("signing");
    token_service
        .generate_key(&signing, Algorithm::Es256)
        .await
        .unwrap();
    let signature = token_service.sign(&signing, b"m").await.unwrap();

    let refused = other.sign(&signing, b"m").await.unwrap_err();
    assert_eq!(
        refused.class(),
        ErrorClass::Rejected,
        "final, not an outage: {refused}"
    );
    let shown = refused.to_string();
    assert!(
        shown.contains("PermissionDenied") && shown.contains("caller other-team.internal"),
        "{shown}"
    );
    let other_key = KeyRef::new("token", "theirs").unwrap();
    assert_eq!(
        other
            .generate_key(&other_key, Algorithm::Es256)
            .await
            .unwrap_err()
            .class(),
        ErrorClass::Rejected
    );
    // What the named caller sealed, another cannot open, nor seal with the same key.
    let aes = key("aes");
    token_service
        .generate_key(&aes, Algorithm::A256Gcm)
        .await
        .unwrap();
    let sealed = token_service
        .encrypt(&aes, b"secret", b"aad")
        .await
        .unwrap();
    let envelope = token_service::backends::envelope::Envelope::parse(&sealed).unwrap();
    assert_eq!(
        other.decrypt(&envelope, b"aad").await.unwrap_err().class(),
        ErrorClass::Rejected
    );
    assert_eq!(
        other
            .encrypt(&aes, b"secret", b"aad")
            .await
            .unwrap_err()
            .class(),
        ErrorClass::Rejected
    );
    assert_eq!(
        &*token_service.decrypt(&envelope, b"aad").await.unwrap(),
        b"secret"
    );
    // Public operations stay open; other namespaces are open to every admitted caller.
    assert!(!other.public_keys(&signing).await.unwrap().is_empty());
    let team = KeyRef::new("team", "signing").unwrap();
    other.generate_key(&team, Algorithm::Es256).await.unwrap();
    other.sign(&team, b"m").await.unwrap();
    assert_eq!(signature.backend, NAME);
    let log = server.log();
    assert!(
        log.contains("caller_refused") && log.contains("other-team.internal"),
        "{log}"
    );
}
