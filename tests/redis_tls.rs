//! The token store over TLS to a real redis-server that speaks only TLS: trusted through the
//! configured CA, with a client certificate when the server requires one; refused (fail
//! closed, nothing sent in clear) with the wrong CA, without the client certificate, or over
//! `redis://`. And the binary serving tokens from such a Redis, or refusing to start.

mod support;

use support::pki::Pki;
use support::process::Sandbox;
use support::redis::RedisServer;
use token_service::token::refresh::{FamilyId, RefreshToken};
use token_service::token::store::redis::{RedisOptions, RedisStore, RedisTls};
use token_service::token::store::{Rotation, Store, StoreError};
use zeroize::Zeroizing;

fn read(pki: &Pki, name: &str) -> Vec<u8> {
    std::fs::read(pki.path(name)).unwrap()
}

/// TLS material trusting `pki`'s CA, with its `client` certificate when `with_client`.
fn tls(pki: &Pki, with_client: bool) -> RedisTls {
    let client = with_client.then(|| {
        (
            read(pki, "client.pem"),
            Zeroizing::new(read(pki, "client.key")),
        )
    });
    RedisTls::new(read(pki, "ca.pem"), client)
}

/// A PKI whose Redis certificate is for 127.0.0.1, and a Redis requiring client
/// certificates (when `client_certificates`) from it.
fn tls_redis(client_certificates: bool) -> Option<(Pki, RedisServer)> {
    let pki = Pki::new();
    pki.issue("redis", "127.0.0.1");
    let redis = RedisServer::start_tls(
        &pki.path("ca.pem"),
        &pki.path("redis.pem"),
        &pki.path("redis.key"),
        client_certificates,
    )?;
    Some((pki, redis))
}

async fn create_and_rotate(store: &RedisStore) {
    let family = FamilyId::generate().unwrap();
    let now = support::unix_now();
    let current = RefreshToken::generate(family.clone()).unwrap().hash();
    let record = support::family_record(current.clone(), "web");
    store.create_family(&family, record).await.unwrap();
    let next = RefreshToken::generate(family.clone()).unwrap().hash();
    assert_eq!(
        store.rotate(&family, &current, next, now).await,
        Ok(Rotation::Rotated)
    );
}

fn refused(result: Result<RedisStore, StoreError>) -> String {
    match result {
        Err(StoreError::Unavailable(reason)) => reason,
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("connected"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_speaks_tls_to_redis_and_proves_itself_with_a_client_certificate() {
    let Some((pki, redis)) = tls_redis(true) else {
        return;
    };
    let store =
        RedisStore::connect_with(&redis.tls_url(), &RedisOptions::with_tls(tls(&pki, true)))
            .await
            .unwrap();
    create_and_rotate(&store).await;
    store.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_right_ca_the_client_certificate_or_tls_nothing_connects() {
    let Some((pki, redis)) = tls_redis(true) else {
        return;
    };
    // Redis wants a client certificate.
    let reason = refused(
        RedisStore::connect_with(&redis.tls_url(), &RedisOptions::with_tls(tls(&pki, false))).await,
    );
    assert!(reason.starts_with("redis"), "{reason}");
    // A CA that did not sign Redis's certificate.
    let stranger = Pki::new();
    let reason = refused(
        RedisStore::connect_with(
            &redis.tls_url(),
            &RedisOptions::with_tls(tls(&stranger, false)),
        )
        .await,
    );
    assert!(
        reason.to_ascii_lowercase().contains("certificate"),
        "names the certificate: {reason}"
    );
    // Plaintext to a TLS port.
    refused(RedisStore::connect(&redis.url()).await);
    // TLS material with a plaintext URL is refused before connecting.
    let reason = refused(
        RedisStore::connect_with(&redis.url(), &RedisOptions::with_tls(tls(&pki, true))).await,
    );
    assert!(reason.contains("rediss://"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_issues_tokens_from_a_tls_redis_and_refuses_to_start_without_its_ca() {
    let Some((pki, redis)) = tls_redis(true) else {
        return;
    };
    let table = |ca: &str| {
        format!(
            "[tokens.redis_tls]\nca_file = \"{ca}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            pki.path("client.pem").display(),
            pki.path("client.key").display()
        )
    };
    let sandbox = Sandbox::new(&table(&pki.path("ca.pem").display().to_string()));
    let url = redis.tls_url();
    let service = sandbox.serve_async(&[("REDIS_URL", &url)]).await;
    let mut client = service.client().await;
    let issued = client
        .generate_tokens(support::token_request("alice"))
        .await
        .unwrap()
        .into_inner();
    assert!(!issued.refresh_token.is_empty());
    assert!(
        !service.log().contains("without TLS"),
        "no plaintext warning for rediss://"
    );
    drop(client);
    service.stop_cleanly().await;

    // doctor reaches the same Redis the same way.
    let output = sandbox.run_with_env(&["doctor"], None, &[("REDIS_URL", url.as_str())]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let store = stdout
        .lines()
        .find(|l| l.starts_with("token store"))
        .unwrap_or_else(|| panic!("no token store row: {stdout}"));
    assert!(store.contains("ok; redis over TLS"), "{store}");

    // A CA file that cannot be read: the setting and the path are named, exit 1.
    let broken = Sandbox::new(&table("/nonexistent/ca.pem"));
    let output = broken.run_with_env(&["serve"], None, &[("REDIS_URL", url.as_str())]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("tokens.redis_tls.ca_file"), "{stderr}");
    assert!(stderr.contains("/nonexistent/ca.pem"), "{stderr}");

    // TLS settings with a plaintext URL: a configuration error, before anything is sent.
    let plain = redis.url();
    let output = broken.run_with_env(&["serve"], None, &[("REDIS_URL", plain.as_str())]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("tokens.redis_tls"), "{stderr}");
    assert!(stderr.contains("rediss://"), "{stderr}");
}

/// A plaintext Redis URL to another host is named in a warning before anything is sent
/// (here the host, from the documentation range, is not reachable: serve then stops).
#[test]
fn a_plaintext_redis_beyond_loopback_is_warned_about() {
    let sandbox = Sandbox::new("");
    let output = sandbox.run_with_env(&["serve"], None, &[("REDIS_URL", "redis://192.0.2.1:6379")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("without TLS"), "{stderr}");
    assert!(stderr.contains("192.0.2.1"), "{stderr}");
}

/// A Redis Cluster speaking only TLS (clients, bus, replication), requiring client
/// certificates: the store finds the masters through `rediss://` seeds and the CA, and
/// stores and rotates families there; without its client certificate it gets nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_speaks_tls_to_every_node_of_a_cluster() {
    let pki = Pki::new();
    pki.issue("redis", "127.0.0.1");
    let Some(cluster) = support::redis::RedisCluster::start_tls(&pki) else {
        return;
    };
    let seeds = cluster.seeds();
    assert!(seeds.iter().all(|s| s.starts_with("rediss://")));
    let store = RedisStore::connect_cluster_with(&seeds, &RedisOptions::with_tls(tls(&pki, true)))
        .await
        .unwrap();
    for _ in 0..12 {
        create_and_rotate(&store).await;
    }
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    assert!(
        cluster.key_count() >= 12,
        "families stored across the masters"
    );
    let reason = refused(
        RedisStore::connect_cluster_with(&seeds, &RedisOptions::with_tls(tls(&pki, false))).await,
    );
    assert!(reason.starts_with("redis"), "{reason}");
}
