//! PKCS#11 sign rate through the backend (session pool, `block_in_place`) vs a raw cryptoki
//! loop with one session per thread on the same key and mechanism, in the same run, with 1
//! and 2 concurrent workers, against SoftHSM and (when built) kryoptic; then verify through
//! the backend, locally (public key read once from the token) vs on the token.
//!
//! Both tokens read their configuration file at `C_Initialize`, so the bench makes a token in
//! a temporary directory and re-runs itself with that configuration, once per token. The
//! two differ where scaling is concerned: SoftHSM re-reads a token object's file under a
//! per-object lock on every operation (2 opens and 6 `fcntl` calls per sign, counted with
//! `perf stat`), kryoptic keeps objects in memory.
//!
//! Run: `cargo bench --bench pkcs11_sign` (ROUND_SECONDS=0.5, ROUNDS=5 by default).

use std::path::{Path, PathBuf};
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

const LABEL: &str = "bench";
const PIN: &str = "bench-pin-1234";
const MESSAGE: &[u8] = b"eyJhbGciOiJFUzI1NiIsImtpZCI6ImsiLCJ0eXAiOiJhdCtqd3QifQ.eyJzdWIiOiJ1c2VyLTQyIiwiZXhwIjoxNzAwMDAwOTAwfQ";
const SO_PIN: &str = "bench-so-0000";

/// The PKCS#11 implementations the bench runs against.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Token {
    SoftHsm,
    Kryoptic,
}

impl Token {
    fn name(self) -> &'static str {
        match self {
            Token::SoftHsm => "SoftHSM",
            Token::Kryoptic => "kryoptic",
        }
    }

    fn conf_variable(self) -> &'static str {
        match self {
            Token::SoftHsm => "SOFTHSM2_CONF",
            Token::Kryoptic => "KRYOPTIC_CONF",
        }
    }

    /// The module, if installed (kryoptic: built by scripts/build-kryoptic.sh).
    fn module(self) -> Option<PathBuf> {
        let candidates: Vec<PathBuf> = match self {
            Token::SoftHsm => vec![
                "/usr/lib/softhsm/libsofthsm2.so".into(),
                "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so".into(),
            ],
            Token::Kryoptic => std::env::var_os("KRYOPTIC_MODULE")
                .map(PathBuf::from)
                .into_iter()
                .chain(std::env::var_os("HOME").map(|home| {
                    PathBuf::from(home)
                        .join(".cache/token-service/kryoptic-1.5.4/libkryoptic_pkcs11.so")
                }))
                .collect(),
        };
        candidates.into_iter().find(|p| p.is_file())
    }

    /// Writes the token's configuration in `dir`; SoftHSM's token is initialised here,
    /// kryoptic's in the child (through PKCS#11, once its configuration is loaded).
    fn prepare(self, dir: &Path) -> PathBuf {
        let conf = dir.join("token.conf");
        let tokens = dir.join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let text = match self {
            Token::SoftHsm => format!(
                "directories.tokendir = {}\nlog.level = ERROR\n",
                tokens.display()
            ),
            Token::Kryoptic => format!(
                "[[slots]]\nslot = 1\ndbtype = \"sqlite\"\ndbargs = \"{}\"\n",
                tokens.join("token.sql").display()
            ),
        };
        std::fs::write(&conf, text).unwrap();
        if self == Token::SoftHsm {
            let init = Command::new("softhsm2-util")
                .args([
                    "--init-token",
                    "--free",
                    "--label",
                    LABEL,
                    "--so-pin",
                    SO_PIN,
                    "--pin",
                    PIN,
                ])
                .env("SOFTHSM2_CONF", &conf)
                .output()
                .expect("softhsm2-util");
            assert!(init.status.success());
        }
        conf
    }

    /// kryoptic: C_InitToken and C_InitPIN, in the child.
    fn initialise_in_child(self, pkcs11: &Pkcs11) {
        if self != Token::Kryoptic {
            return;
        }
        let slot = pkcs11.get_all_slots().unwrap()[0];
        pkcs11
            .init_token(slot, &AuthPin::new(SO_PIN.into()), LABEL)
            .unwrap();
        let session = pkcs11.open_rw_session(slot).unwrap();
        session
            .login(UserType::So, Some(&AuthPin::new(SO_PIN.into())))
            .unwrap();
        session.init_pin(&AuthPin::new(PIN.into())).unwrap();
    }
}

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

fn options(module: &Path, verify_on_token: bool) -> Pkcs11Options {
    Pkcs11Options {
        module: module.to_path_buf(),
        token: TokenSelector::Label(LABEL.into()),
        pin: Secret::new(PIN.into()),
        max_sessions: 2,
        verify_on_token,
        retention: Duration::from_secs(86400),
        rsa_bits: RsaBits::B2048,
        refresh_interval: Duration::from_secs(1),
    }
}

fn child(token: Token, module: &Path) {
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
    // This context initialises the module (and, for kryoptic, the token); the backend's own
    // context on the same library shares that state (C_Initialize answers "already
    // initialised").
    let pkcs11 = Pkcs11::new(module).unwrap();
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    token.initialise_in_child(&pkcs11);
    let backend = Arc::new(Pkcs11Backend::open(options(module, false)).unwrap());
    if quick {
        println!(
            "pkcs11_sign: smoke run under `cargo test` (figures are not measurements; use `cargo bench`)"
        );
    }
    println!(
        "PKCS#11 sign on {}, {rounds} alternating rounds of {:.2} s; medians (ops/s)",
        token.name(),
        round.as_secs_f64()
    );
    println!(
        "{:<6} {:>8} {:>11} {:>11} {:>9}",
        "alg", "workers", "raw", "backend", "ratio"
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
        for _ in 0..rounds {
            for (i, workers) in [1usize, 2].into_iter().enumerate() {
                let r = raw_rate(&pkcs11, &label, algorithm, workers, round);
                let b = backend_rate(&runtime, &backend, &key, workers, false, round);
                raw[i].push(r);
                ours[i].push(b);
                ratio[i].push(b / r);
            }
            raw_scaling.push(raw[1][raw[1].len() - 1] / raw[0][raw[0].len() - 1]);
            our_scaling.push(ours[1][ours[1].len() - 1] / ours[0][ours[0].len() - 1]);
        }
        for (i, workers) in [1usize, 2].into_iter().enumerate() {
            println!(
                "{:<6} {:>8} {:>11.0} {:>11.0} {:>9.3}",
                algorithm.as_str(),
                workers,
                median(raw[i].clone()),
                median(ours[i].clone()),
                median(ratio[i].clone())
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
    let on_token = Pkcs11Backend::open(options(module, true)).unwrap();
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
        "ES256 verify on {}, 1 worker: local {:.0}/s, on the token {:.0}/s",
        token.name(),
        median(local),
        median(on_token_rates)
    );
}

fn main() {
    if let Ok(name) = std::env::var("BENCH_TOKEN_CHILD") {
        let token = if name == "kryoptic" {
            Token::Kryoptic
        } else {
            Token::SoftHsm
        };
        child(token, &token.module().unwrap());
        return;
    }
    let quick = !std::env::args().any(|a| a == "--bench");
    for token in [Token::SoftHsm, Token::Kryoptic] {
        if token.module().is_none() {
            println!(
                "pkcs11_sign: {} module not found (scripts/test.sh installs both)",
                token.name()
            );
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let conf = token.prepare(dir.path());
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .env(token.conf_variable(), &conf)
            .env("BENCH_TOKEN_CHILD", token.name().to_ascii_lowercase());
        if quick {
            command.env("BENCH_QUICK", "1");
        }
        let status = command.status().unwrap();
        assert!(status.success());
    }
}
