//! `[tokens.redis_tls]`: TLS to Redis (`rediss://` URLs). Without it, refresh-token hashes,
//! revocations and DPoP replay records cross the network in clear, and whoever sits on the
//! path can change them: put the hash of a refresh token of their own into a family and
//! refresh it as its subject, or lift a revocation. With `ca_file` only servers holding a
//! certificate that CA signed are trusted; with `cert_file`/`key_file` this instance proves
//! itself to servers that require client certificates (`tls-auth-clients yes`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, StoreKind};

/// `[tokens.redis_tls]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTlsConfig {
    /// PEM CA certificates that sign the Redis servers' certificates (instead of the
    /// system's roots).
    pub ca_file: PathBuf,
    /// PEM client certificate chain, for servers that require one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

impl RedisTlsConfig {
    /// Checks the table against the store it is for: a Redis store whose every URL is
    /// `rediss://` (a plaintext URL beside it would send the same data in clear), and a
    /// client certificate only with its key.
    pub fn validate(&self, store: StoreKind, urls: Option<&str>) -> Result<(), ConfigError> {
        if store == StoreKind::Memory {
            return Err(ConfigError::invalid(
                "tokens.redis_tls",
                "only for tokens.store = \"redis\" or \"redis_cluster\"",
            ));
        }
        if let Some(urls) = urls
            && urls
                .split(',')
                .any(|url| !url.trim().to_ascii_lowercase().starts_with("rediss://"))
        {
            return Err(ConfigError::invalid(
                "tokens.redis_tls",
                "every Redis URL (tokens.redis_url or REDIS_URL) must use rediss:// with TLS",
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(ConfigError::invalid(
                "tokens.redis_tls",
                "cert_file and key_file go together (a client certificate and its key)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, DEFAULT_TOML};

    fn load(tokens: &str, tls: &str) -> Result<Config, ConfigError> {
        let text = DEFAULT_TOML.replace("[tokens]\n", &format!("[tokens]\n{tokens}"));
        let config = Config::parse(&format!("{text}\n[tokens.redis_tls]\n{tls}"))?;
        super::super::validate::validate(&config)?;
        Ok(config)
    }

    #[test]
    fn tls_to_redis_needs_rediss_urls_a_redis_store_and_a_whole_client_identity() {
        let redis = "store = \"redis\"\nredis_url = \"rediss://redis.internal:6380\"\n";
        let ca = "ca_file = \"/tls/ca.pem\"\n";
        let config = load(redis, ca).unwrap();
        assert_eq!(
            config.tokens.redis_tls.unwrap().ca_file,
            PathBuf::from("/tls/ca.pem")
        );
        let cluster =
            "store = \"redis_cluster\"\nredis_url = \"rediss://a:6380, rediss://b:6380\"\n";
        load(
            cluster,
            &format!("{ca}cert_file = \"/c.pem\"\nkey_file = \"/c.key\"\n"),
        )
        .unwrap();

        for (tokens, tls, needle) in [
            ("", ca, "only for tokens.store"),
            (
                "store = \"redis\"\nredis_url = \"redis://redis.internal:6379\"\n",
                ca,
                "rediss://",
            ),
            (
                "store = \"redis_cluster\"\nredis_url = \"rediss://a:6380,redis://b:6379\"\n",
                ca,
                "rediss://",
            ),
            (
                redis,
                &format!("{ca}cert_file = \"/c.pem\"\n"),
                "go together",
            ),
            (
                redis,
                &format!("{ca}key_file = \"/c.key\"\n"),
                "go together",
            ),
        ] {
            let error = load(tokens, tls).unwrap_err();
            assert_eq!(error.setting(), Some("tokens.redis_tls"), "{error}");
            assert!(error.to_string().contains(needle), "{error}");
        }
        let error = load(redis, "cert_file = \"/c.pem\"\n").unwrap_err();
        assert!(error.to_string().contains("ca_file"), "{error}");
    }
}
