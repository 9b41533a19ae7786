//! `scripts/softhsm-setup.sh` from nothing, then the service on `config/hsm-airgapped.toml`
//! against the token it made: sign and verify through the CLI, readiness through the admin
//! endpoint.

mod support;

use std::path::Path;
use std::process::Command;

use support::process::{ServiceProcess, http_get, require_tool, run_cli};

fn exports(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn setup_script_then_airgapped_profile_signs_verifies_and_serves() {
    if require_tool("softhsm2-util").is_none() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = tempfile::tempdir().unwrap();
    let hsm = work.path().join("hsm");
    let setup = |dir: &Path| {
        Command::new("bash")
            .arg(root.join("scripts/softhsm-setup.sh"))
            .arg(dir)
            .output()
            .unwrap()
    };
    let first = setup(&hsm);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let env = exports(&String::from_utf8_lossy(&first.stdout));
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "SOFTHSM2_CONF",
            "PKCS11_MODULE",
            "PKCS11_TOKEN_LABEL",
            "PKCS11_PIN_FILE"
        ]
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(hsm.join("user-pin"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
    // Safe to run twice: same token, same exports.
    let second = setup(&hsm);
    assert!(second.status.success());
    assert_eq!(exports(&String::from_utf8_lossy(&second.stdout)), env);
    assert!(String::from_utf8_lossy(&second.stderr).contains("already exists"));

    let profile = root.join("config/hsm-airgapped.toml");
    let text = std::fs::read_to_string(&profile).unwrap();
    assert!(
        !text.contains("http://") && !text.contains("https://"),
        "the air-gapped profile names a network address"
    );
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    let signed = run_cli(
        Some(&profile),
        work.path(),
        &["sign"],
        Some(b"{\"hsm\":true}"),
        &env_refs,
    );
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let stderr = String::from_utf8_lossy(&signed.stderr);
    assert!(
        !stderr.contains("\"level\":\"ERROR\""),
        "spurious errors logged: {stderr}"
    );
    let token = String::from_utf8(signed.stdout).unwrap();
    let verified = run_cli(
        Some(&profile),
        work.path(),
        &["verify", "--print-payload"],
        Some(token.as_bytes()),
        &env_refs,
    );
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&verified.stdout), "{\"hsm\":true}");

    let mut env_with_port = env_refs.clone();
    env_with_port.extend(support::process::FREE_PORTS);
    let service = ServiceProcess::start_with_env(Some(&profile), work.path(), &env_with_port);
    let (status, body) = http_get(service.admin, "/admin/v1/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("pkcs11 can sign"));
    let (_, metrics) = http_get(service.admin, "/metrics");
    assert!(metrics.contains("token_service_breaker_state{backend=\"pkcs11\"} 0"));

    // Another process rotates while the service runs; a third sees the new ring on the
    // token, the old token still verifies, and the service stays ready.
    let rotated = run_cli(
        Some(&profile),
        work.path(),
        &["keys", "rotate"],
        None,
        &env_refs,
    );
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let shown = run_cli(
        Some(&profile),
        work.path(),
        &["keys", "show"],
        None,
        &env_refs,
    );
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.lines().any(|l| l.contains(" 1 DEPRECATED ")),
        "{shown}"
    );
    assert!(shown.lines().any(|l| l.contains(" 2 ACTIVE ")), "{shown}");
    let old = run_cli(
        Some(&profile),
        work.path(),
        &["verify"],
        Some(token.as_bytes()),
        &env_refs,
    );
    assert!(
        old.status.success(),
        "{}",
        String::from_utf8_lossy(&old.stderr)
    );
    assert_eq!(http_get(service.admin, "/admin/v1/readyz").0, 200);
    assert_eq!(service.terminate().code(), Some(0));
}
