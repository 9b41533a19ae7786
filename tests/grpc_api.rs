//! The Token API over gRPC on a real socket, against the real binary with the embedded
//! profile (software backend, memory store): issue → introspect → refresh → reuse → family
//! revoked; JWKS over HTTP verifies every token with jsonwebtoken; bad input gets status
//! codes with reasons; health; graceful shutdown.

mod support;

use support::grpc::{is_active, refresh};
use support::process::{Sandbox, ServiceProcess, http_get};
use support::token_request;
use token_service::api::proto::token_service_client::TokenServiceClient;
use token_service::api::proto::{
    GenerateTokensRequest, GetJwksRequest, IntrospectTokenRequest, RevokeTokenRequest,
    ValidateDPoPRequest, revoke_token_request::Target,
};
use tonic::Code;

fn verify_with_jwks(token: &str, jwks_json: &str) -> serde_json::Value {
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(jwks_json).unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let jwk = jwks
        .find(header.kid.as_deref().unwrap())
        .expect("kid in JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&["api"]);
    validation.set_issuer(&["token-service"]);
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .unwrap()
        .claims
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_api_end_to_end_over_grpc() {
    let sandbox = Sandbox::new("");
    let service = ServiceProcess::start(Some(&sandbox.config_path()), sandbox.dir.path());
    let mut client = TokenServiceClient::connect(format!("http://{}", service.grpc))
        .await
        .unwrap();

    let first = client
        .generate_tokens(token_request("alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            first.token_type.as_str(),
            first.expires_in,
            first.scope.as_str()
        ),
        ("Bearer", 900, "read")
    );
    assert!(first.refresh_token.starts_with("rt1."));

    let seen = client
        .introspect_token(IntrospectTokenRequest {
            token: first.access_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(seen.active);
    assert_eq!(
        (seen.sub.as_str(), seen.client_id.as_str()),
        ("alice", "demo")
    );
    // A resource server may ask for itself: active only if `aud` holds its audience.
    for (audience, active) in [("api", true), ("billing", false)] {
        let seen = client
            .introspect_token(IntrospectTokenRequest {
                token: first.access_token.clone(),
                audience: audience.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(seen.active, active, "audience {audience}");
        assert_eq!(seen.sub.is_empty(), !active, "no claims when inactive");
    }

    let second = refresh(&mut client, &first.refresh_token).await.unwrap();
    let reuse = refresh(&mut client, &first.refresh_token)
        .await
        .unwrap_err();
    assert_eq!(reuse.code(), Code::Unauthenticated);
    assert!(
        reuse.message().contains("already used"),
        "{}",
        reuse.message()
    );
    for token in [&first.access_token, &second.access_token] {
        let seen = client
            .introspect_token(IntrospectTokenRequest {
                token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!seen.active);
        assert!(seen.sub.is_empty(), "an inactive token shows no claims");
    }

    // JWKS over HTTP (with a cache lifetime) and over gRPC agree and verify every token.
    let (status, body) = http_get(service.public, "/.well-known/jwks.json");
    assert_eq!(status, 200);
    let grpc_jwks = client
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .jwks_json;
    let http: serde_json::Value = serde_json::from_str(&body).unwrap();
    let grpc: serde_json::Value = serde_json::from_str(&grpc_jwks).unwrap();
    assert_eq!(http, grpc);
    for token in [&first.access_token, &second.access_token] {
        let claims = verify_with_jwks(token, &body);
        assert_eq!(claims["sub"], "alice");
    }

    // Revocation by jti.
    let third = client
        .generate_tokens(token_request("bob"))
        .await
        .unwrap()
        .into_inner();
    let jti = verify_with_jwks(&third.access_token, &body)["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked = client
        .revoke_token(RevokeTokenRequest {
            target: Some(Target::AccessTokenJti(jti)),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked);
    assert!(!is_active(&mut client, &third.access_token).await);

    // Bad input: a clear status and reason each.
    for (request, code, needle) in [
        (
            GenerateTokensRequest {
                subject: String::new(),
                ..token_request("x")
            },
            Code::InvalidArgument,
            "subject is empty",
        ),
        (
            GenerateTokensRequest {
                subject: "x".repeat(300),
                ..token_request("x")
            },
            Code::InvalidArgument,
            "longer than",
        ),
        (
            GenerateTokensRequest {
                client_id: "nobody".into(),
                ..token_request("x")
            },
            Code::InvalidArgument,
            "unknown client",
        ),
        (
            GenerateTokensRequest {
                access_token_ttl_seconds: 100_000,
                ..token_request("x")
            },
            Code::InvalidArgument,
            "maximum",
        ),
    ] {
        let error = client.generate_tokens(request).await.unwrap_err();
        assert_eq!(error.code(), code);
        assert!(error.message().contains(needle), "{}", error.message());
    }
    for (token, code, needle) in [
        ("garbage", Code::InvalidArgument, "malformed refresh token"),
        (second.access_token.as_str(), Code::InvalidArgument, "JWT"),
        (
            "rt1.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            Code::Unauthenticated,
            "unknown",
        ),
    ] {
        let error = refresh(&mut client, token).await.unwrap_err();
        assert_eq!(error.code(), code, "{token}");
        assert!(error.message().contains(needle), "{}", error.message());
    }
    let oversized = client
        .generate_tokens(token_request(&"y".repeat(100_000)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            oversized.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{oversized:?}"
    );
    let dpop = client
        .validate_d_po_p(ValidateDPoPRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!dpop.valid);
    assert_eq!(
        (dpop.error.as_str(), dpop.reason.as_str()),
        ("invalid_dpop_proof", "malformed")
    );

    // The correlation id comes back; the standard health service answers.
    let mut request = tonic::Request::new(token_request("carol"));
    request
        .metadata_mut()
        .insert("x-correlation-id", "req-123".parse().unwrap());
    let response = client.generate_tokens(request).await.unwrap();
    assert_eq!(
        response.metadata().get("x-correlation-id").unwrap(),
        "req-123"
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", service.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "token.v1.TokenService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Nothing secret in the log: no refresh token, no full access token.
    let log = service.wait_for_log("reuse_detected");
    assert!(!log.contains(&first.refresh_token[4..]) && !log.contains(&first.access_token));
    assert!(log.contains("token issued"), "audit lines expected");
    assert!(
        log.contains("reuse_detected"),
        "the reuse must be audited:\n{log}"
    );
    drop(client);
    drop(health);
    let status = tokio::task::spawn_blocking(move || service.terminate())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// A newcomer's first token in one command, without grpcurl; then introspected and revoked.
#[test]
fn the_client_subcommand_issues_introspects_and_revokes() {
    let sandbox = Sandbox::new("");
    let service = ServiceProcess::start(Some(&sandbox.config_path()), sandbox.dir.path());
    let address = format!("http://{}", service.grpc);
    let tokens = sandbox.generate_token(&service);
    let access = tokens["access_token"].as_str().unwrap();
    let seen = sandbox.run(
        &["client", "--address", &address, "introspect", access],
        None,
    );
    let seen: serde_json::Value = serde_json::from_slice(&seen.stdout).unwrap();
    assert_eq!(seen["active"], true);
    assert_eq!(seen["sub"], "alice");
    // RFC 7009: the access token itself, revoked by its client's caller.
    let revoke = |token: &str| {
        let out = sandbox.run(
            &[
                "client",
                "--address",
                &address,
                "revoke",
                "--access-token",
                token,
            ],
            None,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["revoked"].clone()
    };
    assert_eq!(revoke(access), true);
    assert_eq!(revoke(access), false, "nothing left to revoke");
    let seen = sandbox.run(
        &["client", "--address", &address, "introspect", access],
        None,
    );
    let seen: serde_json::Value = serde_json::from_slice(&seen.stdout).unwrap();
    assert_eq!(seen["active"], false);
    let bad = sandbox.run(
        &["client", "--address", &address, "refresh", "nonsense"],
        None,
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("InvalidArgument"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert_eq!(service.terminate().code(), Some(0));
}

/// `bench` drives the API and reports; figures are for people, not asserted here.
#[test]
fn the_bench_subcommand_reports_rate_latency_and_cpu() {
    let sandbox = Sandbox::new("");
    let service = ServiceProcess::start(Some(&sandbox.config_path()), sandbox.dir.path());
    let output = sandbox.run(
        &[
            "bench",
            "--address",
            &format!("http://{}", service.grpc),
            "--admin",
            &service.admin.to_string(),
            "--concurrency",
            "4",
            "--connections",
            "2",
            "--duration",
            "1s",
            "--refresh",
            "--threads",
            "2",
        ],
        None,
    );
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        out.contains("tokens/s") && out.contains("p99") && out.contains("errors 0"),
        "{out}"
    );
    assert!(
        out.contains("at concurrency 4 over 2 connections (2 client threads)"),
        "{out}"
    );
    assert!(
        out.contains("server CPU: ") && out.contains("ms per token"),
        "{out}"
    );
    assert!(out.contains("bench client CPU (same machine): "), "{out}");
    assert!(out.contains("raw ES256 sign"), "{out}");
    let refused = sandbox.run(&["bench", "--threads", "0"], None);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("--threads"), "{said}");
    assert_eq!(service.terminate().code(), Some(0));
}

/// Per-client rate limit: over it, RESOURCE_EXHAUSTED with a retry-after; other clients
/// are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_limit_is_told_when_to_retry() {
    let sandbox = Sandbox::new(
        "[tokens.rate_limit]\nper_second = 1\nburst = 2\n\n[tokens.clients.other]\nscopes = []\naudiences = [\"api\"]\n",
    );
    let (config, cwd) = (sandbox.config_path(), sandbox.dir.path().to_path_buf());
    let service = tokio::task::spawn_blocking(move || ServiceProcess::start(Some(&config), &cwd))
        .await
        .unwrap();
    let mut client = TokenServiceClient::connect(format!("http://{}", service.grpc))
        .await
        .unwrap();
    client.generate_tokens(token_request("a")).await.unwrap();
    client.generate_tokens(token_request("b")).await.unwrap();
    let limited = client
        .generate_tokens(token_request("c"))
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    assert!(
        limited.message().contains("rate limit of client `demo`"),
        "{}",
        limited.message()
    );
    assert_eq!(limited.metadata().get("retry-after").unwrap(), "1");
    // Another client has its own bucket.
    let other = GenerateTokensRequest {
        client_id: "other".into(),
        scopes: vec![],
        ..token_request("d")
    };
    client.generate_tokens(other).await.unwrap();
    assert!(
        service
            .metrics()
            .await
            .lines()
            .any(|l| l == "token_service_token_events_total{event=\"rate_limited\"} 1"),
        "the refusal is counted"
    );
    drop(client);
    tokio::task::spawn_blocking(move || assert_eq!(service.terminate().code(), Some(0)))
        .await
        .unwrap();
}

/// A client configured with `access_tokens_only` gets an access token over gRPC and no
/// refresh token; the token introspects as active until it is revoked.
#[test]
fn a_client_issued_access_tokens_only_gets_no_refresh_token_over_grpc() {
    let sandbox = Sandbox::new(
        "[tokens.clients.m2m]\nscopes = [\"read\"]\naudiences = [\"api\"]\naccess_tokens_only = true",
    );
    let service = sandbox.serve();
    let address = format!("http://{}", service.grpc);
    let client = |args: &[&str]| {
        let mut all = vec!["client", "--address", address.as_str()];
        all.extend_from_slice(args);
        let out = sandbox.run(&all, None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let tokens = client(&[
        "generate",
        "--subject",
        "batch-job",
        "--client-id",
        "m2m",
        "--scope",
        "read",
    ]);
    assert!(tokens.get("refresh_token").is_none(), "{tokens}");
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let seen = client(&["introspect", &access]);
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["client_id"], "m2m");
    client(&["revoke", "--access-token", &access]);
    assert_eq!(client(&["introspect", &access])["active"], false);

    // `bench --refresh` for such a client fails every refresh and says why; so does a
    // bench for a client the service does not know.
    let bench = |client_id: &str| {
        let out = sandbox.run(
            &[
                "bench",
                "--address",
                &address,
                "--client-id",
                client_id,
                "--refresh",
                "--concurrency",
                "2",
                "--duration",
                "300ms",
            ],
            None,
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = bench("m2m");
    assert!(
        out.contains("first error: GenerateTokens returned no refresh token (client `m2m`"),
        "{out}"
    );
    let out = bench("nobody");
    assert!(
        out.contains("first error: GenerateTokens: InvalidArgument: unknown client `nobody`"),
        "{out}"
    );
    assert_eq!(service.terminate().code(), Some(0));
}
