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
    if failures > 0 {
        return Err(Failure::new(format!("{failures} problem(s) found")));
    }
    say!("all backends answered");
    Ok(())
}
