//! The PKCS#11 backend's operations on real tokens (SoftHSM and kryoptic, each test with a
//! token of its own, see `support::softhsm`): every signing algorithm, AES-GCM, rotation,
//! a concurrent pool and the Wycheproof vectors. Faults and errors: `pkcs11_faults.rs`.

mod support;

use std::sync::Arc;

use support::pkcs11_backend::{key, options, runtime};
use token_service::backends::pkcs11::{Pkcs11Backend, Pkcs11Options};
use token_service::backends::software::{SoftwareBackend, SoftwareOptions};
use token_service::backends::{
    Algorithm, Backend, BackendError, KeyRef, KeyState, Rejection, VerificationKey, VerifyRequest,
};

token_test!(
    every_algorithm_signs_on_the_token_and_verifies_elsewhere,
    |token| {
        runtime().block_on(async {
            let hsm = Pkcs11Backend::open(options(&token)).unwrap();
            let on_token = Pkcs11Backend::open(Pkcs11Options {
                verify_on_token: true,
                ..options(&token)
            })
            .unwrap();
            let dir = tempfile::tempdir().unwrap();
            let software =
                SoftwareBackend::open(&dir.path().join("k"), SoftwareOptions::default()).unwrap();
            let algorithms: Vec<Algorithm> = Algorithm::SIGNING
                .into_iter()
                .filter(|a| hsm.capabilities().supports_algorithm(*a))
                .collect();
            println!("token algorithms: {:?}", hsm.capabilities().algorithms);
            assert!(
                algorithms.len() >= 5,
                "SoftHSM offers ES256/384, PS256/384/512: {algorithms:?}"
            );
            for algorithm in algorithms {
                let k = key(&format!("sig-{}", algorithm.as_str().to_ascii_lowercase()));
                let meta = hsm.generate_key(&k, algorithm).await.unwrap();
                assert_eq!((meta.version, meta.state), (1, KeyState::Active));
                // A JWS signed on the token.
                let header = format!(
                    r#"{{"alg":"{}","kid":"{}","typ":"JWT"}}"#,
                    algorithm.as_str(),
                    meta.kid
                );
                let claims = r#"{"sub":"alice","exp":4000000000}"#;
                use base64::Engine;
                let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                let input = format!("{}.{}", b64.encode(header), b64.encode(claims));
                let signature = hsm.sign(&k, input.as_bytes()).await.unwrap();
                assert_eq!(signature.kid, meta.kid);
                if let Some(len) = algorithm.fixed_signature_len() {
                    assert_eq!(signature.bytes.len(), len, "{algorithm}: raw r||s expected");
                }
                let jwk = meta.public_jwk.clone().unwrap();
                assert_eq!(jwk.kid.as_deref(), Some(meta.kid.as_str()));
                let request = |key| VerifyRequest {
                    key,
                    algorithm,
                    message: input.as_bytes(),
                    signature: &signature.bytes,
                };
                // Verified by the software backend from the exported JWK...
                software
                    .verify(request(VerificationKey::Jwk(&jwk)))
                    .await
                    .unwrap();
                // ...by the token itself, locally and on the token...
                hsm.verify(request(VerificationKey::Managed {
                    key: &k,
                    kid: Some(&meta.kid),
                }))
                .await
                .unwrap();
                on_token
                    .verify(request(VerificationKey::Managed {
                        key: &k,
                        kid: Some(&meta.kid),
                    }))
                    .await
                    .unwrap();
                on_token
                    .verify(request(VerificationKey::Jwk(&jwk)))
                    .await
                    .unwrap();
                // ...and by jsonwebtoken.
                let compact = format!("{input}.{}", b64.encode(&signature.bytes));
                let decoding = jsonwebtoken::DecodingKey::from_jwk(
                    &serde_json::from_value(serde_json::to_value(&jwk).unwrap()).unwrap(),
                )
                .unwrap();
                let validation =
                    jsonwebtoken::Validation::new(support::jsonwebtoken_algorithm(algorithm));
                jsonwebtoken::decode::<serde_json::Value>(&compact, &decoding, &validation)
                    .unwrap_or_else(|e| panic!("{algorithm}: jsonwebtoken refused: {e}"));
                // A flipped bit fails everywhere.
                let mut bad = signature.bytes.clone();
                bad[5] ^= 1;
                let bad_request = |key| VerifyRequest {
                    key,
                    algorithm,
                    message: input.as_bytes(),
                    signature: &bad,
                };
                assert_eq!(
                    software
                        .verify(bad_request(VerificationKey::Jwk(&jwk)))
                        .await,
                    Err(BackendError::VerificationFailed)
                );
                assert_eq!(
                    on_token
                        .verify(bad_request(VerificationKey::Managed {
                            key: &k,
                            kid: Some(&meta.kid)
                        }))
                        .await,
                    Err(BackendError::VerificationFailed)
                );
                println!(
                    "{algorithm}: signed on the token, verified by software, token and jsonwebtoken"
                );
            }
        });
    }
);

token_test!(aes_gcm_round_trip_and_tampering_refused, |token| {
    runtime().block_on(async {
        let hsm = Pkcs11Backend::open(options(&token)).unwrap();
        let k = KeyRef::new("token-cache", "aes").unwrap();
        hsm.generate_key(&k, Algorithm::A256Gcm).await.unwrap();
        let sealed = hsm
            .encrypt(&k, b"family record", b"family:1")
            .await
            .unwrap();
        let envelope = token_service::backends::envelope::Envelope::parse(&sealed).unwrap();
        assert_eq!(envelope.kid().to_string(), "pkcs11/token-cache/aes/1");
        assert_eq!(
            &hsm.decrypt(&envelope, b"family:1").await.unwrap()[..],
            b"family record"
        );
        assert_eq!(
            hsm.decrypt(&envelope, b"family:2").await,
            Err(BackendError::DecryptionFailed)
        );
        let mut parts: Vec<String> = sealed.split('.').map(str::to_owned).collect();
        parts[3] = {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let mut ct = b64.decode(&parts[3]).unwrap();
            ct[0] ^= 1;
            b64.encode(ct)
        };
        let tampered =
            token_service::backends::envelope::Envelope::parse(&parts.join(".")).unwrap();
        assert_eq!(
            hsm.decrypt(&tampered, b"family:1").await,
            Err(BackendError::DecryptionFailed)
        );
        // A tampered tag is not an outage either: the backend keeps working.
        assert!(hsm.encrypt(&k, b"x", b"").await.is_ok());
    });
});

token_test!(rotation_and_states_survive_a_restart, |token| {
    runtime().block_on(async {
        let k = key("signing");
        let (old_sig, old_kid) = {
            let hsm = Pkcs11Backend::open(options(&token)).unwrap();
            hsm.generate_key(&k, Algorithm::Es256).await.unwrap();
            let old = hsm.sign(&k, b"before").await.unwrap();
            let rotated = hsm.rotate_key(&k).await.unwrap();
            assert_eq!(rotated.version, 2);
            assert_eq!(hsm.sign(&k, b"after").await.unwrap().key_version, 2);
            assert!(matches!(
                hsm.sign(&k.clone().with_version(1), b"x").await,
                Err(BackendError::Rejected(Rejection::KeyNotActive {
                    state: KeyState::Deprecated,
                    ..
                }))
            ));
            (old.bytes, old.kid)
        };
        // A new backend (as after a restart) finds the same ring and states on the token.
        let hsm = Pkcs11Backend::open(options(&token)).unwrap();
        let ring = hsm.key_metadata(&k).await.unwrap();
        let states: Vec<(u32, KeyState)> = ring.iter().map(|m| (m.version, m.state)).collect();
        assert_eq!(
            states,
            vec![(1, KeyState::Deprecated), (2, KeyState::Active)]
        );
        assert_eq!(ring[0].kid, old_kid);
        hsm.verify(VerifyRequest {
            key: VerificationKey::Managed {
                key: &k,
                kid: Some(&old_kid),
            },
            algorithm: Algorithm::Es256,
            message: b"before",
            signature: &old_sig,
        })
        .await
        .unwrap();
        assert_eq!(hsm.public_keys(&k).await.unwrap().len(), 2);
        assert_eq!(
            hsm.list_keys("token").await.unwrap(),
            vec!["signing".to_owned()]
        );
        // Disable through this backend: signing is refused; re-enable: it works again.
        hsm.set_version_state(&k, 2, KeyState::Disabled)
            .await
            .unwrap();
        assert!(hsm.sign(&k, b"x").await.is_err());
        hsm.set_version_state(&k, 2, KeyState::Active)
            .await
            .unwrap();
        hsm.sign(&k, b"x").await.unwrap();
        assert!(matches!(
            hsm.generate_key(&k, Algorithm::Es256).await,
            Err(BackendError::Rejected(Rejection::KeyExists(_)))
        ));
    });
});

token_test!(sixty_four_concurrent_signs_over_the_pool, |token| {
    runtime().block_on(async {
        let hsm = Arc::new(Pkcs11Backend::open(options(&token)).unwrap());
        let k = key("signing");
        let meta = hsm.generate_key(&k, Algorithm::Es256).await.unwrap();
        let jwk = meta.public_jwk.unwrap();
        let verifier = jwk.verifier(Algorithm::Es256).unwrap();
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let hsm = hsm.clone();
                let k = k.clone();
                tokio::spawn(async move {
                    let message = format!("message {i}");
                    let sig = hsm.sign(&k, message.as_bytes()).await.unwrap();
                    (message, sig.bytes)
                })
            })
            .collect();
        for task in tasks {
            let (message, sig) = task.await.unwrap();
            verifier.verify_sig(message.as_bytes(), &sig).unwrap();
        }
        assert_eq!(hsm.sessions(), 4);
    });
});

token_test!(wycheproof_vectors_through_the_token_verify_path, |token| {
    runtime().block_on(async {
        let hsm = Pkcs11Backend::open(Pkcs11Options {
            verify_on_token: true,
            ..options(&token)
        })
        .unwrap();
        let ecdsa = support::vectors::ecdsa_p1363(&hsm).await;
        println!(
            "PKCS#11 ECDSA P1363: {} vectors ran on the token",
            ecdsa.ran
        );
        let (pss, skipped) = support::vectors::rsa_pss(&hsm).await;
        println!(
            "PKCS#11 RSA-PSS: {} vectors ran on the token, {skipped} groups skipped",
            pss.ran
        );
        let mut mismatches = ecdsa.mismatches;
        mismatches.extend(pss.mismatches);
        if hsm.capabilities().supports_algorithm(Algorithm::EdDsa) {
            let ed = support::vectors::ed25519(&hsm).await;
            println!("PKCS#11 Ed25519: {} vectors ran on the token", ed.ran);
            mismatches.extend(ed.mismatches);
        }
        assert!(ecdsa.ran > 500 && pss.ran > 1500);
        assert!(
            mismatches.is_empty(),
            "{} mismatches: {:#?}",
            mismatches.len(),
            &mismatches[..mismatches.len().min(30)]
        );
    });
});
