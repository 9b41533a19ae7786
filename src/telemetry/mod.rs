//! Logging set-up. `RUST_LOG`, when set, overrides `logging.level`.
//!
//! Lines are written in batches by a background thread ([`batch`]): a synchronous write per
//! line measured at ~20 % of the issuance rate, since every token has an audit line. The
//! writer blocks rather than drops when its buffer is full — audit lines are not optional —
//! and [`flush`] drains it before the process exits.

pub mod batch;

use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};
use batch::BatchGuard;

static GUARD: Mutex<Option<BatchGuard>> = Mutex::new(None);

/// Installs the global tracing subscriber, writing to stderr. Safe to call more than once:
/// later calls do nothing.
pub fn init(config: &LoggingConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // cryptoki logs an ERROR for every vendor mechanism in a token's list that it has no
    // name for; those are not errors of ours. Real PKCS#11 failures reach our own logs.
    let filter = match "cryptoki::mechanism=off".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match batch::batch_writer(std::io::stderr()) {
        Ok((writer, guard)) => {
            if install(filter, writer, ansi, config.format) {
                *GUARD.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
            }
        }
        Err(error) => {
            // Only when the OS refuses a thread: lines are then written synchronously.
            eprintln!("warning: cannot start the log writer thread ({error}); writing directly");
            install(filter, std::io::stderr, ansi, config.format);
        }
    }
}

/// Installs the subscriber; false if one was already installed.
fn install<W>(filter: EnvFilter, writer: W, ansi: bool, format: LogFormat) -> bool
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        // Colour codes only for a terminal: never in files, journald or a log shipper.
        .with_ansi(ansi)
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().try_init().is_ok(),
        LogFormat::Text => builder.try_init().is_ok(),
    }
}

/// Writes out every buffered log line. Call before the process exits.
pub fn flush() {
    if let Some(guard) = GUARD.lock().unwrap_or_else(|p| p.into_inner()).take() {
        guard.finish();
    }
}
