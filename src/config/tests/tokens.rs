//! Token settings: the Redis store, data keys, who may call, and TLS revocation lists.

use super::*;

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
fn revocations_wait_for_no_replica_unless_asked_and_for_at_most_sixteen() {
    let config = load_str(DEFAULT_TOML, &no_env()).unwrap();
    assert_eq!(config.tokens.redis_revocation_replicas, 0);
    let with = |line: &str| DEFAULT_TOML.replace("[tokens]", &format!("[tokens]\n{line}"));
    let waiting = load_str(&with("redis_revocation_replicas = 1"), &no_env()).unwrap();
    assert_eq!(waiting.tokens.redis_revocation_replicas, 1);
    expect_setting(
        load_str(&with("redis_revocation_replicas = 17"), &no_env()),
        "tokens.redis_revocation_replicas",
        "0 to 16",
    );
}

#[test]
fn the_memory_store_holds_a_million_entries_unless_set_and_never_none() {
    let config = load_str(DEFAULT_TOML, &no_env()).unwrap();
    assert_eq!(config.tokens.memory_capacity, 1_000_000);
    let with = |line: &str| DEFAULT_TOML.replace("[tokens]", &format!("[tokens]\n{line}"));
    let small = load_str(&with("memory_capacity = 5000"), &no_env()).unwrap();
    assert_eq!(small.tokens.memory_capacity, 5000);
    expect_setting(
        load_str(&with("memory_capacity = 0"), &no_env()),
        "tokens.memory_capacity",
        "at least 1",
    );
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
