//! Family grants sealed under data keys (`src/token/seal.rs`), wrapped by the reference
//! Crypto Service running as a real process, with the software backend as the fallback:
//! one remote wrap seals many grants; an instance that has seen a data key opens its grants
//! through an outage of the service, while a fresh instance cannot until the service is
//! back; tampering, another family's AAD and malformed grants are refused; a grant sealed
//! by the chain itself (before data keys) still opens.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::crypto_server::{CryptoServerProcess, config};
use token_service::backends::chain::{Chain, Routes};
use token_service::backends::clock::ManualClock;
use token_service::backends::crypto_service::{CryptoServiceBackend, CryptoServiceOptions, NAME};
use token_service::backends::software::{SoftwareBackend, SoftwareOptions};
use token_service::backends::{Algorithm, Backend, BackendError, ErrorClass, KeyRef, Operation};
use token_service::context::CallContext;
use token_service::metrics::{Metrics, Outcome};
use token_service::resilience::{BreakerConfig, ResilienceConfig, RetryConfig};
use token_service::token::seal::{DataKeySettings, Sealer};

/// Fail fast on a dead server: one attempt, a short timeout.
fn policies() -> ResilienceConfig {
    ResilienceConfig {
        timeout: Duration::from_secs(1),
        retry: RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        },
        breaker: BreakerConfig {
            open_duration: Duration::from_millis(200),
            ..BreakerConfig::default()
        },
        ..ResilienceConfig::default()
    }
}

/// A chain encrypting through the Crypto Service at `url`, then the local software keys.
async fn chain(url: &str, dir: &std::path::Path, metrics: &Metrics) -> Arc<Chain> {
    let mut options = CryptoServiceOptions::new(url);
    options.channel.connect_timeout = Duration::from_millis(300);
    let remote = Arc::new(CryptoServiceBackend::connect(options).unwrap());
    let local = Arc::new(
        SoftwareBackend::open(&dir.join("local-keys"), SoftwareOptions::default()).unwrap(),
    );
    let chain = Arc::new(
        Chain::new(
            vec![
                (remote as Arc<dyn Backend>, policies()),
                (local as Arc<dyn Backend>, policies()),
            ],
            &Routes {
                sign: vec!["software".into()],
                verify: vec!["software".into()],
                encrypt: vec![NAME.into(), "software".into()],
            },
            true,
            metrics.clone(),
        )
        .unwrap(),
    );
    chain
        .ensure_key(
            &CallContext::new(),
            chain.encrypt_backends(),
            &wrapping_key(),
            Algorithm::A256Gcm,
        )
        .await
        .unwrap();
    chain
}

fn wrapping_key() -> KeyRef {
    KeyRef::new("token-cache", "aes").unwrap()
}

fn sealer(chain: &Arc<Chain>, clock: &ManualClock, settings: DataKeySettings) -> Sealer {
    Sealer::new(
        chain.clone(),
        wrapping_key(),
        Arc::new(clock.clone()),
        settings,
    )
}

/// Seals once the restarted Crypto Service answers again.
async fn seal_when_up(sealer: &Sealer, ctx: &CallContext, plaintext: &[u8], aad: &[u8]) -> String {
    for _ in 0..100 {
        if let Ok(sealed) = sealer.seal(ctx, plaintext, aad).await {
            return sealed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the Crypto Service did not come back");
}

fn remote_encrypts(metrics: &Metrics) -> u64 {
    metrics.request_count(NAME, Operation::Encrypt, Outcome::Ok)
}

fn remote_decrypts(metrics: &Metrics) -> u64 {
    metrics.request_count(NAME, Operation::Decrypt, Outcome::Ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_instance_opens_its_grants_through_an_outage_of_the_wrapping_service() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = CryptoServerProcess::start(dir.path(), &config(dir.path(), "127.0.0.1:0", ""));
    let metrics = Metrics::new();
    let chain = chain(&server.url("http"), dir.path(), &metrics).await;
    let clock = ManualClock::new(1_800_000_000);
    let running = sealer(&chain, &clock, DataKeySettings::default());
    let ctx = CallContext::new();

    // One wrap by the Crypto Service seals every grant of the hour.
    let mut sealed = Vec::new();
    for n in 0..50 {
        let family = format!("family-{n}");
        let grant = format!("grant {n}");
        let envelope = running
            .seal(&ctx, grant.as_bytes(), family.as_bytes())
            .await
            .unwrap();
        assert!(envelope.starts_with("dk1~"), "{envelope}");
        assert!(!envelope.contains(&grant), "sealed, not in clear");
        sealed.push((family, grant, envelope));
    }
    assert_eq!(remote_encrypts(&metrics), 1, "one data key for 50 grants");
    // Another instance, just started, opens all 50 at once: they wait for one unwrap by
    // the service, then come from memory.
    let other = Arc::new(sealer(&chain, &clock, DataKeySettings::default()));
    let opens: Vec<_> = sealed
        .iter()
        .cloned()
        .map(|(family, grant, envelope)| {
            let other = other.clone();
            tokio::spawn(async move {
                let opened = other
                    .open(&CallContext::new(), &envelope, family.as_bytes())
                    .await
                    .unwrap();
                assert_eq!(opened.as_slice(), grant.as_bytes());
            })
        })
        .collect();
    for open in opens {
        open.await.unwrap();
    }
    assert_eq!(
        remote_decrypts(&metrics),
        1,
        "one unwrap for 50 concurrent opens"
    );
    let (made, unwrapped, _) = metrics.tokens().data_key_counts();
    assert_eq!((made, unwrapped), (1, 1), "counted by origin");

    // The service goes away: the instances that hold the key still open the grants; one
    // started now has never seen it and cannot, until the service is back.
    server.kill();
    let (family, grant, envelope) = &sealed[7];
    for instance in [&running, &*other] {
        let opened = instance
            .open(&ctx, envelope, family.as_bytes())
            .await
            .unwrap();
        assert_eq!(opened.as_slice(), grant.as_bytes());
    }
    let fresh = sealer(&chain, &clock, DataKeySettings::default());
    let refused = fresh
        .open(&ctx, envelope, family.as_bytes())
        .await
        .unwrap_err();
    assert_eq!(refused.class(), ErrorClass::Unavailable, "{refused:?}");

    // Past the hour, the next data key is wrapped by the fallback: sealing goes on.
    clock.advance(3601);
    let during = running
        .seal(&ctx, b"sealed during the outage", b"family-x")
        .await
        .unwrap();
    assert_eq!(
        fresh
            .open(&ctx, &during, b"family-x")
            .await
            .unwrap()
            .as_slice(),
        b"sealed during the outage"
    );

    server.restart();
    let mut opened = None;
    for _ in 0..100 {
        match fresh.open(&ctx, envelope, family.as_bytes()).await {
            Ok(plaintext) => {
                opened = Some(plaintext);
                break;
            }
            Err(error) if error.class() == ErrorClass::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("{error:?}"),
        }
    }
    assert_eq!(
        opened.expect("opens once the service is back").as_slice(),
        grant.as_bytes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_keys_rotate_and_are_forgotten_on_time_and_tampering_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = CryptoServerProcess::start(dir.path(), &config(dir.path(), "127.0.0.1:0", ""));
    let metrics = Metrics::new();
    let chain = chain(&server.url("http"), dir.path(), &metrics).await;
    let clock = ManualClock::new(1_800_000_000);
    let settings = DataKeySettings {
        rotate_after: Duration::from_secs(60),
        cache_for: Duration::from_secs(600),
    };
    let sealer = sealer(&chain, &clock, settings);
    let ctx = CallContext::new();

    let first = sealer.seal(&ctx, b"one", b"f1").await.unwrap();
    clock.advance(61);
    let second = sealer.seal(&ctx, b"two", b"f2").await.unwrap();
    assert_eq!(
        remote_encrypts(&metrics),
        2,
        "a new data key after a minute"
    );
    let key_of = |sealed: &str| sealed.split('~').nth(1).unwrap().to_owned();
    assert_ne!(key_of(&first), key_of(&second));
    assert_eq!(sealer.cached_keys(), 2);
    assert_eq!(metrics.tokens().data_key_counts(), (2, 0, 2));

    // Bound to its family, whole, and well-formed: anything else is refused, nothing opens.
    assert_eq!(
        sealer.open(&ctx, &first, b"f2").await.unwrap_err(),
        BackendError::DecryptionFailed
    );
    let mut flipped = first.clone().into_bytes();
    let last = flipped.len() - 2;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    assert_eq!(
        sealer.open(&ctx, &flipped, b"f1").await.unwrap_err(),
        BackendError::DecryptionFailed
    );
    // Another data key's wrap in front of this ciphertext does not open it either.
    let swapped = first.replacen(&key_of(&first), &key_of(&second), 1);
    assert_eq!(
        sealer.open(&ctx, &swapped, b"f1").await.unwrap_err(),
        BackendError::DecryptionFailed
    );
    for malformed in ["dk1~", "dk1~a~b", "dk1~a~b~c~d", "dk1~x~!!~AAAA"] {
        let refused = sealer.open(&ctx, malformed, b"f1").await.unwrap_err();
        assert_eq!(
            refused.class(),
            ErrorClass::Rejected,
            "{malformed}: {refused:?}"
        );
    }

    // Past `cache_for` a key is forgotten: opening needs the service again. So is the key
    // that sealed last, which no longer seals either.
    server.kill();
    clock.advance(601);
    for (sealed, family) in [(&first, b"f1"), (&second, b"f2")] {
        let refused = sealer.open(&ctx, sealed, family).await.unwrap_err();
        assert_eq!(refused.class(), ErrorClass::Unavailable, "{refused:?}");
    }
    assert_eq!(sealer.cached_keys(), 0, "forgotten keys leave memory");
    assert_eq!(
        metrics.tokens().data_key_counts().2,
        0,
        "and the gauge says so"
    );
    server.restart();

    // Without a lookup or a new key, the sweep a serving instance runs on a timer drops them.
    let third = seal_when_up(&sealer, &ctx, b"three", b"f3").await;
    assert_eq!(sealer.cached_keys(), 1);
    assert_eq!(metrics.tokens().data_key_counts().2, 1);
    clock.advance(600);
    sealer.forget_expired();
    assert_eq!(sealer.cached_keys(), 0, "swept while idle");
    assert_eq!(metrics.tokens().data_key_counts().2, 0);
    assert_eq!(
        sealer.open(&ctx, &third, b"f3").await.unwrap().as_slice(),
        b"three",
        "unwrapped again through the service"
    );

    // A grant sealed by the chain itself, before data keys, still opens.
    let mut legacy = None;
    for _ in 0..100 {
        match chain.encrypt(&ctx, &wrapping_key(), b"old", b"f0").await {
            Ok(envelope) if envelope.starts_with("eyJ") => {
                legacy = Some(envelope);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let legacy = legacy.expect("the chain encrypts");
    assert_eq!(
        sealer.open(&ctx, &legacy, b"f0").await.unwrap().as_slice(),
        b"old"
    );
}
