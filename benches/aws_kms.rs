//! Sign through the AWS KMS backend vs a raw aws-sdk-kms Sign loop on the same key of the
//! same local KMS server (moto, through the launcher), in the same run: rate and p50/p99
//! latency at concurrency 1 and 16, and the backend's overhead per call. Raw and backend
//! rounds alternate so both see the same server state.
//!
//! Run: `cargo bench --bench aws_kms` (ROUND_SECONDS=3 by default). Needs moto[server]
//! (`scripts/test.sh` installs it; set MOTO_PYTHON to the Python that has it).

#[path = "../tests/support/kms.rs"]
#[allow(dead_code)]
mod kms;

// The harness takes its port from the tests' registry (`super::ports`).
#[path = "../tests/support/ports.rs"]
#[allow(dead_code)]
mod ports;

#[path = "support/measure.rs"]
mod measure;

use std::sync::Arc;
use std::time::{Duration, Instant};

use measure::{measure, round_length};

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{MessageType, SigningAlgorithmSpec};
use token_service::backends::{Algorithm, Backend, KeyRef};

const MESSAGE: &[u8] = b"eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJ1c2VyLTQyIn0";

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let round = round_length(quick, 0.2, 3.0);
    let Some(server) = kms::MotoKms::start() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut options = server.options();
        options.metadata_ttl = Duration::from_secs(60);
        let backend = Arc::new(server.backend(options));
        let ring = KeyRef::new("token", "signing").unwrap();
        let created = backend.generate_key(&ring, Algorithm::Es256).await.unwrap();
        let arn = server
            .client()
            .describe_key()
            .key_id("alias/token-service/token/signing/v1")
            .send()
            .await
            .unwrap()
            .key_metadata()
            .unwrap()
            .arn()
            .unwrap()
            .to_owned();
        let client = server.client();
        println!(
            "aws_kms ES256 sign, moto on loopback, {} s rounds (kid {}...)",
            round.as_secs_f64(),
            &created.kid[..8]
        );
        println!(
            "{:<28} {:>11} {:>11} {:>9} {:>9}",
            "", "raw/s", "backend/s", "ratio", "+p50 us"
        );
        let rounds = if quick { 1 } else { 4 };
        for concurrency in [1usize, 16] {
            let (mut raw_sum, mut backend_sum) = (0.0, 0.0);
            for round_index in 0..rounds {
                let raw_round = || {
                    let (client, arn) = (client.clone(), arn.clone());
                    measure(concurrency, round, move || {
                        let (client, arn) = (client.clone(), arn.clone());
                        async move {
                            // What a caller without the backend does: hash, sign, take DER.
                            let digest =
                                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, MESSAGE);
                            let answer = client
                                .sign()
                                .key_id(arn)
                                .message(Blob::new(digest.as_ref()))
                                .message_type(MessageType::Digest)
                                .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
                                .send()
                                .await
                                .expect("raw sign");
                            assert!(answer.signature().is_some());
                        }
                    })
                };
                let backend_round = || {
                    let (backend, ring) = (backend.clone(), ring.clone());
                    measure(concurrency, round, move || {
                        let (backend, ring) = (backend.clone(), ring.clone());
                        async move {
                            backend.sign(&ring, MESSAGE).await.expect("backend sign");
                        }
                    })
                };
                // Alternate which goes first, so a server slowing down over a run does not
                // always count against the same side.
                let (raw, through) = if round_index % 2 == 0 {
                    let raw = raw_round().await;
                    (raw, backend_round().await)
                } else {
                    let through = backend_round().await;
                    (raw_round().await, through)
                };
                raw_sum += raw.rate;
                backend_sum += through.rate;
                println!(
                    "{:<28} {:>11.0} {:>11.0} {:>9.3} {:>9.0}",
                    format!("concurrency {concurrency}"),
                    raw.rate,
                    through.rate,
                    through.rate / raw.rate,
                    through.p50_us - raw.p50_us
                );
                println!(
                    "{:<28} p50 {:>7.0} us p99 {:>7.0} us | backend p50 {:>7.0} us p99 {:>7.0} us",
                    "  latency raw", raw.p50_us, raw.p99_us, through.p50_us, through.p99_us
                );
            }
            println!(
                "{:<28} {:>11.0} {:>11.0} {:>9.3}",
                format!("mean, concurrency {concurrency}"),
                raw_sum / rounds as f64,
                backend_sum / rounds as f64,
                backend_sum / raw_sum
            );
        }
        // The backend's own work per sign, without the server's noise: hashing, the DER to
        // r||s conversion and the local check of the signature against the cached key.
        let der = client
            .sign()
            .key_id(&arn)
            .message(Blob::new(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, MESSAGE).as_ref(),
            ))
            .message_type(MessageType::Digest)
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
            .send()
            .await
            .unwrap()
            .signature()
            .unwrap()
            .as_ref()
            .to_vec();
        let jwk = backend.public_keys(&ring).await.unwrap().remove(0);
        let verifier = jwk.verifier(Algorithm::Es256).unwrap();
        let iterations = if quick { 100 } else { 20_000 };
        let began = Instant::now();
        for _ in 0..iterations {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, MESSAGE);
            std::hint::black_box(digest);
            let fixed =
                token_service::backends::aws_kms::der::ecdsa_der_to_fixed(Algorithm::Es256, &der)
                    .unwrap();
            token_service::backends::jwk::verify_with(&verifier, MESSAGE, &fixed).unwrap();
        }
        println!(
            "backend's local work per sign (hash, DER->r||s, verify): {:.1} us",
            began.elapsed().as_secs_f64() * 1e6 / iterations as f64
        );
    });
}
