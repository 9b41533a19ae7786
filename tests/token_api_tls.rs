//! The Token API behind TLS and mTLS, against the real binary on a real socket: only
//! callers holding a certificate from the configured CA get in; the CLI speaks TLS; bad TLS
//! files stop `serve`; an unprotected API is announced in the log. Which admitted caller may
//! do what is in `token_api_callers.rs`.

mod support;

use std::time::Duration;

use support::api_tls::{Credentials, client, gateways, generate};
use support::pki::Pki;
use support::process::{Sandbox, ServiceProcess, run_cli_within};
use token_service::api::proto::token_service_client::TokenServiceClient;
use token_service::api::proto::{GetJwksRequest, TokenResponse};
use tonic::Code;

/// `[server.tls]` with mTLS and `pki`'s `crl.pem`, its `nextUpdate` enforced or not.
fn crl_table(pki: &Pki, enforce: bool) -> String {
    format!(
        "{}client_crl_file = \"{}\"\nenforce_crl_next_update = {enforce}\n",
        pki.server_tls_table(true),
        pki.path("crl.pem").display()
    )
}

/// A call refused by the TLS layer, not by the service (which answers with a status).
fn refused_by_transport(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Cancelled | Code::Unknown
    ) && status.metadata().is_empty()
}

/// Asserts that `admitted` gets tokens and `refused` is turned away by the TLS layer.
async fn admits_only(port: u16, admitted: Credentials<'_>, refused: Credentials<'_>) {
    try_generate(port, admitted, "demo").await.unwrap();
    let status = try_generate(port, refused, "demo").await.unwrap_err();
    assert!(refused_by_transport(&status), "{status}");
}

async fn try_generate(
    port: u16,
    credentials: Credentials<'_>,
    client_id: &str,
) -> Result<TokenResponse, tonic::Status> {
    client(port, credentials)
        .await?
        .generate_tokens(generate(client_id))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mtls_only_certificates_of_the_configured_ca_get_in() {
    let pki = Pki::new();
    let stranger = Pki::new(); // another CA, with a client certificate of its own
    let sandbox = Sandbox::new(&pki.server_tls_table(true));
    let service = sandbox.serve();
    let port = service.grpc.port();
    let log = service.wait_for_log("gRPC API listening on https://");
    assert!(!log.contains("anyone who reaches this port"), "{log}");

    let mut admitted = client(port, Credentials::of(&pki, Some("client")))
        .await
        .unwrap();
    let issued = admitted
        .generate_tokens(generate("demo"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issued.access_token.split('.').count(), 3);
    let jwks = admitted
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(jwks.jwks_json.contains(&issued.kid));

    let without_certificate = try_generate(port, Credentials::of(&pki, None), "demo")
        .await
        .unwrap_err();
    // TLS 1.3: the client finishes its side of the handshake before the server checks the
    // certificate, so the refusal arrives as the connection closing under the first call.
    assert!(
        refused_by_transport(&without_certificate),
        "{without_certificate}"
    );

    // The stranger trusts our server but shows a certificate of another CA.
    let refused = try_generate(
        port,
        Credentials {
            trusts: &pki,
            issued_by: &stranger,
            client: Some("client"),
        },
        "demo",
    )
    .await
    .unwrap_err();
    assert!(refused_by_transport(&refused), "{refused}");

    let plaintext = async {
        TokenServiceClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .map_err(|e| tonic::Status::unavailable(format!("{e:?}")))?
            .generate_tokens(generate("demo"))
            .await
    }
    .await
    .unwrap_err();
    eprintln!("plaintext client against the TLS port: {plaintext}");

    // Only the admitted caller's call reached the token logic: one issuance in the audit log.
    let log = service.settled_log();
    assert_eq!(log.matches("token issued").count(), 1, "{log}");
    assert!(service.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_tls_and_refuses_half_configured_connections() {
    let pki = Pki::new();
    let sandbox = Sandbox::new(&pki.server_tls_table(true));
    let service = sandbox.serve();
    let address = format!("https://localhost:{}", service.grpc.port());
    let path = |name: &str| pki.path(name).display().to_string();
    let (ca, cert, key) = (path("ca.pem"), path("client.pem"), path("client.key"));
    let run_at = |address: &str, args: &[&str]| {
        let mut all = vec!["client", "--address", address];
        all.extend_from_slice(args);
        tokio::task::block_in_place(|| sandbox.run(&all, None))
    };
    let run = |args: &[&str]| run_at(&address, args);

    let ok = run(&[
        "--ca-file",
        &ca,
        "--cert-file",
        &cert,
        "--key-file",
        &key,
        "generate",
        "--subject",
        "alice",
    ]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("\"access_token\""), "{stdout}");

    // By IP address, naming the certificate's name separately.
    let by_ip = run_at(
        &format!("https://127.0.0.1:{}", service.grpc.port()),
        &[
            "--tls-server-name",
            "localhost",
            "--ca-file",
            &ca,
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "jwks",
        ],
    );
    assert!(
        by_ip.status.success(),
        "{}",
        String::from_utf8_lossy(&by_ip.stderr)
    );

    // bench over mTLS: every call succeeds through the same flags.
    let bench = tokio::task::block_in_place(|| {
        sandbox.run(
            &[
                "bench",
                "--address",
                &address,
                "--ca-file",
                &ca,
                "--cert-file",
                &cert,
                "--key-file",
                &key,
                "--concurrency",
                "2",
                "--connections",
                "1",
                "--duration",
                "500ms",
            ],
            None,
        )
    });
    let report = String::from_utf8_lossy(&bench.stdout);
    assert!(
        bench.status.success() && report.contains("errors 0"),
        "{report}{}",
        String::from_utf8_lossy(&bench.stderr)
    );

    // A certificate without its key (or the reverse) is refused before connecting.
    for half in [["--cert-file", cert.as_str()], ["--key-file", key.as_str()]] {
        let output = run(&[half[0], half[1], "--ca-file", &ca, "jwks"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("--key-file") && stderr.contains("--cert-file"),
            "{stderr}"
        );
    }

    let no_ca = run(&["generate", "--subject", "alice"]);
    assert_eq!(no_ca.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&no_ca.stderr).contains("needs --ca-file"),
        "{}",
        String::from_utf8_lossy(&no_ca.stderr)
    );

    let no_certificate = run(&["--ca-file", &ca, "generate", "--subject", "alice"]);
    assert_eq!(no_certificate.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&no_certificate.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("give --cert-file and --key-file"),
        "{stderr}"
    );
    eprintln!("CLI without a client certificate: {stderr}");

    let plaintext_with_files = run_at(
        &format!("http://127.0.0.1:{}", service.grpc.port()),
        &["--ca-file", &ca, "jwks"],
    );
    assert_eq!(plaintext_with_files.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&plaintext_with_files.stderr).contains("use https://"),
        "{}",
        String::from_utf8_lossy(&plaintext_with_files.stderr)
    );
    assert!(service.terminate().success());
}

#[test]
fn serve_refuses_to_start_when_a_tls_file_cannot_be_read() {
    let pki = Pki::new();
    let missing = pki.path("nowhere.pem");
    let table = pki.server_tls_table(true).replace(
        &pki.path("server.pem").display().to_string(),
        &missing.display().to_string(),
    );
    let sandbox = Sandbox::new(&table);
    let output = run_cli_within(
        Some(&sandbox.config_path()),
        sandbox.dir.path(),
        &["serve"],
        &[],
        Duration::from_secs(60),
    )
    .expect("serve should exit by itself");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("server.tls.cert_file") && stderr.contains("nowhere.pem"),
        "{stderr}"
    );
}

#[test]
fn an_unprotected_api_is_announced_in_the_log() {
    // Plaintext on every interface: anyone on the network could issue tokens.
    let sandbox = Sandbox::new("");
    let open = sandbox.config_path();
    let text = std::fs::read_to_string(&open)
        .unwrap()
        .replace("host = \"127.0.0.1\"", "host = \"0.0.0.0\"");
    sandbox.write_config(&text);
    let service = sandbox.serve();
    service.wait_for_log("no TLS and no caller authentication");
    drop(service);

    // TLS without client certificates: encrypted, but still open to anyone.
    let pki = Pki::new();
    let sandbox = Sandbox::new(&pki.server_tls_table(false));
    let service = sandbox.serve();
    service.wait_for_log("TLS but no client certificates");

    // Plaintext on loopback only (the test default) is not announced.
    let quiet = Sandbox::new("");
    let service = quiet.serve();
    let log = service.settled_log();
    assert!(!log.contains("anyone who reaches this port"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_certificate_is_refused_at_the_handshake() {
    let pki = gateways();
    pki.revoke(&["gateway-b"]);
    let sandbox = Sandbox::new(&crl_table(&pki, false));
    let service = sandbox.serve();
    let port = service.grpc.port();

    admits_only(
        port,
        Credentials::of(&pki, Some("gateway-a")),
        Credentials::of(&pki, Some("gateway-b")),
    )
    .await;
    let log = service.wait_for_log("tls_client_refused");
    assert!(log.contains("Revoked"), "{log}");
    // At least one: tonic's channel may reconnect once more on its own after the refusal.
    assert!(
        tls_metric(
            &service,
            "token_service_tls_handshake_failures_total{listener=\"grpc\",reason=\"client_certificate\"}"
        ) >= 1.0
    );
    assert_eq!(log.matches("token issued").count(), 1, "{log}");
}

/// A sample of the service's /metrics, by its name and labels as exposed.
fn tls_metric(service: &ServiceProcess, series: &str) -> f64 {
    let (_, body) = support::process::http_get(service.admin, "/metrics");
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not in /metrics:\n{body}"))
}

/// Replaces `to` with `from` atomically, as a secret mount or a certificate manager does.
fn replace_file(from: &std::path::Path, to: &std::path::Path) {
    let staged = to.with_extension("staged");
    std::fs::copy(from, &staged).unwrap();
    std::fs::rename(&staged, to).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_tls_files_are_used_for_new_connections_without_a_restart() {
    let (old, new) = (Pki::new(), Pki::new());
    // As a secret mount does it: the files are read through a link to a directory of one
    // version, and a rotation swaps the link at once, so no mix of versions is ever seen.
    let live = tempfile::tempdir().unwrap();
    for (version, pki) in [("v1", &old), ("v2", &new)] {
        std::fs::create_dir(live.path().join(version)).unwrap();
        for name in ["server.pem", "server.key", "ca.pem"] {
            std::fs::copy(pki.path(name), live.path().join(version).join(name)).unwrap();
        }
    }
    let current = live.path().join("current");
    std::os::unix::fs::symlink("v1", &current).unwrap();
    let file = |name: &str| current.join(name);
    let sandbox = Sandbox::new(&format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\nreload_interval = \"200ms\"\n",
        file("server.pem").display(),
        file("server.key").display(),
        file("ca.pem").display()
    ));
    let service = sandbox.serve();
    let port = service.grpc.port();
    let mut established = client(port, Credentials::of(&old, Some("client")))
        .await
        .unwrap();
    established.generate_tokens(generate("demo")).await.unwrap();

    // A new server certificate and a new client CA, as a rotation would bring.
    let staged = live.path().join("staged");
    std::os::unix::fs::symlink("v2", &staged).unwrap();
    std::fs::rename(&staged, &current).unwrap();
    let expiry_before = tls_metric(
        &service,
        "token_service_tls_certificate_expiry_timestamp_seconds{listener=\"grpc\"}",
    );
    service.wait_for_log("TLS files changed: reloaded");
    admits_only(
        port,
        Credentials::of(&new, Some("client")),
        Credentials::of(&old, Some("client")),
    )
    .await;
    // A connection made before the change keeps working.
    established.generate_tokens(generate("demo")).await.unwrap();

    // A change that does not load (half-written, wrong file) leaves the files in use.
    let garbage = live.path().join("garbage");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    replace_file(&garbage, &file("server.pem"));
    service.wait_for_log("cannot be used; the previous ones stay in use");
    try_generate(port, Credentials::of(&new, Some("client")), "demo")
        .await
        .unwrap();
    // A key that does not match the certificate is caught too.
    replace_file(&new.path("server.pem"), &file("server.pem"));
    replace_file(&old.path("server.key"), &file("server.key"));
    std::thread::sleep(Duration::from_millis(600));
    try_generate(port, Credentials::of(&new, Some("client")), "demo")
        .await
        .unwrap();
    assert!(
        expiry_before > 1_700_000_000.0,
        "the expiry gauge is exported"
    );
    assert_eq!(
        tls_metric(
            &service,
            "token_service_tls_reloads_total{listener=\"grpc\",result=\"reloaded\"}"
        ),
        1.0
    );
    assert!(
        tls_metric(
            &service,
            "token_service_tls_reloads_total{listener=\"grpc\",result=\"failed\"}"
        ) >= 2.0
    );
    let log = service.settled_log();
    assert_eq!(
        log.matches("cannot be used").count(),
        2,
        "each broken set logged once: {log}"
    );
    assert!(service.terminate().success());
}

#[test]
fn doctor_checks_the_tls_files_and_the_certificate_expiry() {
    let pki = Pki::new();
    let sandbox = Sandbox::new(&pki.server_tls_table(true));
    // Create the keys first, as `serve` would.
    assert!(sandbox.run(&["sign"], Some(b"x")).status.success());
    let output = sandbox.run(&["doctor"], None);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("gRPC TLS       ok; certificate valid until")
            && stdout.contains("client certificates required"),
        "{stdout}"
    );

    // The public endpoint's files are checked too.
    let both = Sandbox::new(&format!(
        "{}\n[server.public_tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        pki.server_tls_table(true),
        pki.path("server.pem").display(),
        pki.path("missing.key").display()
    ));
    assert!(both.run(&["sign"], Some(b"x")).status.success());
    let output = both.run(&["doctor"], None);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("gRPC TLS       ok")
            && stdout.contains("public TLS     FAILED: server.public_tls.key_file"),
        "{stdout}"
    );

    pki.issue_until("server", "localhost", 2021);
    let output = sandbox.run(&["doctor"], None);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAILED: the certificate expired at 2021-01-01T00:00:00Z"),
        "{stdout}"
    );

    std::fs::write(pki.path("server.key"), "not a key").unwrap();
    let output = sandbox.run(&["doctor"], None);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("gRPC TLS       FAILED: server.tls.key_file"),
        "{stdout}"
    );
}

#[test]
fn the_jwks_is_served_over_tls_when_public_tls_is_set() {
    let pki = Pki::new();
    let sandbox = Sandbox::new(&format!(
        "[server.public_tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        pki.path("server.pem").display(),
        pki.path("server.key").display()
    ));
    let service = sandbox.serve();
    service.wait_for_log("public HTTP listening on https://");
    let (status, body) = support::pki::https_get(
        service.public,
        "localhost",
        &pki.path("ca.pem"),
        "/.well-known/jwks.json",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let jwks: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{body}");

    // A client that does not trust the CA, or asks for another name, is refused.
    let stranger = Pki::new();
    let refused = support::pki::https_get(
        service.public,
        "localhost",
        &stranger.path("ca.pem"),
        "/.well-known/jwks.json",
    );
    assert!(refused.is_err(), "{refused:?}");
    let wrong_name = support::pki::https_get(
        service.public,
        "elsewhere.example",
        &pki.path("ca.pem"),
        "/.well-known/jwks.json",
    );
    assert!(wrong_name.is_err(), "{wrong_name:?}");

    // Client certificate settings make no sense on a public endpoint.
    let bad = Sandbox::new(&format!(
        "[server.public_tls]\ncert_file = \"/s.pem\"\nkey_file = \"/s.key\"\nclient_ca_file = \"{}\"\n",
        pki.path("ca.pem").display()
    ));
    let output = bad.run(&["config", "check"], None);
    assert_eq!(output.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("server.public_tls"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(service.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_crl_refuses_everyone_only_when_asked_to() {
    let pki = gateways();
    pki.revoke_until(&["gateway-b"], 2021);
    // By default the stale list still refuses what it lists, and admits the rest.
    let lenient = Sandbox::new(&crl_table(&pki, false));
    let service = lenient.serve();
    admits_only(
        service.grpc.port(),
        Credentials::of(&pki, Some("gateway-a")),
        Credentials::of(&pki, Some("gateway-b")),
    )
    .await;
    drop(service);

    // Enforced, a list nobody renewed refuses everyone (fail closed).
    let strict = Sandbox::new(&crl_table(&pki, true));
    let service = strict.serve();
    let refused = try_generate(
        service.grpc.port(),
        Credentials::of(&pki, Some("gateway-a")),
        "demo",
    )
    .await
    .unwrap_err();
    assert!(refused_by_transport(&refused), "{refused}");
    let log = service.wait_for_log("tls_client_refused");
    assert!(log.contains("certificate revocation list expired"), "{log}");
}
