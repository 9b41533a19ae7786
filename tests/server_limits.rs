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
    let sandbox = Sandbox::new("[server.limits]\nmax_in_flight = 2\n");
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
    // Both are admitted and wait on Redis (its response timeout is 2 s).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let refused = client
        .clone()
        .generate_tokens(token_request("d"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(refused.message().contains("overloaded"), "{refused:?}");
    assert!(
        asked.elapsed() < Duration::from_millis(500),
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
    drop(client);
    service.stop_cleanly().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_learns_its_stream_limit_and_is_sent_away_at_its_age() {
    let sandbox = Sandbox::new(
        "[server.limits]\nmax_concurrent_streams = 8\nmax_connection_age = \"1s\"\nmax_connection_age_grace = \"1s\"\n",
    );
    let service = sandbox.serve_async(&[]).await;
    // A bare HTTP/2 client, to see the server's SETTINGS and its GOAWAY.
    let tcp = tokio::net::TcpStream::connect(service.grpc).await.unwrap();
    let opened = Instant::now();
    let (_send, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let limit = tokio::time::timeout(
        Duration::from_secs(5),
        std::future::poll_fn(|cx| {
            let driven = std::pin::Pin::new(&mut connection).poll(cx);
            assert!(driven.is_pending(), "closed before SETTINGS: {driven:?}");
            match connection.max_concurrent_send_streams() {
                8 => std::task::Poll::Ready(8),
                _ => std::task::Poll::Pending,
            }
        }),
    )
    .await
    .expect("the server's SETTINGS arrive");
    assert_eq!(limit, 8);
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
