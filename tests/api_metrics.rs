//! What an operator reads on `/metrics` after real calls to the real binary: Token API calls
//! by method and status code with their duration, tokens issued per client, lifecycle
//! events (reuse, revocation), and the token store's calls by operation and outcome,
//! including a Redis outage.

mod support;

use std::collections::BTreeMap;

use support::grpc::issues_again;
use support::process::Sandbox;
use support::token_request;
use token_service::api::proto::token_service_client::TokenServiceClient;
use token_service::api::proto::{
    GetJwksRequest, GetJwksResponse, RefreshTokensRequest, RevokeTokenRequest,
    revoke_token_request::Target,
};
use tonic::Code;

/// The value of the series `name` whose labels include `labels`, from a text exposition.
fn value(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (series_labels, number) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        let present: BTreeMap<&str, &str> = series_labels
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        labels
            .iter()
            .all(|(k, v)| present.get(k) == Some(v))
            .then(|| number.trim().parse().ok())
            .flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_tokens_events_and_store_operations_are_counted() {
    let sandbox = Sandbox::new("");
    let service = sandbox.serve_async(&[]).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", service.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = TokenServiceClient::new(channel.clone());

    let first = client
        .generate_tokens(token_request("alice"))
        .await
        .unwrap()
        .into_inner();
    client.generate_tokens(token_request("bob")).await.unwrap();
    let refused = client.generate_tokens(token_request("")).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let refresh = |token: &str| RefreshTokensRequest {
        refresh_token: token.into(),
        dpop: None,
    };
    client
        .refresh_tokens(refresh(&first.refresh_token))
        .await
        .unwrap();
    let reused = client
        .refresh_tokens(refresh(&first.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::Unauthenticated);
    client
        .revoke_token(RevokeTokenRequest {
            target: Some(Target::AccessTokenJti("some-jti".into())),
        })
        .await
        .unwrap();
    // A method the API does not have: counted under `unknown`, not under its path.
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.unwrap();
    let nope = raw
        .unary(
            tonic::Request::new(GetJwksRequest {}),
            http::uri::PathAndQuery::from_static("/token.v1.TokenService/Nope"),
            tonic_prost::ProstCodec::<GetJwksRequest, GetJwksResponse>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(nope.code(), Code::Unimplemented);

    let text = service.metrics().await;
    let calls = |method, code| {
        value(
            &text,
            "token_service_grpc_requests_total",
            &[("method", method), ("code", code)],
        )
    };
    assert_eq!(calls("GenerateTokens", "OK"), Some(2.0), "{text}");
    assert_eq!(calls("GenerateTokens", "INVALID_ARGUMENT"), Some(1.0));
    assert_eq!(calls("RefreshTokens", "OK"), Some(1.0));
    assert_eq!(calls("RefreshTokens", "UNAUTHENTICATED"), Some(1.0));
    assert_eq!(calls("RevokeToken", "OK"), Some(1.0));
    assert_eq!(calls("unknown", "UNIMPLEMENTED"), Some(1.0));
    assert_eq!(calls("IntrospectToken", "OK"), Some(0.0));
    assert!(!text.contains("Nope"), "a path the API lacks is no label");
    assert_eq!(
        value(
            &text,
            "token_service_grpc_request_duration_seconds_count",
            &[("method", "GenerateTokens")]
        ),
        Some(3.0)
    );

    let issued = |grant| {
        value(
            &text,
            "token_service_tokens_issued_total",
            &[("client_id", "demo"), ("grant", grant)],
        )
    };
    assert_eq!(issued("new"), Some(2.0));
    assert_eq!(issued("refresh"), Some(1.0));
    let event = |event| {
        value(
            &text,
            "token_service_token_events_total",
            &[("event", event)],
        )
    };
    assert_eq!(event("reuse_detected"), Some(1.0));
    assert_eq!(event("access_revoked"), Some(1.0));
    assert_eq!(event("family_revoked"), Some(0.0));

    let store = |operation, outcome| {
        value(
            &text,
            "token_service_store_requests_total",
            &[("operation", operation), ("outcome", outcome)],
        )
    };
    assert_eq!(store("create_family", "ok"), Some(2.0));
    assert_eq!(
        store("rotate", "ok"),
        Some(2.0),
        "the rotation and the reuse"
    );
    assert_eq!(store("deny_jti", "ok"), Some(1.0));
    assert!(
        value(
            &text,
            "token_service_store_request_duration_seconds_count",
            &[("operation", "get_family")]
        )
        .is_some_and(|n| n >= 2.0)
    );

    // Nothing a caller sent or received is a label or a value.
    for secret in [
        "alice",
        first.refresh_token.as_str(),
        first.access_token.as_str(),
    ] {
        assert!(!text.contains(secret));
    }
    drop(client);
    service.stop_cleanly().await;
}

/// A Redis outage shows as store calls ending `unavailable` and API calls ending
/// UNAVAILABLE, then as successes again once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_shows_in_the_store_and_api_metrics() {
    let Some(mut redis) = support::redis::RedisServer::start() else {
        return;
    };
    let sandbox = Sandbox::new("");
    let service = sandbox.serve_async(&[("REDIS_URL", &redis.url())]).await;
    let mut client = service.client().await;
    client
        .generate_tokens(token_request("alice"))
        .await
        .unwrap();
    redis.kill();
    let error = client
        .generate_tokens(token_request("bob"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    redis.restart();
    assert!(
        issues_again(&mut client, "carol").await,
        "no recovery after Redis returned"
    );

    let text = service.metrics().await;
    let store = |outcome| {
        value(
            &text,
            "token_service_store_requests_total",
            &[("operation", "create_family"), ("outcome", outcome)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(store("ok"), 2.0, "{text}");
    assert!(store("unavailable") >= 1.0);
    let calls = |code| {
        value(
            &text,
            "token_service_grpc_requests_total",
            &[("method", "GenerateTokens"), ("code", code)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(calls("OK"), 2.0);
    assert_eq!(calls("UNAVAILABLE"), store("unavailable"));
    drop(client);
    service.stop_cleanly().await;
}
