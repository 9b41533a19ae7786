//! The PKCS#11 backend against real SoftHSM, each test with its own token directory (see
//! `support::softhsm`).

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::softhsm::{LABEL, Token};
use token_service::backends::chain::{Chain, Routes};
use token_service::backends::pkcs11::token::TokenSelector;
use token_service::backends::pkcs11::{Pkcs11Backend, Pkcs11Options};
use token_service::backends::software::material::RsaBits;
use token_service::backends::software::{SoftwareBackend, SoftwareOptions};
use token_service::backends::{
    Algorithm, Backend, BackendError, KeyRef, KeyState, Operation, Rejection, VerificationKey,
    VerifyRequest,
};
use token_service::context::CallContext;
use token_service::metrics::{Metrics, Outcome};
use token_service::resilience::{ResilienceConfig, RetryConfig};
use token_service::secret::Secret;

fn options(token: &Token) -> Pkcs11Options {
    Pkcs11Options {
        module: token.module.clone(),
        token: TokenSelector::Label(LABEL.into()),
        pin: Secret::new(support::softhsm::PIN.into()),
        max_sessions: 4,
        verify_on_token: false,
        retention: Duration::from_secs(24 * 3600),
        rsa_bits: RsaBits::B2048,
        refresh_interval: Duration::from_secs(1),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn key(name: &str) -> KeyRef {
    KeyRef::new("token", name).unwrap()
}

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

token_test!(recovers_after_the_module_is_finalised_underneath, |token| {
    runtime().block_on(async {
        let hsm = Arc::new(Pkcs11Backend::open(options(&token)).unwrap());
        let k = key("signing");
        hsm.generate_key(&k, Algorithm::Es256).await.unwrap();
        let chain = Chain::new(
            vec![(
                hsm.clone() as Arc<dyn Backend>,
                ResilienceConfig {
                    retry: RetryConfig {
                        max_attempts: 1,
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )],
            &Routes {
                sign: vec!["pkcs11".into()],
                verify: vec![],
                encrypt: vec![],
            },
            true,
            Metrics::new(),
        )
        .unwrap();
        let ctx = CallContext::new();
        chain.sign(&ctx, &k, b"before").await.unwrap();

        // A second handle on the same library finalises it: every session dies.
        let other = cryptoki::context::Pkcs11::new(&token.module).unwrap();
        other.finalize().unwrap();

        let mut failures = 0;
        let mut recovered = false;
        for _ in 0..6 {
            match chain.sign(&ctx, &k, b"after").await {
                Ok(_) => {
                    recovered = true;
                    break;
                }
                Err(e) => {
                    assert!(matches!(e, BackendError::Unavailable { .. }), "{e}");
                    failures += 1;
                }
            }
        }
        assert!(recovered, "no recovery after {failures} failures");
        assert!(failures >= 1, "the loss must be seen as a failure");
        assert_eq!(
            chain
                .metrics()
                .request_count("pkcs11", Operation::Sign, Outcome::Unavailable),
            failures
        );
        assert!(hsm.reinitializations() >= 1);
        // Every worker recovers, not just one.
        for i in 0..16 {
            chain
                .sign(&ctx, &k, format!("m{i}").as_bytes())
                .await
                .unwrap();
        }
    });
});

token_test!(startup_errors_name_what_is_wrong, |token| {
    // The PIN never shows in Debug output, of the options or of a running backend.
    let shown = format!("{:?}", options(&token));
    assert!(
        !shown.contains(support::softhsm::PIN) && shown.contains("redacted"),
        "{shown}"
    );
    let backend = Pkcs11Backend::open(options(&token)).unwrap();
    assert!(!format!("{backend:?}").contains(support::softhsm::PIN));
    drop(backend);
    let error = |options: Pkcs11Options| Pkcs11Backend::open(options).unwrap_err().to_string();
    let wrong_pin = error(Pkcs11Options {
        pin: Secret::new("not-the-pin".into()),
        ..options(&token)
    });
    assert!(
        wrong_pin.contains("wrong user PIN") && wrong_pin.contains(LABEL),
        "{wrong_pin}"
    );
    assert!(!wrong_pin.contains("not-the-pin"));
    let missing = error(Pkcs11Options {
        module: "/nonexistent/libpkcs11.so".into(),
        ..options(&token)
    });
    assert!(
        missing.contains("/nonexistent/libpkcs11.so") && missing.contains("does not exist"),
        "{missing}"
    );
    let unknown = error(Pkcs11Options {
        token: TokenSelector::Label("no-such-token".into()),
        ..options(&token)
    });
    assert!(
        unknown.contains("no-such-token") && unknown.contains(LABEL),
        "{unknown}"
    );
    // By serial works too, and an unknown serial is named.
    let unknown_serial = error(Pkcs11Options {
        token: TokenSelector::Serial("0000".into()),
        ..options(&token)
    });
    assert!(unknown_serial.contains("serial `0000`"), "{unknown_serial}");
});

token_test!(a_label_matching_two_objects_is_a_clear_error, |token| {
    runtime().block_on(async {
        let hsm = Pkcs11Backend::open(options(&token)).unwrap();
        let k = key("signing");
        hsm.generate_key(&k, Algorithm::Es256).await.unwrap();
        // Someone else puts a second private key with the same label on the token.
        let pkcs11 = cryptoki::context::Pkcs11::new(&token.module).unwrap();
        let slot = pkcs11.get_slots_with_token().unwrap()[0];
        let session = pkcs11.open_rw_session(slot).unwrap();
        session
            .login(
                cryptoki::session::UserType::User,
                Some(&cryptoki::types::AuthPin::new(support::softhsm::PIN.into())),
            )
            .or_else(|e| {
                if e.to_string().contains("already") {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .unwrap();
        use cryptoki::object::Attribute;
        let label = b"ts/token/signing/1".to_vec();
        session
            .generate_key_pair(
                &cryptoki::mechanism::Mechanism::EccKeyPairGen,
                &[
                    Attribute::Token(true),
                    Attribute::EcParams(vec![
                        0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
                    ]),
                    Attribute::Label(label.clone()),
                ],
                &[
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sign(true),
                    Attribute::Label(label),
                ],
            )
            .unwrap();
        drop(session);
        // A fresh backend (no cached handle) must refuse to guess.
        let fresh = Pkcs11Backend::open(options(&token)).unwrap();
        let error = fresh.sign(&k, b"m").await.unwrap_err().to_string();
        assert!(
            error.contains("ts/token/signing/1") && error.contains("matches 2"),
            "{error}"
        );
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

token_test!(
    a_changed_pin_stops_logins_instead_of_locking_the_token,
    |token| {
        runtime().block_on(async {
            let hsm = Pkcs11Backend::open(options(&token)).unwrap();
            let k = key("signing");
            hsm.generate_key(&k, Algorithm::Es256).await.unwrap();
            // An administrator changes the user PIN, then the module is finalised underneath,
            // so the backend must log in again.
            let other = cryptoki::context::Pkcs11::new(&token.module).unwrap();
            {
                let slot = other.get_slots_with_token().unwrap()[0];
                let session = other.open_rw_session(slot).unwrap();
                let _ = session.login(
                    cryptoki::session::UserType::User,
                    Some(&cryptoki::types::AuthPin::new(support::softhsm::PIN.into())),
                );
                session
                    .set_pin(
                        &cryptoki::types::AuthPin::new(support::softhsm::PIN.into()),
                        &cryptoki::types::AuthPin::new("a-new-pin-5678".into()),
                    )
                    .unwrap();
            }
            other.finalize().unwrap();
            // The first call sees the dead module; the next ones try to log in once, then stop.
            let mut errors = Vec::new();
            for _ in 0..5 {
                errors.push(hsm.sign(&k, b"m").await.unwrap_err().to_string());
            }
            let refused = errors
                .iter()
                .filter(|e| e.contains("no further login is attempted"))
                .count();
            let attempts = errors
                .iter()
                .filter(|e| e.contains("opening a session and logging in"))
                .count();
            assert_eq!(attempts, 1, "{errors:#?}");
            assert!(refused >= 3, "{errors:#?}");
        });
    }
);

token_test!(
    tokens_signed_by_the_fallback_while_the_hsm_is_down_verify_from_the_jwks,
    |token| {
        use std::collections::BTreeMap;
        use token_service::token::claims::ClientPolicy;
        use token_service::token::store::memory::MemoryStore;
        use token_service::token::{TokenRequest, TokenService, TokenSettings};
        runtime().block_on(async {
            let hsm = Arc::new(Pkcs11Backend::open(options(&token)).unwrap());
            let dir = tempfile::tempdir().unwrap();
            let software = Arc::new(
                SoftwareBackend::open(&dir.path().join("k"), SoftwareOptions::default()).unwrap(),
            );
            let once = ResilienceConfig {
                retry: RetryConfig {
                    max_attempts: 1,
                    ..Default::default()
                },
                ..Default::default()
            };
            let chain = Arc::new(
                Chain::new(
                    vec![
                        (hsm.clone() as Arc<dyn Backend>, once.clone()),
                        (software.clone() as Arc<dyn Backend>, once),
                    ],
                    &Routes {
                        sign: vec!["pkcs11".into(), "software".into()],
                        verify: vec!["software".into()],
                        encrypt: vec!["software".into()],
                    },
                    true,
                    Metrics::new(),
                )
                .unwrap(),
            );
            let signing = key("signing");
            let encryption = KeyRef::new("token-cache", "aes").unwrap();
            let ctx = CallContext::new();
            chain
                .ensure_key(&ctx, chain.sign_backends(), &signing, Algorithm::Es256)
                .await
                .unwrap();
            software
                .generate_key(&encryption, Algorithm::A256Gcm)
                .await
                .unwrap();
            let tokens = TokenService::new(
                chain.clone(),
                Arc::new(MemoryStore::default()),
                TokenSettings {
                    issuer: "token-service".into(),
                    access_ttl: Duration::from_secs(900),
                    max_access_ttl: Duration::from_secs(3600),
                    refresh_ttl: Duration::from_secs(3600),
                    clock_skew: Duration::from_secs(60),
                    clients: BTreeMap::from([(
                        "web".to_owned(),
                        ClientPolicy {
                            scopes: vec![],
                            audiences: vec!["api".into()],
                            callers: Vec::new(),
                        },
                    )]),
                    rate_limit: None,
                    callers: Default::default(),
                    data_keys: Default::default(),
                },
                signing,
                encryption,
                Arc::new(token_service::backends::clock::SystemClock),
            );
            let request = TokenRequest {
                subject: "alice".into(),
                client_id: "web".into(),
                ..Default::default()
            };
            let from_hsm = tokens.generate(&ctx, &request).await.unwrap();

            // The HSM goes away: the next token is signed by the software fallback.
            cryptoki::context::Pkcs11::new(&token.module)
                .unwrap()
                .finalize()
                .unwrap();
            let from_fallback = tokens.generate(&ctx, &request).await.unwrap();
            assert_ne!(
                from_hsm.kid, from_fallback.kid,
                "the fallback signs with its own key"
            );
            assert_eq!(
                chain
                    .metrics()
                    .fallback_count(Operation::Sign, "pkcs11", "software"),
                1
            );

            // The JWKS holds both backends' keys, so both tokens verify independently.
            let jwks = tokens.jwks(&ctx).await.unwrap();
            assert_eq!(jwks.keys.len(), 2, "{jwks:?}");
            let set: jsonwebtoken::jwk::JwkSet =
                serde_json::from_value(serde_json::to_value(&jwks).unwrap()).unwrap();
            for issued in [&from_hsm, &from_fallback] {
                let jwk = set.find(&issued.kid).expect("kid published");
                let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
                validation.set_audience(&["api"]);
                jsonwebtoken::decode::<serde_json::Value>(
                    &issued.access_token,
                    &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
                    &validation,
                )
                .unwrap();
                assert!(
                    tokens
                        .introspect(&ctx, &issued.access_token)
                        .await
                        .unwrap()
                        .active
                );
            }
        });
    }
);
