//! DPoP validation speed, in the same run:
//! - in-process validation of fresh ES256 proofs (every check, the chain's verify, the replay
//!   store) vs raw aws-lc-rs ES256 verification of the same proofs, on one thread; the raw
//!   figure both parsing the key per call and with the key parsed once;
//! - ValidateDPoP over gRPC on loopback at concurrency 1 and 16.
//!
//! Run: `cargo bench --bench dpop` (ROUND_SECONDS=2 by default).

#[path = "../tests/support/dpop.rs"]
#[allow(dead_code)]
mod dpop_support;
#[path = "support/measure.rs"]
#[allow(dead_code)]
mod measure;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use dpop_support::{ClientKey, proof};
use measure::{measure_while, round_length};
use token_service::api::grpc::GrpcTokenService;
use token_service::api::proto::ValidateDPoPRequest;
use token_service::api::proto::token_service_client::TokenServiceClient;
use token_service::backends::chain::{Chain, Routes};
use token_service::backends::clock::SystemClock;
use token_service::backends::software::{SoftwareBackend, SoftwareOptions};
use token_service::backends::{Backend, KeyRef};
use token_service::context::CallContext;
use token_service::dpop::ProofRequest;
use token_service::metrics::Metrics;
use token_service::resilience::ResilienceConfig;
use token_service::token::claims::ClientPolicy;
use token_service::token::store::memory::MemoryStore;
use token_service::token::{TokenService, TokenSettings};

const URI: &str = "https://server.example.com/token";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `(signing input, signature)` of a compact proof.
fn split(proof: &str) -> (Vec<u8>, Vec<u8>) {
    let (input, signature) = proof.rsplit_once('.').unwrap();
    (input.as_bytes().to_vec(), B64.decode(signature).unwrap())
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let round = round_length(quick, 0.05, 2.0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let chain = Arc::new(
        Chain::new(
            vec![(
                Arc::new(
                    SoftwareBackend::open(&dir.path().join("keys"), SoftwareOptions::default())
                        .unwrap(),
                ) as Arc<dyn Backend>,
                ResilienceConfig::default(),
            )],
            &Routes {
                sign: vec!["software".into()],
                verify: vec!["software".into()],
                encrypt: vec!["software".into()],
            },
            true,
            metrics.clone(),
        )
        .unwrap(),
    );
    let tokens = Arc::new(TokenService::new(
        chain,
        Arc::new(MemoryStore::new(10_000_000)),
        TokenSettings {
            issuer: "bench".into(),
            access_ttl: Duration::from_secs(900),
            max_access_ttl: Duration::from_secs(3600),
            refresh_ttl: Duration::from_secs(3600),
            clock_skew: Duration::from_secs(60),
            clients: BTreeMap::from([(
                "demo".into(),
                ClientPolicy {
                    scopes: vec![],
                    audiences: vec!["api".into()],
                    ..Default::default()
                },
            )]),
            rate_limit: None,
            callers: Default::default(),
            data_keys: Default::default(),
        },
        KeyRef::new("token", "signing").unwrap(),
        KeyRef::new("token-cache", "aes").unwrap(),
        Arc::new(SystemClock),
    ));

    let key = ClientKey::generate("ES256");
    let point = {
        let jwk = key.public_jwk();
        let mut p = vec![4u8];
        p.extend(B64.decode(jwk["x"].as_str().unwrap()).unwrap());
        p.extend(B64.decode(jwk["y"].as_str().unwrap()).unwrap());
        p
    };
    // Proofs made before timing: each is used once (a replay would be refused).
    let budget = if quick { 300 } else { 40_000 };
    let fresh = |n: usize| {
        (0..n)
            .map(|_| proof(&key, "POST", URI, now()))
            .collect::<Vec<_>>()
    };
    let proofs = fresh(budget);

    // One thread: raw verify (key parsed per call, and parsed once) and full validation.
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ParsedPublicKey, UnparsedPublicKey};
    let parts: Vec<_> = proofs.iter().map(|p| split(p)).collect();
    let timed = |f: &mut dyn FnMut(usize)| {
        let began = Instant::now();
        let mut n = 0;
        while began.elapsed() < round && n < parts.len() {
            f(n);
            n += 1;
        }
        n as f64 / began.elapsed().as_secs_f64()
    };
    let raw_unparsed = timed(&mut |i| {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
            .verify(&parts[i].0, &parts[i].1)
            .unwrap();
    });
    let parsed = ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point).unwrap();
    let raw_parsed = timed(&mut |i| {
        parsed.verify_sig(&parts[i].0, &parts[i].1).unwrap();
    });
    let local = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let validator = tokens.dpop();
    let validated = timed(&mut |i| {
        local
            .block_on(validator.validate(
                &CallContext::new(),
                ProofRequest {
                    proof: &proofs[i],
                    method: "POST",
                    uri: URI,
                    access_token: None,
                },
            ))
            .unwrap();
    });
    if quick {
        println!("dpop: smoke run (figures are not measurements; use `cargo bench`)");
    }
    println!(
        "ES256 DPoP proofs, one thread, {:.1} s rounds",
        round.as_secs_f64()
    );
    println!("  raw verify, key parsed per call : {raw_unparsed:>8.0}/s");
    println!("  raw verify, key parsed once     : {raw_parsed:>8.0}/s");
    println!(
        "  full validation                 : {validated:>8.0}/s  ({:.2} of raw per-call, {:.2} of raw parsed-once)",
        validated / raw_unparsed,
        validated / raw_parsed
    );

    // ValidateDPoP over gRPC on loopback.
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(GrpcTokenService::new(tokens.clone(), 3600).into_server())
                .serve_with_incoming(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                ),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        for concurrency in [1usize, 16] {
            let proofs = Arc::new(fresh(if quick { 100 } else { 30_000 }));
            let next = Arc::new(AtomicUsize::new(0));
            let channel = channel.clone();
            // Each proof is used once (a replay would be refused); a task stops when they run out.
            let figures = measure_while(concurrency, round, move || {
                let (proofs, next) = (proofs.clone(), next.clone());
                let mut client = TokenServiceClient::new(channel.clone());
                async move {
                    let Some(proof) = proofs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        return false;
                    };
                    let answer = client
                        .validate_d_po_p(ValidateDPoPRequest {
                            proof: proof.clone(),
                            http_method: "POST".into(),
                            http_uri: URI.into(),
                            access_token: String::new(),
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    assert!(answer.valid, "{answer:?}");
                    true
                }
            })
            .await;
            println!(
                "  ValidateDPoP over gRPC, concurrency {concurrency:>2}: {:>8.0}/s  p50 {:>6.0} us  p99 {:>6.0} us",
                figures.rate,
                figures.p50_us,
                figures.p99_us
            );
        }
    });
    assert_eq!(metrics.dpop_count("invalid_dpop_proof", "replayed"), 0);
}
