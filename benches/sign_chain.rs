//! Sign rate through the full chain vs the raw aws-lc-rs call on the same key, same run.
//!
//! The chain path is what the service runs: `Chain::sign` → rate-limit check → circuit
//! breaker → timeout → `SoftwareBackend::sign` (ring lookup, version selection) → aws-lc-rs,
//! plus Prometheus counters and histograms, the response checks and a tracing span.
//! The raw path is the aws-lc-rs key pair parsed from the same key file, signing the same
//! message. The middle column, the backend called directly through the trait, splits the
//! overhead between the backend and the chain. Rounds alternate raw and chain, and the ratio is taken per pair of adjacent
//! rounds, so drift on the machine (frequency, neighbours) hits both sides of each ratio
//! alike; medians are reported.
//!
//! Run: `cargo bench --bench sign_chain` (ROUND_SECONDS=0.1 and ROUNDS=41 by default).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, RSA_PSS_SHA256,
    RsaKeyPair,
};
use token_service::backends::chain::{Chain, Routes};
use token_service::backends::software::{SoftwareBackend, SoftwareOptions};
use token_service::backends::{Algorithm, Backend, KeyRef};
use token_service::context::CallContext;
use token_service::metrics::Metrics;
use token_service::resilience::ResilienceConfig;

/// A JWT signing input of typical size (header + claims, base64url): ~300 bytes.
const MESSAGE: &[u8] = b"eyJhbGciOiJFUzI1NiIsImtpZCI6IjNfQ2ZLQ0x6R3gtSGNVRGR5d3h3Q2Rkd1Z1VjhqTjRReDZPeGhfWGRNYnMiLCJ0eXAiOiJhdCtqd3QifQ.eyJpc3MiOiJodHRwczovL3Rva2Vucy5leGFtcGxlLmNvbSIsInN1YiI6InVzZXItNDIiLCJhdWQiOiJhcGkiLCJleHAiOjE3MDAwMDA5MDAsImlhdCI6MTcwMDAwMDAwMCwianRpIjoiYWJjZGVmIiwic2NvcGUiOiJyZWFkIHdyaXRlIn0";

type RawSign = Box<dyn Fn() -> usize>;

fn raw_signer(backend: &SoftwareBackend, key: &KeyRef, algorithm: Algorithm) -> RawSign {
    let der = std::fs::read(backend.key_file(key, 1)).expect("key file");
    let rng = SystemRandom::new();
    match algorithm {
        Algorithm::Es256 | Algorithm::Es384 => {
            let alg = if algorithm == Algorithm::Es256 {
                &ECDSA_P256_SHA256_FIXED_SIGNING
            } else {
                &ECDSA_P384_SHA384_FIXED_SIGNING
            };
            let pair = EcdsaKeyPair::from_pkcs8(alg, &der).expect("pkcs8");
            Box::new(move || pair.sign(&rng, MESSAGE).expect("sign").as_ref().len())
        }
        Algorithm::Ps256 => {
            let pair = RsaKeyPair::from_pkcs8(&der).expect("pkcs8");
            Box::new(move || {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(&RSA_PSS_SHA256, &rng, MESSAGE, &mut sig)
                    .expect("sign");
                sig.len()
            })
        }
        _ => unreachable!(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo test --benches` runs bench targets with `--bench` absent: stay quick then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let round = Duration::from_secs_f64(if quick {
        0.02
    } else {
        env_f64("ROUND_SECONDS", 0.1)
    });
    let rounds = if quick {
        1
    } else {
        env_f64("ROUNDS", 41.0) as usize
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Arc::new(
        SoftwareBackend::open(&dir.path().join("keys"), SoftwareOptions::default())
            .expect("backend"),
    );
    let chain = Chain::new(
        vec![(
            backend.clone() as Arc<dyn Backend>,
            ResilienceConfig::default(),
        )],
        &Routes {
            sign: vec!["software".into()],
            verify: vec![],
            encrypt: vec![],
        },
        true,
        Metrics::new(),
    )
    .expect("chain");
    // The service's runtime flavour (multi-thread), with one worker: "one thread".
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");

    if quick {
        println!(
            "sign_chain: smoke run under `cargo test` (figures are not measurements; use `cargo bench`)"
        );
    } else {
        println!(
            "sign rate, one thread, {rounds} alternating rounds of {:.2} s each; medians",
            round.as_secs_f64()
        );
    }
    println!(
        "{:<8} {:>12} {:>14} {:>12} {:>10}",
        "alg", "raw ops/s", "backend ops/s", "chain ops/s", "chain/raw"
    );
    for algorithm in [Algorithm::Es256, Algorithm::Es384, Algorithm::Ps256] {
        let key = KeyRef::new("bench", &algorithm.as_str().to_ascii_lowercase()).expect("key");
        runtime
            .block_on(backend.generate_key(&key, algorithm))
            .expect("generate");
        let raw = raw_signer(&backend, &key, algorithm);
        let ctx = CallContext::new();
        let (mut raw_rates, mut chain_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let mut backend_rates = Vec::new();
        for _ in 0..rounds {
            let started = Instant::now();
            let mut n = 0u64;
            while started.elapsed() < round {
                std::hint::black_box(raw());
                n += 1;
            }
            raw_rates.push(n as f64 / started.elapsed().as_secs_f64());

            let (n, elapsed) = runtime.block_on(async {
                let started = Instant::now();
                let mut n = 0u64;
                while started.elapsed() < round {
                    let sig = backend.sign(&key, MESSAGE).await.expect("backend sign");
                    std::hint::black_box(sig);
                    n += 1;
                }
                (n, started.elapsed())
            });
            backend_rates.push(n as f64 / elapsed.as_secs_f64());

            let (n, elapsed) = runtime.block_on(async {
                let started = Instant::now();
                let mut n = 0u64;
                while started.elapsed() < round {
                    let sig = chain.sign(&ctx, &key, MESSAGE).await.expect("chain sign");
                    std::hint::black_box(sig);
                    n += 1;
                }
                (n, started.elapsed())
            });
            chain_rates.push(n as f64 / elapsed.as_secs_f64());
            ratios.push(chain_rates[chain_rates.len() - 1] / raw_rates[raw_rates.len() - 1]);
        }
        println!(
            "{:<8} {:>12.0} {:>14.0} {:>12.0} {:>10.3}",
            algorithm.as_str(),
            median(raw_rates),
            median(backend_rates),
            median(chain_rates),
            median(ratios)
        );
    }
}
