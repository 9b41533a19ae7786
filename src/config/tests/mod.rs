//! Configuration loading and validation: the embedded default and the shipped profiles load,
//! every class of bad setting is refused by name, environment overrides apply. Backend and
//! token settings have modules of their own.

use std::collections::HashMap;

use super::*;

mod backends;
mod tokens;

fn no_env() -> HashMap<String, String> {
    HashMap::new()
}

fn load_str(text: &str, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
    let mut config = Config::parse(text)?;
    env::apply_overrides(&mut config, env)?;
    validate::validate(&config)?;
    Ok(config)
}

#[test]
fn embedded_default_is_valid() {
    let config = Config::load(None, &no_env()).unwrap();
    assert_eq!(config.chain.sign, vec!["software".to_owned()]);
    assert_eq!(config.keys.signing.algorithm, Algorithm::Es256);
    assert!(config.crypto.fallback_enabled);
    let software = config.backends.software.unwrap();
    assert_eq!(software.retention, Duration::from_secs(86400));
    assert_eq!(software.resilience.breaker.failure_threshold, 5);
}

#[test]
fn rendered_config_parses_back_to_the_same() {
    let config = Config::load(None, &no_env()).unwrap();
    let text = config.to_redacted_toml().unwrap();
    assert_eq!(Config::parse(&text).unwrap(), config);
}

fn expect_setting(result: Result<Config, ConfigError>, setting: &str, needle: &str) {
    let error = result.expect_err("config should be refused");
    let shown = error.to_string();
    assert_eq!(error.setting(), Some(setting), "{shown}");
    assert!(shown.contains(needle), "{shown} lacks {needle}");
}

#[test]
fn each_class_of_bad_config_names_the_setting() {
    let default = DEFAULT_TOML;
    expect_setting(
        load_str(&default.replace("[admin]", "[admin]\nport = 1"), &no_env()),
        "admin.port",
        "unknown field",
    );
    expect_setting(
        load_str(
            &default.replace("fallback_enabled = true", "fallback_enabled = \"yes\""),
            &no_env(),
        ),
        "crypto.fallback_enabled",
        "bool",
    );
    expect_setting(
        load_str(&default.replace("data_dir = \"data/keys\"", ""), &no_env()),
        "backends.software",
        "data_dir",
    );
    expect_setting(
        load_str(
            &default.replace("sign = [\"software\"]", "sign = [\"software\", \"hsm\"]"),
            &no_env(),
        ),
        "chain.sign[1]",
        "unknown backend `hsm`",
    );
    expect_setting(
        load_str(
            &default.replace("sign = [\"software\"]", "sign = []"),
            &no_env(),
        ),
        "chain.sign",
        "at least one backend",
    );
    let env: HashMap<String, String> =
        [("CRYPTO_FALLBACK_ENABLED".to_owned(), "maybe".to_owned())].into();
    expect_setting(
        load_str(default, &env),
        "CRYPTO_FALLBACK_ENABLED (overrides crypto.fallback_enabled)",
        "expected true or false",
    );
}

#[test]
fn semantic_checks_name_the_setting() {
    let default = DEFAULT_TOML;
    expect_setting(
        load_str(
            &default.replace("127.0.0.1:9464", "0.0.0.0:9464"),
            &no_env(),
        ),
        "admin.listen",
        "loopback",
    );
    expect_setting(
        load_str(
            &default.replace("algorithm = \"ES256\"", "algorithm = \"A256GCM\""),
            &no_env(),
        ),
        "keys.signing.algorithm",
        "signature algorithm",
    );
    expect_setting(
        load_str(
            &default.replace("algorithm = \"ES256\"", "algorithm = \"HS256\""),
            &no_env(),
        ),
        "keys.signing.algorithm",
        "HS256",
    );
    expect_setting(
        load_str(
            &format!("{default}\n[backends.software.resilience]\nretry = {{ max_attempts = 0 }}\n"),
            &no_env(),
        ),
        "backends.software.resilience.retry.max_attempts",
        "at least 1",
    );
    expect_setting(
        load_str(
            &default.replace("name = \"signing\"", "name = \"../etc\""),
            &no_env(),
        ),
        "keys.signing.name",
        "[A-Za-z0-9._-]",
    );
}

#[test]
fn env_overrides_apply() {
    let env: HashMap<String, String> = [
        ("CRYPTO_FALLBACK_ENABLED".to_owned(), "false".to_owned()),
        ("CRYPTO_KEY_NAMESPACE".to_owned(), "tenant-a".to_owned()),
    ]
    .into();
    let config = load_str(DEFAULT_TOML, &env).unwrap();
    assert!(!config.crypto.fallback_enabled);
    assert_eq!(config.crypto.key_namespace, "tenant-a");
    let bad: HashMap<String, String> =
        [("CRYPTO_KEY_NAMESPACE".to_owned(), "a/b".to_owned())].into();
    assert!(load_str(DEFAULT_TOML, &bad).is_err());
}

#[test]
fn the_airgapped_profile_loads_as_is() {
    let text = include_str!("../../../config/hsm-airgapped.toml");
    let config = load_str(text, &no_env()).unwrap();
    assert_eq!(config.backends.configured(), vec!["pkcs11"]);
    assert_eq!(config.chain.sign, vec!["pkcs11".to_owned()]);
    assert!(config.backends.software.is_none());
}

#[test]
fn the_production_and_crypto_service_profiles_load_as_is() {
    let config = load_str(include_str!("../../../config/production.toml"), &no_env()).unwrap();
    assert_eq!(config.chain.sign[0], "crypto_service");
    assert_eq!(
        config.tokens.redis_revocation_replicas, 1,
        "production revocations survive a failover"
    );
    assert_eq!(
        config.chain.encrypt,
        vec!["crypto_service".to_owned(), "software".to_owned()]
    );
    assert_eq!(
        config.chain.sign,
        vec![
            "crypto_service".to_owned(),
            "aws_kms".to_owned(),
            "software".to_owned()
        ]
    );
    let kms = config.backends.aws_kms.as_ref().unwrap();
    let signing = crate::backends::KeyRef::new("token", "signing").unwrap();
    let options = kms.options(Some(&signing)).unwrap();
    assert_eq!(
        options.keys,
        vec![(signing, "alias/token-service-signing".to_owned())]
    );
    let remote = config.backends.crypto_service.unwrap();
    assert!(
        remote.tls.unwrap().cert_file.is_some(),
        "production uses mTLS"
    );
    assert!(
        config
            .server
            .tls
            .as_ref()
            .is_some_and(|tls| tls.client_ca_file.is_some()),
        "production's Token API requires client certificates"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crypto-service.toml");
    std::fs::write(&path, include_str!("../../../config/crypto-service.toml")).unwrap();
    let server = CryptoServerConfig::load(&path).unwrap();
    assert_eq!(server.chain.sign, vec!["software".to_owned()]);
    assert_eq!(server.server.max_payload, 65536);
}
