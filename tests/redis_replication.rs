//! With `tokens.redis_revocation_replicas`, a revocation is reported done only once the
//! master's replicas hold it (WAIT on the connection that wrote it): replication is
//! asynchronous, and a revocation lost in a failover would let the revoked token through.
//! A replica that does not answer makes the revocation UNAVAILABLE (retry), while it stays
//! in force on the master. Real servers: a master with a replica, and a 6-node cluster.

mod support;

use std::time::{Duration, Instant};

use support::redis::{RedisCluster, RedisServer};
use token_service::token::refresh::{FamilyId, RefreshToken};
use token_service::token::store::redis::{RedisOptions, RedisStore};
use token_service::token::store::{Rotation, Store, StoreError};

fn options(replicas: usize) -> RedisOptions {
    RedisOptions {
        response_timeout: Duration::from_millis(800),
        revocation_replicas: replicas,
        ..RedisOptions::default()
    }
}

/// Makes `replica` follow `master` and waits until the link is up.
fn replicate(master: &RedisServer, replica: &RedisServer) {
    let port = master.port.to_string();
    assert_eq!(replica.cli(&["REPLICAOF", "127.0.0.1", &port]).trim(), "OK");
    let started = Instant::now();
    while !replica
        .cli(&["INFO", "replication"])
        .contains("master_link_status:up")
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no replication"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn expect_unacknowledged(result: Result<(), StoreError>) {
    match result {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("0 of 1 replicas"), "{message}");
            assert!(message.contains("failover"), "{message}");
        }
        other => panic!("expected an unacknowledged revocation, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_is_done_once_the_replica_holds_it() {
    let (Some(master), Some(replica)) = (RedisServer::start(), RedisServer::start()) else {
        return;
    };
    replicate(&master, &replica);
    let store = RedisStore::connect_with(&master.url(), &options(1))
        .await
        .unwrap();
    let until = support::unix_now() + 600;

    // Acknowledged: the replica holds the denial and the revoked family the moment the
    // call returns.
    denied_once_replicas_settle(&store, "jti-1", until).await;
    assert_eq!(replica.cli(&["EXISTS", "ts:deny:jti-1"]).trim(), "1");
    let (family, _) = support::stored_family(&store).await;
    assert!(
        store
            .revoke_family(&family, support::unix_now())
            .await
            .unwrap()
    );
    let key = format!("ts:fam:{{{family}}}");
    assert_eq!(replica.cli(&["HGET", &key, "revoked"]).trim(), "1");

    // Reuse detection revokes too, and waits the same way.
    let (reused, first) = support::stored_family(&store).await;
    let second = RefreshToken::generate(reused.clone()).unwrap().hash();
    let now = support::unix_now();
    assert_eq!(
        store.rotate(&reused, &first, second.clone(), now).await,
        Ok(Rotation::Rotated)
    );
    let third = RefreshToken::generate(reused.clone()).unwrap().hash();
    assert_eq!(
        store.rotate(&reused, &first, third, now).await,
        Ok(Rotation::Reused)
    );
    let key = format!("ts:fam:{{{reused}}}");
    assert_eq!(replica.cli(&["HGET", &key, "revoked"]).trim(), "1");

    // A replica that does not answer: the revocation is reported unavailable, and is in
    // force on the master all the same.
    replica.pause();
    expect_unacknowledged(store.deny_jti("jti-2", until).await);
    assert!(store.is_denied("jti-2", support::unix_now()).await.unwrap());
    // Without the setting, nothing is waited for (the default).
    let unwaiting = RedisStore::connect_with(&master.url(), &options(0))
        .await
        .unwrap();
    unwaiting.deny_jti("jti-3", until).await.unwrap();
    replica.resume();
    // Revoking again once the replica is back succeeds: the retry the error asks for.
    denied_once_replicas_settle(&store, "jti-2", until).await;
    assert_eq!(replica.cli(&["EXISTS", "ts:deny:jti-2"]).trim(), "1");
}

/// The retry an unacknowledged revocation asks for waits for the replicas as the first
/// attempt did, even when the first attempt left nothing to change and even through
/// another instance (a connection that wrote nothing, whose WAIT alone would answer at
/// once): the revocation is written again, in one pipeline with its WAIT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_revocation_waits_for_the_replicas_too() {
    let (Some(master), Some(replica)) = (RedisServer::start(), RedisServer::start()) else {
        return;
    };
    replicate(&master, &replica);
    let first = RedisStore::connect_with(&master.url(), &options(1))
        .await
        .unwrap();
    let until = support::unix_now() + 600;
    denied_once_replicas_settle(&first, "jti-settled", until).await;
    let (family, _) = support::stored_family(&first).await;
    let revoked = |store: &RedisStore| {
        let (store, family) = (store.clone(), family.clone());
        async move {
            store
                .revoke_family(&family, support::unix_now())
                .await
                .map(|_| ())
        }
    };

    replica.pause();
    expect_unacknowledged(revoked(&first).await);
    expect_unacknowledged(first.deny_jti("jti-r", until).await);
    // Retried on the same connection, and through another instance.
    let second = RedisStore::connect_with(&master.url(), &options(1))
        .await
        .unwrap();
    for store in [&first, &second] {
        expect_unacknowledged(revoked(store).await);
        expect_unacknowledged(store.deny_jti("jti-r", until).await);
    }
    // No family under the id: nothing written, nothing to wait for.
    let absent = FamilyId::generate().unwrap();
    assert_eq!(
        second.revoke_family(&absent, support::unix_now()).await,
        Ok(false)
    );
    replica.resume();

    // Once the replica answers, the retry is done (the family was revoked already).
    let started = Instant::now();
    while let Err(error) = second.revoke_family(&family, support::unix_now()).await {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never acknowledged: {error}"
        );
    }
    denied_once_replicas_settle(&second, "jti-r", until).await;
    let key = format!("ts:fam:{{{family}}}");
    assert_eq!(replica.cli(&["HGET", &key, "revoked"]).trim(), "1");
    assert_eq!(replica.cli(&["EXISTS", "ts:deny:jti-r"]).trim(), "1");
}

/// Denies `jti`, retrying (as the error asks) while the replicas settle: a replica just
/// synced, or just resumed, can be "online" at offset 0 and acknowledge nothing for a
/// second or so. Fails after 20 s.
async fn denied_once_replicas_settle(store: &RedisStore, jti: &str, until: u64) {
    let started = Instant::now();
    loop {
        match store.deny_jti(jti, until).await {
            Ok(()) => return,
            Err(error) => assert!(
                started.elapsed() < Duration::from_secs(20),
                "never acknowledged: {error}"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_the_wait_goes_to_the_master_holding_the_revocation() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    cluster.wait_for_online_replicas(Duration::from_secs(20));
    let store = RedisStore::connect_cluster_with(&cluster.seeds(), &options(1))
        .await
        .unwrap();
    let until = support::unix_now() + 600;
    denied_once_replicas_settle(&store, "jti-c", until).await;
    let key = "ts:deny:jti-c";
    let master = cluster
        .masters()
        .into_iter()
        .find(|port| cluster.cli(*port, &["EXISTS", key]).trim() == "1")
        .expect("the master holding the denial");
    let replica = cluster.replica_of(master);
    // Revoking it again waits for that master's replica: pausing the replica fails the
    // revocation (a WAIT sent to another master would have passed).
    cluster.pause(replica, false);
    let result = store.deny_jti("jti-c", until).await;
    cluster.pause(replica, true);
    expect_unacknowledged(result);
    denied_once_replicas_settle(&store, "jti-c", until).await;

    // Resharding moved the slot of the next denial since the store read the slot map: the
    // denial and its WAIT are redirected together to the master that now holds it.
    let moved = "jti-moved";
    cluster.move_slot_of(&format!("ts:deny:{moved}"));
    denied_once_replicas_settle(&store, moved, until).await;
    assert!(store.is_denied(moved, support::unix_now()).await.unwrap());
}
