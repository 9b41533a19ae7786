//! `[backends.crypto_service]` (the client backend) and the reference server's own file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use super::tls::ServerTlsConfig;
use super::{AdminConfig, BackendsConfig, ChainConfig, ConfigError, LoggingConfig};
use crate::backends::crypto_service::{ChannelOptions, ClientTls, CryptoServiceOptions};
use crate::resilience::{RateLimitConfig, ResilienceConfig};

/// `[backends.crypto_service]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CryptoServiceConfig {
    /// `http://host:port` or `https://host:port` (env `CRYPTO_SERVICE_ADDRESS`).
    pub address: String,
    /// Limit on establishing a connection.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Deadline of each call, sent to the server.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// HTTP/2 keepalive ping interval.
    #[serde(default = "default_keepalive_interval", with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered.
    #[serde(default = "default_keepalive_timeout", with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// How long key metadata and public keys are cached.
    #[serde(default = "default_metadata_ttl", with = "humantime_serde")]
    pub metadata_ttl: Duration,
    /// Serve sign and verify (env `CRYPTO_SIGNING_ENABLED`).
    #[serde(default = "super::yes")]
    pub signing_enabled: bool,
    /// Serve encrypt and decrypt (env `CRYPTO_ENCRYPTION_ENABLED`).
    #[serde(default = "super::yes")]
    pub encryption_enabled: bool,
    /// Check every signature the service returns against the version's public key before
    /// using it (a signature that does not verify is a security error, never a token).
    #[serde(default = "super::yes")]
    pub verify_signatures: bool,
    /// TLS towards the service; mTLS with `cert_file` and `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsConfig>,
    /// Policies around the backend; the outbound rate limit defaults to 1000 calls/s.
    #[serde(default = "default_resilience")]
    pub resilience: ResilienceConfig,
}

/// `[backends.crypto_service.tls]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// PEM file of the CA that signed the server certificate.
    pub ca_file: PathBuf,
    /// PEM file of the client certificate (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client private key (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Name expected in the server certificate (defaults to the address's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_name: Option<String>,
}

fn default_connect_timeout() -> Duration {
    crate::backends::crypto_service::DEFAULT_CONNECT_TIMEOUT
}

fn default_request_timeout() -> Duration {
    crate::backends::crypto_service::DEFAULT_REQUEST_TIMEOUT
}

fn default_keepalive_interval() -> Duration {
    crate::backends::crypto_service::DEFAULT_KEEPALIVE_INTERVAL
}

fn default_keepalive_timeout() -> Duration {
    crate::backends::crypto_service::DEFAULT_KEEPALIVE_TIMEOUT
}

fn default_metadata_ttl() -> Duration {
    crate::backends::crypto_service::DEFAULT_METADATA_TTL
}

/// The brief's default outbound rate limit to the Crypto Service: 1000 calls/s.
pub fn default_resilience() -> ResilienceConfig {
    ResilienceConfig {
        rate_limit: Some(RateLimitConfig {
            per_second: 1000,
            burst: None,
        }),
        ..ResilienceConfig::default()
    }
}

impl CryptoServiceConfig {
    /// The backend's options.
    pub fn options(&self) -> CryptoServiceOptions {
        CryptoServiceOptions {
            channel: ChannelOptions {
                address: self.address.clone(),
                connect_timeout: self.connect_timeout,
                request_timeout: self.request_timeout,
                keepalive_interval: self.keepalive_interval,
                keepalive_timeout: self.keepalive_timeout,
                tls: self.tls.as_ref().map(|t| ClientTls {
                    ca_file: t.ca_file.clone(),
                    cert_file: t.cert_file.clone(),
                    key_file: t.key_file.clone(),
                    domain_name: t.domain_name.clone(),
                }),
            },
            metadata_ttl: self.metadata_ttl,
            signing_enabled: self.signing_enabled,
            encryption_enabled: self.encryption_enabled,
            verify_signatures: self.verify_signatures,
        }
    }
}

/// The reference Crypto Service's configuration file (`token-service crypto-service`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CryptoServerConfig {
    /// Where and how it serves.
    pub server: CryptoServerListen,
    /// The admin endpoint (health and metrics).
    pub admin: AdminConfig,
    /// Logging.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Whether a call may fall back to the next backend of its chain.
    #[serde(default = "super::yes")]
    pub fallback_enabled: bool,
    /// Backends per operation; the first of the sign (or encrypt) chain holds the keys the
    /// service manages.
    pub chain: ChainConfig,
    /// The backends (software, pkcs11).
    pub backends: BackendsConfig,
    /// Per key namespace, who may use its keys: `[namespaces.token] callers = [...]`.
    /// Namespaces not listed are open to every caller the port admits.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub namespaces: std::collections::BTreeMap<String, NamespacePolicy>,
}

/// `[namespaces.<name>]` of the reference Crypto Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespacePolicy {
    /// The callers (SPIFFE IDs, DNS names or IP addresses of their client certificates)
    /// that may sign, encrypt, decrypt, create and rotate with the namespace's keys.
    /// Needs `server.tls.client_ca_file`.
    pub callers: Vec<String>,
}

/// `[server]` of the reference Crypto Service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CryptoServerListen {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Largest message, signature input or plaintext accepted, in bytes.
    #[serde(default = "default_max_payload")]
    pub max_payload: usize,
    /// How long in-flight calls may finish after SIGTERM.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// TLS; with `client_ca_file`, clients must present a certificate it signed (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsConfig>,
    /// Calls at once (beyond: UNAVAILABLE at once, so the Token Service falls back), HTTP/2
    /// streams per connection, keepalive and connection age, as the Token API's.
    #[serde(default)]
    pub limits: super::limits::ServerLimits,
}

fn default_max_payload() -> usize {
    64 * 1024
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}

impl CryptoServerConfig {
    /// Loads and validates the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let config: Self = super::parse_strict(&text)?;
        if config.backends.crypto_service.is_some() {
            return Err(ConfigError::invalid(
                "backends.crypto_service",
                "the Crypto Service cannot use itself as a backend; configure software or pkcs11",
            ));
        }
        super::validate::validate_chain(&config.chain, &config.backends)?;
        if let Some(tls) = &config.server.tls {
            tls.validate("server.tls")?;
        }
        config.server.limits.validate()?;
        for (namespace, policy) in &config.namespaces {
            let setting = format!("namespaces.{namespace}.callers");
            if policy.callers.is_empty() {
                return Err(ConfigError::invalid(
                    setting,
                    "expected at least one caller",
                ));
            }
            super::tls::validate_callers(setting, &policy.callers, config.server.tls.as_ref())?;
        }
        if config.server.max_payload == 0 || config.server.max_payload > 4 * 1024 * 1024 {
            return Err(ConfigError::invalid(
                "server.max_payload",
                "expected 1 to 4194304 bytes",
            ));
        }
        Ok(config)
    }
}
