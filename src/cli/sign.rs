//! `sign` and `verify`: compact JWS over a file or stdin.

use std::io::Read;
use std::path::PathBuf;

use clap::Args;
use token_service::backends::{BackendError, KeyRef};
use token_service::context::CallContext;
use token_service::jws::{self, CompactJws};

use super::{Failure, build};

#[derive(Debug, Args)]
pub struct SignArgs {
    /// File to sign; `-` or nothing for stdin.
    input: Option<PathBuf>,
    /// Key name (default: keys.signing.name, in crypto.key_namespace).
    #[arg(long)]
    key: Option<String>,
    /// `typ` header value.
    #[arg(long)]
    typ: Option<String>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// File holding the compact JWS; `-` or nothing for stdin.
    input: Option<PathBuf>,
    /// Key name whose published keys to verify against (default: keys.signing.name).
    #[arg(long)]
    key: Option<String>,
    /// Write the verified payload to stdout.
    #[arg(long)]
    print_payload: bool,
}

fn read_input(input: &Option<PathBuf>) -> Result<Vec<u8>, Failure> {
    let mut bytes = Vec::new();
    match input {
        Some(path) if path.as_os_str() != "-" => {
            bytes = std::fs::read(path)
                .map_err(|e| Failure::new(format!("cannot read {}: {e}", path.display())))?;
        }
        _ => {
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|e| Failure::new(format!("cannot read stdin: {e}")))?;
        }
    }
    Ok(bytes)
}

pub async fn sign(config: &Option<PathBuf>, args: SignArgs) -> Result<(), Failure> {
    let service = build(config).await?;
    service.ensure_keys().await?;
    let key = match &args.key {
        Some(name) => KeyRef::new(service.signing_key.namespace(), name)?,
        None => service.signing_key.clone(),
    };
    let payload = read_input(&args.input)?;
    let ctx = CallContext::new();
    let signed = jws::sign(&service.chain, &ctx, &key, args.typ.as_deref(), &payload).await?;
    say!("{}", signed.compact);
    Ok(())
}

pub async fn verify(config: &Option<PathBuf>, args: VerifyArgs) -> Result<(), Failure> {
    let service = build(config).await?;
    let key = match &args.key {
        Some(name) => KeyRef::new(service.signing_key.namespace(), name)?,
        None => service.signing_key.clone(),
    };
    let input = read_input(&args.input)?;
    let text = std::str::from_utf8(&input)
        .map_err(|_| Failure::new("input is not a compact JWS (not UTF-8)"))?;
    let parsed = CompactJws::parse(text.trim())?;
    let ctx = CallContext::new();
    let keys = service.chain.public_keys(&ctx, &key).await?;
    match parsed.verify(&service.chain, &ctx, &keys).await {
        Ok(()) => {
            eprintln!(
                "signature valid: alg {} kid {}",
                parsed.algorithm, parsed.header.kid
            );
            if args.print_payload {
                use std::io::Write;
                std::io::stdout()
                    .write_all(&parsed.payload)
                    .map_err(|e| Failure::new(format!("cannot write payload: {e}")))?;
            }
            Ok(())
        }
        Err(BackendError::VerificationFailed) => Err(Failure::new("signature verification failed")),
        Err(error) => Err(error.into()),
    }
}
