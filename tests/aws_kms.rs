//! The AWS KMS backend against a real KMS-compatible server (moto, through the launcher in
//! `scripts/` that makes it refuse what AWS refuses), one server per test on a free port:
//! every algorithm signed and verified locally, by KMS Verify and by an independent JWT
//! library; encryption directly and by envelope; the encryption context enforced;
//! rotation through the alias; states checked before signing; errors classified. Faults
//! (a server signing the wrong bytes, a server killed under load) are in `aws_kms_faults.rs`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use support::kms::MotoKms;
use token_service::backends::aws_kms::sealed::Sealed;
use token_service::backends::aws_kms::{AwsKmsBackend, NAME};
use token_service::backends::clock::ManualClock;
use token_service::backends::envelope::Envelope;
use token_service::backends::{
    Algorithm, Backend, BackendError, ErrorClass, KeyRef, KeyState, Rejection, VerificationKey,
    VerifyRequest,
};

fn key(name: &str) -> KeyRef {
    KeyRef::new("token", name).unwrap()
}

async fn verify(
    backend: &dyn Backend,
    key: &KeyRef,
    kid: &str,
    alg: Algorithm,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), BackendError> {
    backend
        .verify(VerifyRequest {
            key: VerificationKey::Managed {
                key,
                kid: Some(kid),
            },
            algorithm: alg,
            message: msg,
            signature: sig,
        })
        .await
}

/// A JWS over `header.payload` checked by jsonwebtoken with the JWK the backend exports.
/// (version, state) of every version of `ring`, as `backend` reports them.
async fn states(backend: &AwsKmsBackend, ring: &KeyRef) -> Vec<(u32, KeyState)> {
    backend
        .key_metadata(ring)
        .await
        .unwrap()
        .iter()
        .map(|m| (m.version, m.state))
        .collect()
}

fn jsonwebtoken_accepts(
    jwk: &token_service::backends::PublicJwk,
    alg: Algorithm,
    signing_input: &str,
    signature: &[u8],
) -> bool {
    let decoding = jsonwebtoken::DecodingKey::from_jwk(
        &serde_json::from_value(serde_json::to_value(jwk).unwrap()).unwrap(),
    )
    .unwrap();
    jsonwebtoken::crypto::verify(
        &B64.encode(signature),
        signing_input.as_bytes(),
        &decoding,
        support::jsonwebtoken_algorithm(alg),
    )
    .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_signs_and_verifies_locally_with_kms_and_with_the_exported_jwk() {
    let Some(kms) = MotoKms::start() else { return };
    let backend = kms.backend(kms.options());
    let kms_verifying = kms.backend({
        let mut o = kms.options();
        o.kms_verify = true;
        o
    });
    for alg in [
        Algorithm::Es256,
        Algorithm::Es384,
        Algorithm::Ps256,
        Algorithm::Ps384,
        Algorithm::Ps512,
    ] {
        let ring = key(&format!("signing-{}", alg.as_str().to_lowercase()));
        let created = backend.generate_key(&ring, alg).await.unwrap();
        assert_eq!(
            (created.version, created.state, created.algorithm),
            (1, KeyState::Active, alg)
        );
        let input = format!(
            "{}.{}",
            B64.encode(format!(r#"{{"alg":"{alg}"}}"#)),
            B64.encode("{}")
        );
        let signature = backend.sign(&ring, input.as_bytes()).await.unwrap();
        assert_eq!(
            (
                signature.algorithm,
                signature.key_version,
                signature.backend.as_str()
            ),
            (alg, 1, NAME)
        );
        assert_eq!(signature.kid, created.kid);
        if let Some(len) = alg.fixed_signature_len() {
            assert_eq!(signature.bytes.len(), len, "{alg} in JWS form");
        }

        // Locally, through KMS Verify, and by jsonwebtoken with the exported JWK.
        verify(
            &backend,
            &ring,
            &signature.kid,
            alg,
            input.as_bytes(),
            &signature.bytes,
        )
        .await
        .unwrap();
        verify(
            &kms_verifying,
            &ring,
            &signature.kid,
            alg,
            input.as_bytes(),
            &signature.bytes,
        )
        .await
        .unwrap();
        let published = backend.public_keys(&ring).await.unwrap();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].kid.as_deref(), Some(signature.kid.as_str()));
        assert_eq!(published[0].thumbprint().unwrap(), signature.kid);
        assert!(
            jsonwebtoken_accepts(&published[0], alg, &input, &signature.bytes),
            "{alg}"
        );

        // The exported JWK is the key KMS holds: compare with GetPublicKey parsed here.
        let spki = kms
            .client()
            .get_public_key()
            .key_id(format!("alias/token-service/token/{}", ring.name()))
            .send()
            .await
            .unwrap();
        let (jwk, _) =
            token_service::backends::aws_kms::der::spki_to_jwk(spki.public_key().unwrap().as_ref())
                .unwrap();
        assert_eq!(jwk.thumbprint().unwrap(), signature.kid);

        let mut tampered = signature.bytes.clone();
        tampered[5] ^= 1;
        for checker in [&backend, &kms_verifying] {
            assert_eq!(
                verify(
                    checker,
                    &ring,
                    &signature.kid,
                    alg,
                    input.as_bytes(),
                    &tampered
                )
                .await,
                Err(BackendError::VerificationFailed),
                "{alg} tampered"
            );
        }
    }
    // The Jwk path verifies caller-supplied keys locally: Wycheproof through it.
    let tally = support::vectors::ecdsa_p1363(&backend).await;
    assert!(
        tally.ran > 100 && tally.mismatches.is_empty(),
        "{:?}",
        tally.mismatches
    );
    let (tally, _) = support::vectors::rsa_pss(&backend).await;
    assert!(
        tally.ran > 50 && tally.mismatches.is_empty(),
        "{:?}",
        tally.mismatches
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encryption_round_trips_directly_and_by_envelope_and_binds_its_context() {
    let Some(kms) = MotoKms::start() else { return };
    let backend = kms.backend(kms.options());
    let (ring, [small, large]) = support::kms::aes_ring_and_plaintexts(&backend).await;
    for (plaintext, direct) in [(&small, true), (&large, false)] {
        let sealed = backend
            .encrypt(&ring, plaintext, b"family:abc")
            .await
            .unwrap();
        assert!(!sealed.contains("family record"));
        let envelope = Envelope::parse(&sealed).unwrap();
        assert_eq!(envelope.kid().to_string(), "aws_kms/token-cache/aes/1");
        let body = Sealed::parse(envelope.remote_ciphertext().unwrap()).unwrap();
        assert_eq!(
            matches!(body, Sealed::Direct { .. }),
            direct,
            "payload of {} bytes",
            plaintext.len()
        );
        assert_eq!(
            &*backend.decrypt(&envelope, b"family:abc").await.unwrap(),
            plaintext.as_slice()
        );
        // Other AAD: another encryption context, which KMS refuses.
        assert_eq!(
            backend.decrypt(&envelope, b"family:xyz").await,
            Err(BackendError::DecryptionFailed)
        );
    }

    // The context carries the namespace: KMS itself refuses the blob under another one.
    let sealed = backend.encrypt(&ring, &small, b"").await.unwrap();
    let envelope = Envelope::parse(&sealed).unwrap();
    let Sealed::Direct { blob } = Sealed::parse(envelope.remote_ciphertext().unwrap()).unwrap()
    else {
        panic!("direct form expected")
    };
    let aad_hash = B64.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"").as_ref());
    let raw = |namespace: &str| {
        kms.client()
            .decrypt()
            .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(blob))
            .encryption_context("token-service:namespace", namespace)
            .encryption_context("token-service:key", "aes")
            .encryption_context("token-service:aad-sha256", aad_hash.clone())
            .send()
    };
    assert_eq!(
        raw("token-cache")
            .await
            .unwrap()
            .plaintext()
            .unwrap()
            .as_ref(),
        small.as_slice()
    );
    let refused = raw("token").await.unwrap_err();
    assert_eq!(
        aws_sdk_kms::error::ProvideErrorMetadata::code(&refused),
        Some("InvalidCiphertextException")
    );

    // A data-key envelope with one flipped ciphertext byte does not open.
    let sealed = backend.encrypt(&ring, &large, b"").await.unwrap();
    let envelope = Envelope::parse(&sealed).unwrap();
    let mut body = envelope.remote_ciphertext().unwrap().to_vec();
    let last = body.len() - 20;
    body[last] ^= 1;
    let forged = Envelope::parse(&Envelope::remote(envelope.kid(), &body).unwrap()).unwrap();
    assert_eq!(
        backend.decrypt(&forged, b"").await,
        Err(BackendError::DecryptionFailed)
    );
    // An envelope naming version 2, which does not exist.
    let mut kid = envelope.kid().clone();
    kid.version = 2;
    let misnamed =
        Envelope::parse(&Envelope::remote(&kid, envelope.remote_ciphertext().unwrap()).unwrap())
            .unwrap();
    assert!(matches!(
        backend.decrypt(&misnamed, b"").await,
        Err(BackendError::Rejected(Rejection::UnknownKey(_)))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_moves_the_alias_and_old_signatures_still_verify_until_retention_ends() {
    let Some(kms) = MotoKms::start() else { return };
    let clock = ManualClock::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    let backend = kms
        .backend(kms.options())
        .with_clock(Arc::new(clock.clone()));
    let ring = key("signing");
    backend.generate_key(&ring, Algorithm::Es256).await.unwrap();
    let before = backend.sign(&ring, b"before").await.unwrap();
    let cache_ring = KeyRef::new("token-cache", "aes").unwrap();
    backend
        .generate_key(&cache_ring, Algorithm::A256Gcm)
        .await
        .unwrap();
    let sealed_before =
        Envelope::parse(&backend.encrypt(&cache_ring, b"old", b"").await.unwrap()).unwrap();

    let rotated = backend.rotate_key(&ring).await.unwrap();
    backend.rotate_key(&cache_ring).await.unwrap();
    assert_eq!((rotated.version, rotated.state), (2, KeyState::Active));
    assert_ne!(rotated.kid, before.kid);
    let after = backend.sign(&ring, b"after").await.unwrap();
    assert_eq!(
        (after.key_version, after.kid.as_str()),
        (2, rotated.kid.as_str())
    );

    // KMS shows the ring alias on the new key and a version alias per key.
    let aliases = kms.client().list_aliases().send().await.unwrap();
    let target = |name: &str| {
        aliases
            .aliases()
            .iter()
            .find(|a| a.alias_name() == Some(name))
            .and_then(|a| a.target_key_id())
            .map(str::to_owned)
    };
    let ring_alias = "alias/token-service/token/signing";
    assert_eq!(target(ring_alias), target(&format!("{ring_alias}/v2")));
    assert_ne!(target(ring_alias), target(&format!("{ring_alias}/v1")));

    // A second instance (fresh cache) reads the same ring from KMS alone.
    let other = kms.backend(kms.options());
    assert_eq!(
        states(&other, &ring).await,
        vec![(1, KeyState::Deprecated), (2, KeyState::Active)]
    );
    let kids: Vec<_> = other
        .public_keys(&ring)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|j| j.kid)
        .collect();
    assert!(
        kids.contains(&before.kid) && kids.contains(&after.kid),
        "{kids:?}"
    );
    verify(
        &other,
        &ring,
        &before.kid,
        Algorithm::Es256,
        b"before",
        &before.bytes,
    )
    .await
    .unwrap();
    assert_eq!(&*other.decrypt(&sealed_before, b"").await.unwrap(), b"old");
    let new_envelope =
        Envelope::parse(&other.encrypt(&cache_ring, b"new", b"").await.unwrap()).unwrap();
    assert_eq!(new_envelope.kid().version, 2);

    // Past the 24 h retention the old version no longer verifies or decrypts.
    clock.advance(25 * 3600);
    tokio::time::sleep(Duration::from_millis(250)).await; // metadata TTL
    assert!(matches!(
        verify(
            &backend,
            &ring,
            &before.kid,
            Algorithm::Es256,
            b"before",
            &before.bytes
        )
        .await,
        Err(BackendError::Rejected(Rejection::RetentionExpired {
            version: 1,
            ..
        }))
    ));
    assert!(matches!(
        backend.decrypt(&sealed_before, b"").await,
        Err(BackendError::Rejected(Rejection::RetentionExpired { .. }))
    ));
    let kids: Vec<_> = backend
        .public_keys(&ring)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|j| j.kid)
        .collect();
    assert_eq!(kids, vec![after.kid.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_states_are_checked_before_signing_and_errors_are_classified() {
    let Some(kms) = MotoKms::start() else { return };
    let backend = kms.backend(kms.options());
    let client = kms.client();

    // Unknown keys, wrong algorithms, an AES key asked to sign.
    let unknown = backend.sign(&key("missing"), b"m").await.unwrap_err();
    assert!(
        matches!(unknown, BackendError::Rejected(Rejection::UnknownKey(_))),
        "{unknown}"
    );
    let ring = key("signing");
    let created = backend.generate_key(&ring, Algorithm::Es256).await.unwrap();
    assert!(matches!(
        backend.generate_key(&ring, Algorithm::Es256).await,
        Err(BackendError::Rejected(Rejection::KeyExists(_)))
    ));
    let signature = backend.sign(&ring, b"m").await.unwrap();
    assert!(matches!(
        verify(
            &backend,
            &ring,
            &created.kid,
            Algorithm::Es384,
            b"m",
            &signature.bytes
        )
        .await,
        Err(BackendError::Rejected(Rejection::AlgorithmMismatch { .. }))
    ));
    assert!(matches!(
        verify(
            &backend,
            &ring,
            "no-such-kid",
            Algorithm::Es256,
            b"m",
            &signature.bytes
        )
        .await,
        Err(BackendError::Rejected(Rejection::UnknownKid(_)))
    ));
    let aes = KeyRef::new("token-cache", "aes").unwrap();
    backend
        .generate_key(&aes, Algorithm::A256Gcm)
        .await
        .unwrap();
    assert_eq!(
        backend.sign(&aes, b"m").await.unwrap_err().class(),
        ErrorClass::Rejected
    );
    assert_eq!(
        backend.encrypt(&ring, b"m", b"").await.unwrap_err().class(),
        ErrorClass::Rejected
    );
    assert!(matches!(
        backend.generate_key(&key("ed"), Algorithm::EdDsa).await,
        Err(BackendError::Rejected(Rejection::UnsupportedAlgorithm(_)))
    ));

    // Disabled in KMS: refused by our metadata check (KeyNotActive), not by the server.
    // (moto's DisableKey takes a key id only; AWS takes an ARN too.)
    let key_id = client
        .describe_key()
        .key_id("alias/token-service/token/signing")
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_id()
        .to_owned();
    client.disable_key().key_id(&key_id).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let refused = backend.sign(&ring, b"m").await.unwrap_err();
    assert!(
        matches!(
            refused,
            BackendError::Rejected(Rejection::KeyNotActive {
                state: KeyState::Disabled,
                ..
            })
        ),
        "{refused}"
    );
    client.enable_key().key_id(&key_id).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    backend.sign(&ring, b"m").await.unwrap();
    client
        .schedule_key_deletion()
        .key_id(&key_id)
        .pending_window_in_days(7)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(matches!(
        backend.sign(&ring, b"m").await,
        Err(BackendError::Rejected(Rejection::KeyNotActive {
            state: KeyState::Destroyed,
            ..
        }))
    ));
    assert!(backend.public_keys(&ring).await.unwrap().is_empty());

    // A key adopted by id (KMS_KEY_ID): version 1, signs, cannot be rotated here.
    let external = kms
        .create_signing_key(aws_sdk_kms::types::KeySpec::EccNistP384)
        .await;
    let adopted = kms.backend({
        let mut o = kms.options();
        o.keys = vec![(key("signing"), external.clone())];
        o
    });
    let signature = adopted.sign(&ring, b"m").await.unwrap();
    assert_eq!(
        (signature.algorithm, signature.key_version),
        (Algorithm::Es384, 1)
    );
    let refused = adopted.rotate_key(&ring).await.unwrap_err();
    assert!(
        refused.to_string().contains("rotate it in KMS"),
        "{refused}"
    );

    // An adopted alias is version 1 until the first rotation registers it.
    client
        .create_alias()
        .alias_name("alias/team/signing")
        .target_key_id(&external)
        .send()
        .await
        .unwrap();
    let by_alias = kms.backend({
        let mut o = kms.options();
        o.keys = vec![(key("signing"), "alias/team/signing".into())];
        o
    });
    let v1 = by_alias.sign(&ring, b"m").await.unwrap();
    assert_eq!(v1.key_version, 1);
    let v2 = by_alias.rotate_key(&ring).await.unwrap();
    assert_eq!((v2.version, v2.algorithm), (2, Algorithm::Es384));
    assert_eq!(
        states(&by_alias, &ring).await,
        vec![(1, KeyState::Deprecated), (2, KeyState::Active)]
    );
    verify(&by_alias, &ring, &v1.kid, Algorithm::Es384, b"m", &v1.bytes)
        .await
        .unwrap();

    // Bad references are configuration errors, named.
    let bad = AwsKmsBackend::from_sdk_config(&kms.sdk_config(), {
        let mut o = kms.options();
        o.keys = vec![(key("signing"), "signing-key".into())];
        o
    })
    .unwrap_err();
    assert!(bad.to_string().contains("token/signing"), "{bad}");
    assert_eq!(
        backend.list_keys("token").await.unwrap(),
        vec!["signing".to_string()]
    );
    assert!(backend.health().await.healthy);
}
