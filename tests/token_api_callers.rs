//! Which admitted caller may do what, over mTLS against the real binary: a client that
//! names its callers is acted for only by their certificates; introspection and DPoP-proof
//! validation are for the resource servers of `tokens.callers.introspect`; revoking by jti
//! alone, or any client's family by id, for the operators of `tokens.callers.revoke`.

mod support;

use support::api_tls::{Credentials, client, gateways, generate};
use support::process::Sandbox;
use token_service::api::proto::{
    IntrospectTokenRequest, RefreshTokensRequest, RevokeTokenRequest, ValidateDPoPRequest,
    revoke_token_request,
};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_naming_its_callers_is_acted_for_only_by_their_certificates() {
    let pki = gateways();
    let sandbox = Sandbox::new(&format!(
        "{}\n[tokens.clients.billing]\naudiences = [\"billing\"]\n",
        pki.server_tls_table(true)
    ));
    let config = std::fs::read_to_string(sandbox.config_path())
        .unwrap()
        .replace(
            "audiences = [\"api\"]",
            "audiences = [\"api\"]\ncallers = [\"gateway-a.internal\"]",
        );
    sandbox.write_config(&config);
    let service = sandbox.serve();
    let port = service.grpc.port();
    let mut gateway_a = client(port, Credentials::of(&pki, Some("gateway-a")))
        .await
        .unwrap();
    let mut gateway_b = client(port, Credentials::of(&pki, Some("gateway-b")))
        .await
        .unwrap();

    let refused = gateway_b
        .generate_tokens(generate("demo"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    assert!(
        refused.message().contains("gateway-b.internal") && refused.message().contains("`demo`"),
        "{}",
        refused.message()
    );
    // billing names no callers: any certificate of the CA may act for it.
    gateway_b
        .generate_tokens(generate("billing"))
        .await
        .unwrap();

    let issued = gateway_a
        .generate_tokens(generate("demo"))
        .await
        .unwrap()
        .into_inner();
    let refresh = |token: &str| RefreshTokensRequest {
        refresh_token: token.to_owned(),
        dpop: None,
    };
    let refused = gateway_b
        .refresh_tokens(refresh(&issued.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    // The refused refresh consumed nothing: gateway-a rotates the same token.
    let refreshed = gateway_a
        .refresh_tokens(refresh(&issued.refresh_token))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(refreshed.refresh_token, issued.refresh_token);

    // The family id is public (`fid` in the access token): only demo's callers revoke by it.
    let claims = refreshed.access_token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims).unwrap(),
    )
    .unwrap();
    let revoke = || RevokeTokenRequest {
        target: Some(revoke_token_request::Target::FamilyId(
            claims["fid"].as_str().unwrap().to_owned(),
        )),
    };
    let refused = gateway_b.revoke_token(revoke()).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    let revoked = gateway_a.revoke_token(revoke()).await.unwrap().into_inner();
    assert!(revoked.revoked);

    service.wait_for_log("caller_refused");
    let log = service.settled_log();
    assert!(log.contains("gateway-b.internal"), "{log}");
    // Every issuance names its caller.
    let issued_by_a = log
        .lines()
        .filter(|l| l.contains("token issued") && l.contains("client_id=demo"))
        .collect::<Vec<_>>();
    assert_eq!(issued_by_a.len(), 2, "{log}");
    assert!(
        issued_by_a
            .iter()
            .all(|l| l.contains("caller=gateway-a.internal")),
        "{log}"
    );
    assert!(!log.contains(&issued.refresh_token), "no token in the log");
    // The revocation is audited with who made it.
    assert!(
        log.lines().any(|l| l.contains("event=\"revoke_family\"")
            && l.contains("revoked=true")
            && l.contains("caller=gateway-a.internal")),
        "{log}"
    );
    assert!(service.terminate().success());
}

/// gateway-a is the resource server, gateway-b the operator; `client` (demo names no
/// callers) issues and may revoke its own tokens whole, but neither introspect nor revoke
/// by jti.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_servers_introspect_and_operators_revoke_by_jti() {
    let pki = gateways();
    let sandbox = Sandbox::new(&format!(
        "{}\n[tokens.callers]\nintrospect = [\"gateway-a.internal\"]\nrevoke = [\"gateway-b.internal\"]\n",
        pki.server_tls_table(true)
    ));
    let service = sandbox.serve();
    let port = service.grpc.port();
    let mut resource_server = client(port, Credentials::of(&pki, Some("gateway-a")))
        .await
        .unwrap();
    let mut operator = client(port, Credentials::of(&pki, Some("gateway-b")))
        .await
        .unwrap();
    let mut demo = client(port, Credentials::of(&pki, Some("client")))
        .await
        .unwrap();
    let introspect = |token: &str| IntrospectTokenRequest {
        token: token.to_owned(),
        audience: String::new(),
    };
    let revoke = |target| RevokeTokenRequest {
        target: Some(target),
    };

    let first = demo
        .generate_tokens(generate("demo"))
        .await
        .unwrap()
        .into_inner();
    for (who, caller) in [("demo", &mut demo), ("operator", &mut operator)] {
        let refused = caller
            .introspect_token(introspect(&first.access_token))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{who}: {refused}");
        assert!(
            refused.message().contains("may not introspect"),
            "{refused}"
        );
        let refused = caller
            .validate_d_po_p(ValidateDPoPRequest::default())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{who}: {refused}");
    }
    let seen = resource_server
        .introspect_token(introspect(&first.access_token))
        .await
        .unwrap()
        .into_inner();
    assert!(seen.active);

    // By jti alone: the operator only.
    let by_jti = || revoke_token_request::Target::AccessTokenJti(seen.jti.clone());
    for caller in [&mut demo, &mut resource_server] {
        let refused = caller.revoke_token(revoke(by_jti())).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    }
    assert!(
        resource_server
            .introspect_token(introspect(&first.access_token))
            .await
            .unwrap()
            .into_inner()
            .active
    );
    let revoked = operator.revoke_token(revoke(by_jti())).await.unwrap();
    assert!(revoked.into_inner().revoked);
    assert!(
        !resource_server
            .introspect_token(introspect(&first.access_token))
            .await
            .unwrap()
            .into_inner()
            .active
    );

    // The whole token: its client's caller revokes it (demo names none, so any caller).
    let second = demo
        .generate_tokens(generate("demo"))
        .await
        .unwrap()
        .into_inner();
    let whole = || revoke_token_request::Target::AccessToken(second.access_token.clone());
    assert!(
        demo.revoke_token(revoke(whole()))
            .await
            .unwrap()
            .into_inner()
            .revoked
    );
    assert!(
        !demo
            .revoke_token(revoke(whole()))
            .await
            .unwrap()
            .into_inner()
            .revoked
    );
    assert!(
        !resource_server
            .introspect_token(introspect(&second.access_token))
            .await
            .unwrap()
            .into_inner()
            .active
    );

    // The last audit line written; every earlier one is in the log by then.
    let log = service.wait_for_log("inactive access token denied again");
    assert!(
        log.lines().any(|l| l.contains("caller_refused")
            && l.contains("operation=\"introspect\"")
            && l.contains("caller=gateway-b.internal")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("event=\"revoke_access\"")
                && l.contains("caller=gateway-b.internal")),
        "{log}"
    );
    assert!(!log.contains(&second.access_token), "no token in the log");
    assert!(service.terminate().success());
}
