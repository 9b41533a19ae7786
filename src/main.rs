//! The `token-service` binary: the service and its operator commands. All logic lives in
//! the `token_service` library; this crate only parses arguments and prints.
#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

// mimalloc, because with glibc's allocator the issuance cost grew with the memory store:
// 0.085 ms of server CPU per token on an empty store, 0.13 ms at 150k families (time spent in
// `unlink_chunk`); with mimalloc it stayed at 0.084-0.10 ms past 250k families.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = args.worker_threads() {
        builder.worker_threads(threads);
    }
    // Without the LIFO slot, a task woken by another (the HTTP/2 connection, woken by each
    // finished call) queues behind the calls already runnable instead of running next, so
    // one write carries several responses. Measured with `token-service bench` (c=32, 2
    // cores): 0.93 writes per token instead of 1.65, 18.4-18.8k tokens/s at 0.069-0.071 ms
    // of server CPU per token instead of 15.5-15.9k at 0.083, p99 4.2-4.4 ms instead of
    // 5.5-5.9. Tasks in the LIFO slot are also not stolen by idle workers, a known source of
    // latency spikes. The setting needs `--cfg tokio_unstable` (.cargo/config.toml).
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(cli::run(args))
}
