//! Semantic validation of a parsed configuration.

use super::{Config, ConfigError};
use crate::backends::types::validate_name;
use crate::resilience::ResilienceConfig;

fn check_name(setting: &str, what: &str, value: &str) -> Result<(), ConfigError> {
    validate_name(what, value).map_err(|e| ConfigError::invalid(setting, e.to_string()))
}

fn check_route(setting: &str, names: &[String], configured: &[&str]) -> Result<(), ConfigError> {
    for (i, name) in names.iter().enumerate() {
        if !configured.contains(&name.as_str()) {
            return Err(ConfigError::invalid(
                format!("{setting}[{i}]"),
                format!(
                    "unknown backend `{}`; expected one of the configured backends: {}",
                    crate::backends::types::truncate_for_message(name),
                    if configured.is_empty() {
                        "(none configured)".to_owned()
                    } else {
                        configured.join(", ")
                    }
                ),
            ));
        }
        if names[..i].contains(name) {
            return Err(ConfigError::invalid(
                format!("{setting}[{i}]"),
                format!("backend `{name}` is listed twice"),
            ));
        }
    }
    Ok(())
}

fn check_resilience(prefix: &str, r: &ResilienceConfig) -> Result<(), ConfigError> {
    let bad = |field: &str, expected: &str| {
        Err(ConfigError::invalid(
            format!("{prefix}.{field}"),
            format!("expected {expected}"),
        ))
    };
    if r.timeout.is_zero() {
        return bad("timeout", "a duration above zero, e.g. \"2s\"");
    }
    if r.retry.max_attempts == 0 {
        return bad("retry.max_attempts", "at least 1 (1 = no retry)");
    }
    if !(r.retry.multiplier >= 1.0 && r.retry.multiplier.is_finite()) {
        return bad("retry.multiplier", "a finite number >= 1.0");
    }
    if !(0.0..1.0).contains(&r.retry.jitter) {
        return bad("retry.jitter", "a fraction in [0, 1), e.g. 0.2");
    }
    if r.retry.max_backoff < r.retry.initial_backoff {
        return bad("retry.max_backoff", "a duration >= retry.initial_backoff");
    }
    if r.breaker.failure_threshold == 0 {
        return bad("breaker.failure_threshold", "at least 1");
    }
    if r.breaker.half_open_max_probes == 0 {
        return bad("breaker.half_open_max_probes", "at least 1");
    }
    if r.breaker.success_threshold == 0 {
        return bad("breaker.success_threshold", "at least 1");
    }
    if r.breaker.failure_window.is_zero() || r.breaker.open_duration.is_zero() {
        return bad(
            "breaker.failure_window / breaker.open_duration",
            "durations above zero",
        );
    }
    if let Some(rl) = &r.rate_limit
        && rl.per_second == 0
    {
        return bad("rate_limit.per_second", "at least 1");
    }
    if r.max_concurrency == Some(0) {
        return bad(
            "max_concurrency",
            "at least 1, or leave it out for no limit",
        );
    }
    Ok(())
}

/// Checks everything the schema alone cannot.
pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    config.dpop.validate()?;
    check_name(
        "crypto.key_namespace",
        "namespace",
        &config.crypto.key_namespace,
    )?;
    check_name("keys.signing.name", "key name", &config.keys.signing.name)?;
    if !config.keys.signing.algorithm.is_signing() {
        return Err(ConfigError::invalid(
            "keys.signing.algorithm",
            "expected a signature algorithm: ES256, ES384, PS256, PS384, PS512 or EdDSA",
        ));
    }
    check_name(
        "keys.encryption.namespace",
        "namespace",
        &config.keys.encryption.namespace,
    )?;
    check_name(
        "keys.encryption.name",
        "key name",
        &config.keys.encryption.name,
    )?;

    let tokens = &config.tokens;
    if tokens.issuer.is_empty() {
        return Err(ConfigError::invalid(
            "tokens.issuer",
            "expected the issuer name or URL tokens carry in `iss`",
        ));
    }
    if tokens.access_ttl.is_zero() || tokens.access_ttl > tokens.max_access_ttl {
        return Err(ConfigError::invalid(
            "tokens.access_ttl",
            "expected a duration above zero and at most tokens.max_access_ttl",
        ));
    }
    if tokens.refresh_ttl < tokens.access_ttl {
        return Err(ConfigError::invalid(
            "tokens.refresh_ttl",
            "expected at least tokens.access_ttl",
        ));
    }
    if tokens.store != super::StoreKind::Memory {
        let urls: Vec<&str> = tokens
            .redis_url
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .collect();
        let well_formed = urls
            .iter()
            .all(|u| u.starts_with("redis://") || u.starts_with("rediss://"));
        if !well_formed || (tokens.store == super::StoreKind::Redis && urls.len() != 1) {
            return Err(ConfigError::invalid(
                "tokens.redis_url",
                "expected redis://host:port (or rediss://) for tokens.store = \"redis\", or comma-separated seed nodes for \"redis_cluster\"; env REDIS_URL",
            ));
        }
    }
    let data_keys = &tokens.data_keys;
    if data_keys.rotate_after < std::time::Duration::from_secs(1)
        || data_keys.rotate_after > std::time::Duration::from_secs(7 * 24 * 3600)
    {
        return Err(ConfigError::invalid(
            "tokens.data_keys.rotate_after",
            "expected a duration from 1s to 7d",
        ));
    }
    if data_keys.cache_for > std::time::Duration::from_secs(30 * 24 * 3600) {
        return Err(ConfigError::invalid(
            "tokens.data_keys.cache_for",
            "expected a duration up to 30d (0s keeps only the data key sealing now)",
        ));
    }
    for (setting, timeout) in [
        ("tokens.redis_connect_timeout", tokens.redis_connect_timeout),
        (
            "tokens.redis_response_timeout",
            tokens.redis_response_timeout,
        ),
    ] {
        // A call waits this long on a Redis that stopped answering: a minute is already
        // far past any gRPC deadline a caller would set.
        if timeout < std::time::Duration::from_millis(10)
            || timeout > std::time::Duration::from_secs(60)
        {
            return Err(ConfigError::invalid(
                setting,
                "expected a duration from 10ms to 60s",
            ));
        }
    }
    if tokens.redis_revocation_replicas > 16 {
        return Err(ConfigError::invalid(
            "tokens.redis_revocation_replicas",
            "expected 0 to 16 replicas",
        ));
    }
    if tokens.memory_capacity == 0 {
        // A store that holds nothing refuses every issuance.
        return Err(ConfigError::invalid(
            "tokens.memory_capacity",
            "expected at least 1",
        ));
    }
    if tokens
        .rate_limit
        .as_ref()
        .is_some_and(|r| r.per_second == 0)
    {
        return Err(ConfigError::invalid(
            "tokens.rate_limit.per_second",
            "expected at least 1",
        ));
    }
    for (id, client) in &tokens.clients {
        if crate::token::claims::Grant::validate(
            &tokens.clients,
            "check",
            id,
            &client.scopes,
            &client.audiences,
        )
        .is_err()
        {
            return Err(ConfigError::invalid(
                format!("tokens.clients.{id}"),
                "expected a client id without whitespace, valid scope tokens, and at least one audience",
            ));
        }
        super::tls::validate_callers(
            format!("tokens.clients.{id}.callers"),
            &client.callers,
            config.server.tls.as_ref(),
        )?;
    }
    for (name, callers) in [
        ("introspect", &tokens.callers.introspect),
        ("revoke", &tokens.callers.revoke),
    ] {
        super::tls::validate_callers(
            format!("tokens.callers.{name}"),
            callers,
            config.server.tls.as_ref(),
        )?;
    }
    config.server.limits.validate()?;
    if let Some(tls) = &config.tokens.redis_tls {
        tls.validate(config.tokens.store, config.tokens.redis_url.as_deref())?;
    }
    if let Some(tls) = &config.server.tls {
        tls.validate("server.tls")?;
    }
    if let Some(tls) = &config.server.public_tls {
        tls.validate("server.public_tls")?;
        if tls.client_ca_file.is_some() || tls.client_crl_file.is_some() {
            return Err(ConfigError::invalid(
                "server.public_tls",
                "the JWKS endpoint is public: no client_ca_file or client_crl_file",
            ));
        }
    }
    if !config.admin.listen.ip().is_loopback() {
        return Err(ConfigError::invalid(
            "admin.listen",
            format!(
                "expected a loopback address (127.0.0.1 or [::1]); `{}` would expose metrics and health beyond this host",
                config.admin.listen
            ),
        ));
    }
    if tracing_subscriber::EnvFilter::try_new(&config.logging.level).is_err() {
        return Err(ConfigError::invalid(
            "logging.level",
            "expected a tracing filter such as \"info\" or \"token_service=debug,info\"",
        ));
    }

    validate_chain(&config.chain, &config.backends)
}

/// Checks the backends and the chain that names them.
pub(super) fn validate_chain(
    chain: &super::ChainConfig,
    backends: &super::BackendsConfig,
) -> Result<(), ConfigError> {
    let configured = backends.configured();
    if configured.is_empty() {
        return Err(ConfigError::invalid(
            "backends",
            "expected at least one backend table, e.g. [backends.software]",
        ));
    }
    if chain.sign.is_empty() {
        return Err(ConfigError::invalid(
            "chain.sign",
            "expected at least one backend; nothing can be signed without one",
        ));
    }
    check_route("chain.sign", &chain.sign, &configured)?;
    check_route("chain.verify", &chain.verify, &configured)?;
    check_route("chain.encrypt", &chain.encrypt, &configured)?;

    if let Some(software) = &backends.software {
        if software.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "backends.software.data_dir",
                "expected a directory path",
            ));
        }
        check_resilience("backends.software.resilience", &software.resilience)?;
    }
    if let Some(pkcs11) = &backends.pkcs11 {
        pkcs11.resolve()?;
        check_resilience("backends.pkcs11.resilience", &pkcs11.resilience)?;
    }
    if let Some(remote) = &backends.crypto_service {
        let options = remote.options();
        crate::backends::crypto_service::channel::check(&options.channel)
            .map_err(|e| ConfigError::invalid("backends.crypto_service", e.to_string()))?;
        if remote.metadata_ttl.is_zero() {
            return Err(ConfigError::invalid(
                "backends.crypto_service.metadata_ttl",
                "expected a duration above zero, e.g. \"30s\"",
            ));
        }
        check_resilience("backends.crypto_service.resilience", &remote.resilience)?;
    }
    if let Some(kms) = &backends.aws_kms {
        kms.validate()?;
        check_resilience("backends.aws_kms.resilience", &kms.resilience)?;
    }
    Ok(())
}
