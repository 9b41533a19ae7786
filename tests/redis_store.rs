//! The token logic over a real Redis, as a fleet runs it: several instances sharing one
//! store see each other's rotations and revocations; Redis dying is UNAVAILABLE, not data
//! loss, and the service carries on when it returns.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use support::redis::RedisServer;
use support::token_fixture::WithFamily;
use token_service::backends::chain::{Chain, Routes};
use token_service::backends::clock::SystemClock;
use token_service::backends::software::{SoftwareBackend, SoftwareOptions};
use token_service::backends::{Algorithm, Backend, KeyRef};
use token_service::context::CallContext;
use token_service::metrics::Metrics;
use token_service::resilience::ResilienceConfig;
use token_service::token::claims::ClientPolicy;
use token_service::token::refresh::{FamilyId, RefreshToken};
use token_service::token::store::redis::{RedisOptions, RedisStore};
use token_service::token::store::{MAX_RETIRED, Rotation, Store, StoreError};
use token_service::token::{TokenError, TokenRequest, TokenService, TokenSettings};

/// One service instance: its own backend handle on the shared key directory, its own
/// connection to the shared Redis.
async fn instance(keys: &Path, redis_url: &str) -> Arc<TokenService> {
    instance_with_store(
        keys,
        Arc::new(RedisStore::connect(redis_url).await.unwrap()),
    )
    .await
}

async fn instance_with_store(keys: &Path, store: Arc<dyn Store>) -> Arc<TokenService> {
    let backend = Arc::new(SoftwareBackend::open(keys, SoftwareOptions::default()).unwrap());
    let signing = KeyRef::new("token", "signing").unwrap();
    let encryption = KeyRef::new("token-cache", "aes").unwrap();
    let _ = backend.generate_key(&signing, Algorithm::Es256).await;
    let _ = backend.generate_key(&encryption, Algorithm::A256Gcm).await;
    let chain = Arc::new(
        Chain::new(
            vec![(backend as Arc<dyn Backend>, ResilienceConfig::default())],
            &Routes {
                sign: vec!["software".into()],
                verify: vec!["software".into()],
                encrypt: vec!["software".into()],
            },
            true,
            Metrics::new(),
        )
        .unwrap(),
    );
    let settings = TokenSettings {
        issuer: "token-service".into(),
        access_ttl: Duration::from_secs(900),
        max_access_ttl: Duration::from_secs(3600),
        refresh_ttl: Duration::from_secs(3600),
        clock_skew: Duration::from_secs(60),
        rate_limit: None,
        callers: Default::default(),
        data_keys: Default::default(),
        clients: BTreeMap::from([(
            "web".to_owned(),
            ClientPolicy {
                scopes: vec!["read".into()],
                audiences: vec!["api".into()],
                ..Default::default()
            },
        )]),
    };
    Arc::new(TokenService::new(
        chain,
        store,
        settings,
        signing,
        encryption,
        Arc::new(SystemClock),
    ))
}

fn request(subject: &str) -> TokenRequest {
    TokenRequest {
        subject: subject.into(),
        client_id: "web".into(),
        scopes: vec!["read".into()],
        ..Default::default()
    }
}

fn ctx() -> CallContext {
    CallContext::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_rotation_reuse_and_revocation() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let a = instance(&keys.path().join("keys"), &redis.url()).await;
    let b = instance(&keys.path().join("keys"), &redis.url()).await;

    let first = a.generate(&ctx(), &request("alice")).await.unwrap();
    assert!(
        b.introspect(&ctx(), &first.access_token)
            .await
            .unwrap()
            .active
    );
    // Refreshed through B, reused through A: the family is revoked for both.
    let second = b.refresh(&ctx(), first.refresh()).await.unwrap();
    match a.refresh(&ctx(), first.refresh()).await {
        Err(TokenError::Unauthenticated(reason)) => {
            assert!(reason.contains("already used"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    for service in [&a, &b] {
        for token in [&first.access_token, &second.access_token] {
            assert!(!service.introspect(&ctx(), token).await.unwrap().active);
        }
    }
    // A revocation by jti through A is seen at once by B.
    let third = a.generate(&ctx(), &request("bob")).await.unwrap();
    assert!(
        b.introspect(&ctx(), &third.access_token)
            .await
            .unwrap()
            .active
    );
    a.revoke_access_token(&third.claims.jti, third.claims.exp)
        .await
        .unwrap();
    assert!(
        !b.introspect(&ctx(), &third.access_token)
            .await
            .unwrap()
            .active
    );
    // And a family revoked through B is dead for A.
    let fourth = a.generate(&ctx(), &request("carol")).await.unwrap();
    assert!(b.revoke_refresh_token(fourth.refresh()).await.unwrap());
    assert!(a.refresh(&ctx(), fourth.refresh()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_refreshes_across_instances_exactly_one_wins() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let instances = [
        instance(&keys.path().join("keys"), &redis.url()).await,
        instance(&keys.path().join("keys"), &redis.url()).await,
    ];
    let issued = instances[0]
        .generate(&ctx(), &request("alice"))
        .await
        .unwrap();
    let token = Arc::new(issued.refresh().to_string());
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (service, token) = (instances[i % 2].clone(), token.clone());
            tokio::spawn(async move { service.refresh(&CallContext::new(), &token).await })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(TokenError::Unauthenticated(_)) => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(wins, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_is_unavailable_and_the_service_recovers_without_a_restart() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let service = instance(&keys.path().join("keys"), &redis.url()).await;
    service.generate(&ctx(), &request("alice")).await.unwrap();

    redis.kill();
    match service.generate(&ctx(), &request("bob")).await {
        Err(TokenError::Unavailable(reason)) => assert!(reason.contains("redis"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let forged = "rt1.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert!(matches!(
        service.refresh(&ctx(), forged).await,
        Err(TokenError::Unavailable(_))
    ));

    redis.restart();
    // The connection comes back by itself; the first calls may still see the old one fail.
    let mut recovered = None;
    for _ in 0..50 {
        match service.generate(&ctx(), &request("carol")).await {
            Ok(tokens) => {
                recovered = Some(tokens);
                break;
            }
            Err(TokenError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(other) => panic!("{other:?}"),
        }
    }
    let tokens = recovered.expect("no recovery after Redis came back");
    // The family written after recovery is whole: it refreshes.
    service.refresh(&ctx(), tokens.refresh()).await.unwrap();
}

async fn cluster_instance(keys: &Path, seeds: &[String]) -> Arc<TokenService> {
    instance_with_store(
        keys,
        Arc::new(RedisStore::connect_cluster(seeds).await.unwrap()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_rotation_reuse_and_concurrency() {
    let Some(cluster) = support::redis::RedisCluster::start() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let a = cluster_instance(&keys.path().join("keys"), &cluster.seeds()).await;
    let b = cluster_instance(&keys.path().join("keys"), &cluster.seeds()).await;
    // Families land on different slots and masters; each behaves the same.
    for i in 0..6 {
        let first = a
            .generate(&ctx(), &request(&format!("user-{i}")))
            .await
            .unwrap();
        let second = b.refresh(&ctx(), first.refresh()).await.unwrap();
        assert!(matches!(
            a.refresh(&ctx(), first.refresh()).await,
            Err(TokenError::Unauthenticated(_))
        ));
        assert!(
            !b.introspect(&ctx(), &second.access_token)
                .await
                .unwrap()
                .active
        );
    }
    let issued = a.generate(&ctx(), &request("race")).await.unwrap();
    let token = Arc::new(issued.refresh().to_string());
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (service, token) = (
                if i % 2 == 0 { a.clone() } else { b.clone() },
                token.clone(),
            );
            tokio::spawn(async move { service.refresh(&CallContext::new(), &token).await })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            wins += 1;
        }
    }
    assert_eq!(wins, 1);
    // The transaction that creates a family lands on the family's slot.
    let store = RedisStore::connect_cluster(&cluster.seeds()).await.unwrap();
    a_taken_family_id_is_refused_and_revokes_the_family(&store).await;
    let denied = a.generate(&ctx(), &request("denied")).await.unwrap();
    a.revoke_access_token(&denied.claims.jti, denied.claims.exp)
        .await
        .unwrap();
    assert!(
        !b.introspect(&ctx(), &denied.access_token)
            .await
            .unwrap()
            .active
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cluster_master_loses_no_family() {
    let Some(mut cluster) = support::redis::RedisCluster::start() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let service = cluster_instance(&keys.path().join("keys"), &cluster.seeds()).await;
    let mut families = Vec::new();
    for i in 0..12 {
        families.push(
            service
                .generate(&ctx(), &request(&format!("user-{i}")))
                .await
                .unwrap(),
        );
    }
    cluster.sync_replicas();
    let master = cluster.masters()[0];
    cluster.kill(master);
    // Every family refreshes again once a replica has taken over; meanwhile calls fail as
    // unavailable, never as a wrong answer.
    for issued in families {
        let started = std::time::Instant::now();
        loop {
            match service.refresh(&ctx(), issued.refresh()).await {
                Ok(_) => break,
                Err(TokenError::Unavailable(_)) if started.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => panic!("family lost or broken after failover: {other:?}"),
            }
        }
    }
}

/// The absolute expiry Redis holds for `key` (-2: no such key, -1: none).
fn expire_time(redis: &RedisServer, key: &str) -> i64 {
    let output = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "EXPIRETIME", key])
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap()
}

/// Every key a family writes ends with the family, and a denied jti with its token: nothing
/// outlives what it guards, and nothing is kept forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_keys_expire_with_what_they_guard() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let service = instance(&keys.path().join("keys"), &redis.url()).await;
    let issued = service.generate(&ctx(), &request("alice")).await.unwrap();
    let family_ends = (issued.claims.iat + 3_600) as i64;
    let family = format!("ts:fam:{{{}}}", issued.fid());
    let retired = format!("{family}:retired");
    let near = |at: i64| (family_ends - 2..=family_ends + 2).contains(&at);
    assert!(near(expire_time(&redis, &family)));
    assert_eq!(
        expire_time(&redis, &retired),
        -2,
        "no retired list before a rotation"
    );
    let mut token = issued.refresh().to_string();
    for _ in 0..3 {
        token = service
            .refresh(&ctx(), &token)
            .await
            .unwrap()
            .refresh()
            .to_string();
        assert!(
            near(expire_time(&redis, &family)),
            "a rotation keeps the family's end"
        );
        assert!(near(expire_time(&redis, &retired)));
    }
    service
        .revoke_access_token(&issued.claims.jti, issued.claims.exp)
        .await
        .unwrap();
    let denied = format!("ts:deny:{}", issued.claims.jti);
    assert_eq!(expire_time(&redis, &denied), issued.claims.exp as i64);
}

/// A family record whose stored hash is not a SHA-256 digest (tampered or corrupt) is
/// refused as unavailable: the refresh fails closed, and stays refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_stored_hash_fails_closed() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let service = instance(&keys.path().join("keys"), &redis.url()).await;
    let issued = service.generate(&ctx(), &request("alice")).await.unwrap();
    let key = format!("ts:fam:{{{}}}", issued.fid());
    let output = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "HSET",
            &key,
            "current",
            "not-a-hash",
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    for _ in 0..2 {
        match service.refresh(&ctx(), issued.refresh()).await {
            Err(TokenError::Unavailable(reason)) => {
                assert!(reason.contains("corrupt"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Resharding under a running instance: a family whose slot moved since the store read the
/// cluster's slot map is created (Redis answers MOVED inside the transaction), then read and
/// rotated, on the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_family_is_created_and_rotated_after_its_slot_moved() {
    let Some(cluster) = support::redis::RedisCluster::start() else {
        return;
    };
    let store = RedisStore::connect_cluster(&cluster.seeds()).await.unwrap();
    store.ping().await.unwrap();
    let now = support::unix_now();
    for _ in 0..2 {
        let family = FamilyId::generate().unwrap();
        cluster.move_slot_of(&format!("ts:fam:{{{family}}}"));
        let current = RefreshToken::generate(family.clone()).unwrap().hash();
        let record = support::family_record(current.clone(), "web");
        store.create_family(&family, record).await.unwrap();
        assert!(store.get_family(&family, now).await.unwrap().is_some());
        let next = RefreshToken::generate(family.clone()).unwrap().hash();
        assert_eq!(
            store.rotate(&family, &current, next, now).await,
            Ok(Rotation::Rotated)
        );
        assert!(store.family_active(&family, now).await.unwrap());
    }
}

/// Creating a family under an id already in use (a repeated random id: a broken RNG) is
/// refused, and the family that held the id is left revoked, not half overwritten.
async fn a_taken_family_id_is_refused_and_revokes_the_family(store: &dyn Store) {
    let family = FamilyId::generate().unwrap();
    let now = support::unix_now();
    let first = RefreshToken::generate(family.clone()).unwrap().hash();
    let record = support::family_record;
    store
        .create_family(&family, record(first.clone(), "web"))
        .await
        .unwrap();
    assert!(store.family_active(&family, now).await.unwrap());
    let second = RefreshToken::generate(family.clone()).unwrap().hash();
    assert_eq!(
        store
            .create_family(&family, record(second.clone(), "batch"))
            .await,
        Err(StoreError::Exists)
    );
    assert!(!store.family_active(&family, now).await.unwrap());
    for presented in [&first, &second] {
        let rotation = store
            .rotate(
                &family,
                presented,
                RefreshToken::generate(family.clone()).unwrap().hash(),
                now,
            )
            .await;
        assert_eq!(
            rotation,
            Ok(Rotation::Revoked),
            "neither grant's token rotates"
        );
    }
    // Another id is unaffected.
    let other = FamilyId::generate().unwrap();
    store
        .create_family(&other, record(first.clone(), "web"))
        .await
        .unwrap();
    assert!(store.family_active(&other, now).await.unwrap());
}

#[tokio::test]
async fn a_taken_family_id_is_refused_in_memory() {
    a_taken_family_id_is_refused_and_revokes_the_family(
        &token_service::token::store::memory::MemoryStore::default(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_family_id_is_refused_in_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    a_taken_family_id_is_refused_and_revokes_the_family(&store).await;
}

/// After more rotations than [`MAX_RETIRED`], the newest retired hashes are the ones kept:
/// the oldest are forgotten (Unknown, no side effect), the newest still reveal reuse.
async fn the_newest_retired_hashes_are_kept(store: &dyn Store) {
    let family = FamilyId::generate().unwrap();
    let hash = || RefreshToken::generate(family.clone()).unwrap().hash();
    // Real time: Redis expires the keys at `expires_at` by its own clock.
    let now = support::unix_now();
    let mut current = hash();
    let record = support::family_record(current.clone(), "web");
    store.create_family(&family, record).await.unwrap();
    let stored = store.get_family(&family, now).await.unwrap().unwrap();
    assert_eq!(stored.client_id, "web", "the client is kept in clear");
    let mut retired = Vec::new();
    for _ in 0..MAX_RETIRED + 20 {
        let next = hash();
        let rotation = store.rotate(&family, &current, next.clone(), now).await;
        assert_eq!(rotation, Ok(Rotation::Rotated));
        retired.push(std::mem::replace(&mut current, next));
    }
    for forgotten in &retired[..20] {
        let rotation = store.rotate(&family, forgotten, hash(), now).await;
        assert_eq!(rotation, Ok(Rotation::Unknown), "the oldest are forgotten");
    }
    let newest = retired.last().unwrap();
    let rotation = store.rotate(&family, newest, hash(), now).await;
    assert_eq!(rotation, Ok(Rotation::Reused), "the newest is remembered");
}

#[tokio::test]
async fn the_newest_retired_hashes_are_kept_in_memory() {
    the_newest_retired_hashes_are_kept(&token_service::token::store::memory::MemoryStore::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_retired_hashes_are_kept_in_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    the_newest_retired_hashes_are_kept(&store).await;
}

/// A Redis that stops answering fails a call as unavailable once
/// `tokens.redis_response_timeout` has passed (here 300 ms, well under the 2 s default),
/// and the store carries on when Redis answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_fails_calls_after_the_configured_response_timeout() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let timeout = Duration::from_millis(300);
    let store = RedisStore::connect_with(
        &redis.url(),
        &RedisOptions {
            response_timeout: timeout,
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap();
    let (family, _) = support::stored_family(&store).await;

    redis.pause();
    let started = std::time::Instant::now();
    let stalled = store.get_family(&family, support::unix_now()).await;
    let waited = started.elapsed();
    redis.resume();
    assert!(
        matches!(stalled, Err(StoreError::Unavailable(_))),
        "{stalled:?}"
    );
    assert!(
        waited >= timeout && waited < Duration::from_millis(1900),
        "waited {waited:?}"
    );

    let started = std::time::Instant::now();
    loop {
        match store.get_family(&family, support::unix_now()).await {
            Ok(found) => {
                assert!(found.is_some(), "the family outlived the stall");
                break;
            }
            Err(StoreError::Unavailable(_)) if started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("never recovered: {error:?}"),
        }
    }
}
