//! The software backend through the chain: key states, rotation and retention, envelopes,
//! and every bad-input path as a typed error.

mod support;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use token_service::backends::chain::{Chain, Routes};
use token_service::backends::clock::ManualClock;
use token_service::backends::software::{SoftwareBackend, SoftwareOptions};
use token_service::backends::{
    Algorithm, Backend, BackendError, KeyRef, KeyState, Rejection, VerificationKey, VerifyRequest,
};
use token_service::context::CallContext;
use token_service::metrics::Metrics;
use token_service::resilience::ResilienceConfig;

const DAY: u64 = 24 * 3600;

struct Fixture {
    _dir: tempfile::TempDir,
    backend: Arc<SoftwareBackend>,
    chain: Chain,
    clock: ManualClock,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000);
    let backend = Arc::new(
        SoftwareBackend::open_with_clock(
            &dir.path().join("keys"),
            SoftwareOptions::default(),
            Arc::new(clock.clone()),
        )
        .unwrap(),
    );
    let routes = Routes {
        sign: vec!["software".into()],
        verify: vec!["software".into()],
        encrypt: vec!["software".into()],
    };
    let chain = Chain::new(
        vec![(
            backend.clone() as Arc<dyn Backend>,
            ResilienceConfig::default(),
        )],
        &routes,
        true,
        Metrics::new(),
    )
    .unwrap();
    Fixture {
        _dir: dir,
        backend,
        chain,
        clock,
    }
}

fn ctx() -> CallContext {
    CallContext::new()
}

fn signing() -> KeyRef {
    KeyRef::new("token", "signing").unwrap()
}

fn aes() -> KeyRef {
    KeyRef::new("token-cache", "aes").unwrap()
}

async fn verify_managed(
    f: &Fixture,
    kid: &str,
    message: &[u8],
    signature: &[u8],
) -> Result<(), BackendError> {
    f.chain
        .verify(
            &ctx(),
            VerifyRequest {
                key: VerificationKey::Managed {
                    key: &signing(),
                    kid: Some(kid),
                },
                algorithm: Algorithm::Es256,
                message,
                signature,
            },
        )
        .await
}

#[tokio::test]
async fn rotation_keeps_old_versions_verifying_for_the_retention_then_refuses_them() {
    let f = fixture();
    f.backend
        .generate_key(&signing(), Algorithm::Es256)
        .await
        .unwrap();
    let old = f.chain.sign(&ctx(), &signing(), b"before").await.unwrap();
    assert_eq!(old.key_version, 1);

    f.clock.advance(60);
    let rotated = f.backend.rotate_key(&signing()).await.unwrap();
    assert_eq!((rotated.version, rotated.state), (2, KeyState::Active));
    let new = f.chain.sign(&ctx(), &signing(), b"after").await.unwrap();
    assert_eq!(new.key_version, 2);
    assert_ne!(new.kid, old.kid);

    let versions = f.backend.key_metadata(&signing()).await.unwrap();
    assert_eq!(versions[0].state, KeyState::Deprecated);
    assert_eq!(versions[0].rotated_at, Some(1_700_000_060));
    assert_eq!(versions[0].retained_until, Some(1_700_000_060 + DAY));

    // Both verify; both are published.
    verify_managed(&f, &old.kid, b"before", &old.bytes)
        .await
        .unwrap();
    verify_managed(&f, &new.kid, b"after", &new.bytes)
        .await
        .unwrap();
    let published = f.chain.public_keys(&ctx(), &signing()).await.unwrap();
    assert_eq!(published.len(), 2);

    // Signing with the deprecated version is refused.
    let pinned = signing().with_version(1);
    assert!(matches!(
        f.chain.sign(&ctx(), &pinned, b"x").await,
        Err(BackendError::Rejected(Rejection::KeyNotActive {
            version: 1,
            state: KeyState::Deprecated,
            ..
        }))
    ));

    // One second before the end of retention it still verifies; at the end it does not.
    f.clock.advance(DAY - 1);
    verify_managed(&f, &old.kid, b"before", &old.bytes)
        .await
        .unwrap();
    f.clock.advance(1);
    assert!(matches!(
        verify_managed(&f, &old.kid, b"before", &old.bytes).await,
        Err(BackendError::Rejected(Rejection::RetentionExpired {
            version: 1,
            ..
        }))
    ));
    let published = f.chain.public_keys(&ctx(), &signing()).await.unwrap();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].kid.as_deref(), Some(new.kid.as_str()));
    assert_eq!(
        f.backend.key_metadata(&signing()).await.unwrap()[0].state,
        KeyState::Destroyed
    );

    // The next rotation destroys the expired version's key file.
    let key_file = f.backend.key_file(&signing(), 1);
    assert!(key_file.exists());
    f.backend.rotate_key(&signing()).await.unwrap();
    assert!(!key_file.exists());
}

#[tokio::test]
async fn disabled_and_destroyed_versions_refuse_everything() {
    let f = fixture();
    f.backend
        .generate_key(&signing(), Algorithm::Es256)
        .await
        .unwrap();
    let sig = f.chain.sign(&ctx(), &signing(), b"m").await.unwrap();
    f.backend
        .set_version_state(&signing(), 1, KeyState::Disabled)
        .await
        .unwrap();
    assert!(matches!(
        f.chain.sign(&ctx(), &signing(), b"m").await,
        Err(BackendError::Rejected(Rejection::KeyNotActive {
            state: KeyState::Disabled,
            ..
        }))
    ));
    assert!(matches!(
        verify_managed(&f, &sig.kid, b"m", &sig.bytes).await,
        Err(BackendError::Rejected(Rejection::KeyUnusable {
            state: KeyState::Disabled,
            ..
        }))
    ));
    // Re-enabled, it works again; destroyed, it never comes back.
    f.backend
        .set_version_state(&signing(), 1, KeyState::Active)
        .await
        .unwrap();
    f.chain.sign(&ctx(), &signing(), b"m").await.unwrap();
    f.backend
        .set_version_state(&signing(), 1, KeyState::Destroyed)
        .await
        .unwrap();
    assert!(!f.backend.key_file(&signing(), 1).exists());
    assert!(
        f.backend
            .set_version_state(&signing(), 1, KeyState::Active)
            .await
            .is_err()
    );
    assert!(f.chain.sign(&ctx(), &signing(), b"m").await.is_err());
}

#[tokio::test]
async fn encryption_round_trips_and_old_versions_decrypt_within_retention() {
    let f = fixture();
    f.backend
        .generate_key(&aes(), Algorithm::A256Gcm)
        .await
        .unwrap();
    let sealed = f
        .chain
        .encrypt(&ctx(), &aes(), b"family record", b"family:7")
        .await
        .unwrap();
    let header = B64.decode(sealed.split('.').next().unwrap()).unwrap();
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(header["alg"], "dir");
    assert_eq!(header["enc"], "A256GCM");
    assert_eq!(header["kid"], "software/token-cache/aes/1");
    assert_eq!(
        &f.chain.decrypt(&ctx(), &sealed, b"family:7").await.unwrap()[..],
        b"family record"
    );

    f.backend.rotate_key(&aes()).await.unwrap();
    let newer = f.chain.encrypt(&ctx(), &aes(), b"x", b"").await.unwrap();
    assert!(newer.starts_with(
        &B64.encode(br#"{"alg":"dir","enc":"A256GCM","kid":"software/token-cache/aes/2"}"#)
    ));
    assert!(f.chain.decrypt(&ctx(), &sealed, b"family:7").await.is_ok());
    f.clock.advance(DAY);
    assert!(matches!(
        f.chain.decrypt(&ctx(), &sealed, b"family:7").await,
        Err(BackendError::Rejected(Rejection::RetentionExpired { .. }))
    ));
    // Encrypting with a pinned deprecated version is refused.
    assert!(matches!(
        f.chain
            .encrypt(&ctx(), &aes().with_version(1), b"x", b"")
            .await,
        Err(BackendError::Rejected(Rejection::KeyNotActive { .. }))
    ));
}

#[tokio::test]
async fn bad_envelopes_are_typed_errors() {
    let f = fixture();
    f.backend
        .generate_key(&aes(), Algorithm::A256Gcm)
        .await
        .unwrap();
    let sealed = f
        .chain
        .encrypt(&ctx(), &aes(), b"payload", b"aad")
        .await
        .unwrap();
    let parts: Vec<&str> = sealed.split('.').collect();

    let flip = |part: &str| {
        let mut bytes = B64.decode(part).unwrap();
        bytes[0] ^= 1;
        B64.encode(bytes)
    };
    let tampered_ciphertext = format!("{}..{}.{}.{}", parts[0], parts[2], flip(parts[3]), parts[4]);
    let tampered_tag = format!("{}..{}.{}.{}", parts[0], parts[2], parts[3], flip(parts[4]));
    for envelope in [&tampered_ciphertext, &tampered_tag] {
        assert_eq!(
            f.chain.decrypt(&ctx(), envelope, b"aad").await,
            Err(BackendError::DecryptionFailed)
        );
    }
    assert_eq!(
        f.chain.decrypt(&ctx(), &sealed, b"other aad").await,
        Err(BackendError::DecryptionFailed)
    );
    for malformed in [
        &sealed[..sealed.len() / 2],
        "",
        "a.b.c",
        "....",
        &format!("{sealed}.x"),
    ] {
        assert!(
            matches!(
                f.chain.decrypt(&ctx(), malformed, b"aad").await,
                Err(BackendError::Rejected(Rejection::MalformedEnvelope(_)))
            ),
            "{malformed:?}"
        );
    }
    // Unknown key and unknown version named by an otherwise well-formed envelope.
    let other_key = format!(
        "{}..{}.{}.{}",
        B64.encode(br#"{"alg":"dir","enc":"A256GCM","kid":"software/token-cache/nope/1"}"#),
        parts[2],
        parts[3],
        parts[4]
    );
    assert!(matches!(
        f.chain.decrypt(&ctx(), &other_key, b"aad").await,
        Err(BackendError::Rejected(Rejection::UnknownKey(_)))
    ));
    let other_version = format!(
        "{}..{}.{}.{}",
        B64.encode(br#"{"alg":"dir","enc":"A256GCM","kid":"software/token-cache/aes/9"}"#),
        parts[2],
        parts[3],
        parts[4]
    );
    assert!(matches!(
        f.chain.decrypt(&ctx(), &other_version, b"aad").await,
        Err(BackendError::Rejected(Rejection::UnknownKid(_)))
    ));
}

#[tokio::test]
async fn unknown_keys_kids_and_wrong_algorithms_are_rejected() {
    let f = fixture();
    f.backend
        .generate_key(&signing(), Algorithm::Es256)
        .await
        .unwrap();
    f.backend
        .generate_key(&aes(), Algorithm::A256Gcm)
        .await
        .unwrap();
    let missing = KeyRef::new("token", "missing").unwrap();
    assert!(matches!(
        f.chain.sign(&ctx(), &missing, b"m").await,
        Err(BackendError::Rejected(Rejection::UnknownKey(_)))
    ));
    let sig = f.chain.sign(&ctx(), &signing(), b"m").await.unwrap();
    assert!(matches!(
        verify_managed(&f, "not-a-kid", b"m", &sig.bytes).await,
        Err(BackendError::Rejected(Rejection::UnknownKid(_)))
    ));
    // ES384 claimed for a P-256 key.
    let wrong_alg = f
        .chain
        .verify(
            &ctx(),
            VerifyRequest {
                key: VerificationKey::Managed {
                    key: &signing(),
                    kid: Some(&sig.kid),
                },
                algorithm: Algorithm::Es384,
                message: b"m",
                signature: &sig.bytes,
            },
        )
        .await;
    assert!(matches!(
        wrong_alg,
        Err(BackendError::Rejected(Rejection::AlgorithmMismatch { .. }))
    ));
    // Signing with an AES key, encrypting with a signing key.
    assert!(matches!(
        f.chain.sign(&ctx(), &aes(), b"m").await,
        Err(BackendError::Rejected(Rejection::AlgorithmMismatch { .. }))
    ));
    assert!(matches!(
        f.chain.encrypt(&ctx(), &signing(), b"m", b"").await,
        Err(BackendError::Rejected(Rejection::AlgorithmMismatch { .. }))
    ));
    // A second generate of the same ring.
    assert!(matches!(
        f.backend.generate_key(&signing(), Algorithm::Es256).await,
        Err(BackendError::Rejected(Rejection::KeyExists(_)))
    ));
    // Names that could leave the data directory never reach it.
    assert!(KeyRef::new("token", "../../etc").is_err());
    // A flipped signature bit is a verification failure, not an error.
    let mut flipped = sig.bytes.clone();
    flipped[10] ^= 1;
    assert_eq!(
        verify_managed(&f, &sig.kid, b"m", &flipped).await,
        Err(BackendError::VerificationFailed)
    );
    assert_eq!(
        verify_managed(&f, &sig.kid, b"m", &sig.bytes[..63]).await,
        Err(BackendError::VerificationFailed)
    );
}

#[tokio::test]
async fn a_second_process_sees_the_same_ring() {
    let f = fixture();
    f.backend
        .generate_key(&signing(), Algorithm::EdDsa)
        .await
        .unwrap();
    f.backend.rotate_key(&signing()).await.unwrap();
    let reopened = SoftwareBackend::open(f.backend.data_dir(), SoftwareOptions::default()).unwrap();
    let a = f.backend.key_metadata(&signing()).await.unwrap();
    let b = reopened.key_metadata(&signing()).await.unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(
        a.iter().map(|m| (&m.kid, m.version)).collect::<Vec<_>>(),
        b.iter().map(|m| (&m.kid, m.version)).collect::<Vec<_>>()
    );
    assert_eq!(
        reopened.list_keys("token").await.unwrap(),
        vec!["signing".to_owned()]
    );
}

#[tokio::test]
async fn concurrent_rotations_never_lose_a_version() {
    let f = fixture();
    f.backend
        .generate_key(&signing(), Algorithm::Es256)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let backend = f.backend.clone();
            tokio::spawn(async move { backend.rotate_key(&signing()).await.unwrap().version })
        })
        .collect();
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort();
    assert_eq!(versions, (2..=9).collect::<Vec<u32>>());
    let ring = f.backend.key_metadata(&signing()).await.unwrap();
    assert_eq!(ring.len(), 9);
    assert_eq!(
        ring.iter().filter(|m| m.state == KeyState::Active).count(),
        1
    );
}

#[tokio::test]
async fn nothing_secret_appears_in_debug_or_errors() {
    let f = fixture();
    f.backend
        .generate_key(&aes(), Algorithm::A256Gcm)
        .await
        .unwrap();
    f.chain.encrypt(&ctx(), &aes(), b"x", b"").await.unwrap();
    let raw = std::fs::read(f.backend.key_file(&aes(), 1)).unwrap();
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let b64 = B64.encode(&raw);
    let shown = format!("{:?} {:?}", f.backend, f.chain);
    assert!(!shown.contains(&hex) && !shown.contains(&b64));
    assert!(!shown.contains(&format!("{:?}", &raw[..8])));
}
