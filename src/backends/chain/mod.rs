//! The priority chain: per operation, an ordered list of backends, each in its policies.
//!
//! - A call goes to the first backend in the list that has the capability; a backend that
//!   lacks it is skipped, not failed.
//! - An *unavailable* answer (including an open breaker or a local rate/concurrency refusal)
//!   passes the call to the next backend, unless fallback is disabled.
//! - *Rejected*, *verification failed* and *security* answers are final.
//! - Decrypt is routed by the envelope's `kid` to the one backend that sealed it.
//!
//! Fallback is not free: a fallback backend signs with its own key. [`Chain::public_keys`]
//! therefore returns the keys of every backend that may sign.

mod guarded;
mod published;

use std::collections::BTreeMap;
use std::sync::Arc;

use zeroize::Zeroizing;

pub use self::guarded::{BoxFuture, GuardedBackend};
pub use self::published::LAST_KEYS_KEPT_FOR;
use self::published::PublishedKeys;
use super::Backend;
use super::envelope::Envelope;
use super::error::{BackendError, ErrorClass, Rejection, UnavailableReason};
use super::jwk::PublicJwk;
use super::types::{
    ActiveKey, Algorithm, KeyMetadata, KeyRef, KeyState, Operation, Signature, VerificationKey,
    VerifyRequest,
};
use crate::context::CallContext;
use crate::metrics::Metrics;
use crate::resilience::{BreakerState, ResilienceConfig};

/// A backend with the policies to wrap it in, as the chain is built from.
pub type ConfiguredBackend = (Arc<dyn Backend>, ResilienceConfig);

/// Which backends serve which operation, by name, in priority order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    /// Sign chain.
    pub sign: Vec<String>,
    /// Verify chain.
    pub verify: Vec<String>,
    /// Encrypt chain.
    pub encrypt: Vec<String>,
}

/// Errors building a chain.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainBuildError {
    /// A route names a backend that was not supplied.
    #[error("chain.{operation}: unknown backend `{name}`")]
    UnknownBackend {
        /// The route.
        operation: &'static str,
        /// The name.
        name: String,
    },
    /// Two backends share a name.
    #[error("backend `{0}` is configured twice")]
    DuplicateBackend(String),
    /// The sign route is empty.
    #[error("chain.sign must name at least one backend")]
    EmptySignChain,
}

/// The priority chain. See the module documentation.
#[derive(Debug)]
pub struct Chain {
    all: Vec<Arc<GuardedBackend>>,
    sign: Vec<Arc<GuardedBackend>>,
    verify: Vec<Arc<GuardedBackend>>,
    encrypt: Vec<Arc<GuardedBackend>>,
    fallback_enabled: bool,
    metrics: Metrics,
    published: PublishedKeys,
}

/// Checks a signature a backend returned against what was asked: a backend that answers
/// for another key version, with another algorithm or with a signature of the wrong size is
/// refused as a security event, not passed on.
fn check_signature(backend: &str, key: &KeyRef, signature: &Signature) -> Result<(), BackendError> {
    let wrong = |detail: String| Err(BackendError::security(backend, detail));
    if signature.backend != backend {
        return wrong(format!(
            "signature attributed to backend `{}`",
            signature.backend
        ));
    }
    if !signature.algorithm.is_signing() {
        return wrong(format!(
            "signature with non-signing algorithm {}",
            signature.algorithm
        ));
    }
    if let Some(expected) = key.version()
        && signature.key_version != expected
    {
        return wrong(format!(
            "asked for version {expected}, signed with version {}",
            signature.key_version
        ));
    }
    if let Some(len) = signature.algorithm.fixed_signature_len()
        && signature.bytes.len() != len
    {
        return wrong(format!(
            "{} signature of {} bytes, expected {len}",
            signature.algorithm,
            signature.bytes.len()
        ));
    }
    if signature.kid.is_empty() {
        return wrong("signature without a kid".into());
    }
    Ok(())
}

impl Chain {
    /// Builds a chain from backends (each with its policies) and routes.
    pub fn new(
        backends: Vec<ConfiguredBackend>,
        routes: &Routes,
        fallback_enabled: bool,
        metrics: Metrics,
    ) -> Result<Self, ChainBuildError> {
        let mut all: Vec<Arc<GuardedBackend>> = Vec::new();
        for (backend, config) in backends {
            if all.iter().any(|g| g.name() == backend.name()) {
                return Err(ChainBuildError::DuplicateBackend(backend.name().to_owned()));
            }
            all.push(Arc::new(GuardedBackend::new(backend, config, &metrics)));
        }
        let resolve = |operation: &'static str, names: &[String]| {
            names
                .iter()
                .map(|name| {
                    all.iter()
                        .find(|g| g.name() == name)
                        .cloned()
                        .ok_or_else(|| ChainBuildError::UnknownBackend {
                            operation,
                            name: name.clone(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let sign = resolve("sign", &routes.sign)?;
        if sign.is_empty() {
            return Err(ChainBuildError::EmptySignChain);
        }
        let verify = resolve("verify", &routes.verify)?;
        let encrypt = resolve("encrypt", &routes.encrypt)?;
        Ok(Self {
            all,
            sign,
            verify,
            encrypt,
            fallback_enabled,
            metrics,
            published: PublishedKeys::default(),
        })
    }

    /// The metrics the chain reports to.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Every configured backend, in configuration order.
    pub fn backends(&self) -> &[Arc<GuardedBackend>] {
        &self.all
    }

    /// The backends of the sign chain, in priority order.
    pub fn sign_backends(&self) -> &[Arc<GuardedBackend>] {
        &self.sign
    }

    /// The backends of the encrypt chain, in priority order.
    pub fn encrypt_backends(&self) -> &[Arc<GuardedBackend>] {
        &self.encrypt
    }

    /// A configured backend by name.
    pub fn backend(&self, name: &str) -> Option<&Arc<GuardedBackend>> {
        self.all.iter().find(|g| g.name() == name)
    }

    /// Every backend's breaker state (also refreshes the breaker gauges).
    pub fn breaker_states(&self) -> Vec<(String, BreakerState)> {
        self.all
            .iter()
            .map(|g| (g.name().to_owned(), g.breaker_state()))
            .collect()
    }

    /// Tries `list` in order, as the module documentation describes.
    async fn route<'a, T, F>(
        &'a self,
        ctx: &CallContext,
        operation: Operation,
        list: &'a [Arc<GuardedBackend>],
        algorithm: Option<Algorithm>,
        key: &(dyn std::fmt::Display + Sync),
        call: F,
    ) -> Result<T, BackendError>
    where
        F: Fn(&'a dyn Backend) -> BoxFuture<'a, Result<T, BackendError>>,
    {
        let mut failed: Vec<(&str, BackendError)> = Vec::new();
        for guarded in list {
            let capabilities = guarded.backend().capabilities();
            if !capabilities.supports(operation)
                || algorithm.is_some_and(|a| !capabilities.supports_algorithm(a))
            {
                continue;
            }
            if let Some((from, error)) = failed.last() {
                self.metrics.fallback(operation, from, guarded.name());
                tracing::warn!(
                    operation = operation.as_str(),
                    from,
                    to = guarded.name(),
                    correlation_id = ctx.correlation_id(),
                    %error,
                    "falling back to the next backend"
                );
            }
            match guarded.call(ctx, operation, key, &call).await {
                Err(error) if error.class() == ErrorClass::Unavailable => {
                    if !self.fallback_enabled {
                        return Err(error);
                    }
                    failed.push((guarded.name(), error));
                }
                other => return other,
            }
        }
        match failed.len() {
            0 => Err(BackendError::Rejected(Rejection::NoCapableBackend(
                operation,
            ))),
            1 => Err(failed.remove(0).1),
            _ => Err(BackendError::Unavailable {
                backend: "chain".into(),
                reason: UnavailableReason::ChainExhausted {
                    operation,
                    tried: failed
                        .iter()
                        .map(|(name, e)| format!("{name}: {e}"))
                        .collect::<Vec<_>>()
                        .join("; "),
                },
            }),
        }
    }

    /// Signs `message` with `key` on the first available backend of the sign chain.
    pub async fn sign(
        &self,
        ctx: &CallContext,
        key: &KeyRef,
        message: &[u8],
    ) -> Result<Signature, BackendError> {
        self.route(ctx, Operation::Sign, &self.sign, None, key, |backend| {
            Box::pin(async move {
                let signature = backend.sign(key, message).await?;
                check_signature(backend.name(), key, &signature)?;
                Ok(signature)
            })
        })
        .await
    }

    /// Signs a message that must name its own signing key (a JWS header carrying `kid`).
    /// On the backend that serves the call, the newest ACTIVE version is looked up,
    /// `prepare` builds the message for that version, and exactly that version signs it, so
    /// the `kid` in the message is always the key that signed, fallback included.
    pub async fn sign_prepared<F>(
        &self,
        ctx: &CallContext,
        key: &KeyRef,
        prepare: F,
    ) -> Result<(Vec<u8>, Signature), BackendError>
    where
        F: Fn(&ActiveKey) -> Result<Vec<u8>, BackendError> + Send + Sync,
    {
        let prepare = &prepare;
        self.route(ctx, Operation::Sign, &self.sign, None, key, |backend| {
            Box::pin(async move {
                let active = backend.active_key(key).await?;
                let pinned = key.ring().with_version(active.version);
                let message = prepare(&active)?;
                let signature = backend.sign(&pinned, &message).await?;
                check_signature(backend.name(), &pinned, &signature)?;
                if signature.kid != active.kid || signature.algorithm != active.algorithm {
                    return Err(BackendError::security(
                        backend.name(),
                        "signature names another kid or algorithm than the version asked for",
                    ));
                }
                Ok((message, signature))
            })
        })
        .await
    }

    /// Verifies a signature on the first available backend of the verify chain that can use
    /// the algorithm. A failed verification is final: no other backend is asked.
    pub async fn verify(
        &self,
        ctx: &CallContext,
        request: VerifyRequest<'_>,
    ) -> Result<(), BackendError> {
        let label = match request.key {
            VerificationKey::Managed { key, .. } => key.to_string(),
            VerificationKey::Jwk(jwk) => format!("jwk:{}", jwk.kid.as_deref().unwrap_or("-")),
            VerificationKey::Prepared(key) => format!("jwk:{}", key.thumbprint),
        };
        self.route(
            ctx,
            Operation::Verify,
            &self.verify,
            Some(request.algorithm),
            &label,
            |backend| backend.verify(request),
        )
        .await
    }

    /// Encrypts with `key` on the first available backend of the encrypt chain.
    pub async fn encrypt(
        &self,
        ctx: &CallContext,
        key: &KeyRef,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<String, BackendError> {
        self.route(
            ctx,
            Operation::Encrypt,
            &self.encrypt,
            Some(Algorithm::A256Gcm),
            key,
            |backend| backend.encrypt(key, plaintext, aad),
        )
        .await
    }

    /// Opens an envelope on the backend named in its `kid`, and only there.
    pub async fn decrypt(
        &self,
        ctx: &CallContext,
        envelope: &str,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        self.decrypt_parsed(ctx, &Envelope::parse(envelope)?, aad)
            .await
    }

    /// [`Chain::decrypt`] for an envelope the caller has already parsed.
    pub async fn decrypt_parsed(
        &self,
        ctx: &CallContext,
        envelope: &Envelope,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let kid = envelope.kid();
        let guarded = self.backend(&kid.backend).ok_or_else(|| {
            BackendError::Rejected(Rejection::UnknownEnvelopeBackend(kid.backend.clone()))
        })?;
        let label = kid.clone();
        guarded
            .call(ctx, Operation::Decrypt, &label, |backend| {
                backend.decrypt(envelope, aad)
            })
            .await
    }

    /// The public keys of every backend in the sign chain for `key` (ACTIVE and retained
    /// versions), de-duplicated by `kid`: what a JWKS must hold so that every token verifies,
    /// whichever backend signed it. For a backend that does not answer, the keys it last
    /// published stand in (up to [`LAST_KEYS_KEPT_FOR`]), so tokens it signed before an outage
    /// keep verifying; one with no such keys is left out with a warning. The call fails only
    /// if no backend contributes.
    pub async fn public_keys(
        &self,
        ctx: &CallContext,
        key: &KeyRef,
    ) -> Result<Vec<PublicJwk>, BackendError> {
        let label = key;
        let add = |by_kid: &mut BTreeMap<String, PublicJwk>, keys: Vec<PublicJwk>| {
            for jwk in keys {
                if let Some(kid) = jwk.kid.clone() {
                    by_kid.entry(kid).or_insert(jwk);
                }
            }
        };
        let mut by_kid: BTreeMap<String, PublicJwk> = BTreeMap::new();
        let mut answered = false;
        let mut last_error = None;
        for guarded in &self.sign {
            if !guarded
                .backend()
                .capabilities()
                .supports(Operation::PublicKeys)
            {
                continue;
            }
            match guarded
                .call(ctx, Operation::PublicKeys, &label, |backend| {
                    backend.public_keys(key)
                })
                .await
            {
                Ok(keys) => {
                    answered = true;
                    self.published.remember(guarded.name(), key, &keys);
                    add(&mut by_kid, keys);
                }
                Err(BackendError::Rejected(Rejection::UnknownKey(_))) => {
                    answered = true;
                    self.published.forget(guarded.name(), key);
                }
                Err(error) => match self.published.last(guarded.name(), key) {
                    Some(keys) => {
                        tracing::warn!(backend = guarded.name(), %error, "public keys unavailable; publishing the keys it last answered");
                        answered = true;
                        add(&mut by_kid, keys);
                    }
                    None => {
                        tracing::warn!(backend = guarded.name(), %error, "public keys unavailable; JWKS is missing this backend's keys");
                        last_error = Some(error);
                    }
                },
            }
        }
        match (answered, last_error) {
            (false, Some(error)) => Err(error),
            _ => Ok(by_kid.into_values().collect()),
        }
    }

    /// Makes sure `key` exists on every backend of `list` that can hold it, generating it
    /// with `algorithm` where it is missing. Returns the metadata of the active version on
    /// each backend, or the first error.
    pub async fn ensure_key(
        &self,
        ctx: &CallContext,
        list: &[Arc<GuardedBackend>],
        key: &KeyRef,
        algorithm: Algorithm,
    ) -> Result<Vec<KeyMetadata>, BackendError> {
        let label = key;
        let mut out = Vec::new();
        let mut unreachable = Vec::new();
        for guarded in list {
            let capabilities = guarded.backend().capabilities();
            if !capabilities.supports(Operation::GenerateKey)
                || !capabilities.supports_algorithm(algorithm)
            {
                continue;
            }
            let existing = guarded
                .call(ctx, Operation::KeyMetadata, label, |backend| {
                    backend.key_metadata(key)
                })
                .await;
            let metadata = match existing {
                Ok(versions) => {
                    let newest = versions
                        .into_iter()
                        .rev()
                        .find(|m| m.state == KeyState::Active);
                    match newest {
                        Some(m) if m.algorithm == algorithm => m,
                        Some(m) => {
                            return Err(BackendError::Rejected(Rejection::AlgorithmMismatch {
                                key: format!("{} on {}", key, guarded.name()),
                                requested: algorithm.as_str().into(),
                                actual: m.algorithm,
                            }));
                        }
                        None => {
                            return Err(BackendError::Rejected(Rejection::KeyNotActive {
                                key: format!("{} on {}", key, guarded.name()),
                                version: 0,
                                state: KeyState::Disabled,
                                operation: Operation::Sign,
                            }));
                        }
                    }
                }
                Err(BackendError::Rejected(Rejection::UnknownKey(_))) => {
                    match guarded
                        .call(ctx, Operation::GenerateKey, label, |backend| {
                            backend.generate_key(key, algorithm)
                        })
                        .await
                    {
                        Ok(metadata) => metadata,
                        Err(error) if error.class() == ErrorClass::Unavailable => {
                            unreachable.push((guarded.name().to_owned(), error));
                            continue;
                        }
                        Err(error) => return Err(error),
                    }
                }
                // A backend that is down at start-up is skipped: the others serve, and its
                // key is checked again at the next start. Readiness reports it meanwhile.
                Err(error) if error.class() == ErrorClass::Unavailable => {
                    unreachable.push((guarded.name().to_owned(), error));
                    continue;
                }
                Err(error) => return Err(error),
            };
            out.push(metadata);
        }
        for (backend, error) in &unreachable {
            tracing::warn!(backend = %backend, key = %key, %error, "backend unavailable at start-up; its key was not checked");
        }
        if out.is_empty()
            && let Some((_, error)) = unreachable.pop()
        {
            return Err(error);
        }
        Ok(out)
    }

    /// Whether the sign chain can sign with `key` now: some backend in it has a closed or
    /// half-open breaker and an ACTIVE version of the key. `Err` says why not.
    pub async fn can_sign(&self, ctx: &CallContext, key: &KeyRef) -> Result<String, String> {
        let label = key;
        let mut reasons = Vec::new();
        for guarded in &self.sign {
            if guarded.breaker_state() == BreakerState::Open {
                reasons.push(format!("{}: breaker open", guarded.name()));
                continue;
            }
            match guarded
                .call(ctx, Operation::KeyMetadata, label, |backend| {
                    backend.key_metadata(key)
                })
                .await
            {
                Ok(versions) if versions.iter().any(|m| m.state == KeyState::Active) => {
                    return Ok(guarded.name().to_owned());
                }
                Ok(_) => reasons.push(format!("{}: no ACTIVE version of {key}", guarded.name())),
                Err(error) => reasons.push(format!("{}: {error}", guarded.name())),
            }
        }
        Err(reasons.join("; "))
    }
}
