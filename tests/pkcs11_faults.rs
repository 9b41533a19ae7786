//! The PKCS#11 backend when things go wrong, on real tokens (SoftHSM and kryoptic, each
//! test with a token of its own): the module finalised underneath, start-up errors, an
//! ambiguous label, a private key swapped under its label, a changed PIN, and the fallback
//! while the HSM is down.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::pkcs11_backend::{
    generate_p256_pair, key, options, runtime, sign_chain, single_attempt, user_session,
};
use support::softhsm::LABEL;
use token_service::backends::chain::{Chain, Routes};
use token_service::backends::pkcs11::token::TokenSelector;
use token_service::backends::pkcs11::{Pkcs11Backend, Pkcs11Options};
use token_service::backends::software::{SoftwareBackend, SoftwareOptions};
use token_service::backends::{Algorithm, Backend, BackendError, ErrorClass, KeyRef, Operation};
use token_service::context::CallContext;
use token_service::metrics::{Metrics, Outcome};
use token_service::resilience::ResilienceConfig;
use token_service::secret::Secret;

token_test!(recovers_after_the_module_is_finalised_underneath, |token| {
    runtime().block_on(async {
        let hsm = Arc::new(Pkcs11Backend::open(options(&token)).unwrap());
        let k = key("signing");
        hsm.generate_key(&k, Algorithm::Es256).await.unwrap();
        let chain = sign_chain(vec![(hsm.clone() as Arc<dyn Backend>, single_attempt())]);
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
        let session = user_session(&token);
        let label = b"ts/token/signing/1";
        generate_p256_pair(&session, label, label);
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

token_test!(
    a_private_key_swapped_under_its_label_is_a_security_error_not_a_token,
    |token| {
        use cryptoki::object::{Attribute, ObjectClass};
        runtime().block_on(async {
            let hsm = Pkcs11Backend::open(options(&token)).unwrap();
            let k = key("signing");
            hsm.generate_key(&k, Algorithm::Es256).await.unwrap();
            hsm.sign(&k, b"before").await.unwrap();
            // The private object under the version's label is swapped for another key's;
            // its public object, which the JWKS publishes, stays.
            let session = user_session(&token);
            let label = b"ts/token/signing/1".to_vec();
            let original = session
                .find_objects(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::Label(label.clone()),
                ])
                .unwrap();
            assert_eq!(original.len(), 1);
            session.destroy_object(original[0]).unwrap();
            generate_p256_pair(&session, b"someone-else", &label);
            drop(session);

            let swapped = Arc::new(Pkcs11Backend::open(options(&token)).unwrap());
            let refused = swapped.sign(&k, b"after").await.unwrap_err();
            assert_eq!(refused.class(), ErrorClass::Security, "{refused}");
            assert!(
                refused
                    .to_string()
                    .contains("does not verify with its public key"),
                "{refused}"
            );

            // In a chain, a security error is no outage: it is refused, counted, and not
            // passed to the next backend, whose key would sign in its place unnoticed.
            let dir = tempfile::tempdir().unwrap();
            let software = Arc::new(
                SoftwareBackend::open(&dir.path().join("k"), SoftwareOptions::default()).unwrap(),
            );
            let chain = sign_chain(vec![
                (swapped as Arc<dyn Backend>, ResilienceConfig::default()),
                (software as Arc<dyn Backend>, ResilienceConfig::default()),
            ]);
            let ctx = CallContext::new();
            chain
                .ensure_key(&ctx, chain.sign_backends(), &k, Algorithm::Es256)
                .await
                .unwrap();
            let refused = chain.sign(&ctx, &k, b"after").await.unwrap_err();
            assert_eq!(refused.class(), ErrorClass::Security, "{refused}");
            let metrics = chain.metrics();
            assert_eq!(
                metrics.request_count("pkcs11", Operation::Sign, Outcome::Security),
                1
            );
            assert_eq!(
                metrics.fallback_count(Operation::Sign, "pkcs11", "software"),
                0
            );

            // Unchecked (`verify_signatures = false`), the token's signature is returned as
            // it is, and does not verify.
            let unchecked = Pkcs11Backend::open(Pkcs11Options {
                verify_signatures: false,
                ..options(&token)
            })
            .unwrap();
            let signed = unchecked.sign(&k, b"after").await.unwrap();
            let verified = unchecked
                .verify(token_service::backends::VerifyRequest {
                    key: token_service::backends::VerificationKey::Managed {
                        key: &k,
                        kid: Some(&signed.kid),
                    },
                    algorithm: Algorithm::Es256,
                    message: b"after",
                    signature: &signed.bytes,
                })
                .await;
            assert_eq!(verified, Err(BackendError::VerificationFailed));
        });
    }
);

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
            let once = single_attempt();
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
                            ..Default::default()
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
