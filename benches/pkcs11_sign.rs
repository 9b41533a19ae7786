//! PKCS#11 sign rate through the backend (session pool, `block_in_place`) vs a raw cryptoki
//! loop with one session per thread on the same key and mechanism, in the same run, with 1
//! and 2 concurrent workers, against SoftHSM and (when built) kryoptic, and the backend
//! without its check of each signature (`unchecked`; `checked/` is the rate with the check
//! over the rate without); then verify through the backend, locally (public key read once
//! from the token) vs on the token.
//!
//! Both tokens read their configuration file at `C_Initialize`, so the bench makes a token in
//! a temporary directory and re-runs itself with that configuration, once per token. The
//! two differ where scaling is concerned: SoftHSM re-reads a token object's file under a
//! per-object lock on every operation (2 opens and 6 `fcntl` calls per sign, counted with
//! `perf stat`), kryoptic keeps objects in memory.
//!
//! Run: `cargo bench --bench pkcs11_sign` (ROUND_SECONDS=0.5, ROUNDS=5 by default).

#[path = "../tests/support/process.rs"]
#[allow(dead_code)]
mod process;
#[path = "../tests/support/softhsm.rs"]
#[allow(dead_code)]
mod softhsm;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::MechanismType;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::{AuthPin, Ulong};
use token_service::backends::pkcs11::token::TokenSelector;
use token_service::backends::pkcs11::{Pkcs11Backend, Pkcs11Options};
use token_service::backends::software::material::RsaBits;
use token_service::backends::{Algorithm, Backend, KeyRef, VerificationKey, VerifyRequest};
use token_service::secret::Secret;

use softhsm::{LABEL, PIN, Provider, Token};

const MESSAGE: &[u8] = b"eyJhbGciOiJFUzI1NiIsImtpZCI6ImsiLCJ0eXAiOiJhdCtqd3QifQ.eyJzdWIiOiJ1c2VyLTQyIiwiZXhwIjoxNzAwMDAwOTAwfQ";

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Raw loop: `threads` threads, a session each, signing for `round`; returns ops/s.
fn raw_rate(
    pkcs11: &Pkcs11,
    label: &str,
    algorithm: Algorithm,
    threads: usize,
    round: Duration,
) -> f64 {
    let slot = pkcs11.get_slots_with_token().unwrap()[0];
    // The mechanism the backend picks by probing: hash-and-sign where the token has it
    // (kryoptic), else the host hashes and the token signs the digest (SoftHSM).
    let hash_and_sign = pkcs11
        .get_mechanism_list(slot)
        .unwrap()
        .contains(&MechanismType::ECDSA_SHA256);
    let count = Arc::new(AtomicU64::new(0));
    let start = Arc::new(std::sync::Barrier::new(threads + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (pkcs11, label, count, start, stop) = (
                pkcs11.clone(),
                label.to_owned(),
                count.clone(),
                start.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let session = pkcs11.open_rw_session(slot).unwrap();
                let _ = session.login(UserType::User, Some(&AuthPin::new(PIN.into())));
                let key = session
                    .find_objects(&[
                        Attribute::Class(ObjectClass::PRIVATE_KEY),
                        Attribute::Label(label.into_bytes()),
                    ])
                    .unwrap()[0];
                start.wait();
                while !stop.load(Ordering::Relaxed) {
                    let sig = match algorithm {
                        Algorithm::Es256 if hash_and_sign => {
                            session.sign(&Mechanism::EcdsaSha256, key, MESSAGE).unwrap()
                        }
                        Algorithm::Es256 => {
                            let d = digest::digest(&digest::SHA256, MESSAGE);
                            session.sign(&Mechanism::Ecdsa, key, d.as_ref()).unwrap()
                        }
                        _ => session
                            .sign(
                                &Mechanism::Sha256RsaPkcsPss(PkcsPssParams {
                                    hash_alg: MechanismType::SHA256,
                                    mgf: PkcsMgfType::MGF1_SHA256,
                                    s_len: Ulong::from(32u64),
                                }),
                                key,
                                MESSAGE,
                            )
                            .unwrap(),
                    };
                    std::hint::black_box(sig);
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    std::thread::sleep(round);
    stop.store(true, Ordering::Relaxed);
    let elapsed = began.elapsed();
    for h in handles {
        h.join().unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()
}

/// Backend loop: `tasks` concurrent tasks calling `sign` for `round`; returns ops/s. With
/// `task_per_call` each call runs in a task of its own, as a server runs each request.
fn backend_rate(
    runtime: &tokio::runtime::Runtime,
    backend: &Arc<Pkcs11Backend>,
    key: &KeyRef,
    tasks: usize,
    task_per_call: bool,
    round: Duration,
) -> f64 {
    runtime.block_on(async {
        let began = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (backend, key) = (backend.clone(), key.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while began.elapsed() < round {
                        if task_per_call {
                            let (backend, key) = (backend.clone(), key.clone());
                            let signed =
                                tokio::spawn(async move { backend.sign(&key, MESSAGE).await });
                            std::hint::black_box(signed.await.unwrap().unwrap());
                        } else {
                            std::hint::black_box(backend.sign(&key, MESSAGE).await.unwrap());
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for h in handles {
            total += h.await.unwrap();
        }
        total as f64 / began.elapsed().as_secs_f64()
    })
}

/// Verify loop through a backend, one task, for `round`; returns ops/s.
fn verify_rate(
    runtime: &tokio::runtime::Runtime,
    backend: &Pkcs11Backend,
    key: &KeyRef,
    kid: &str,
    signature: &[u8],
    round: Duration,
) -> f64 {
    runtime.block_on(async {
        let began = Instant::now();
        let mut n = 0u64;
        while began.elapsed() < round {
            backend
                .verify(VerifyRequest {
                    key: VerificationKey::Managed {
                        key,
                        kid: Some(kid),
                    },
                    algorithm: Algorithm::Es256,
                    message: MESSAGE,
                    signature,
                })
                .await
                .unwrap();
            n += 1;
        }
        n as f64 / began.elapsed().as_secs_f64()
    })
}

fn options(module: &Path, verify_on_token: bool, verify_signatures: bool) -> Pkcs11Options {
    Pkcs11Options {
        module: module.to_path_buf(),
        token: TokenSelector::Label(LABEL.into()),
        pin: Secret::new(PIN.into()),
        max_sessions: 2,
        verify_on_token,
        verify_signatures,
        retention: Duration::from_secs(86400),
        rsa_bits: RsaBits::B2048,
        refresh_interval: Duration::from_secs(1),
    }
}

fn child(token: &Token) {
    let quick = std::env::var("BENCH_QUICK").is_ok();
    let round = Duration::from_secs_f64(if quick {
        0.02
    } else {
        env_f64("ROUND_SECONDS", 0.5)
    });
    let rounds = if quick {
        1
    } else {
        env_f64("ROUNDS", 5.0) as usize
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    token.initialise_in_child();
    let module = token.module.as_path();
    // The backend's module handle is initialised; a second context on the same library
    // shares that state (C_Initialize answers "already initialised").
    let backend = Arc::new(Pkcs11Backend::open(options(module, false, true)).unwrap());
    // The same backend without the check of each signature against the published key.
    let unchecked = Arc::new(Pkcs11Backend::open(options(module, false, false)).unwrap());
    let pkcs11 = Pkcs11::new(module).unwrap();
    let _ = pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    if quick {
        println!(
            "pkcs11_sign: smoke run under `cargo test` (figures are not measurements; use `cargo bench`)"
        );
    }
    println!(
        "PKCS#11 sign on {:?}, {rounds} alternating rounds of {:.2} s; medians (ops/s)",
        token.provider,
        round.as_secs_f64()
    );
    println!(
        "{:<6} {:>8} {:>11} {:>11} {:>9} {:>11} {:>9}",
        "alg", "workers", "raw", "backend", "ratio", "unchecked", "checked/"
    );
    for algorithm in [Algorithm::Es256, Algorithm::Ps256] {
        let key = KeyRef::new("bench", &algorithm.as_str().to_ascii_lowercase()).unwrap();
        runtime
            .block_on(backend.generate_key(&key, algorithm))
            .unwrap();
        let label = format!("ts/bench/{}/1", key.name());
        // Each round measures raw and backend at 1 and at 2 workers back to back, and the
        // ratios are taken within the round: this VM's speed drifts between rounds by more
        // than the differences being measured.
        let (mut raw, mut ours) = ([vec![], vec![]], [vec![], vec![]]);
        let (mut ratio, mut raw_scaling, mut our_scaling) = ([vec![], vec![]], vec![], vec![]);
        let (mut bare, mut check_cost) = ([vec![], vec![]], [vec![], vec![]]);
        for _ in 0..rounds {
            for (i, workers) in [1usize, 2].into_iter().enumerate() {
                let r = raw_rate(&pkcs11, &label, algorithm, workers, round);
                let b = backend_rate(&runtime, &backend, &key, workers, false, round);
                let u = backend_rate(&runtime, &unchecked, &key, workers, false, round);
                raw[i].push(r);
                ours[i].push(b);
                ratio[i].push(b / r);
                bare[i].push(u);
                check_cost[i].push(b / u);
            }
            raw_scaling.push(raw[1][raw[1].len() - 1] / raw[0][raw[0].len() - 1]);
            our_scaling.push(ours[1][ours[1].len() - 1] / ours[0][ours[0].len() - 1]);
        }
        for (i, workers) in [1usize, 2].into_iter().enumerate() {
            println!(
                "{:<6} {:>8} {:>11.0} {:>11.0} {:>9.3} {:>11.0} {:>9.3}",
                algorithm.as_str(),
                workers,
                median(raw[i].clone()),
                median(ours[i].clone()),
                median(ratio[i].clone()),
                median(bare[i].clone()),
                median(check_cost[i].clone())
            );
        }
        println!(
            "{:<6} scaling, 2 workers / 1: backend {:.2}x, raw {:.2}x",
            algorithm.as_str(),
            median(our_scaling),
            median(raw_scaling)
        );
        // Not a target: what a server sees, where every request is a new task that must be
        // woken on some thread (a cross-thread wake-up per call).
        let spawned: Vec<f64> = (0..rounds)
            .map(|_| backend_rate(&runtime, &backend, &key, 2, true, round))
            .collect();
        println!(
            "{:<6} 2 workers, a new task per call: {:.0}/s",
            algorithm.as_str(),
            median(spawned)
        );
    }

    // Verify: the same ES256 key, through a backend verifying locally and one verifying on
    // the token.
    let on_token = Pkcs11Backend::open(options(module, true, true)).unwrap();
    let key = KeyRef::new("bench", "es256").unwrap();
    let signature = runtime.block_on(backend.sign(&key, MESSAGE)).unwrap();
    let (mut local, mut on_token_rates) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        local.push(verify_rate(
            &runtime,
            &backend,
            &key,
            &signature.kid,
            &signature.bytes,
            round,
        ));
        on_token_rates.push(verify_rate(
            &runtime,
            &on_token,
            &key,
            &signature.kid,
            &signature.bytes,
            round,
        ));
    }
    println!(
        "ES256 verify on {:?}, 1 worker: local {:.0}/s, on the token {:.0}/s",
        token.provider,
        median(local),
        median(on_token_rates)
    );
}

/// Where the child finds its token, and which kind it is.
const CHILD_DIR: &str = "BENCH_TOKEN_DIR";
const CHILD_PROVIDER: &str = "BENCH_TOKEN_PROVIDER";

fn main() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        let provider = match std::env::var(CHILD_PROVIDER).as_deref() {
            Ok("Kryoptic") => Provider::Kryoptic,
            _ => Provider::SoftHsm,
        };
        child(&Token::in_dir(provider, Path::new(&dir)).unwrap());
        return;
    }
    let quick = !std::env::args().any(|a| a == "--bench");
    for provider in [Provider::SoftHsm, Provider::Kryoptic] {
        let dir = tempfile::tempdir().unwrap();
        // Not installed: `create` says so (and fails under CI=true, where both must be).
        let Some(token) = Token::create(provider, dir.path()) else {
            continue;
        };
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .env(provider.conf_variable(), &token.conf)
            .env(CHILD_DIR, dir.path())
            .env(CHILD_PROVIDER, format!("{provider:?}"));
        if quick {
            command.env("BENCH_QUICK", "1");
        }
        let status = command.status().unwrap();
        assert!(status.success());
    }
}
