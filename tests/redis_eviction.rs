//! A Redis that may evict keys is refused when the store connects: every key the store
//! writes expires, so any policy but `noeviction` could drop a denied jti or a DPoP proof
//! seen, and let a revoked token or a replayed proof through. Real Redis and a real
//! 6-node cluster (one master set to evict), started by the harness.

mod support;

use support::redis::{RedisCluster, RedisServer};
use token_service::token::store::redis::RedisStore;
use token_service::token::store::{Store, StoreError};

fn set(redis: &RedisServer, setting: &str, value: &str) {
    let reply = redis.cli(&["CONFIG", "SET", setting, value]);
    assert_eq!(reply.trim(), "OK", "CONFIG SET {setting} {value}: {reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_may_evict_is_refused_and_noeviction_is_accepted() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // No memory limit: nothing is ever evicted, whatever the policy (a warning only).
    set(&redis, "maxmemory-policy", "allkeys-lru");
    RedisStore::connect(&redis.url()).await.unwrap();

    set(&redis, "maxmemory", "100mb");
    for policy in ["allkeys-lru", "volatile-ttl"] {
        set(&redis, "maxmemory-policy", policy);
        match RedisStore::connect(&redis.url()).await {
            Err(StoreError::Unsafe(message)) => {
                assert!(message.contains(policy), "{message}");
                assert!(message.contains("noeviction"), "{message}");
                assert!(message.contains("revoked tokens"), "{message}");
            }
            other => panic!("{policy}: expected a refusal, got {other:?}"),
        }
    }

    set(&redis, "maxmemory-policy", "noeviction");
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    store.ping().await.unwrap();
}

/// A user whose ACL refuses INFO cannot be checked: the store connects (with a warning)
/// rather than refuse every least-privilege deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_not_allowed_info_connects_unchecked() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    set(&redis, "maxmemory", "100mb");
    set(&redis, "maxmemory-policy", "allkeys-lru");
    let reply = redis.cli(&[
        "ACL",
        "SETUSER",
        "app",
        "on",
        ">app-secret",
        "~*",
        "+@all",
        "-info",
    ]);
    assert_eq!(reply.trim(), "OK", "{reply}");
    let url = format!("redis://app:app-secret@127.0.0.1:{}", redis.port);
    let store = RedisStore::connect(&url).await.unwrap();
    store.ping().await.unwrap();
    // The same server, checked: refused.
    assert!(matches!(
        RedisStore::connect(&redis.url()).await,
        Err(StoreError::Unsafe(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_one_evicting_master_is_refused() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    RedisStore::connect_cluster(&cluster.seeds()).await.unwrap();
    let masters = cluster.masters();
    let evicting = *masters.last().unwrap();
    for (setting, value) in [("maxmemory", "1gb"), ("maxmemory-policy", "volatile-lru")] {
        let reply = cluster.cli(evicting, &["CONFIG", "SET", setting, value]);
        assert_eq!(reply.trim(), "OK", "{reply}");
    }
    match RedisStore::connect_cluster(&cluster.seeds()).await {
        Err(StoreError::Unsafe(message)) => {
            assert!(message.contains(&evicting.to_string()), "{message}");
            assert!(message.contains("volatile-lru"), "{message}");
        }
        other => panic!("expected a refusal naming master {evicting}, got {other:?}"),
    }
}
