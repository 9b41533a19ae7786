//! Environment overrides, with the seeds' variable names.

use super::{Config, ConfigError};

/// Where environment variables come from (the process, or a map in tests).
pub trait EnvSource {
    /// The variable's value, if set.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvSource for std::collections::HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        std::collections::HashMap::get(self, name).cloned()
    }
}

fn parse_bool(variable: &str, setting: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::invalid(
            format!("{variable} (overrides {setting})"),
            format!(
                "expected true or false, found `{}`",
                crate::backends::types::truncate_for_message(value)
            ),
        )),
    }
}

/// Applies every override that is set.
pub(super) fn apply_overrides(config: &mut Config, env: &dyn EnvSource) -> Result<(), ConfigError> {
    if let Some(value) = env.get("CRYPTO_FALLBACK_ENABLED") {
        config.crypto.fallback_enabled =
            parse_bool("CRYPTO_FALLBACK_ENABLED", "crypto.fallback_enabled", &value)?;
    }
    if let Some(value) = env.get("CRYPTO_KEY_NAMESPACE") {
        crate::backends::types::validate_name("namespace", &value).map_err(|e| {
            ConfigError::invalid(
                "CRYPTO_KEY_NAMESPACE (overrides crypto.key_namespace)",
                e.to_string(),
            )
        })?;
        config.crypto.key_namespace = value;
    }
    if let Some(pkcs11) = config.backends.pkcs11.as_mut() {
        if let Some(value) = env.get("PKCS11_MODULE") {
            pkcs11.module = Some(value.into());
        }
        if let Some(value) = env.get("PKCS11_TOKEN_LABEL") {
            pkcs11.token_label = Some(value);
            pkcs11.token_serial = None;
        }
        if let Some(value) = env.get("PKCS11_PIN_FILE") {
            pkcs11.pin = Some(crate::secret::SecretSource::File(value.into()));
        }
    }
    if let Some(value) = env.get("KMS_KEY_ID") {
        match config.backends.aws_kms.as_mut() {
            Some(kms) => kms.key_id = Some(value.trim().to_owned()),
            None => {
                return Err(ConfigError::invalid(
                    "KMS_KEY_ID",
                    "set, but the configuration has no [backends.aws_kms] table to apply it to",
                ));
            }
        }
    }
    if let Some(value) = env.get("CRYPTO_SERVICE_ADDRESS") {
        match config.backends.crypto_service.as_mut() {
            Some(remote) => remote.address = value.trim().to_owned(),
            None => {
                return Err(ConfigError::invalid(
                    "CRYPTO_SERVICE_ADDRESS",
                    "set, but the configuration has no [backends.crypto_service] table to apply it to",
                ));
            }
        }
    }
    if let Some(remote) = config.backends.crypto_service.as_mut() {
        if let Some(value) = env.get("CRYPTO_SIGNING_ENABLED") {
            remote.signing_enabled = parse_bool(
                "CRYPTO_SIGNING_ENABLED",
                "backends.crypto_service.signing_enabled",
                &value,
            )?;
        }
        if let Some(value) = env.get("CRYPTO_ENCRYPTION_ENABLED") {
            remote.encryption_enabled = parse_bool(
                "CRYPTO_ENCRYPTION_ENABLED",
                "backends.crypto_service.encryption_enabled",
                &value,
            )?;
        }
    }
    if let Some(value) = env.get("REDIS_URL") {
        config.tokens.redis_url = Some(value);
        if config.tokens.store == super::StoreKind::Memory {
            config.tokens.store = super::StoreKind::Redis;
        }
    }
    if let Some(value) = env.get("HOST") {
        config.server.host = value.trim().parse().map_err(|_| {
            ConfigError::invalid(
                "HOST (overrides server.host)",
                format!(
                    "expected an IP address such as 0.0.0.0, found `{}`",
                    crate::backends::types::truncate_for_message(&value)
                ),
            )
        })?;
    }
    if let Some(value) = env.get("PORT") {
        config.server.port = value.trim().parse().map_err(|_| {
            ConfigError::invalid(
                "PORT (overrides server.port)",
                format!(
                    "expected a port number, found `{}`",
                    crate::backends::types::truncate_for_message(&value)
                ),
            )
        })?;
    }
    for (variable, setting, target) in [
        (
            "ACCESS_TOKEN_TTL",
            "tokens.access_ttl",
            &mut config.tokens.access_ttl,
        ),
        (
            "REFRESH_TOKEN_TTL",
            "tokens.refresh_ttl",
            &mut config.tokens.refresh_ttl,
        ),
    ] {
        if let Some(value) = env.get(variable) {
            let seconds: u64 = value.trim().parse().map_err(|_| {
                ConfigError::invalid(
                    format!("{variable} (overrides {setting})"),
                    format!(
                        "expected a number of seconds, found `{}`",
                        crate::backends::types::truncate_for_message(&value)
                    ),
                )
            })?;
            *target = std::time::Duration::from_secs(seconds);
        }
    }
    if let Some(value) = env.get("PUBLIC_LISTEN") {
        config.server.public_listen = value.trim().parse().map_err(|_| {
            ConfigError::invalid(
                "PUBLIC_LISTEN (overrides server.public_listen)",
                format!(
                    "expected an address such as 0.0.0.0:8080, found `{}`",
                    crate::backends::types::truncate_for_message(&value)
                ),
            )
        })?;
    }
    if let Some(value) = env.get("ADMIN_LISTEN") {
        config.admin.listen = value.trim().parse().map_err(|_| {
            ConfigError::invalid(
                "ADMIN_LISTEN (overrides admin.listen)",
                format!(
                    "expected an address such as 127.0.0.1:9464, found `{}`",
                    crate::backends::types::truncate_for_message(&value)
                ),
            )
        })?;
    }
    Ok(())
}
