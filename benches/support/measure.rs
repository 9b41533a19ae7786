//! Concurrency-N latency and rate measurement shared by the benchmarks: N tasks call the
//! same operation in a loop for a round; the rate and p50/p99 latency over all calls.

use std::time::{Duration, Instant};

/// How long each round runs: `quick` (a smoke run under `cargo test`) or ROUND_SECONDS,
/// else `default_seconds`.
pub fn round_length(quick: bool, quick_seconds: f64, default_seconds: f64) -> Duration {
    Duration::from_secs_f64(if quick {
        quick_seconds
    } else {
        std::env::var("ROUND_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default_seconds)
    })
}

/// One round's figures.
pub struct Figures {
    /// Calls per second.
    pub rate: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
}

/// Runs `call` from `concurrency` tasks for `round`.
pub async fn measure<F, Fut>(concurrency: usize, round: Duration, call: F) -> Figures
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    measure_while(concurrency, round, move || {
        let done = call();
        async move {
            done.await;
            true
        }
    })
    .await
}

/// Like [`measure`], for a call that can run out of input: a task stops when its call
/// answers false, and that call is not counted.
pub async fn measure_while<F, Fut>(concurrency: usize, round: Duration, call: F) -> Figures
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let began = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while began.elapsed() < round {
                    let t = Instant::now();
                    if !call().await {
                        break;
                    }
                    latencies.push(t.elapsed().as_secs_f64() * 1e6);
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = began.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| all[((all.len() as f64 - 1.0) * q) as usize];
    Figures {
        rate: all.len() as f64 / elapsed,
        p50_us: at(0.50),
        p99_us: at(0.99),
    }
}
