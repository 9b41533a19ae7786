//! The binary as a user runs it: bad configuration, keys, sign/verify, rotation, doctor.

mod support;

use std::os::unix::process::ExitStatusExt;

use support::process::{Sandbox, run_cli};

const EXIT_CONFIG: i32 = 78;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_config_error(output: &std::process::Output, setting: &str, needle: &str) {
    assert_eq!(
        output.status.code(),
        Some(EXIT_CONFIG),
        "expected exit {EXIT_CONFIG}; stderr: {}",
        stderr(output)
    );
    let err = stderr(output);
    assert!(
        err.contains(&format!("`{setting}`")),
        "stderr does not name `{setting}`: {err}"
    );
    assert!(err.contains(needle), "stderr lacks `{needle}`: {err}");
}

#[test]
fn bad_configuration_stops_the_process_naming_the_setting() {
    let sandbox = Sandbox::new("");
    let good = std::fs::read_to_string(sandbox.config_path()).unwrap();
    let cases: [(&str, String, &str, &str); 5] = [
        (
            "unknown key",
            good.replace("[admin]", "[admin]\nbind = \"x\""),
            "admin.bind",
            "unknown field",
        ),
        (
            "wrong type",
            good.replace("retention = \"24h\"", "retention = 86400"),
            "backends.software.retention",
            "invalid type",
        ),
        (
            "missing required setting",
            good.replace("algorithm = \"ES256\"", ""),
            "keys.signing",
            "missing field `algorithm`",
        ),
        (
            "unknown backend in a chain",
            good.replace("encrypt = [\"software\"]", "encrypt = [\"pkcs11\"]"),
            "chain.encrypt[0]",
            "unknown backend `pkcs11`",
        ),
        (
            "empty chain",
            good.replace("sign = [\"software\"]", "sign = []"),
            "chain.sign",
            "at least one backend",
        ),
    ];
    for (class, text, setting, needle) in cases {
        sandbox.write_config(&text);
        for command in [&["config", "check"][..], &["serve"][..]] {
            let output = sandbox.run(command, None);
            assert_config_error(&output, setting, needle);
            eprintln!("{class} ({command:?}): {}", stderr(&output).trim());
        }
    }
    sandbox.write_config(&good);
    let output = sandbox.run_with_env(&["serve"], None, &[("CRYPTO_FALLBACK_ENABLED", "maybe")]);
    assert_config_error(
        &output,
        "CRYPTO_FALLBACK_ENABLED (overrides crypto.fallback_enabled)",
        "expected true or false",
    );
    let output = sandbox.run_with_env(
        &["config", "check"],
        None,
        &[("ADMIN_LISTEN", "10.0.0.1:80")],
    );
    assert_config_error(&output, "admin.listen", "loopback");

    let missing = run_cli(
        Some(&sandbox.dir.path().join("nope.toml")),
        sandbox.dir.path(),
        &["config", "check"],
        None,
        &[],
    );
    assert_eq!(missing.status.code(), Some(EXIT_CONFIG));
    assert!(stderr(&missing).contains("nope.toml"));
}

#[test]
fn config_check_prints_the_resolved_configuration() {
    let sandbox = Sandbox::new("");
    let output = sandbox.run_with_env(
        &["config", "check"],
        None,
        &[("CRYPTO_KEY_NAMESPACE", "tenant-b")],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(out.contains("key_namespace = \"tenant-b\""), "{out}");
    assert!(out.contains("[backends.software]"));
    assert!(out.contains("failure_threshold = 5"));
}

#[test]
fn sign_verify_rotate_round_trip() {
    let sandbox = Sandbox::new("");
    let payload_path = sandbox.dir.path().join("payload.json");
    std::fs::write(&payload_path, br#"{"hello":"world"}"#).unwrap();

    let signed = sandbox.run(&["sign", payload_path.to_str().unwrap()], None);
    assert!(signed.status.success(), "{}", stderr(&signed));
    let old_token = stdout(&signed).trim().to_owned();
    assert_eq!(old_token.split('.').count(), 3);

    let verified = sandbox.run(&["verify", "--print-payload"], Some(old_token.as_bytes()));
    assert!(verified.status.success(), "{}", stderr(&verified));
    assert_eq!(stdout(&verified), r#"{"hello":"world"}"#);
    assert!(stderr(&verified).contains("signature valid: alg ES256"));

    let rotated = sandbox.run(&["keys", "rotate"], None);
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    let shown = stdout(&sandbox.run(&["keys", "show"], None));
    assert!(
        shown.lines().any(|l| l.contains(" 1 DEPRECATED ")),
        "{shown}"
    );
    assert!(shown.lines().any(|l| l.contains(" 2 ACTIVE ")), "{shown}");

    // The new version signs; the old token still verifies.
    let new_token = stdout(&sandbox.run(&["sign"], Some(b"second")))
        .trim()
        .to_owned();
    let header = |t: &str| -> serde_json::Value {
        use base64::Engine;
        let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t.split('.').next().unwrap())
            .unwrap();
        serde_json::from_slice(&h).unwrap()
    };
    assert_ne!(header(&new_token)["kid"], header(&old_token)["kid"]);
    let new_kid = header(&new_token)["kid"].as_str().unwrap().to_owned();
    assert!(
        shown
            .lines()
            .any(|l| l.contains(" 2 ACTIVE ") && l.ends_with(&new_kid))
    );
    for token in [&old_token, &new_token] {
        let v = sandbox.run(&["verify"], Some(token.as_bytes()));
        assert!(v.status.success(), "{}", stderr(&v));
    }

    // A tampered token fails with a clear message and exit 1.
    let mut tampered = new_token.clone().into_bytes();
    let n = tampered.len() - 5;
    tampered[n] = if tampered[n] == b'A' { b'B' } else { b'A' };
    let v = sandbox.run(&["verify"], Some(&tampered));
    assert_eq!(v.status.code(), Some(1));
    assert!(
        stderr(&v).contains("signature verification failed"),
        "{}",
        stderr(&v)
    );

    // Malformed input and foreign algorithms are refused before any crypto.
    for (input, needle) in [
        ("not-a-jws", "malformed JWS"),
        (
            "eyJhbGciOiJub25lIiwia2lkIjoieCJ9.e30.",
            "unsupported algorithm `none`",
        ),
        (
            "eyJhbGciOiJIUzI1NiIsImtpZCI6IngifQ.e30.AAAA",
            "unsupported algorithm `HS256`",
        ),
        (
            "eyJhbGciOiJFUzI1NiIsImtpZCI6InVua25vd24ifQ.e30.AAAA",
            "no key version with kid `unknown`",
        ),
        (
            "eyJhbGciOiJFUzI1NiIsImtpZCI6IngiLCJjcml0IjpbXX0.e30.AAAA",
            "malformed JWS",
        ),
    ] {
        let v = sandbox.run(&["verify"], Some(input.as_bytes()));
        assert_eq!(v.status.code(), Some(1), "{input}");
        assert!(stderr(&v).contains(needle), "{input}: {}", stderr(&v));
    }
}

#[test]
fn keys_generate_list_and_refuse_duplicates() {
    let sandbox = Sandbox::new("");
    let generated = sandbox.run(
        &["keys", "generate", "--name", "edge", "--algorithm", "EdDSA"],
        None,
    );
    assert!(generated.status.success(), "{}", stderr(&generated));
    assert!(stdout(&generated).contains("EdDSA"));
    let again = sandbox.run(
        &["keys", "generate", "--name", "edge", "--algorithm", "EdDSA"],
        None,
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("already exists"));
    let bad_alg = sandbox.run(
        &["keys", "generate", "--name", "x", "--algorithm", "HS256"],
        None,
    );
    assert!(!bad_alg.status.success());
    let bad_name = sandbox.run(&["keys", "show", "--name", "../x"], None);
    assert_eq!(bad_name.status.code(), Some(1));
    assert!(stderr(&bad_name).contains("[A-Za-z0-9._-]"));
    let list = stdout(&sandbox.run(&["keys", "list"], None));
    assert!(list.contains("software   token/edge"), "{list}");
    let unknown = sandbox.run(&["keys", "show", "--name", "ghost"], None);
    assert!(stderr(&unknown).contains("unknown key token/ghost"));
}

#[test]
fn doctor_prints_its_table() {
    let sandbox = Sandbox::new("");
    // Create the keys first, as `serve` would.
    assert!(sandbox.run(&["sign"], Some(b"x")).status.success());
    let output = sandbox.run(&["doctor"], None);
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    let out = stdout(&output);
    assert!(
        out.contains("BACKEND") && out.contains("SIGN/VERIFY ROUND TRIP"),
        "{out}"
    );
    let row = out
        .lines()
        .find(|l| l.starts_with("software"))
        .expect("software row");
    assert!(
        row.contains(" ok ") && row.contains("closed") && row.contains("ok ES256 v1"),
        "{row}"
    );
    let store = out
        .lines()
        .find(|l| l.starts_with("token store"))
        .expect("token store row");
    assert!(store.contains("ok; memory in this process"), "{store}");

    // With no keys at all, doctor reports the failed round trip and exits non-zero.
    let empty = Sandbox::new("");
    let output = empty.run(&["doctor"], None);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).contains("FAILED sign"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn help_is_available_everywhere() {
    let sandbox = Sandbox::new("");
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["keys", "--help"],
        &["keys", "rotate", "--help"],
        &["sign", "--help"],
        &["verify", "--help"],
        &["config", "check", "--help"],
        &["doctor", "--help"],
    ] {
        let output = sandbox.run(args, None);
        assert!(output.status.success(), "{args:?}");
        assert!(stdout(&output).contains("Usage"), "{args:?}");
        assert!(output.status.signal().is_none());
    }
}

/// Output into a closed pipe (`token-service ... | head -1` after head exits) ends the
/// command quietly with success, not with a panic and a backtrace.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let sandbox = Sandbox::new("");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = std::process::Command::new(support::process::binary())
        .args(["--config"])
        .arg(sandbox.config_path())
        .args(["config", "check"])
        .current_dir(sandbox.dir.path())
        .env_remove("RUST_LOG")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = stderr(&output);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(output.status.code(), Some(0), "{err}");
}
