//! Command-line interface.

/// `println!` for command output: a closed stdout (`| head`) ends the process quietly with
/// success, as command-line tools do, instead of a panic.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!($($arg)*))
    };
}

mod bench;
mod client;
mod connect;
mod doctor;
mod keys;
mod sign;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use token_service::config::{Config, ConfigError, ProcessEnv};
use token_service::metrics::Metrics;
use token_service::service::Service;

/// Writes one line of command output to stdout (see `say!`).
pub fn write_out(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {error}");
        std::process::exit(1);
    }
}

/// Exit code for configuration errors (sysexits EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;

/// token-service: signs and encrypts through a priority chain of crypto backends
/// (software, PKCS#11, AWS KMS, Crypto Service) with per-backend circuit breakers.
#[derive(Debug, Parser)]
#[command(name = "token-service", version, propagate_version = true)]
pub struct Cli {
    /// Configuration file (TOML). Without it, the embedded default is used: software
    /// backend, keys in ./data/keys, admin endpoint on 127.0.0.1:9464.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

impl Cli {
    /// The async runtime's worker threads the command asks for (`None`: one per core).
    pub fn worker_threads(&self) -> Option<usize> {
        match &self.command {
            Some(Command::Bench(args)) => Some(args.threads()),
            _ => None,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (the default): builds the chain, creates missing keys, serves the
    /// gRPC Token API, the public JWKS endpoint and the admin endpoint until SIGTERM/SIGINT.
    Serve,
    /// Manage key rings.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Sign a file (or stdin) into a compact JWS, printed on stdout.
    Sign(sign::SignArgs),
    /// Verify a compact JWS from a file (or stdin) against the published keys.
    Verify(sign::VerifyArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Probe every configured backend: health, capabilities, a sign/verify round trip.
    Doctor,
    /// Call a running Token Service: generate, refresh, revoke, introspect, jwks.
    Client(client::ClientArgs),
    /// Load a running Token Service over gRPC and print tokens/s, latency and CPU per token.
    Bench(bench::BenchArgs),
    /// Run the reference Crypto Service (proto/crypto_service.proto) over this framework's
    /// backends, configured by `--config` (see config/crypto-service.toml).
    CryptoService,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print it resolved (env overrides applied), secrets
    /// redacted.
    Check,
}

/// A failed command: its message and exit code.
pub struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    /// A failure with exit code 1.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(error: ConfigError) -> Self {
        Self {
            message: format!("configuration error: {error}"),
            code: EXIT_CONFIG,
        }
    }
}

impl From<token_service::service::ServiceError> for Failure {
    fn from(error: token_service::service::ServiceError) -> Self {
        Self::new(error.to_string())
    }
}

impl From<token_service::backends::BackendError> for Failure {
    fn from(error: token_service::backends::BackendError) -> Self {
        Self::new(error.to_string())
    }
}

/// Loads the configuration and builds the service (without touching keys).
async fn build(cli_config: &Option<PathBuf>) -> Result<Service, Failure> {
    let config = Config::load(cli_config.as_deref(), &ProcessEnv)?;
    token_service::telemetry::init(&config.logging);
    Ok(Service::build(config, Metrics::new()).await?)
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(&cli.config).await,
        Command::Keys(command) => keys::run(&cli.config, command).await,
        Command::Sign(args) => sign::sign(&cli.config, args).await,
        Command::Verify(args) => sign::verify(&cli.config, args).await,
        Command::Config(ConfigCommand::Check) => config_check(&cli.config),
        Command::Doctor => doctor::run(&cli.config).await,
        Command::Client(args) => client::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::CryptoService => crypto_service(&cli.config).await,
    };
    token_service::telemetry::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn serve(config: &Option<PathBuf>) -> Result<(), Failure> {
    let service = build(config).await?;
    service.ensure_keys().await?;
    service.serve().await?;
    Ok(())
}

async fn crypto_service(path: &Option<PathBuf>) -> Result<(), Failure> {
    let Some(path) = path else {
        return Err(Failure {
            message: "configuration error: crypto-service needs --config <PATH> (see config/crypto-service.toml)".into(),
            code: EXIT_CONFIG,
        });
    };
    let config = token_service::config::CryptoServerConfig::load(path)?;
    token_service::telemetry::init(&config.logging);
    token_service::crypto_server::serve(config)
        .await
        .map_err(|e| Failure::new(e.to_string()))
}

fn config_check(path: &Option<PathBuf>) -> Result<(), Failure> {
    let config = Config::load(path.as_deref(), &ProcessEnv)?;
    let rendered = config.to_redacted_toml()?;
    say!("# configuration is valid; resolved with environment overrides");
    say!("{}", rendered.trim_end());
    Ok(())
}
