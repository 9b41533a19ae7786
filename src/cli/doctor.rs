//! `doctor`: probes every configured backend and prints a table.

use std::path::PathBuf;
use std::time::Instant;

use token_service::backends::{KeyRef, Operation, VerificationKey, VerifyRequest};
use token_service::context::CallContext;

use super::{Failure, build};

pub async fn run(config: &Option<PathBuf>) -> Result<(), Failure> {
    let service = build(config).await?;
    let ctx = CallContext::new();
    let key: &KeyRef = &service.signing_key;
    let label = key.to_string();
    let message = b"token-service doctor probe";
    say!(
        "{:<14} {:<8} {:<9} {:<34} {:<14} ALGORITHMS",
        "BACKEND",
        "HEALTH",
        "BREAKER",
        "SIGN/VERIFY ROUND TRIP",
        "OPERATIONS"
    );
    let mut failures = 0;
    for guarded in service.chain.backends() {
        let health = guarded.backend().health().await;
        let capabilities = guarded.backend().capabilities();
        let round_trip = if !capabilities.supports(Operation::Sign) {
            "n/a (cannot sign)".to_owned()
        } else {
            let started = Instant::now();
            let signed = guarded
                .call(&ctx, Operation::Sign, &label, |b| b.sign(key, message))
                .await;
            match signed {
                Ok(signature) => {
                    let verified = guarded
                        .call(&ctx, Operation::Verify, &label, |b| {
                            b.verify(VerifyRequest {
                                key: VerificationKey::Managed {
                                    key,
                                    kid: Some(&signature.kid),
                                },
                                algorithm: signature.algorithm,
                                message,
                                signature: &signature.bytes,
                            })
                        })
                        .await;
                    match verified {
                        Ok(()) => format!(
                            "ok {} v{} {:.2} ms",
                            signature.algorithm,
                            signature.key_version,
                            started.elapsed().as_secs_f64() * 1000.0
                        ),
                        Err(error) => {
                            failures += 1;
                            format!("FAILED verify: {error}")
                        }
                    }
                }
                Err(error) => {
                    failures += 1;
                    format!("FAILED sign: {error}")
                }
            }
        };
        if !health.healthy {
            failures += 1;
        }
        say!(
            "{:<14} {:<8} {:<9} {:<34} {:<14} {}",
            guarded.name(),
            if health.healthy { "ok" } else { "FAILING" },
            guarded.breaker_state().as_str(),
            round_trip,
            format!("{}/{}", capabilities.operations.len(), Operation::ALL.len()),
            capabilities
                .algorithms
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        if !health.healthy {
            say!("{:<14} health: {}", "", health.detail);
        }
    }
    failures += check_store(&service).await;
    use token_service::api::listener::ListenerKind;
    let server = &service.config.server;
    for (tls, kind, label) in [
        (&server.tls, ListenerKind::Grpc, "gRPC TLS"),
        (&server.public_tls, ListenerKind::Public, "public TLS"),
    ] {
        if let Some(tls) = tls {
            failures += check_tls(tls, kind, label);
        }
    }
    if failures > 0 {
        return Err(Failure::new(format!("{failures} problem(s) found")));
    }
    say!("all backends answered");
    Ok(())
}

/// Pings the token store as readiness does; prints its kind, transport and round trip; the
/// number of problems found.
async fn check_store(service: &token_service::service::Service) -> usize {
    let tokens = &service.config.tokens;
    let transport = match (tokens.store, &tokens.redis_tls) {
        (token_service::config::StoreKind::Memory, _) => "in this process",
        (_, Some(_)) => "over TLS",
        (_, None) => "without TLS",
    };
    let started = Instant::now();
    match service.store.ping().await {
        Ok(()) => {
            say!(
                "{:<14} ok; {} {transport}, answered in {:.2} ms",
                "token store",
                tokens.store.as_str(),
                started.elapsed().as_secs_f64() * 1000.0
            );
            0
        }
        Err(error) => {
            say!("{:<14} FAILED: {error}", "token store");
            1
        }
    }
}

/// Certificates expiring sooner than this get a warning.
const EXPIRY_WARNING_DAYS: u64 = 14;

/// Loads a listener's TLS files as `serve` would and prints what they hold under `label`;
/// the number of problems found (unusable files, an expired certificate).
fn check_tls(
    settings: &token_service::config::tls::ServerTlsConfig,
    kind: token_service::api::listener::ListenerKind,
    label: &str,
) -> usize {
    let expires_at = match token_service::api::listener::ReloadingTls::check(settings, kind) {
        Ok(expiry) => expiry.unwrap_or(0),
        Err(error) => {
            say!("{label:<14} FAILED: {error}");
            return 1;
        }
    };
    let clients = match (&settings.client_ca_file, &settings.client_crl_file) {
        (None, _) if kind == token_service::api::listener::ListenerKind::Public => {
            "no client certificates (a public endpoint)"
        }
        (None, _) => "no client certificates asked (anyone reaching the port may call)",
        (Some(_), None) => "client certificates required",
        (Some(_), Some(_)) => "client certificates required, revocation list loaded",
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let until = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(expires_at),
    );
    if expires_at <= now {
        say!("{label:<14} FAILED: the certificate expired at {until}");
        return 1;
    }
    let days = (expires_at - now) / 86_400;
    say!("{label:<14} ok; certificate valid until {until} ({days} days); {clients}");
    if days < EXPIRY_WARNING_DAYS {
        say!(
            "               warning: the certificate expires in less than {EXPIRY_WARNING_DAYS} days"
        );
    }
    0
}
