//! Logging set-up. `RUST_LOG`, when set, overrides `logging.level`.
//!
//! Lines are written by a background thread (`tracing-appender`): a synchronous write per
//! line measured at ~20 % of the issuance rate, since every token has an audit line. The
//! writer blocks rather than drops when its buffer is full — audit lines are not optional —
//! and [`flush`] drains it before the process exits.

use std::sync::Mutex;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

static GUARD: Mutex<Option<WorkerGuard>> = Mutex::new(None);

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
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        // Colour codes only for a terminal: never in files, journald or a log shipper.
        .with_ansi(ansi)
        .with_target(false);
    let installed = match config.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if installed.is_ok() {
        *GUARD.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
    }
}

/// Writes out every buffered log line. Call before the process exits.
pub fn flush() {
    drop(GUARD.lock().unwrap_or_else(|p| p.into_inner()).take());
}
