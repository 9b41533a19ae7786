//! `[dpop]`: DPoP proof validation (RFC 9449).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::backends::types::Algorithm;
use crate::dpop::DpopSettings;
use crate::dpop::nonce::NonceIssuer;
use crate::secret::SecretSource;

/// `[dpop]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpopConfig {
    /// `alg` values accepted in proofs; only asymmetric algorithms can be named.
    pub algorithms: Vec<Algorithm>,
    /// How far a proof's `iat` may be from now, either way.
    #[serde(with = "humantime_serde")]
    pub iat_window: Duration,
    /// Largest proof accepted, in bytes.
    pub max_proof_bytes: usize,
    /// Require a server nonce in every proof (RFC 9449 §8).
    pub require_nonce: bool,
    /// How often nonces change; a nonce is accepted in its step and the next.
    #[serde(with = "humantime_serde")]
    pub nonce_step: Duration,
    /// The secret nonces are MACed with, shared by every instance: `{ file = ... }` or
    /// `{ env = ... }`, at least 32 bytes. Required with `require_nonce`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce_secret: Option<SecretSource>,
    /// The secret before a rotation: nonces made with it are still accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_nonce_secret: Option<SecretSource>,
    /// Proof keys kept parsed.
    pub key_cache_capacity: usize,
}

impl Default for DpopConfig {
    fn default() -> Self {
        let settings = DpopSettings::default();
        Self {
            algorithms: settings.algorithms,
            iat_window: settings.iat_window,
            max_proof_bytes: settings.max_proof_len,
            require_nonce: false,
            nonce_step: Duration::from_secs(300),
            nonce_secret: None,
            previous_nonce_secret: None,
            key_cache_capacity: settings.key_cache_capacity,
        }
    }
}

impl DpopConfig {
    /// Checks the settings, naming the one that is wrong. Secrets are read at start-up.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.algorithms.is_empty() || self.algorithms.iter().any(|a| !a.is_signing()) {
            return Err(ConfigError::invalid(
                "dpop.algorithms",
                "expected a non-empty list of ES256, ES384, PS256, PS384, PS512, EdDSA",
            ));
        }
        if self.iat_window.is_zero() || self.iat_window > Duration::from_secs(3600) {
            return Err(ConfigError::invalid(
                "dpop.iat_window",
                "expected a duration between 1s and 1h",
            ));
        }
        if !(256..=65536).contains(&self.max_proof_bytes) {
            return Err(ConfigError::invalid(
                "dpop.max_proof_bytes",
                "expected 256 to 65536",
            ));
        }
        if self.nonce_step.as_secs() == 0 {
            return Err(ConfigError::invalid(
                "dpop.nonce_step",
                "expected at least 1s",
            ));
        }
        if self.require_nonce && self.nonce_secret.is_none() {
            return Err(ConfigError::invalid(
                "dpop.nonce_secret",
                "required with require_nonce: { file = \"...\" } or { env = \"...\" }, shared by every instance",
            ));
        }
        Ok(())
    }

    /// The validator's settings, reading the nonce secrets now.
    pub fn settings(&self) -> Result<DpopSettings, ConfigError> {
        let nonces = match (&self.require_nonce, &self.nonce_secret) {
            (true, Some(source)) => {
                let current = source
                    .load()
                    .map_err(|e| ConfigError::invalid("dpop.nonce_secret", e.to_string()))?;
                let previous = self
                    .previous_nonce_secret
                    .as_ref()
                    .map(|s| s.load())
                    .transpose()
                    .map_err(|e| {
                        ConfigError::invalid("dpop.previous_nonce_secret", e.to_string())
                    })?;
                Some(
                    NonceIssuer::new(
                        current.expose().as_bytes(),
                        previous.as_ref().map(|p| p.expose().as_bytes()),
                        self.nonce_step.as_secs(),
                    )
                    .map_err(|e| ConfigError::invalid("dpop.nonce_secret", e.to_string()))?,
                )
            }
            // Validation refuses this too; repeated here so that nonces can never be
            // silently off when they are required.
            (true, None) => {
                return Err(ConfigError::invalid(
                    "dpop.nonce_secret",
                    "required with require_nonce",
                ));
            }
            (false, _) => None,
        };
        Ok(DpopSettings {
            algorithms: self.algorithms.clone(),
            iat_window: self.iat_window,
            max_proof_len: self.max_proof_bytes,
            nonces,
            key_cache_capacity: self.key_cache_capacity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> DpopConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_accept_every_asymmetric_algorithm_without_nonces() {
        let config = parse("");
        config.validate().unwrap();
        let settings = config.settings().unwrap();
        assert_eq!(settings.algorithms, Algorithm::SIGNING.to_vec());
        assert_eq!(settings.iat_window, Duration::from_secs(60));
        assert_eq!(settings.max_proof_len, 8192);
        assert!(settings.nonces.is_none());
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        for (text, setting) in [
            ("algorithms = []", "dpop.algorithms"),
            ("algorithms = [\"A256GCM\"]", "dpop.algorithms"),
            ("iat_window = \"0s\"", "dpop.iat_window"),
            ("iat_window = \"2h\"", "dpop.iat_window"),
            ("max_proof_bytes = 10", "dpop.max_proof_bytes"),
            ("nonce_step = \"0s\"", "dpop.nonce_step"),
            ("require_nonce = true", "dpop.nonce_secret"),
        ] {
            let error = parse(text).validate().unwrap_err();
            assert_eq!(error.setting(), Some(setting), "{text}: {error}");
        }
        assert!(toml::from_str::<DpopConfig>("algorithms = [\"none\"]").is_err());
        assert!(toml::from_str::<DpopConfig>("algorithms = [\"HS256\"]").is_err());
        // Settings read without validating first still refuse required nonces without a
        // secret, rather than turning nonces off.
        let error = parse("require_nonce = true").settings().unwrap_err();
        assert_eq!(error.setting(), Some("dpop.nonce_secret"));
    }

    #[test]
    fn nonce_secrets_are_read_and_must_be_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, value: &str| {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join(name);
            std::fs::write(&path, value).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            path
        };
        let long = write("long", &"s".repeat(40));
        let short = write("short", "too short");
        let config = parse(&format!(
            "require_nonce = true\nnonce_secret = {{ file = \"{}\" }}",
            long.display()
        ));
        config.validate().unwrap();
        assert!(config.settings().unwrap().nonces.is_some());
        let config = parse(&format!(
            "require_nonce = true\nnonce_secret = {{ file = \"{}\" }}",
            short.display()
        ));
        let error = config.settings().unwrap_err();
        assert_eq!(error.setting(), Some("dpop.nonce_secret"));
        assert!(
            !error.to_string().contains("too short"),
            "no secret in the error"
        );
    }
}
