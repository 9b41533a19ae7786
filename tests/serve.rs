//! `serve` as a new user runs it, and the admin endpoint over real sockets.

mod support;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;

use support::process::{Sandbox, ServiceProcess, http_get};
use token_service::backends::software::SoftwareBackend;
use token_service::backends::{KeyState, Operation};
use token_service::config::Config;
use token_service::metrics::{Metrics, Outcome};
use token_service::service::Service;

/// A fresh directory, no configuration file: the embedded default creates its keys, gets
/// ready, exposes the breaker gauge, and exits 0 on SIGTERM.
#[test]
fn embedded_default_starts_creates_keys_and_is_ready() {
    let cwd = tempfile::tempdir().unwrap();
    // Only the admin port is moved off 9464 (ADMIN_LISTEN), so the test cannot collide
    // with anything already listening there.
    start_and_stop_without_config(cwd.path(), |service| {
        let data = cwd.path().join("data/keys");
        let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let key_file = data.join("token/signing/v1.key");
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(data.join("token-cache/aes/v1.key").is_file());

        assert_eq!(http_get(service.admin, "/admin/v1/livez").0, 200);
        let (status, body) = http_get(service.admin, "/admin/v1/readyz");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("software can sign"));
        let (status, body) = http_get(service.admin, "/admin/v1/healthz");
        assert_eq!(status, 200);
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["backends"][0]["name"], "software");
        assert_eq!(health["backends"][0]["breaker"], "closed");
        let (status, metrics) = http_get(service.admin, "/metrics");
        assert_eq!(status, 200);
        assert!(
            metrics.contains("token_service_breaker_state{backend=\"software\"} 0"),
            "{metrics}"
        );
        assert!(metrics.contains("token_service_backend_requests_total{backend=\"software\",operation=\"generate_key\",outcome=\"ok\"} 2"));
        // The embedded default's store shows how full it is.
        assert!(
            metrics.contains("token_service_memory_store_entries{kind=\"families\"} 0"),
            "{metrics}"
        );
        assert!(metrics.contains("token_service_memory_store_capacity 1000000"));
        assert_eq!(http_get(service.admin, "/nope").0, 404);
    });
}

fn start_and_stop_without_config(cwd: &std::path::Path, check: impl FnOnce(&ServiceProcess)) {
    let service = start_without_config(cwd);
    check(&service);
    let log = service.settled_log();
    let status = service.terminate();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    // The key material never reaches the log.
    let key = std::fs::read(cwd.join("data/keys/token-cache/aes/v1.key")).unwrap();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!log.contains(&hex));
}

fn start_without_config(cwd: &std::path::Path) -> ServiceProcess {
    ServiceProcess::start_with_env(None, cwd, &support::process::FREE_PORTS)
}

#[test]
fn restart_reuses_existing_keys() {
    let sandbox = Sandbox::new("");
    let first = ServiceProcess::start(Some(&sandbox.config_path()), sandbox.dir.path());
    assert_eq!(http_get(first.admin, "/admin/v1/readyz").0, 200);
    assert_eq!(first.terminate().code(), Some(0));
    let shown_before = String::from_utf8(sandbox.run(&["keys", "show"], None).stdout).unwrap();
    let second = ServiceProcess::start(Some(&sandbox.config_path()), sandbox.dir.path());
    assert_eq!(http_get(second.admin, "/admin/v1/readyz").0, 200);
    drop(second);
    let shown_after = String::from_utf8(sandbox.run(&["keys", "show"], None).stdout).unwrap();
    assert_eq!(shown_before, shown_after);
    assert_eq!(shown_after.lines().count(), 2, "{shown_after}");
}

/// Readiness is false when the sign chain cannot sign (here: an operator disabled the only
/// version from another process), and true again once it can.
#[tokio::test]
async fn readiness_follows_the_ability_to_sign() {
    let sandbox = Sandbox::new("");
    let text = std::fs::read_to_string(sandbox.config_path())
        .unwrap()
        .replace("refresh_interval = \"1s\"", "refresh_interval = \"0s\"");
    sandbox.write_config(&text);
    let config = Config::load(Some(&sandbox.config_path()), &HashMap::new()).unwrap();
    let service = Service::build(config, Metrics::new()).await.unwrap();
    service.ensure_keys().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(token_service::admin::run(
        listener,
        service.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    let get = move |path: &'static str| tokio::task::spawn_blocking(move || http_get(addr, path));

    assert_eq!(get("/admin/v1/readyz").await.unwrap().0, 200);
    // The operator's handle: a separate backend on the same data directory.
    let operator = SoftwareBackend::open(&sandbox.data_dir(), Default::default()).unwrap();
    operator
        .set_version_state(&service.signing_key, 1, KeyState::Disabled)
        .await
        .unwrap();
    let (status, body) = get("/admin/v1/readyz").await.unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("no ACTIVE version"), "{body}");
    let ctx = token_service::context::CallContext::new();
    assert!(
        service
            .chain
            .sign(&ctx, &service.signing_key, b"m")
            .await
            .is_err()
    );

    operator
        .set_version_state(&service.signing_key, 1, KeyState::Active)
        .await
        .unwrap();
    assert_eq!(get("/admin/v1/readyz").await.unwrap().0, 200);
    assert!(
        service
            .chain
            .sign(&ctx, &service.signing_key, b"m")
            .await
            .is_ok()
    );
    assert!(
        service
            .chain
            .metrics()
            .request_count("software", Operation::KeyMetadata, Outcome::Ok)
            >= 3
    );

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// With `keys.rotation_interval` set, the running service rotates its signing key by
/// itself; the new version signs and the old one stays published.
#[test]
fn scheduled_rotation_rotates_the_signing_key() {
    let sandbox = Sandbox::new("");
    let text = std::fs::read_to_string(sandbox.config_path())
        .unwrap()
        .replace(
            "[keys.signing]",
            "[keys]\nrotation_interval = \"1s\"\n\n[keys.signing]",
        );
    sandbox.write_config(&text);
    let service = ServiceProcess::start(Some(&sandbox.config_path()), sandbox.dir.path());
    let mut versions = 0;
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let shown = String::from_utf8(sandbox.run(&["keys", "show"], None).stdout).unwrap();
        versions = shown
            .lines()
            .filter(|l| l.contains("token/signing"))
            .count();
        if versions >= 2 {
            assert!(
                shown.lines().any(|l| l.contains(" 1 DEPRECATED ")),
                "{shown}"
            );
            break;
        }
    }
    assert!(versions >= 2, "no scheduled rotation happened");
    let (_, jwks) = http_get(service.public, "/.well-known/jwks.json");
    let jwks: serde_json::Value = serde_json::from_str(&jwks).unwrap();
    assert!(jwks["keys"].as_array().unwrap().len() >= 2, "{jwks}");
    service.wait_for_log("scheduled_rotation");
    assert_eq!(service.terminate().code(), Some(0));
}

/// Data keys leave the memory of an instance that makes no more calls: nothing looks a key
/// up or makes a new one, so only the service's own sweep can drop it once `cache_for` and
/// `rotate_after` (here 3 s each, swept every second) are past.
#[test]
fn an_idle_instance_drops_its_data_keys_on_time() {
    let sandbox = Sandbox::new("");
    let text = std::fs::read_to_string(sandbox.config_path())
        .unwrap()
        .replace(
            "[tokens.clients.demo]",
            "[tokens.data_keys]\nrotate_after = \"3s\"\ncache_for = \"3s\"\n\n[tokens.clients.demo]",
        );
    sandbox.write_config(&text);
    let service = sandbox.serve();
    sandbox.generate_token(&service);
    let held = || {
        let (_, metrics) = http_get(service.admin, "/metrics");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("token_service_data_keys_held "))
            .map(|v| v.trim().to_owned())
    };
    assert_eq!(held().as_deref(), Some("1"), "the grant's data key is held");
    let mut dropped = false;
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if held().as_deref() == Some("0") {
            dropped = true;
            break;
        }
    }
    assert!(
        dropped,
        "the data key was still held 10 s after it was made"
    );
    assert_eq!(service.terminate().code(), Some(0));
}
