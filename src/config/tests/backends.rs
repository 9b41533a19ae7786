//! Backend settings: PKCS#11, the Crypto Service (as a backend and as a server), AWS KMS.

use super::*;

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
    let table = config.backends.pkcs11.unwrap();
    assert!(table.verify_signatures, "signatures are checked by default");
    let resolved = table.resolve().unwrap();
    assert_eq!(resolved.module, std::path::PathBuf::from("/m.so"));
    let unchecked = load_str(
        &pkcs11("module = \"/m.so\"\ntoken_label = \"t\"\npin = { env = \"P\" }\nverify_signatures = false"),
        &no_env(),
    )
    .unwrap();
    assert!(!unchecked.backends.pkcs11.unwrap().verify_signatures);
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
    assert_eq!(
        remote.resilience.rate_limit.as_ref().unwrap().per_second,
        1000
    );
    assert!(remote.signing_enabled && remote.encryption_enabled);
    // Returned signatures are checked unless the table says otherwise.
    assert!(remote.verify_signatures && remote.options().verify_signatures);
    let unchecked = load_str(
        &with_crypto_service("address = \"http://127.0.0.1:50061\"\nverify_signatures = false\n"),
        &no_env(),
    )
    .unwrap();
    let remote = unchecked.backends.crypto_service.clone().unwrap();
    assert!(!remote.options().verify_signatures);
    assert_eq!(
        Config::parse(&unchecked.to_redacted_toml().unwrap()).unwrap(),
        unchecked
    );
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
fn the_crypto_service_refuses_itself_as_a_backend_and_odd_limits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cs.toml");
    let base = include_str!("../../../config/crypto-service.toml");
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
