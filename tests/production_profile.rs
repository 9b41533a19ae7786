//! The Token Service on the production profile's topology, as real processes over real
//! sockets: the reference Crypto Service as the primary for signing and cache encryption,
//! reached over mTLS, with the software backend as the fallback. The Crypto Service is
//! killed and restarted under the running service:
//! - its key stays in the JWKS during the outage (read at start-up; nothing fetched the JWKS
//!   before), so tokens it signed keep verifying and introspecting as active;
//! - new tokens come from the fallback, under a key also published;
//! - families are sealed under a data key the Crypto Service wrapped once, and the running
//!   service keeps that key: a family it sealed before the outage refreshes during it.

mod support;

use std::time::Duration;

use support::crypto_server::{CryptoServerProcess, config as crypto_config};
use support::grpc::{is_active, refresh};
use support::pki::Pki;
use support::process::{Sandbox, ServiceProcess, http_get};
use support::{token_kid, verifies_with};
use token_service::api::proto::token_service_client::TokenServiceClient;
use token_service::api::proto::{GenerateTokensRequest, TokenResponse};
use tonic::transport::Channel;

async fn generate(grpc: &mut TokenServiceClient<Channel>) -> TokenResponse {
    grpc.generate_tokens(GenerateTokensRequest {
        subject: "alice".into(),
        client_id: "demo".into(),
        scopes: vec!["read".into()],
        ..Default::default()
    })
    .await
    .expect("a token, from the primary or the fallback")
    .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crypto_service_primary_dies_and_returns_under_a_running_service() {
    let pki = Pki::new();
    let server_dir = tempfile::tempdir().unwrap();
    let mut crypto = CryptoServerProcess::start(
        server_dir.path(),
        &crypto_config(
            server_dir.path(),
            "127.0.0.1:0",
            &pki.server_tls_table(true),
        ),
    );
    let sandbox = Sandbox::new(&format!(
        r#"
[backends.crypto_service]
address = "https://localhost:{port}"
connect_timeout = "300ms"
request_timeout = "1s"
metadata_ttl = "200ms"

[backends.crypto_service.tls]
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{key}"

[backends.crypto_service.resilience]
timeout = "1s"
retry = {{ max_attempts = 1, initial_backoff = "10ms", multiplier = 2.0, max_backoff = "10ms", jitter = 0.0 }}
breaker = {{ failure_threshold = 2, open_duration = "1s" }}
"#,
        port = crypto.addr.port(),
        ca = pki.path("ca.pem").display(),
        cert = pki.path("client.pem").display(),
        key = pki.path("client.key").display(),
    ));
    let config = std::fs::read_to_string(sandbox.config_path())
        .unwrap()
        .replace(
            "sign = [\"software\"]\nverify = [\"software\"]\nencrypt = [\"software\"]",
            "sign = [\"crypto_service\", \"software\"]\nverify = [\"crypto_service\", \"software\"]\nencrypt = [\"crypto_service\", \"software\"]",
        );
    assert!(config.contains("sign = [\"crypto_service\""), "{config}");
    sandbox.write_config(&config);
    let service = ServiceProcess::start(Some(&sandbox.config_path()), sandbox.dir.path());
    let mut grpc = TokenServiceClient::connect(format!("http://{}", service.grpc))
        .await
        .unwrap();

    let by_primary = generate(&mut grpc).await;
    let primary_kid = token_kid(&by_primary.access_token);
    for _ in 0..3 {
        generate(&mut grpc).await;
    }
    // Four families, one data key: the Crypto Service sealed once.
    let sealed_remotely = "token_service_backend_requests_total{backend=\"crypto_service\",operation=\"encrypt\",outcome=\"ok\"} 1";
    let metrics = service.metrics().await;
    assert!(metrics.lines().any(|l| l == sealed_remotely), "{metrics}");

    // Nothing has fetched the JWKS yet, and the backend's own metadata cache has expired:
    // what the JWKS shows during the outage was read at start-up.
    crypto.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, jwks) = http_get(service.public, "/.well-known/jwks.json");
    assert_eq!(status, 200);
    assert!(
        verifies_with(&by_primary.access_token, &jwks),
        "the primary's key is published during its outage: {jwks}"
    );
    assert!(is_active(&mut grpc, &by_primary.access_token).await);

    let by_fallback = generate(&mut grpc).await;
    assert_ne!(token_kid(&by_fallback.access_token), primary_kid);
    assert!(
        verifies_with(&by_fallback.access_token, &jwks),
        "the fallback's key was published too"
    );
    refresh(&mut grpc, &by_fallback.refresh_token)
        .await
        .expect("a family sealed by the fallback refreshes during the outage");

    // The Crypto Service wrapped this family's data key, and the service holds the key:
    // the family refreshes during the outage.
    let refreshed = refresh(&mut grpc, &by_primary.refresh_token)
        .await
        .expect("a family sealed before the outage refreshes during it");
    assert!(is_active(&mut grpc, &refreshed.access_token).await);

    crypto.restart();
    let mut back = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let tokens = generate(&mut grpc).await;
        if token_kid(&tokens.access_token) == primary_kid {
            back = Some(tokens);
            break;
        }
    }
    assert!(back.is_some(), "signing returns to the Crypto Service");
    let refreshed = refresh(&mut grpc, &refreshed.refresh_token)
        .await
        .expect("and once it is back");
    assert!(is_active(&mut grpc, &refreshed.access_token).await);
    let log = service.settled_log();
    assert!(
        !log.contains(&by_primary.refresh_token),
        "no token in the log"
    );
    assert!(service.terminate().success());
}
