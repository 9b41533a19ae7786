//! `bench`: drives GenerateTokens (optionally with RefreshTokens) over gRPC at a given
//! concurrency for a given time, with a progress line; prints tokens/s, latency percentiles,
//! errors, the raw ES256 sign rate measured in the same run on this machine, and — given the
//! server's admin address — the server's CPU time per token. With `--dpop`, every request
//! carries a fresh ES256 DPoP proof (one key per client task), so the tokens are bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use token_service::api::proto::token_service_client::TokenServiceClient;
use token_service::api::proto::{DPoPProof, GenerateTokensRequest, RefreshTokensRequest};

use super::Failure;
use super::connect::TokenApiArgs;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    api: TokenApiArgs,
    /// The server's admin address, to read its CPU time from /metrics.
    #[arg(long)]
    admin: Option<String>,
    /// Concurrent requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections the requests are spread over (at most one per request in flight).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// How long to run (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Follow each GenerateTokens with a RefreshTokens.
    #[arg(long)]
    refresh: bool,
    /// Client id.
    #[arg(long, default_value = "demo")]
    client_id: String,
    /// Send a fresh DPoP proof with every request (DPoP-bound tokens).
    #[arg(long)]
    dpop: bool,
    /// Threads driving the load. One keeps the tool's own CPU use lowest on a machine it
    /// shares with the server (each extra thread adds wake-ups between threads); raise it
    /// when the tool's CPU per token times the rate nears one core (with `--dpop`, when it
    /// signs a proof per request, sooner).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
}

impl BenchArgs {
    /// The runtime threads to drive the load with.
    pub fn threads(&self) -> usize {
        usize::from(self.threads)
    }
}

/// Failed calls: how many, and what the first one said (so a run of errors has a reason).
#[derive(Default)]
struct Errors {
    count: AtomicU64,
    first: std::sync::OnceLock<String>,
}

impl Errors {
    fn record(&self, describe: impl FnOnce() -> String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if self.first.get().is_none() {
            let _ = self.first.set(describe());
        }
    }
}

/// The gRPC status of a failed call, as the first error shows it.
fn status_line(call: &str, status: &tonic::Status) -> String {
    format!("{call}: {:?}: {}", status.code(), status.message())
}

/// The token endpoint URI the benchmark's proofs name.
const PROOF_URI: &str = "https://token-service.local/token";

/// A client's DPoP key, making one fresh proof per request.
struct ProofMaker {
    pair: aws_lc_rs::signature::EcdsaKeyPair,
    header_b64: String,
    rng: aws_lc_rs::rand::SystemRandom,
}

impl ProofMaker {
    fn new() -> Result<Self, Failure> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| Failure::new("cannot make a DPoP key"))?;
        let point = pair.public_key().as_ref().to_vec();
        let header = serde_json::json!({
            "typ": "dpop+jwt",
            "alg": "ES256",
            "jwk": {"kty": "EC", "crv": "P-256", "x": b64.encode(&point[1..33]), "y": b64.encode(&point[33..65])},
        });
        Ok(Self {
            pair,
            header_b64: b64.encode(header.to_string()),
            rng: aws_lc_rs::rand::SystemRandom::new(),
        })
    }

    fn proof(&self) -> Option<DPoPProof> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).ok()?;
        let iat = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        let claims = serde_json::json!({"jti": b64.encode(jti), "htm": "POST", "htu": PROOF_URI, "iat": iat});
        let input = format!("{}.{}", self.header_b64, b64.encode(claims.to_string()));
        let signature = self.pair.sign(&self.rng, input.as_bytes()).ok()?;
        Some(DPoPProof {
            proof: format!("{input}.{}", b64.encode(signature.as_ref())),
            http_method: "POST".into(),
            http_uri: PROOF_URI.into(),
        })
    }
}

/// The server's CPU time, from token_service_process_cpu_seconds on its admin /metrics.
async fn server_cpu_seconds(admin: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = admin.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("token_service_process_cpu_seconds "))
        .and_then(|v| v.trim().parse().ok())
}

/// Raw ES256 signatures per second on one thread (aws-lc-rs), for scale.
fn raw_es256_rate() -> f64 {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let Ok(pair) = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING) else {
        return 0.0;
    };
    let rng = SystemRandom::new();
    let message = [0x61u8; 300];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(1) {
        if pair.sign(&rng, &message).is_ok() {
            n += 1;
        }
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

/// Prints the CPU seconds between two readings, in all and per token, when both exist.
fn print_cpu(what: &str, before: Option<f64>, after: Option<f64>, tokens: u64) {
    if let (Some(before), Some(after)) = (before, after)
        && tokens > 0
    {
        let spent = after - before;
        say!(
            "{what}: {spent:.2} s in all, {:.3} ms per token",
            spent * 1000.0 / tokens as f64
        );
    }
}

pub async fn run(args: BenchArgs) -> Result<(), Failure> {
    let raw = tokio::task::spawn_blocking(raw_es256_rate)
        .await
        .unwrap_or(0.0);
    say!("raw ES256 sign (aws-lc-rs, one thread, this machine): {raw:.0}/s");
    let channels = {
        let mut channels = Vec::new();
        for _ in 0..args.connections.clamp(1, args.concurrency.max(1)) {
            channels.push(args.api.connect().await?);
        }
        channels
    };
    let cpu_before = match &args.admin {
        Some(admin) => server_cpu_seconds(admin).await,
        None => None,
    };
    // The load tool's own CPU, to show what share of a shared machine it takes.
    let own_cpu_before = token_service::metrics::process_cpu_seconds();
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Errors::default());
    let started = Instant::now();
    let deadline = started + args.duration;
    let tasks: Vec<_> = (0..args.concurrency.max(1))
        .map(|i| {
            let mut client = TokenServiceClient::new(channels[i % channels.len()].clone());
            let (done, errors, client_id, refresh) = (
                done.clone(),
                errors.clone(),
                args.client_id.clone(),
                args.refresh,
            );
            let prover = if args.dpop {
                ProofMaker::new().ok()
            } else {
                None
            };
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let begun = Instant::now();
                    let request = GenerateTokensRequest {
                        subject: format!("user-{i}-{n}"),
                        client_id: client_id.clone(),
                        dpop: prover.as_ref().and_then(ProofMaker::proof),
                        ..Default::default()
                    };
                    n += 1;
                    match client.generate_tokens(request).await {
                        Ok(response) => {
                            latencies.push(begun.elapsed().as_micros() as u64);
                            done.fetch_add(1, Ordering::Relaxed);
                            let refresh_token = response.into_inner().refresh_token;
                            if refresh && refresh_token.is_empty() {
                                errors.record(|| {
                                    format!("GenerateTokens returned no refresh token (client `{client_id}` is issued access tokens only): --refresh needs a client with refresh tokens")
                                });
                            } else if refresh {
                                let begun = Instant::now();
                                match client
                                    .refresh_tokens(RefreshTokensRequest {
                                        refresh_token,
                                        dpop: prover.as_ref().and_then(ProofMaker::proof),
                                    })
                                    .await
                                {
                                    Ok(_) => {
                                        latencies.push(begun.elapsed().as_micros() as u64);
                                        done.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Err(status) => {
                                        errors.record(|| status_line("RefreshTokens", &status));
                                    }
                                }
                            }
                        }
                        Err(status) => {
                            errors.record(|| status_line("GenerateTokens", &status));
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = done.load(Ordering::Relaxed);
                eprint!("\r{now} tokens, {}/s in the last second   ", now - last);
                last = now;
            }
        })
    };
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap_or_default());
    }
    progress.abort();
    eprintln!();
    let elapsed = started.elapsed().as_secs_f64();
    let own_cpu_after = token_service::metrics::process_cpu_seconds();
    let cpu_after = match &args.admin {
        Some(admin) => server_cpu_seconds(admin).await,
        None => None,
    };
    latencies.sort_unstable();
    let total = done.load(Ordering::Relaxed);
    let rate = total as f64 / elapsed;
    say!(
        "{} tokens in {elapsed:.1} s at concurrency {} over {} connections ({} client threads): {rate:.0} tokens/s; latency p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms; errors {}",
        total,
        args.concurrency,
        channels.len(),
        args.threads,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.95),
        percentile(&latencies, 0.99),
        errors.count.load(Ordering::Relaxed)
    );
    if let Some(first) = errors.first.get() {
        say!("first error: {first}");
    }
    print_cpu("server CPU", cpu_before, cpu_after, total);
    print_cpu(
        "bench client CPU (same machine)",
        own_cpu_before,
        own_cpu_after,
        total,
    );
    if raw > 0.0 {
        say!(
            "issuance rate / raw one-thread ES256 sign rate: {:.2}",
            rate / raw
        );
    }
    Ok(())
}
