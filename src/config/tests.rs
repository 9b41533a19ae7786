use std::collections::HashMap;

use super::*;

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

const PKCS11: &str = r#"
[keys.signing]
name = "signing"
algorithm = "ES256"

[chain]
sign = ["pkcs11"]
verify = ["pkcs11"]
encrypt = ["pkcs11"]
"#;

fn pkcs11(table: &str) -> String {
    format!("{PKCS11}\n[backends.pkcs11]\n{table}\n")
}

#[test]
fn pkcs11_settings_resolve_from_fields_or_uri() {
    let config = load_str(
        &pkcs11("module = \"/m.so\"\ntoken_label = \"t\"\npin = { file = \"/run/pin\" }"),
        &no_env(),
    )
    .unwrap();
    let resolved = config.backends.pkcs11.unwrap().resolve().unwrap();
    assert_eq!(resolved.module, std::path::PathBuf::from("/m.so"));
    let config = load_str(
        &pkcs11("uri = \"pkcs11:serial=42?module-path=/m.so&pin-source=env:PIN\""),
        &no_env(),
    )
    .unwrap();
    let resolved = config.backends.pkcs11.unwrap().resolve().unwrap();
    assert_eq!(
        resolved.token,
        crate::backends::pkcs11::token::TokenSelector::Serial("42".into())
    );
    assert_eq!(resolved.pin, crate::secret::SecretSource::Env("PIN".into()));
    // The setup script's exports override the profile.
    let env: HashMap<String, String> = [
        ("PKCS11_MODULE".to_owned(), "/other.so".to_owned()),
        ("PKCS11_PIN_FILE".to_owned(), "/tmp/pin".to_owned()),
    ]
    .into();
    let config = load_str(
        &pkcs11("module = \"/m.so\"\ntoken_label = \"t\"\npin = { env = \"X\" }"),
        &env,
    )
    .unwrap();
    let resolved = config.backends.pkcs11.unwrap().resolve().unwrap();
    assert_eq!(resolved.module, std::path::PathBuf::from("/other.so"));
    assert_eq!(
        resolved.pin,
        crate::secret::SecretSource::File("/tmp/pin".into())
    );
}

#[test]
fn pkcs11_misconfiguration_names_the_setting() {
    expect_setting(
        load_str(
            &pkcs11("token_label = \"t\"\npin = { env = \"P\" }"),
            &no_env(),
        ),
        "backends.pkcs11.module",
        "module",
    );
    expect_setting(
        load_str(
            &pkcs11("module = \"/m.so\"\npin = { env = \"P\" }"),
            &no_env(),
        ),
        "backends.pkcs11.token_label",
        "slot id alone is not accepted",
    );
    expect_setting(
        load_str(
            &pkcs11(
                "module = \"/m.so\"\ntoken_label = \"a\"\ntoken_serial = \"1\"\npin = { env = \"P\" }",
            ),
            &no_env(),
        ),
        "backends.pkcs11.token_label",
        "exactly one",
    );
    expect_setting(
        load_str(
            &pkcs11("module = \"/m.so\"\ntoken_label = \"t\""),
            &no_env(),
        ),
        "backends.pkcs11.pin",
        "file",
    );
    expect_setting(
        load_str(
            &pkcs11("uri = \"pkcs11:token=t?pin-value=1234\"\nmodule = \"/m.so\""),
            &no_env(),
        ),
        "backends.pkcs11.uri",
        "pin-value",
    );
    for uri in [
        "pkcs11:token=t;object=k",
        "pkcs11:token=t;id=%01",
        "pkcs11:token=t;manufacturer=x",
    ] {
        expect_setting(
            load_str(
                &pkcs11(&format!(
                    "uri = \"{uri}\"\nmodule = \"/m.so\"\npin = {{ env = \"P\" }}"
                )),
                &no_env(),
            ),
            "backends.pkcs11.uri",
            "token= or serial=",
        );
    }
    expect_setting(
        load_str(
            &pkcs11("module = \"/m.so\"\ntoken_label = \"t\"\npin = \"1234\""),
            &no_env(),
        ),
        "backends.pkcs11.pin",
        "",
    );
}

#[test]
fn the_airgapped_profile_loads_as_is() {
    let text = include_str!("../../config/hsm-airgapped.toml");
    let config = load_str(text, &no_env()).unwrap();
    assert_eq!(config.backends.configured(), vec!["pkcs11"]);
    assert_eq!(config.chain.sign, vec!["pkcs11".to_owned()]);
    assert!(config.backends.software.is_none());
}

#[test]
fn redis_store_settings() {
    let env: HashMap<String, String> = [(
        "REDIS_URL".to_owned(),
        "redis://:secret@10.0.0.5:6379/0".to_owned(),
    )]
    .into();
    let config = load_str(DEFAULT_TOML, &env).unwrap();
    assert_eq!(config.tokens.store, StoreKind::Redis);
    let shown = config.to_redacted_toml().unwrap();
    assert!(!shown.contains("secret"), "{shown}");
    assert!(shown.contains("redis_url = \"<redacted>\""), "{shown}");
    expect_setting(
        load_str(
            &DEFAULT_TOML.replace("[tokens]", "[tokens]\nstore = \"redis\""),
            &no_env(),
        ),
        "tokens.redis_url",
        "redis://",
    );
    // Timeouts: 2 s by default, settable, and bounded.
    assert_eq!(config.tokens.redis_response_timeout, Duration::from_secs(2));
    assert_eq!(config.tokens.redis_connect_timeout, Duration::from_secs(2));
    let with = |line: &str| DEFAULT_TOML.replace("[tokens]", &format!("[tokens]\n{line}"));
    let tuned = load_str(&with("redis_response_timeout = \"250ms\""), &env).unwrap();
    assert_eq!(
        tuned.tokens.redis_response_timeout,
        Duration::from_millis(250)
    );
    assert_eq!(
        Config::parse(
            &tuned
                .to_redacted_toml()
                .unwrap()
                .replace("<redacted>", "redis://h:1")
        )
        .unwrap()
        .tokens
        .redis_response_timeout,
        Duration::from_millis(250)
    );
    for (line, setting) in [
        (
            "redis_response_timeout = \"0s\"",
            "tokens.redis_response_timeout",
        ),
        (
            "redis_response_timeout = \"5m\"",
            "tokens.redis_response_timeout",
        ),
        (
            "redis_connect_timeout = \"1ms\"",
            "tokens.redis_connect_timeout",
        ),
    ] {
        expect_setting(load_str(&with(line), &env), setting, "from 10ms to 60s");
    }
}

#[test]
fn data_keys_rotate_hourly_are_kept_a_week_and_are_bounded() {
    let config = load_str(DEFAULT_TOML, &no_env()).unwrap();
    assert_eq!(
        config.tokens.data_keys.rotate_after,
        Duration::from_secs(3600)
    );
    assert_eq!(
        config.tokens.data_keys.cache_for,
        Duration::from_secs(7 * 86_400)
    );
    let with = |table: &str| format!("{DEFAULT_TOML}\n[tokens.data_keys]\n{table}\n");
    let tuned = load_str(
        &with("rotate_after = \"10m\"\ncache_for = \"0s\""),
        &no_env(),
    )
    .unwrap();
    assert_eq!(
        tuned.tokens.data_keys.rotate_after,
        Duration::from_secs(600)
    );
    assert_eq!(tuned.tokens.data_keys.cache_for, Duration::ZERO);
    assert_eq!(
        Config::parse(&tuned.to_redacted_toml().unwrap()).unwrap(),
        tuned
    );
    for (table, setting) in [
        ("rotate_after = \"0s\"", "tokens.data_keys.rotate_after"),
        ("rotate_after = \"8d\"", "tokens.data_keys.rotate_after"),
        ("cache_for = \"31d\"", "tokens.data_keys.cache_for"),
    ] {
        expect_setting(
            load_str(&with(table), &no_env()),
            setting,
            "expected a duration",
        );
    }
    let unknown = load_str(&with("rotate = \"1h\""), &no_env());
    assert!(unknown.is_err_and(|e| e.to_string().contains("rotate")));
}

fn with_crypto_service(table: &str) -> String {
    DEFAULT_TOML
        .replace(
            "sign = [\"software\"]\nverify = [\"software\"]\nencrypt = [\"software\"]",
            "sign = [\"crypto_service\", \"software\"]\nverify = [\"crypto_service\", \"software\"]\nencrypt = [\"crypto_service\", \"software\"]",
        )
        + "\n[backends.crypto_service]\n"
        + table
}

#[test]
fn crypto_service_settings_and_defaults() {
    let config = load_str(
        &with_crypto_service("address = \"http://127.0.0.1:50061\"\n"),
        &no_env(),
    )
    .unwrap();
    assert_eq!(config.chain.sign[0], "crypto_service");
    let remote = config.backends.crypto_service.unwrap();
    assert_eq!(remote.metadata_ttl, Duration::from_secs(30));
    // The brief's outbound limit, unless the table says otherwise.
    assert_eq!(remote.resilience.rate_limit.unwrap().per_second, 1000);
    assert!(remote.signing_enabled && remote.encryption_enabled);
}

#[test]
fn crypto_service_misconfiguration_names_the_setting() {
    for (table, needle) in [
        ("address = \"127.0.0.1:50061\"\n", "http://"),
        ("address = \"https://cs:50061\"\n", "ca_file"),
        (
            "address = \"http://cs:50061\"\n[backends.crypto_service.tls]\nca_file = \"/ca.pem\"\n",
            "https://",
        ),
        (
            "address = \"https://cs:50061\"\n[backends.crypto_service.tls]\nca_file = \"/ca.pem\"\ncert_file = \"/c.pem\"\n",
            "key_file",
        ),
    ] {
        expect_setting(
            load_str(&with_crypto_service(table), &no_env()),
            "backends.crypto_service",
            needle,
        );
    }
    expect_setting(
        load_str(
            &with_crypto_service("address = \"http://cs:1\"\nmetadata_ttl = \"0s\"\n"),
            &no_env(),
        ),
        "backends.crypto_service.metadata_ttl",
        "above zero",
    );
}

#[test]
fn crypto_service_env_overrides_and_switches() {
    let text = with_crypto_service("address = \"http://127.0.0.1:1\"\n");
    let env: HashMap<String, String> = [
        ("CRYPTO_SERVICE_ADDRESS", "http://10.1.2.3:50061"),
        ("CRYPTO_SIGNING_ENABLED", "false"),
        ("CRYPTO_ENCRYPTION_ENABLED", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = load_str(&text, &env).unwrap();
    let remote = config.backends.crypto_service.as_ref().unwrap();
    assert_eq!(remote.address, "http://10.1.2.3:50061");
    assert!(!remote.signing_enabled && remote.encryption_enabled);
    // Signing switched off takes it out of the sign and verify chains only.
    let routes = crate::service::routes(&config.chain, &config.backends);
    assert_eq!(routes.sign, vec!["software".to_owned()]);
    assert_eq!(routes.verify, vec!["software".to_owned()]);
    assert_eq!(routes.encrypt[0], "crypto_service");

    let bad: HashMap<String, String> =
        [("CRYPTO_SIGNING_ENABLED".to_owned(), "maybe".to_owned())].into();
    expect_setting(
        load_str(&text, &bad),
        "CRYPTO_SIGNING_ENABLED (overrides backends.crypto_service.signing_enabled)",
        "true",
    );
    // An address for a backend the file does not configure is an error, not ignored.
    let stray: HashMap<String, String> = [(
        "CRYPTO_SERVICE_ADDRESS".to_owned(),
        "http://10.1.2.3:50061".to_owned(),
    )]
    .into();
    expect_setting(
        load_str(DEFAULT_TOML, &stray),
        "CRYPTO_SERVICE_ADDRESS",
        "no [backends.crypto_service]",
    );
}

#[test]
fn the_production_and_crypto_service_profiles_load_as_is() {
    let config = load_str(include_str!("../../config/production.toml"), &no_env()).unwrap();
    assert_eq!(config.chain.sign[0], "crypto_service");
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
    std::fs::write(&path, include_str!("../../config/crypto-service.toml")).unwrap();
    let server = CryptoServerConfig::load(&path).unwrap();
    assert_eq!(server.chain.sign, vec!["software".to_owned()]);
    assert_eq!(server.server.max_payload, 65536);
}

#[test]
fn the_crypto_service_refuses_itself_as_a_backend_and_odd_limits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cs.toml");
    let base = include_str!("../../config/crypto-service.toml");
    let cases = [
        (
            format!("{base}\n[backends.crypto_service]\naddress = \"http://127.0.0.1:1\"\n"),
            "backends.crypto_service",
        ),
        (
            base.replace("max_payload = 65536", "max_payload = 0"),
            "server.max_payload",
        ),
        (
            base.replace("sign = [\"software\"]", "sign = [\"pkcs11\"]"),
            "chain.sign[0]",
        ),
        // Named callers need client certificates, and well-formed names.
        (
            format!("{base}\n[namespaces.token]\ncallers = [\"token-service.internal\"]\n"),
            "namespaces.token.callers",
        ),
    ];
    for (text, setting) in cases {
        std::fs::write(&path, text).unwrap();
        let error = CryptoServerConfig::load(&path).unwrap_err();
        assert_eq!(error.setting(), Some(setting), "{error}");
    }
    let mtls = base.replace(
        "shutdown_grace = \"10s\"\n",
        "shutdown_grace = \"10s\"\n[server.tls]\ncert_file = \"/s.pem\"\nkey_file = \"/s.key\"\nclient_ca_file = \"/ca.pem\"\n",
    );
    for (callers, ok) in [
        ("\"token-service.internal\"", true),
        ("\"spiffe://prod.example/ns/auth/sa/token-service\"", true),
        ("\"*.internal\"", false),
        ("", false),
    ] {
        std::fs::write(
            &path,
            format!("{mtls}\n[namespaces.token]\ncallers = [{callers}]\n"),
        )
        .unwrap();
        let loaded = CryptoServerConfig::load(&path);
        assert_eq!(loaded.is_ok(), ok, "{callers}: {loaded:?}");
    }
}

fn with_aws_kms(table: &str) -> String {
    DEFAULT_TOML.replace(
        "sign = [\"software\"]",
        "sign = [\"aws_kms\", \"software\"]",
    ) + "\n[backends.aws_kms]\n"
        + table
}

#[test]
fn aws_kms_settings_defaults_and_kms_key_id() {
    let config = load_str(&with_aws_kms("region = \"eu-west-1\"\n"), &no_env()).unwrap();
    let kms = config.backends.aws_kms.as_ref().unwrap();
    assert_eq!(kms.metadata_ttl, Duration::from_secs(60));
    assert_eq!(kms.alias_prefix, "token-service");
    assert_eq!(kms.verify, aws_kms::KmsVerifyMode::Local);
    assert!(config.backends.configured().contains(&"aws_kms"));

    let env: HashMap<String, String> = [(
        "KMS_KEY_ID".to_owned(),
        "arn:aws:kms:eu-west-1:111122223333:alias/signing".to_owned(),
    )]
    .into();
    let config = load_str(&with_aws_kms("verify = \"kms\"\n"), &env).unwrap();
    let signing = crate::backends::KeyRef::new("token", "signing").unwrap();
    let options = config
        .backends
        .aws_kms
        .as_ref()
        .unwrap()
        .options(Some(&signing))
        .unwrap();
    assert!(options.kms_verify);
    assert_eq!(options.keys.len(), 1);
    // key_id is the Token Service's signing key: meaningless to the Crypto Service.
    let unmapped = config.backends.aws_kms.as_ref().unwrap().options(None);
    assert_eq!(
        unmapped.unwrap_err().setting(),
        Some("backends.aws_kms.key_id")
    );
    // KMS_KEY_ID without a KMS table is an error, not ignored.
    expect_setting(
        load_str(DEFAULT_TOML, &env),
        "KMS_KEY_ID",
        "no [backends.aws_kms]",
    );
}

#[test]
fn aws_kms_refuses_bad_settings_by_name() {
    let cases = [
        (
            "key_id = \"signing\"\n",
            "backends.aws_kms.key_id (KMS_KEY_ID)",
            "key id",
        ),
        (
            "key_id = \"alias/aws/kms\"\n",
            "backends.aws_kms.key_id (KMS_KEY_ID)",
            "alias",
        ),
        (
            "endpoint_url = \"localhost:4566\"\n",
            "backends.aws_kms.endpoint_url",
            "http",
        ),
        (
            "region = \"US East\"\n",
            "backends.aws_kms.region",
            "us-east-1",
        ),
        (
            "metadata_ttl = \"0s\"\n",
            "backends.aws_kms.metadata_ttl",
            "above zero",
        ),
        (
            "alias_prefix = \"aws/x\"\n",
            "backends.aws_kms.alias_prefix",
            "aws",
        ),
        (
            "[backends.aws_kms.keys]\n\"token-cache/aes\" = \"not-a-key\"\n",
            "backends.aws_kms.keys.\"token-cache/aes\"",
            "key id",
        ),
        (
            "[backends.aws_kms.keys]\n\"aes\" = \"alias/cache\"\n",
            "backends.aws_kms.keys.\"aes\"",
            "namespace/name",
        ),
    ];
    for (table, setting, needle) in cases {
        expect_setting(load_str(&with_aws_kms(table), &no_env()), setting, needle);
    }
}

#[test]
fn named_callers_need_mtls_and_well_formed_names() {
    let with_callers = |names: &str| {
        DEFAULT_TOML.replace(
            "audiences = [\"api\"]",
            &format!("audiences = [\"api\"]\ncallers = [{names}]"),
        )
    };
    let mtls = "\n[server.tls]\ncert_file = \"/s.pem\"\nkey_file = \"/s.key\"\nclient_ca_file = \"/ca.pem\"\n";
    let tls_only = "\n[server.tls]\ncert_file = \"/s.pem\"\nkey_file = \"/s.key\"\n";
    expect_setting(
        load_str(&with_callers("\"gateway.internal\""), &no_env()),
        "tokens.clients.demo.callers",
        "client_ca_file",
    );
    expect_setting(
        load_str(
            &format!("{}{tls_only}", with_callers("\"gateway.internal\"")),
            &no_env(),
        ),
        "tokens.clients.demo.callers",
        "client_ca_file",
    );
    expect_setting(
        load_str(
            &format!("{}{mtls}", with_callers("\"*.internal\"")),
            &no_env(),
        ),
        "tokens.clients.demo.callers",
        "`*.internal` is not a SPIFFE ID, a DNS name",
    );
    let config = load_str(
        &format!(
            "{}{mtls}",
            with_callers("\"gateway.internal\", \"10.0.0.7\"")
        ),
        &no_env(),
    )
    .unwrap();
    assert_eq!(
        config.tokens.clients["demo"].callers,
        vec!["gateway.internal".to_owned(), "10.0.0.7".to_owned()]
    );
    let tls = config.server.tls.clone().unwrap();
    assert_eq!(tls.client_ca_file, Some(PathBuf::from("/ca.pem")));
    // Rendered and parsed back unchanged, TLS table and callers included.
    let text = config.to_redacted_toml().unwrap();
    assert_eq!(Config::parse(&text).unwrap(), config);
}

#[test]
fn resource_servers_and_operators_need_mtls_and_well_formed_names() {
    let mtls = "\n[server.tls]\ncert_file = \"/s.pem\"\nkey_file = \"/s.key\"\nclient_ca_file = \"/ca.pem\"\n";
    let with = |table: &str, tls: &str| format!("{DEFAULT_TOML}\n[tokens.callers]\n{table}\n{tls}");
    expect_setting(
        load_str(&with("introspect = [\"orders.internal\"]", ""), &no_env()),
        "tokens.callers.introspect",
        "client_ca_file",
    );
    expect_setting(
        load_str(&with("revoke = [\"console.internal\"]", ""), &no_env()),
        "tokens.callers.revoke",
        "client_ca_file",
    );
    expect_setting(
        load_str(&with("revoke = [\"https://console\"]", mtls), &no_env()),
        "tokens.callers.revoke",
        "not a SPIFFE ID, a DNS name",
    );
    let unknown = load_str(&with("introspekt = [\"orders.internal\"]", mtls), &no_env());
    assert!(
        unknown
            .as_ref()
            .is_err_and(|e| e.to_string().contains("introspekt")),
        "{unknown:?}"
    );
    let config = load_str(
        &with(
            "introspect = [\"orders.internal\", \"spiffe://prod.example/ns/api/sa/orders\"]\nrevoke = [\"console.internal\"]",
            mtls,
        ),
        &no_env(),
    )
    .unwrap();
    assert_eq!(config.tokens.callers.introspect.len(), 2);
    assert_eq!(config.tokens.callers.revoke, vec!["console.internal"]);
    let text = config.to_redacted_toml().unwrap();
    assert!(text.contains("[tokens.callers]"), "{text}");
    assert_eq!(Config::parse(&text).unwrap(), config);
    // Left out, nobody is named and nothing is rendered.
    let plain = load_str(DEFAULT_TOML, &no_env()).unwrap();
    assert!(plain.tokens.callers.is_empty());
    assert!(!plain.to_redacted_toml().unwrap().contains("tokens.callers"));
}

#[test]
fn tls_revocation_lists_need_client_certificates_and_reloads_a_sane_interval() {
    let tls = |extra: &str| {
        format!(
            "{DEFAULT_TOML}\n[server.tls]\ncert_file = \"/s.pem\"\nkey_file = \"/s.key\"\n{extra}"
        )
    };
    expect_setting(
        load_str(&tls("client_crl_file = \"/crl.pem\"\n"), &no_env()),
        "server.tls.client_crl_file",
        "client_ca_file",
    );
    expect_setting(
        load_str(&tls("reload_interval = \"10ms\"\n"), &no_env()),
        "server.tls.reload_interval",
        "at least 100ms",
    );
    expect_setting(
        load_str(
            &tls("client_ca_file = \"/ca.pem\"\nenforce_crl_next_update = true\n"),
            &no_env(),
        ),
        "server.tls.enforce_crl_next_update",
        "needs server.tls.client_crl_file",
    );
    expect_setting(
        load_str(
            &format!(
                "{DEFAULT_TOML}\n[server.public_tls]\ncert_file = \"/p.pem\"\nkey_file = \"/p.key\"\nreload_interval = \"1ms\"\n"
            ),
            &no_env(),
        ),
        "server.public_tls.reload_interval",
        "at least 100ms",
    );
    let config = load_str(
        &tls("client_ca_file = \"/ca.pem\"\nclient_crl_file = \"/crl.pem\"\n"),
        &no_env(),
    )
    .unwrap();
    let tls = config.server.tls.unwrap();
    assert_eq!(tls.reload_interval, Duration::from_secs(30), "the default");
    assert!(tls.requires_client_certificates());
}
