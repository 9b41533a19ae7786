//! `keys generate|rotate|list|show`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use clap::{Args, Subcommand};
use token_service::backends::chain::GuardedBackend;
use token_service::backends::{Algorithm, KeyMetadata, KeyRef, Operation};
use token_service::context::CallContext;
use token_service::service::Service;

use super::{Failure, build};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key ring with a first ACTIVE version.
    Generate {
        #[command(flatten)]
        key: KeyArgs,
        /// Algorithm: ES256, ES384, PS256, PS384, PS512, EdDSA or A256GCM.
        #[arg(long)]
        algorithm: Algorithm,
    },
    /// Add a new ACTIVE version; the previous one becomes DEPRECATED and still verifies
    /// and decrypts for the retention period.
    Rotate {
        #[command(flatten)]
        key: KeyArgs,
    },
    /// List the key rings of a namespace.
    List {
        /// Namespace (default: crypto.key_namespace).
        #[arg(long)]
        namespace: Option<String>,
        /// Only this backend (default: every configured backend).
        #[arg(long)]
        backend: Option<String>,
    },
    /// Show every version of a key ring.
    Show {
        #[command(flatten)]
        key: KeyArgs,
    },
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    /// Key name (default: keys.signing.name).
    #[arg(long)]
    name: Option<String>,
    /// Namespace (default: crypto.key_namespace).
    #[arg(long)]
    namespace: Option<String>,
    /// Only this backend (default: every configured backend that can do it).
    #[arg(long)]
    backend: Option<String>,
}

impl KeyArgs {
    fn key(&self, service: &Service) -> Result<KeyRef, Failure> {
        let namespace = self
            .namespace
            .as_deref()
            .unwrap_or(service.signing_key.namespace());
        let name = self.name.as_deref().unwrap_or(service.signing_key.name());
        Ok(KeyRef::new(namespace, name)?)
    }
}

fn targets(
    service: &Service,
    only: Option<&str>,
    operation: Operation,
) -> Result<Vec<Arc<GuardedBackend>>, Failure> {
    let selected: Vec<_> = service
        .chain
        .backends()
        .iter()
        .filter(|g| only.is_none_or(|name| g.name() == name))
        .filter(|g| g.backend().capabilities().supports(operation))
        .cloned()
        .collect();
    if selected.is_empty() {
        return Err(Failure::new(match only {
            Some(name) => format!("backend `{name}` is not configured or cannot {operation}"),
            None => format!("no configured backend can {operation}"),
        }));
    }
    Ok(selected)
}

/// Seconds since the epoch as RFC 3339.
pub fn timestamp(seconds: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(seconds)).to_string()
}

fn print_versions(rows: &[KeyMetadata]) {
    say!(
        "{:<10} {:<22} {:>7} {:<10} {:<8} {:<20} {:<20} {:<20} KID",
        "BACKEND",
        "KEY",
        "VERSION",
        "STATE",
        "ALG",
        "CREATED",
        "ROTATED",
        "RETAINED UNTIL"
    );
    for m in rows {
        say!(
            "{:<10} {:<22} {:>7} {:<10} {:<8} {:<20} {:<20} {:<20} {}",
            m.backend,
            format!("{}/{}", m.key.namespace(), m.key.name()),
            m.version,
            m.state.as_str(),
            m.algorithm.as_str(),
            timestamp(m.created_at),
            m.rotated_at.map(timestamp).unwrap_or_else(|| "-".into()),
            m.retained_until
                .map(timestamp)
                .unwrap_or_else(|| "-".into()),
            m.kid
        );
    }
}

pub async fn run(config: &Option<PathBuf>, command: KeysCommand) -> Result<(), Failure> {
    let service = build(config).await?;
    let ctx = CallContext::new();
    match command {
        KeysCommand::Generate { key, algorithm } => {
            let key_ref = key.key(&service)?;
            let label = key_ref.to_string();
            let mut created = Vec::new();
            for guarded in targets(&service, key.backend.as_deref(), Operation::GenerateKey)? {
                if !guarded
                    .backend()
                    .capabilities()
                    .supports_algorithm(algorithm)
                {
                    continue;
                }
                let m = guarded
                    .call(&ctx, Operation::GenerateKey, &label, |b| {
                        b.generate_key(&key_ref, algorithm)
                    })
                    .await?;
                created.push(m);
            }
            print_versions(&created);
        }
        KeysCommand::Rotate { key } => {
            let key_ref = key.key(&service)?;
            let label = key_ref.to_string();
            let mut rotated = Vec::new();
            for guarded in targets(&service, key.backend.as_deref(), Operation::RotateKey)? {
                let m = guarded
                    .call(&ctx, Operation::RotateKey, &label, |b| {
                        b.rotate_key(&key_ref)
                    })
                    .await?;
                rotated.push(m);
            }
            print_versions(&rotated);
        }
        KeysCommand::Show { key } => {
            let key_ref = key.key(&service)?;
            let label = key_ref.to_string();
            let mut rows = Vec::new();
            for guarded in targets(&service, key.backend.as_deref(), Operation::KeyMetadata)? {
                rows.extend(
                    guarded
                        .call(&ctx, Operation::KeyMetadata, &label, |b| {
                            b.key_metadata(&key_ref)
                        })
                        .await?,
                );
            }
            print_versions(&rows);
        }
        KeysCommand::List { namespace, backend } => {
            let namespace = namespace.unwrap_or_else(|| service.signing_key.namespace().to_owned());
            say!("{:<10} KEY", "BACKEND");
            for guarded in targets(&service, backend.as_deref(), Operation::ListKeys)? {
                let names = guarded
                    .call(&ctx, Operation::ListKeys, &namespace, |b| {
                        b.list_keys(&namespace)
                    })
                    .await?;
                for name in names {
                    say!("{:<10} {namespace}/{name}", guarded.name());
                }
            }
        }
    }
    Ok(())
}
