//! Who may do what in the token logic: a client that names its callers is acted for only by
//! their certificates; introspection is for the resource servers of `tokens.callers.introspect`;
//! revoking by jti alone, or any client's family by id, for the operators of
//! `tokens.callers.revoke`; an access token presented whole is revoked by its client's callers.

mod support;

use support::token_fixture::{
    WithFamily, caller_named, ctx, expect_permission_denied, fixture, fixture_with, request,
    settings,
};
use token_service::token::{Caller, OperationCallers, TokenRequest, TokenSettings};

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
            .refresh_as(&ctx(), &stranger, issued.refresh(), None)
            .await,
        &["billing.internal"],
    );
    expect_permission_denied(
        f.service.refresh(&ctx(), issued.refresh()).await,
        &["caller unidentified"],
    );
    let refreshed = f
        .service
        .refresh_as(&ctx(), &gateway, issued.refresh(), None)
        .await
        .unwrap();
    assert!(f.is_active(&refreshed.access_token).await);

    // The family id is public (`fid` in every access token): revoking by it, or by a
    // refresh token, is acting for the client too.
    let family = token_service::token::refresh::FamilyId::parse(refreshed.fid()).unwrap();
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
            .revoke_refresh_token_as(&stranger, refreshed.refresh())
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
        let family = token_service::token::refresh::FamilyId::parse(web.fid()).unwrap();
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
    // Nothing left to revoke: the same token again, a forged one, an expired one. The
    // same token is denied again all the same (a retry must wait for Redis replicas as the
    // first attempt did), by its client's caller only, and is not counted twice.
    assert!(
        !f.service
            .revoke_access_token_as(&ctx(), &gateway, &issued.access_token)
            .await
            .unwrap()
    );
    expect_permission_denied(
        f.service
            .revoke_access_token_as(&ctx(), &stranger, &issued.access_token)
            .await,
        &["billing.internal", "`partner`"],
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
        .refresh_as(&ctx(), &gateway, issued.refresh(), None)
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
    let family = token_service::token::refresh::FamilyId::parse(second.fid()).unwrap();
    expect_permission_denied(
        f.service.revoke_family_as(&orders, &family).await,
        &["orders.internal", "`partner`"],
    );
    assert!(f.service.revoke_family_as(&console, &family).await.unwrap());
    assert!(!active(second.access_token.clone()).await);

    use token_service::token::events::Event;
    let events = f.metrics.tokens();
    assert_eq!(events.event_count(Event::CallerRefused), 12);
    // The token revoked twice above counts once.
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
