//! Configuration: one strict TOML schema (unknown keys are errors), environment overrides
//! with the seeds' names, and validation at start-up. Every error names the setting and says
//! what was expected.

pub mod aws_kms;
pub mod crypto_service;
pub mod dpop;
mod env;
pub mod limits;
pub mod pkcs11;
pub mod redis_tls;
pub mod tls;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backends::software::material::RsaBits;
use crate::backends::types::Algorithm;
use crate::resilience::ResilienceConfig;

pub use aws_kms::AwsKmsConfig;
pub use crypto_service::{CryptoServerConfig, CryptoServiceConfig};
pub use env::{EnvSource, ProcessEnv};
pub use pkcs11::{Pkcs11Config, ResolvedPkcs11, VerifyMode};

/// The embedded default configuration (`config/default.toml`).
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// A configuration error: which setting, and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A setting is missing, malformed or invalid.
    #[error("invalid setting `{setting}`: {message}")]
    Invalid {
        /// Dotted path of the setting (`backends.software.data_dir`), or the env variable.
        setting: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(setting: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            setting: setting.into(),
            message: message.into(),
        }
    }

    /// The setting the error is about, if it is about one.
    pub fn setting(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { setting, .. } => Some(setting),
            ConfigError::Read { .. } => None,
        }
    }
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Settings shared by every backend.
    #[serde(default)]
    pub crypto: CryptoConfig,
    /// The gRPC API and the public HTTP endpoint.
    #[serde(default)]
    pub server: ServerConfig,
    /// Token issuance.
    #[serde(default)]
    pub tokens: TokensConfig,
    /// The admin HTTP endpoint.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Logging.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// DPoP proof validation.
    #[serde(default)]
    pub dpop: dpop::DpopConfig,
    /// The keys the service uses.
    pub keys: KeysConfig,
    /// Which backends serve which operation, in priority order.
    pub chain: ChainConfig,
    /// The backends and their settings.
    pub backends: BackendsConfig,
}

/// `[crypto]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CryptoConfig {
    /// Namespace of the signing key (`CRYPTO_KEY_NAMESPACE`).
    pub key_namespace: String,
    /// Whether an unavailable backend passes calls to the next (`CRYPTO_FALLBACK_ENABLED`).
    pub fallback_enabled: bool,
}

impl Default for CryptoConfig {
    fn default() -> Self {
        Self {
            key_namespace: "token".into(),
            fallback_enabled: true,
        }
    }
}

/// `[server]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC listen address (env `HOST`).
    pub host: std::net::IpAddr,
    /// gRPC port (env `PORT`); 0 picks a free port.
    pub port: u16,
    /// The public HTTP endpoint (`/.well-known/jwks.json`).
    pub public_listen: SocketAddr,
    /// `Cache-Control: max-age` of the JWKS.
    #[serde(with = "humantime_serde")]
    pub jwks_max_age: Duration,
    /// After SIGTERM/SIGINT, how long in-flight calls may take to finish before the
    /// remaining connections are dropped.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// TLS on the gRPC API; with `client_ca_file`, callers must present a certificate that
    /// CA signed (mTLS), and clients may name the callers allowed to act for them
    /// (`tokens.clients.<id>.callers`). Without it the API is plaintext and open to whoever
    /// reaches the port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<tls::ServerTlsConfig>,
    /// TLS on the public JWKS endpoint, so resource servers can fetch the keys with their
    /// integrity checked without an ingress in front. No client certificates: it is public.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_tls: Option<tls::ServerTlsConfig>,
    /// How much the Token API takes on at once, and how long its connections live.
    pub limits: limits::ServerLimits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: std::net::IpAddr::from([0, 0, 0, 0]),
            port: 50052,
            public_listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            jwks_max_age: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(10),
            tls: None,
            public_tls: None,
            limits: limits::ServerLimits::default(),
        }
    }
}

/// `[tokens]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// `iss` of every token.
    pub issuer: String,
    /// Default access-token lifetime (env `ACCESS_TOKEN_TTL`, seconds).
    #[serde(with = "humantime_serde")]
    pub access_ttl: Duration,
    /// Longest access-token lifetime a request may ask for.
    #[serde(with = "humantime_serde")]
    pub max_access_ttl: Duration,
    /// Refresh-token family lifetime (env `REFRESH_TOKEN_TTL`, seconds).
    #[serde(with = "humantime_serde")]
    pub refresh_ttl: Duration,
    /// Tolerance on exp/nbf in introspection.
    #[serde(with = "humantime_serde")]
    pub clock_skew: Duration,
    /// Where token state lives: `memory` (one instance), `redis` or `redis_cluster` (a fleet).
    pub store: StoreKind,
    /// Redis URL for `store = "redis"` (env `REDIS_URL`, which also selects Redis). It may
    /// hold a password, so it is shown redacted.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "redact")]
    pub redis_url: Option<String>,
    /// TLS to Redis, for `rediss://` URLs: the CA of the servers' certificates and an
    /// optional client certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_tls: Option<redis_tls::RedisTlsConfig>,
    /// The longest a connection attempt to Redis may take.
    #[serde(with = "humantime_serde")]
    pub redis_connect_timeout: Duration,
    /// The longest a Redis command waits for its answer before the call fails as
    /// UNAVAILABLE: what a call waits on a Redis that stopped answering.
    #[serde(with = "humantime_serde")]
    pub redis_response_timeout: Duration,
    /// Replicas of the Redis master that must acknowledge each revocation (denied jti,
    /// revoked family) before it is reported done; 0 waits for none. Replication is
    /// asynchronous, so without this a revocation just before a failover can be lost.
    pub redis_revocation_replicas: usize,
    /// Capacity of the in-memory store: families, and separately denied jtis and DPoP
    /// proofs seen.
    pub memory_capacity: usize,
    /// Registered clients by id.
    pub clients: std::collections::BTreeMap<String, crate::token::claims::ClientPolicy>,
    /// Per-client limit on GenerateTokens + RefreshTokens: `{ per_second = 100, burst = 200 }`;
    /// none when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<crate::resilience::RateLimitConfig>,
    /// `[tokens.callers]`: the resource servers that may introspect (`introspect`) and the
    /// operators that may revoke any family or jti (`revoke`). Needs mTLS.
    #[serde(skip_serializing_if = "crate::token::OperationCallers::is_empty")]
    pub callers: crate::token::OperationCallers,
    /// `[tokens.data_keys]`: how long a data key seals family grants (`rotate_after`) and
    /// how long an unwrapped one is kept in memory (`cache_for`).
    pub data_keys: crate::token::seal::DataKeySettings,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            issuer: "token-service".into(),
            access_ttl: Duration::from_secs(900),
            max_access_ttl: Duration::from_secs(3600),
            refresh_ttl: Duration::from_secs(604_800),
            clock_skew: Duration::from_secs(60),
            store: StoreKind::Memory,
            redis_url: None,
            redis_tls: None,
            redis_connect_timeout: crate::token::store::redis::DEFAULT_TIMEOUT,
            redis_response_timeout: crate::token::store::redis::DEFAULT_TIMEOUT,
            redis_revocation_replicas: 0,
            memory_capacity: crate::token::store::memory::DEFAULT_CAPACITY,
            clients: std::collections::BTreeMap::new(),
            rate_limit: None,
            callers: crate::token::OperationCallers::default(),
            data_keys: crate::token::seal::DataKeySettings::default(),
        }
    }
}

/// Kinds of token store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// In memory: one instance.
    #[default]
    Memory,
    /// Redis: shared by a fleet.
    Redis,
    /// Redis Cluster: `redis_url` lists seed nodes, comma-separated.
    RedisCluster,
}

impl StoreKind {
    /// The setting's value in configuration (`memory`, `redis`, `redis_cluster`).
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Redis => "redis",
            StoreKind::RedisCluster => "redis_cluster",
        }
    }
}

fn redact<S: serde::Serializer>(value: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => serializer.serialize_str("<redacted>"),
        None => serializer.serialize_none(),
    }
}

/// `[admin]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listen address; must be a loopback address. Port 0 picks a free port.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[logging]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// A tracing filter (`info`, `token_service=debug`...); `RUST_LOG` overrides it.
    pub level: String,
    /// Line format.
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// `[keys]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// The token signing key, in `crypto.key_namespace`.
    pub signing: SigningKeyConfig,
    /// The cache encryption key.
    #[serde(default)]
    pub encryption: EncryptionKeyConfig,
    /// Rotate the signing key on every backend of the sign chain at this interval (off when
    /// absent). Enable it on one instance of a fleet only: each instance would rotate.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub rotation_interval: Option<Duration>,
}

/// `[keys.signing]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyConfig {
    /// Key name.
    pub name: String,
    /// Algorithm of keys created for it.
    pub algorithm: Algorithm,
}

/// `[keys.encryption]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionKeyConfig {
    /// Namespace (default `token-cache`).
    pub namespace: String,
    /// Key name (default `aes`).
    pub name: String,
}

impl Default for EncryptionKeyConfig {
    fn default() -> Self {
        Self {
            namespace: "token-cache".into(),
            name: "aes".into(),
        }
    }
}

/// `[chain]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// Backends that sign, in priority order.
    pub sign: Vec<String>,
    /// Backends that verify, in priority order.
    pub verify: Vec<String>,
    /// Backends that encrypt, in priority order.
    pub encrypt: Vec<String>,
}

/// `[backends]`: one table per backend kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendsConfig {
    /// The software backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub software: Option<SoftwareConfig>,
    /// The PKCS#11 backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs11: Option<Pkcs11Config>,
    /// The Crypto Service client backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crypto_service: Option<CryptoServiceConfig>,
    /// The AWS KMS backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_kms: Option<AwsKmsConfig>,
}

impl BackendsConfig {
    /// Names of the configured backends.
    pub fn configured(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.software.is_some() {
            names.push("software");
        }
        if self.pkcs11.is_some() {
            names.push("pkcs11");
        }
        if self.crypto_service.is_some() {
            names.push(crate::backends::crypto_service::NAME);
        }
        if self.aws_kms.is_some() {
            names.push(crate::backends::aws_kms::NAME);
        }
        names
    }
}

/// `[backends.software]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftwareConfig {
    /// Directory of the key rings (created 0700; refused if group- or world-accessible).
    pub data_dir: PathBuf,
    /// How long a rotated-out version still verifies and decrypts.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// Modulus size of new RSA keys: "2048", "3072" or "4096".
    #[serde(default = "default_rsa_bits")]
    pub rsa_bits: RsaBits,
    /// How often a cached key ring is checked for changes made by another process.
    #[serde(default = "default_refresh_interval", with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Policies around the backend.
    #[serde(default)]
    pub resilience: ResilienceConfig,
}

/// `true`, for switches that are on unless configured off.
pub(crate) fn yes() -> bool {
    true
}

pub(crate) fn default_retention() -> Duration {
    Duration::from_secs(24 * 3600)
}

pub(crate) fn default_refresh_interval() -> Duration {
    Duration::from_secs(1)
}

pub(crate) fn default_rsa_bits() -> RsaBits {
    RsaBits::B2048
}

fn toml_error(error: serde_path_to_error::Error<toml::de::Error>, text: &str) -> ConfigError {
    let path = error.path().to_string();
    located_error(path, error.into_inner(), text)
}

fn located_error(path: String, inner: toml::de::Error, text: &str) -> ConfigError {
    let line = inner
        .span()
        .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
    let message = match line {
        Some(line) => format!("{} (line {line})", inner.message().trim()),
        None => inner.message().trim().to_owned(),
    };
    let setting = if path == "." {
        "(top level)".to_owned()
    } else {
        path
    };
    ConfigError::invalid(setting, message)
}

/// Parses TOML into `T`, naming the setting and line of the first error.
fn parse_strict<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let deserializer =
        toml::de::Deserializer::parse(text).map_err(|e| located_error(".".to_owned(), e, text))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| toml_error(e, text))
}

impl Config {
    /// Parses TOML text (strictly), without env overrides or validation.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        parse_strict(text)
    }

    /// Loads the configuration: the file at `path`, or the embedded default; then the
    /// environment overrides; then validation.
    pub fn load(path: Option<&Path>, env: &dyn EnvSource) -> Result<Self, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?,
            None => DEFAULT_TOML.to_owned(),
        };
        let mut config = Self::parse(&text)?;
        env::apply_overrides(&mut config, env)?;
        validate::validate(&config)?;
        Ok(config)
    }

    /// The resolved configuration as TOML, with secrets redacted.
    pub fn to_redacted_toml(&self) -> Result<String, ConfigError> {
        // No setting holds a secret yet; secret-bearing settings serialize as "<redacted>"
        // through their own type, so this stays correct as backends add them.
        toml::to_string_pretty(self)
            .map_err(|e| ConfigError::invalid("(all)", format!("cannot render: {e}")))
    }
}

#[cfg(test)]
mod tests;
