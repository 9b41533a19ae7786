//! The Token API of service processes sharing state, over gRPC on real sockets: a
//! revocation through one instance is seen by another sharing a Redis or a Redis Cluster;
//! the family flow and 50 concurrent refreshes of one token over each store; Redis dying
//! under a running service and returning; a Redis that cannot be reached stops `serve`.

mod support;

use support::grpc::{is_active, issues_again, refresh};
use support::process::{Sandbox, ServiceProcess, http_get};
use support::token_request;
use token_service::api::proto::token_service_client::TokenServiceClient;
use token_service::api::proto::{
    RefreshTokensRequest, RevokeTokenRequest, revoke_token_request::Target,
};
use tonic::Code;

/// Two service processes sharing one Redis: what one revokes, the other refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_through_one_instance_is_seen_by_another_sharing_redis() {
    let Some(redis) = support::redis::RedisServer::start() else {
        return;
    };
    revocation_is_shared(Sandbox::new(""), redis.url()).await;
}

/// The same over a Redis Cluster (`tokens.store = "redis_cluster"`, seeds in `REDIS_URL`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_through_one_instance_is_seen_by_another_sharing_a_redis_cluster() {
    let Some(cluster) = start_cluster().await else {
        return;
    };
    revocation_is_shared(cluster_sandbox(), cluster.seeds().join(",")).await;
    drop(cluster);
}

/// A 6-node Redis Cluster (None when redis-server is missing outside strict mode).
async fn start_cluster() -> Option<support::redis::RedisCluster> {
    tokio::task::spawn_blocking(support::redis::RedisCluster::start)
        .await
        .unwrap()
}

/// A sandbox configured for the Redis Cluster store.
fn cluster_sandbox() -> Sandbox {
    let sandbox = Sandbox::new("");
    let text = std::fs::read_to_string(sandbox.config_path())
        .unwrap()
        .replace("[tokens]", "[tokens]\nstore = \"redis_cluster\"");
    sandbox.write_config(&text);
    sandbox
}

/// Starts two service processes on `sandbox`'s config with `REDIS_URL=url`; a token A
/// issues is active at B, and A's revocation is seen by B at once.
async fn revocation_is_shared(sandbox: Sandbox, url: String) {
    let (config, cwd) = (sandbox.config_path(), sandbox.dir.path().to_path_buf());
    let (a, b) = tokio::task::spawn_blocking(move || {
        let env = [("REDIS_URL", url.as_str())];
        let a = ServiceProcess::start_with_env(Some(&config), &cwd, &env);
        let b = ServiceProcess::start_with_env(Some(&config), &cwd, &env);
        (a, b)
    })
    .await
    .unwrap();
    let mut to_a = TokenServiceClient::connect(format!("http://{}", a.grpc))
        .await
        .unwrap();
    let mut to_b = TokenServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .unwrap();

    let issued = to_a
        .generate_tokens(token_request("alice"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        is_active(&mut to_b, &issued.access_token).await,
        "B sees A's token"
    );
    let revoked = to_a
        .revoke_token(RevokeTokenRequest {
            target: Some(Target::RefreshToken(issued.refresh_token.clone())),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked);
    assert!(
        !is_active(&mut to_b, &issued.access_token).await,
        "B sees A's revocation at once"
    );
    let refused = refresh(&mut to_b, &issued.refresh_token).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    drop((to_a, to_b));
    tokio::task::spawn_blocking(move || {
        assert_eq!(a.terminate().code(), Some(0));
        assert_eq!(b.terminate().code(), Some(0));
    })
    .await
    .unwrap();
}

/// Redis dies under a running service: UNAVAILABLE with a clear message and not ready;
/// when Redis returns, the service carries on without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_unavailable_and_not_ready_then_recovers() {
    let Some(mut redis) = support::redis::RedisServer::start() else {
        return;
    };
    let sandbox = Sandbox::new("");
    let url = redis.url();
    let (config, cwd) = (sandbox.config_path(), sandbox.dir.path().to_path_buf());
    let service = tokio::task::spawn_blocking(move || {
        ServiceProcess::start_with_env(Some(&config), &cwd, &[("REDIS_URL", url.as_str())])
    })
    .await
    .unwrap();
    let mut client = TokenServiceClient::connect(format!("http://{}", service.grpc))
        .await
        .unwrap();
    client
        .generate_tokens(token_request("alice"))
        .await
        .unwrap();
    let admin = service.admin;

    redis.kill();
    let error = client
        .generate_tokens(token_request("bob"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    assert!(error.message().contains("redis"), "{}", error.message());
    let (status, body) = tokio::task::spawn_blocking(move || http_get(admin, "/admin/v1/readyz"))
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");

    redis.restart();
    assert!(
        issues_again(&mut client, "carol").await,
        "no recovery after Redis returned"
    );
    let (status, _) = tokio::task::spawn_blocking(move || http_get(admin, "/admin/v1/readyz"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    drop(client);
    tokio::task::spawn_blocking(move || assert_eq!(service.terminate().code(), Some(0)))
        .await
        .unwrap();
}

/// The refresh-family flow and 50 concurrent refreshes of one token, over gRPC.
async fn family_flow_and_race(grpc: std::net::SocketAddr) {
    let mut client = TokenServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let first = client
        .generate_tokens(token_request("alice"))
        .await
        .unwrap()
        .into_inner();
    let second = refresh(&mut client, &first.refresh_token).await.unwrap();
    let reuse = refresh(&mut client, &first.refresh_token)
        .await
        .unwrap_err();
    assert_eq!(reuse.code(), Code::Unauthenticated);
    for token in [first.access_token, second.access_token] {
        assert!(!is_active(&mut client, &token).await);
    }
    let raced = client
        .generate_tokens(token_request("bob"))
        .await
        .unwrap()
        .into_inner();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (mut client, refresh_token) = (client.clone(), raced.refresh_token.clone());
            tokio::spawn(async move {
                client
                    .refresh_tokens(RefreshTokensRequest {
                        refresh_token,
                        ..Default::default()
                    })
                    .await
            })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => wins += 1,
            Err(status) => assert_eq!(status.code(), Code::Unauthenticated, "{status:?}"),
        }
    }
    assert_eq!(wins, 1, "exactly one of 50 concurrent refreshes may win");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_flow_and_fifty_concurrent_refreshes_over_grpc_memory_store() {
    let sandbox = Sandbox::new("");
    let (config, cwd) = (sandbox.config_path(), sandbox.dir.path().to_path_buf());
    let service = tokio::task::spawn_blocking(move || ServiceProcess::start(Some(&config), &cwd))
        .await
        .unwrap();
    family_flow_and_race(service.grpc).await;
    tokio::task::spawn_blocking(move || assert_eq!(service.terminate().code(), Some(0)))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_flow_and_fifty_concurrent_refreshes_over_grpc_redis_cluster() {
    let Some(cluster) = start_cluster().await else {
        return;
    };
    let sandbox = cluster_sandbox();
    let seeds = cluster.seeds().join(",");
    let (config, cwd) = (sandbox.config_path(), sandbox.dir.path().to_path_buf());
    let service = tokio::task::spawn_blocking(move || {
        ServiceProcess::start_with_env(Some(&config), &cwd, &[("REDIS_URL", seeds.as_str())])
    })
    .await
    .unwrap();
    service.wait_for_log("token store connected store=\"redis_cluster\" nodes=6");
    assert_eq!(cluster.key_count(), 0);
    family_flow_and_race(service.grpc).await;
    // The families are in the cluster, not in a store of the process's own.
    let held = tokio::task::spawn_blocking(move || (cluster.key_count(), cluster))
        .await
        .unwrap();
    assert!(held.0 >= 2, "families in the cluster: {}", held.0);
    tokio::task::spawn_blocking(move || assert_eq!(service.terminate().code(), Some(0)))
        .await
        .unwrap();
    drop(held);
}

/// A Redis store that cannot be reached stops `serve` with a clear error: it never serves
/// from a memory store of its own, which would split a fleet's state.
#[test]
fn serve_refuses_to_start_when_its_redis_store_cannot_be_reached() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{closed}");
    for (sandbox, kind) in [
        (Sandbox::new(""), "redis"),
        (cluster_sandbox(), "redis_cluster"),
    ] {
        let output = support::process::run_cli_within(
            Some(&sandbox.config_path()),
            sandbox.dir.path(),
            &["serve"],
            &[("REDIS_URL", url.as_str())],
            std::time::Duration::from_secs(60),
        )
        .unwrap_or_else(|| panic!("{kind}: serve kept running without its store"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{kind}: {stderr}");
        assert!(
            stderr.contains("error: token store") && stderr.contains("refused"),
            "{kind}: {stderr}"
        );
    }
}
