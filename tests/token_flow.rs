//! The Token Service's logic end to end over the software chain and the memory store:
//! issue → introspect → refresh → reuse → family revoked; concurrency; revocation; bad input.
//! (gRPC transport and Redis arrive with the rest of the Token Service issue.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use token_service::backends::chain::{Chain, Routes};
use token_service::backends::clock::ManualClock;
use token_service::backends::software::{SoftwareBackend, SoftwareOptions};
use token_service::backends::{Algorithm, Backend, KeyRef, KeyState};
use token_service::context::CallContext;
use token_service::metrics::Metrics;
use token_service::resilience::ResilienceConfig;
use token_service::token::claims::ClientPolicy;
use token_service::token::store::memory::MemoryStore;
use token_service::token::{
    Caller, OperationCallers, TokenError, TokenRequest, TokenService, TokenSettings,
};

struct Fixture {
    _dir: tempfile::TempDir,
    backend: Arc<SoftwareBackend>,
    store: Arc<MemoryStore>,
    service: Arc<TokenService>,
    clock: ManualClock,
    /// The chain's metrics (token events are counted there).
    metrics: Metrics,
}

impl Fixture {
    /// Whether introspection calls `token` active.
    async fn is_active(&self, token: &str) -> bool {
        self.service.introspect(&ctx(), token).await.unwrap().active
    }
}

fn settings() -> TokenSettings {
    TokenSettings {
        issuer: "https://tokens.example".into(),
        access_ttl: Duration::from_secs(900),
        max_access_ttl: Duration::from_secs(3600),
        refresh_ttl: Duration::from_secs(604_800),
        clock_skew: Duration::from_secs(60),
        rate_limit: None,
        callers: Default::default(),
        data_keys: Default::default(),
        clients: BTreeMap::from([
            (
                "web".to_owned(),
                ClientPolicy {
                    scopes: vec!["read".into(), "write".into()],
                    audiences: vec!["api".into()],
                    callers: Vec::new(),
                },
            ),
            (
                "partner".to_owned(),
                ClientPolicy {
                    scopes: vec!["read".into()],
                    audiences: vec!["api".into()],
                    callers: vec!["gateway.internal".into()],
                },
            ),
        ]),
    }
}

async fn fixture() -> Fixture {
    fixture_with(settings()).await
}

async fn fixture_with(settings: TokenSettings) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let clock = ManualClock::new(1_800_000_000);
    let backend = Arc::new(
        SoftwareBackend::open_with_clock(
            &dir.path().join("keys"),
            SoftwareOptions {
                refresh_interval: Duration::ZERO,
                ..Default::default()
            },
            Arc::new(clock.clone()),
        )
        .unwrap(),
    );
    let chain = Arc::new(
        Chain::new(
            vec![(
                backend.clone() as Arc<dyn Backend>,
                ResilienceConfig::default(),
            )],
            &Routes {
                sign: vec!["software".into()],
                verify: vec!["software".into()],
                encrypt: vec!["software".into()],
            },
            true,
            metrics.clone(),
        )
        .unwrap(),
    );
    let signing = KeyRef::new("token", "signing").unwrap();
    let encryption = KeyRef::new("token-cache", "aes").unwrap();
    backend
        .generate_key(&signing, Algorithm::Es256)
        .await
        .unwrap();
    backend
        .generate_key(&encryption, Algorithm::A256Gcm)
        .await
        .unwrap();
    let store = Arc::new(MemoryStore::default());
    let service = Arc::new(TokenService::new(
        chain,
        store.clone(),
        settings,
        signing,
        encryption,
        Arc::new(clock.clone()),
    ));
    Fixture {
        _dir: dir,
        backend,
        store,
        service,
        clock,
        metrics,
    }
}

fn request() -> TokenRequest {
    TokenRequest {
        subject: "alice".into(),
        client_id: "web".into(),
        scopes: vec!["read".into()],
        ..Default::default()
    }
}

fn ctx() -> CallContext {
    CallContext::new()
}

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

    let second = f
        .service
        .refresh(&ctx(), &first.refresh_token)
        .await
        .unwrap();
    assert_ne!(second.refresh_token.as_str(), first.refresh_token.as_str());
    assert_eq!(second.claims.fid, first.claims.fid);
    assert!(f.is_active(&second.access_token).await);

    // The used token again: reuse → the family is revoked, every access token it issued is
    // inactive, and the newest refresh token is dead too.
    match f.service.refresh(&ctx(), &first.refresh_token).await {
        Err(TokenError::Unauthenticated(reason)) => {
            assert!(reason.contains("already used"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    for token in [&first.access_token, &second.access_token] {
        assert!(!f.is_active(token).await);
    }
    match f.service.refresh(&ctx(), &second.refresh_token).await {
        Err(TokenError::Unauthenticated(reason)) => assert!(reason.contains("revoked"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_refreshes_with_one_token_exactly_one_wins() {
    let f = fixture().await;
    let issued = f.service.generate(&ctx(), &request()).await.unwrap();
    let token = Arc::new(issued.refresh_token.to_string());
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
        f.service.refresh(&ctx(), &winner.refresh_token).await,
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
    let forged = format!("rt1.{}.{}", issued.claims.fid, "A".repeat(43));
    assert!(!f.service.revoke_refresh_token(&forged).await.unwrap());
    let rotated = f
        .service
        .refresh(&ctx(), &issued.refresh_token)
        .await
        .unwrap();
    assert!(
        !f.service
            .revoke_refresh_token(&issued.refresh_token)
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
            .revoke_refresh_token(&issued.refresh_token)
            .await
            .unwrap()
    );
    assert!(!f.is_active(&issued.access_token).await);
    assert!(
        f.service
            .refresh(&ctx(), &issued.refresh_token)
            .await
            .is_err()
    );

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
    match f.service.refresh(&ctx(), &issued.refresh_token).await {
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
    assert!(
        f.service
            .refresh(&ctx(), &issued.refresh_token)
            .await
            .is_err()
    );
    f.backend
        .set_version_state(&signing, 1, KeyState::Active)
        .await
        .unwrap();
    // Nothing was rotated: the same refresh token still works, and is not taken for reuse.
    let refreshed = f
        .service
        .refresh(&ctx(), &issued.refresh_token)
        .await
        .unwrap();
    assert!(f.is_active(&refreshed.access_token).await);
}

/// A caller whose (self-signed, test-only) client certificate names `dns_name`, as the TLS
/// layer would hand it over after verifying it.
fn caller_named(dns_name: &str) -> Caller {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![dns_name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    Caller::from_verified_chain(Some(Arc::new(vec![cert.der().clone()])))
}

fn expect_permission_denied<T: std::fmt::Debug>(result: Result<T, TokenError>, needles: &[&str]) {
    match result {
        Err(TokenError::PermissionDenied(reason)) => {
            for needle in needles {
                assert!(reason.contains(needle), "{reason} lacks {needle}");
            }
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_naming_its_callers_acts_only_for_their_certificates() {
    let f = fixture().await;
    let gateway = caller_named("gateway.internal");
    let stranger = caller_named("billing.internal");
    let partner = TokenRequest {
        client_id: "partner".into(),
        ..request()
    };

    expect_permission_denied(
        f.service.generate(&ctx(), &partner).await,
        &["caller unidentified", "`partner`"],
    );
    expect_permission_denied(
        f.service.generate_as(&ctx(), &stranger, &partner).await,
        &["billing.internal", "`partner`"],
    );
    assert_eq!(f.store.families(), 0, "a refused caller stores nothing");

    let issued = f
        .service
        .generate_as(&ctx(), &gateway, &partner)
        .await
        .unwrap();
    assert_eq!(issued.claims.client_id, "partner");

    // Refreshing is acting for the family's client too; a refusal leaves the token usable.
    expect_permission_denied(
        f.service
            .refresh_as(&ctx(), &stranger, &issued.refresh_token, None)
            .await,
        &["billing.internal"],
    );
    expect_permission_denied(
        f.service.refresh(&ctx(), &issued.refresh_token).await,
        &["caller unidentified"],
    );
    let refreshed = f
        .service
        .refresh_as(&ctx(), &gateway, &issued.refresh_token, None)
        .await
        .unwrap();
    assert!(f.is_active(&refreshed.access_token).await);

    // The family id is public (`fid` in every access token): revoking by it, or by a
    // refresh token, is acting for the client too.
    let family = token_service::token::refresh::FamilyId::parse(&refreshed.claims.fid).unwrap();
    expect_permission_denied(
        f.service.revoke_family_as(&stranger, &family).await,
        &["billing.internal", "`partner`"],
    );
    expect_permission_denied(
        f.service.revoke_family(&family).await,
        &["caller unidentified"],
    );
    expect_permission_denied(
        f.service
            .revoke_refresh_token_as(&stranger, &refreshed.refresh_token)
            .await,
        &["billing.internal"],
    );
    assert!(
        f.is_active(&refreshed.access_token).await,
        "nothing revoked"
    );
    assert!(f.service.revoke_family_as(&gateway, &family).await.unwrap());
    assert!(!f.is_active(&refreshed.access_token).await);

    // A client that names no callers is served to any caller.
    for caller in [&stranger, &gateway, &Caller::unidentified()] {
        let web = f
            .service
            .generate_as(&ctx(), caller, &request())
            .await
            .unwrap();
        let family = token_service::token::refresh::FamilyId::parse(&web.claims.fid).unwrap();
        assert!(f.service.revoke_family_as(caller, &family).await.unwrap());
    }

    // Each refusal and each revocation above is counted, and issuance per client and grant.
    use token_service::token::events::{Event, Issue};
    let events = f.metrics.tokens();
    assert_eq!(events.event_count(Event::CallerRefused), 7);
    assert_eq!(events.event_count(Event::FamilyRevoked), 4);
    assert_eq!(events.issued_count("partner", Issue::New), 1);
    assert_eq!(events.issued_count("partner", Issue::Refresh), 1);
    assert_eq!(events.issued_count("web", Issue::New), 3);
}

/// Introspection is for the resource servers named in `tokens.callers.introspect`; revoking
/// by jti alone, or any client's family by id, for the operators in `tokens.callers.revoke`;
/// revoking an access token presented whole, for its client's callers (RFC 7009).
#[tokio::test]
async fn resource_servers_introspect_and_operators_revoke_what_clients_cannot() {
    let f = fixture_with(TokenSettings {
        callers: OperationCallers {
            introspect: vec!["orders.internal".into()],
            revoke: vec!["console.internal".into()],
        },
        ..settings()
    })
    .await;
    let (orders, console) = (
        caller_named("orders.internal"),
        caller_named("console.internal"),
    );
    let (gateway, stranger) = (
        caller_named("gateway.internal"),
        caller_named("billing.internal"),
    );
    let active = |token: String| {
        let (service, orders) = (f.service.clone(), orders.clone());
        async move {
            service
                .introspect_as(&ctx(), &orders, &token, None)
                .await
                .unwrap()
                .active
        }
    };
    let partner = TokenRequest {
        client_id: "partner".into(),
        ..request()
    };
    let issued = f
        .service
        .generate_as(&ctx(), &gateway, &partner)
        .await
        .unwrap();

    // Only the resource server introspects; a client's own caller is not one.
    for caller in [&gateway, &stranger, &console, &Caller::unidentified()] {
        expect_permission_denied(
            f.service
                .introspect_as(&ctx(), caller, &issued.access_token, None)
                .await,
            &["may not introspect"],
        );
    }
    expect_permission_denied(
        f.service.introspect(&ctx(), &issued.access_token).await,
        &["caller unidentified"],
    );
    assert!(active(issued.access_token.clone()).await);

    // The whole token: its client's caller or an operator revokes it, nobody else.
    expect_permission_denied(
        f.service
            .revoke_access_token_as(&ctx(), &stranger, &issued.access_token)
            .await,
        &["billing.internal", "`partner`"],
    );
    assert!(active(issued.access_token.clone()).await, "nothing revoked");
    assert!(
        f.service
            .revoke_access_token_as(&ctx(), &gateway, &issued.access_token)
            .await
            .unwrap()
    );
    assert!(!active(issued.access_token.clone()).await);
    // Nothing left to revoke: the same token again, a forged one, an expired one.
    assert!(
        !f.service
            .revoke_access_token_as(&ctx(), &gateway, &issued.access_token)
            .await
            .unwrap()
    );
    let mut forged = issued.access_token.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    assert!(
        !f.service
            .revoke_access_token_as(&ctx(), &console, &forged)
            .await
            .unwrap()
    );
    assert!(
        !f.service
            .revoke_access_token_as(&ctx(), &console, "not.a.jwt")
            .await
            .unwrap()
    );
    // The family was left alone: its refresh token still rotates.
    let refreshed = f
        .service
        .refresh_as(&ctx(), &gateway, &issued.refresh_token, None)
        .await
        .unwrap();
    f.clock.advance(900 + 61);
    assert!(
        !f.service
            .revoke_access_token_as(&ctx(), &gateway, &refreshed.access_token)
            .await
            .unwrap(),
        "expired"
    );

    // A jti alone names no client: with callers named, only an operator revokes by it,
    // even a token of a client that names no callers.
    let web = f
        .service
        .generate_as(&ctx(), &stranger, &request())
        .await
        .unwrap();
    for caller in [&gateway, &stranger, &orders, &Caller::unidentified()] {
        expect_permission_denied(
            f.service.revoke_jti_as(caller, &web.claims.jti).await,
            &["may not revoke an access token by jti alone"],
        );
    }
    assert!(active(web.access_token.clone()).await);
    f.service
        .revoke_jti_as(&console, &web.claims.jti)
        .await
        .unwrap();
    assert!(!active(web.access_token.clone()).await);

    // An operator revokes any client's family by id; the client's callers still can too.
    let second = f
        .service
        .generate_as(&ctx(), &gateway, &partner)
        .await
        .unwrap();
    let family = token_service::token::refresh::FamilyId::parse(&second.claims.fid).unwrap();
    expect_permission_denied(
        f.service.revoke_family_as(&orders, &family).await,
        &["orders.internal", "`partner`"],
    );
    assert!(f.service.revoke_family_as(&console, &family).await.unwrap());
    assert!(!active(second.access_token.clone()).await);

    use token_service::token::events::Event;
    let events = f.metrics.tokens();
    assert_eq!(events.event_count(Event::CallerRefused), 11);
    assert_eq!(events.event_count(Event::AccessRevoked), 2);
}

/// Where nobody names callers, revoking by jti alone stays open: nothing identifies anyone.
#[tokio::test]
async fn without_named_callers_anyone_revokes_by_jti() {
    let mut settings = settings();
    settings.clients.get_mut("partner").unwrap().callers.clear();
    let f = fixture_with(settings).await;
    let issued = f.service.generate(&ctx(), &request()).await.unwrap();
    f.service
        .revoke_jti_as(&Caller::unidentified(), &issued.claims.jti)
        .await
        .unwrap();
    assert!(!f.is_active(&issued.access_token).await);
    // Named callers anywhere close it: the partner client's, here.
    let f = fixture().await;
    let issued = f.service.generate(&ctx(), &request()).await.unwrap();
    expect_permission_denied(
        f.service
            .revoke_jti_as(&Caller::unidentified(), &issued.claims.jti)
            .await,
        &["jti alone"],
    );
    assert!(f.is_active(&issued.access_token).await);
}
