//! `[server.limits]` on the real binary: calls beyond `max_in_flight` are refused at once
//! while a stalled Redis holds the admitted ones; each HTTP/2 connection is told its stream
//! limit, and one older than `max_connection_age` is sent away.

mod support;

use std::time::{Duration, Instant};

use support::process::Sandbox;
use support::token_request;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_max_in_flight_are_refused_at_once_while_redis_stalls() {
    let Some(redis) = support::redis::RedisServer::start() else {
        return;
    };
    // Redis's response timeout is what holds the two admitted calls: long enough that a
    // slow machine still sees them in flight.
    let sandbox = Sandbox::new("[server.limits]\nmax_in_flight = 2\n");
    let config = std::fs::read_to_string(sandbox.config_path()).unwrap();
    assert!(config.contains("\n[tokens]\n"), "{config}");
    sandbox.write_config(&config.replace(
        "\n[tokens]\n",
        "\n[tokens]\nredis_response_timeout = \"10s\"\n",
    ));
    let service = sandbox.serve_async(&[("REDIS_URL", &redis.url())]).await;
    let client = service.client().await;
    client
        .clone()
        .generate_tokens(token_request("a"))
        .await
        .unwrap();

    redis.pause();
    let held: Vec<_> = ["b", "c"]
        .into_iter()
        .map(|subject| {
            let mut client = client.clone();
            tokio::spawn(async move { client.generate_tokens(token_request(subject)).await })
        })
        .collect();
    // Both are admitted and wait on Redis (for up to its 10 s response timeout).
    let admitted = Instant::now();
    while !service
        .metrics()
        .await
        .lines()
        .any(|l| l == "token_service_grpc_in_flight 2")
    {
        assert!(
            admitted.elapsed() < Duration::from_secs(8),
            "never 2 in flight"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The limit is shown beside the gauge, for an alert before calls are refused.
    let metrics = service.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "token_service_grpc_in_flight_limit 2"),
        "{metrics}"
    );
    let asked = Instant::now();
    let refused = client
        .clone()
        .generate_tokens(token_request("d"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(refused.message().contains("overloaded"), "{refused:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "refused at once, not after the stalled calls: {:?}",
        asked.elapsed()
    );
    redis.resume();
    for call in held {
        // Admitted calls end as Redis decides: done, or unavailable after its timeout.
        match call.await.unwrap() {
            Ok(_) => {}
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
    }
    client
        .clone()
        .generate_tokens(token_request("e"))
        .await
        .unwrap();
    let text = service.metrics().await;
    assert!(
        text.lines()
            .any(|l| l == "token_service_grpc_overloaded_total 1"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l == "token_service_grpc_in_flight 0"),
        "every slot given back: {text}"
    );
    drop(client);
    service.stop_cleanly().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_learns_its_stream_limit_and_is_sent_away_at_its_age() {
    let sandbox = Sandbox::new(
        "[server.limits]\nmax_concurrent_streams = 8\nmax_connection_age = \"1s\"\nmax_connection_age_grace = \"1s\"\n",
    );
    let service = sandbox.serve_async(&[]).await;
    let opened = Instant::now();
    // Holding the sender keeps the connection open until the server ends it.
    let (_send, connection) = connection_advertising(service.grpc, 8).await;
    // Driven on, the connection ends once the server sends it away.
    tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("sent away after max_connection_age")
        .ok();
    let lived = opened.elapsed();
    assert!(
        lived >= Duration::from_millis(900),
        "not before its age: {lived:?}"
    );
    service.stop_cleanly().await;
}

/// A bare HTTP/2 connection to `addr` (its sender and its connection), once the server's
/// SETTINGS have said it may carry `streams` calls at once; panics if they never do.
async fn connection_advertising(
    addr: std::net::SocketAddr,
    streams: usize,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    h2::client::Connection<tokio::net::TcpStream>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, mut connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        std::future::poll_fn(|cx| {
            let driven = std::pin::Pin::new(&mut connection).poll(cx);
            assert!(driven.is_pending(), "closed before SETTINGS: {driven:?}");
            if connection.max_concurrent_send_streams() == streams {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("the server never advertised {streams} streams"));
    (send, connection)
}

/// The reference Crypto Service takes the same `[server.limits]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_crypto_service_takes_the_same_limits() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::crypto_server::config(
        dir.path(),
        "127.0.0.1:0",
        "[server.limits]\nmax_concurrent_streams = 5\nmax_in_flight = 64\n",
    );
    let path = dir.path().to_path_buf();
    let mut server = tokio::task::spawn_blocking(move || {
        support::crypto_server::CryptoServerProcess::start(&path, &config)
    })
    .await
    .unwrap();
    let addr = server
        .url("http")
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    drop(connection_advertising(addr, 5).await);
    tokio::task::spawn_blocking(move || assert_eq!(server.terminate().code(), Some(0)))
        .await
        .unwrap();
}

/// A peer that stops answering HTTP/2 PINGs (a dead client behind a silent network) is
/// dropped after `keepalive_interval` + `keepalive_timeout`, not kept forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_answering_pings_is_dropped() {
    let sandbox = Sandbox::new(
        "[server.limits]\nkeepalive_interval = \"500ms\"\nkeepalive_timeout = \"500ms\"\n",
    );
    let service = sandbox.serve_async(&[]).await;
    let (_send, mut connection) = connection_advertising(service.grpc, 200).await;
    // Not polled, the client neither reads the server's PING nor answers it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ended = tokio::time::timeout(
        Duration::from_secs(2),
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut connection).poll(cx)),
    )
    .await;
    assert!(ended.is_ok(), "the server kept a silent peer's connection");
    service.stop_cleanly().await;
}
