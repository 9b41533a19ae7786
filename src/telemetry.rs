//! Logging set-up. `RUST_LOG`, when set, overrides `logging.level`.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: never in files, journald or a log shipper.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = match config.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
