//! The Token Service's logic end to end over the software chain and the memory store:
//! issue → introspect → refresh → reuse → family revoked; concurrency; revocation; bad input.
//! Who may do what is in `token_access.rs`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::token_fixture::{WithFamily, ctx, fixture, request};
use token_service::backends::{Backend, KeyRef, KeyState};
use token_service::context::CallContext;
use token_service::token::{TokenError, TokenRequest};

#[tokio::test]
async fn issue_introspect_refresh_then_reuse_revokes_the_family() {
    let f = fixture().await;
    let first = f.service.generate(&ctx(), &request()).await.unwrap();
    assert_eq!(first.expires_in, 900);
    let seen = f
        .service
        .introspect(&ctx(), &first.access_token)
        .await
        .unwrap();
    assert!(seen.active);
    let claims = seen.claims.unwrap();
    assert_eq!(
        (
            claims.sub.as_str(),
            claims.client_id.as_str(),
            claims.scope.as_str()
        ),
        ("alice", "web", "read")
    );
    assert_eq!(claims.aud, vec!["api"]);
    assert_eq!(claims.exp, claims.iat + 900);

    let second = f.service.refresh(&ctx(), first.refresh()).await.unwrap();
    assert_ne!(second.refresh(), first.refresh());
    assert_eq!(second.fid(), first.fid());
    assert!(f.is_active(&second.access_token).await);

    // The used token again: reuse → the family is revoked, every access token it issued is
    // inactive, and the newest refresh token is dead too.
    match f.service.refresh(&ctx(), first.refresh()).await {
        Err(TokenError::Unauthenticated(reason)) => {
            assert!(reason.contains("already used"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    for token in [&first.access_token, &second.access_token] {
        assert!(!f.is_active(token).await);
    }
    match f.service.refresh(&ctx(), second.refresh()).await {
        Err(TokenError::Unauthenticated(reason)) => assert!(reason.contains("revoked"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_refreshes_with_one_token_exactly_one_wins() {
    let f = fixture().await;
    let issued = f.service.generate(&ctx(), &request()).await.unwrap();
    let token = Arc::new(issued.refresh().to_string());
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (service, token) = (f.service.clone(), token.clone());
            tokio::spawn(async move { service.refresh(&CallContext::new(), &token).await })
        })
        .collect();
    let mut wins = Vec::new();
    let mut losses = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(tokens) => wins.push(tokens),
            Err(TokenError::Unauthenticated(_)) => losses += 1,
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!((wins.len(), losses), (1, 49));
    // The losers presented a token that had just been used: that is reuse, so the family
    // ends up revoked — the safe reading of 50 presentations of one token.
    let winner = wins.pop().unwrap();
    assert!(matches!(
        f.service.refresh(&ctx(), winner.refresh()).await,
        Err(TokenError::Unauthenticated(_))
    ));
}

#[tokio::test]
async fn access_tokens_are_rfc9068_and_verify_with_jsonwebtoken_from_the_jwks() {
    let f = fixture().await;
    let before = f.service.generate(&ctx(), &request()).await.unwrap();
    f.backend
        .rotate_key(&KeyRef::new("token", "signing").unwrap())
        .await
        .unwrap();
    let after = f.service.generate(&ctx(), &request()).await.unwrap();
    assert_ne!(before.kid, after.kid);
    let jwks = f.service.jwks(&ctx()).await.unwrap();
    assert_eq!(
        jwks.keys.len(),
        2,
        "the retained version is still published"
    );
    for issued in [&before, &after] {
        let header = jsonwebtoken::decode_header(&issued.access_token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(header.kid.as_deref(), Some(issued.kid.as_str()));
        let jwk = jwks
            .keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(issued.kid.as_str()))
            .unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(
            &serde_json::from_value(serde_json::to_value(jwk).unwrap()).unwrap(),
        )
        .unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.set_audience(&["api"]);
        validation.set_issuer(&["https://tokens.example"]);
        validation.validate_exp = false; // the test clock is not the wall clock
        let data =
            jsonwebtoken::decode::<serde_json::Value>(&issued.access_token, &key, &validation)
                .unwrap();
        for claim in [
            "iss",
            "sub",
            "aud",
            "exp",
            "iat",
            "nbf",
            "jti",
            "client_id",
            "scope",
        ] {
            assert!(data.claims.get(claim).is_some(), "missing {claim}");
        }
    }
}

#[tokio::test]
async fn introspection_checks_time_with_skew_issuer_and_revocation() {
    let f = fixture().await;
    let issued = f.service.generate(&ctx(), &request()).await.unwrap();
    f.clock.advance(900 + 59);
    assert!(f.is_active(&issued.access_token).await, "within the skew");
    f.clock.advance(1);
    assert!(!f.is_active(&issued.access_token).await);

    let issued = f.service.generate(&ctx(), &request()).await.unwrap();
    f.service
        .revoke_access_token(&issued.claims.jti, issued.claims.exp)
        .await
        .unwrap();
    assert!(!f.is_active(&issued.access_token).await);

    let issued = f.service.generate(&ctx(), &request()).await.unwrap();
    // The family id is public (`fid` in the access token): a refresh token forged from it,
    // or one already rotated out, revokes nothing.
    let forged = format!("rt1.{}.{}", issued.fid(), "A".repeat(43));
    assert!(!f.service.revoke_refresh_token(&forged).await.unwrap());
    let rotated = f.service.refresh(&ctx(), issued.refresh()).await.unwrap();
    assert!(
        !f.service
            .revoke_refresh_token(issued.refresh())
            .await
            .unwrap()
    );
    assert!(
        f.is_active(&rotated.access_token).await,
        "the family survives both"
    );
    let issued = rotated;
    assert!(
        f.service
            .revoke_refresh_token(issued.refresh())
            .await
            .unwrap()
    );
    assert!(!f.is_active(&issued.access_token).await);
    assert!(f.service.refresh(&ctx(), issued.refresh()).await.is_err());

    // Not ours, tampered, or not an access token: inactive, not an error.
    let mut tampered = f
        .service
        .generate(&ctx(), &request())
        .await
        .unwrap()
        .access_token;
    tampered.push('A');
    for token in ["", "garbage", "a.b.c", tampered.as_str()] {
        assert!(!f.is_active(token).await, "{token}");
    }
}

#[tokio::test]
async fn bad_input_is_refused_with_a_reason_and_nothing_is_stored() {
    let f = fixture().await;
    let cases: Vec<(TokenRequest, &str)> = vec![
        (
            TokenRequest {
                subject: String::new(),
                ..request()
            },
            "subject is empty",
        ),
        (
            TokenRequest {
                subject: "x".repeat(300),
                ..request()
            },
            "longer than",
        ),
        (
            TokenRequest {
                client_id: "mobile".into(),
                ..request()
            },
            "unknown client",
        ),
        (
            TokenRequest {
                scopes: vec!["admin".into()],
                ..request()
            },
            "not allowed",
        ),
        (
            TokenRequest {
                access_ttl: Some(Duration::from_secs(7200)),
                ..request()
            },
            "lifetime",
        ),
    ];
    for (req, needle) in cases {
        match f.service.generate(&ctx(), &req).await {
            Err(TokenError::InvalidArgument(reason)) => {
                assert!(reason.contains(needle), "{reason}")
            }
            other => panic!("{needle}: {other:?}"),
        }
    }
    assert_eq!(f.store.families(), 0, "a refused request stores nothing");

    let issued = f.service.generate(&ctx(), &request()).await.unwrap();
    for (token, needle) in [
        ("not-a-token", "malformed refresh token"),
        (issued.access_token.as_str(), "JWT"),
    ] {
        match f.service.refresh(&ctx(), token).await {
            Err(TokenError::InvalidArgument(reason)) => {
                assert!(reason.contains(needle), "{reason}")
            }
            other => panic!("{needle}: {other:?}"),
        }
    }
    // A well-formed token of a family that does not exist, and an expired one.
    let forged = "rt1.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert!(matches!(
        f.service.refresh(&ctx(), forged).await,
        Err(TokenError::Unauthenticated(_))
    ));
    f.clock.advance(604_800);
    match f.service.refresh(&ctx(), issued.refresh()).await {
        Err(TokenError::Unauthenticated(reason)) => assert!(reason.contains("expired"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_signing_failure_during_refresh_leaves_the_refresh_token_usable() {
    let f = fixture().await;
    let issued = f.service.generate(&ctx(), &request()).await.unwrap();
    let signing = KeyRef::new("token", "signing").unwrap();
    f.backend
        .set_version_state(&signing, 1, KeyState::Disabled)
        .await
        .unwrap();
    assert!(f.service.refresh(&ctx(), issued.refresh()).await.is_err());
    f.backend
        .set_version_state(&signing, 1, KeyState::Active)
        .await
        .unwrap();
    // Nothing was rotated: the same refresh token still works, and is not taken for reuse.
    let refreshed = f.service.refresh(&ctx(), issued.refresh()).await.unwrap();
    assert!(f.is_active(&refreshed.access_token).await);
}

/// A client issued access tokens only (a client-credentials client, RFC 6749 §4.4.3): no
/// refresh token, no family, nothing stored; its token carries no `fid`, introspects as
/// active, and is revoked by its jti.
#[tokio::test]
async fn a_client_issued_access_tokens_only_gets_no_refresh_token_and_nothing_is_stored() {
    let f = fixture().await;
    let machine = TokenRequest {
        client_id: "machine".into(),
        ..request()
    };
    let issued = f.service.generate(&ctx(), &machine).await.unwrap();
    assert!(issued.refresh_token.is_none());
    assert_eq!(issued.claims.fid, None);
    let payload = issued.access_token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert!(claims.get("fid").is_none(), "{claims}");
    assert_eq!(claims["client_id"], "machine");
    assert_eq!(f.store.families(), 0, "nothing is stored");

    assert!(f.is_active(&issued.access_token).await);
    f.service
        .revoke_access_token(&issued.claims.jti, issued.claims.exp)
        .await
        .unwrap();
    assert!(!f.is_active(&issued.access_token).await, "revoked by jti");

    // The other clients still get families.
    let web = f.service.generate(&ctx(), &request()).await.unwrap();
    assert!(!web.refresh().is_empty());
    assert_eq!(f.store.families(), 1);
}
