//! DPoP (RFC 9449): validating proofs of possession, so an access or refresh token bound to
//! a key is useless without it.
//!
//! Every check of RFC 9449 §4.3 is made, cheapest first, and the signature before anything
//! is remembered (a forged proof cannot burn a `jti`):
//! the proof's size and form ([`proof`]); `typ`, an allowlisted asymmetric `alg`, a public
//! `jwk` that fits it; `htm`, `htu` (normalized, [`htu`]), `iat` within the window, `ath`
//! when an access token is presented; the signature, through the chain's verify operation
//! (the Crypto Service first where configured; local verification only when it is
//! unavailable, never after it said "invalid"), with proof keys parsed once ([`cache`]);
//! the server nonce when required ([`nonce`]); and last the `jti`, remembered in the token
//! store for the acceptance window, so a proof replayed to any instance sharing the store
//! is refused.

pub mod cache;
pub mod error;
pub mod htu;
pub mod nonce;
pub mod proof;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use subtle::ConstantTimeEq;

use crate::backends::chain::Chain;
use crate::backends::clock::Clock;
use crate::backends::error::{BackendError, ErrorClass};
use crate::backends::types::{Algorithm, VerificationKey, VerifyRequest};
use crate::context::CallContext;
use crate::metrics::Metrics;
use crate::token::store::Store;

pub use error::{DpopError, InvalidProof, NonceProblem};
use nonce::NonceIssuer;

/// Settings of DPoP validation.
#[derive(Debug)]
pub struct DpopSettings {
    /// `alg` values accepted in proofs (asymmetric only).
    pub algorithms: Vec<Algorithm>,
    /// How far `iat` may be from now, either way.
    pub iat_window: Duration,
    /// Largest proof accepted, in bytes.
    pub max_proof_len: usize,
    /// When set, every proof must carry a nonce this issuer made.
    pub nonces: Option<NonceIssuer>,
    /// Proof keys kept parsed.
    pub key_cache_capacity: usize,
}

impl Default for DpopSettings {
    /// RFC 9449's usual profile: every asymmetric algorithm, ±60 s, 8 KiB, no nonces.
    fn default() -> Self {
        Self {
            algorithms: Algorithm::SIGNING.to_vec(),
            iat_window: Duration::from_secs(60),
            max_proof_len: 8 * 1024,
            nonces: None,
            key_cache_capacity: 10_000,
        }
    }
}

/// The request a proof is checked against.
#[derive(Clone, Copy, Debug)]
pub struct ProofRequest<'a> {
    /// The compact proof (the `DPoP` header's value).
    pub proof: &'a str,
    /// The request's HTTP method.
    pub method: &'a str,
    /// The request's URI.
    pub uri: &'a str,
    /// The access token presented with it, if any.
    pub access_token: Option<&'a str>,
}

/// A proof that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatedProof {
    /// The RFC 7638 thumbprint of the proof key: the `jkt` a token is bound to.
    pub jkt: String,
    /// The proof's algorithm.
    pub algorithm: Algorithm,
}

/// `base64url(SHA-256(access token))`, the `ath` of RFC 9449 §4.2.
pub fn access_token_hash(access_token: &str) -> String {
    B64.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, access_token.as_bytes()).as_ref(),
    )
}

/// Validates proofs.
#[derive(Debug)]
pub struct DpopValidator {
    settings: DpopSettings,
    keys: cache::KeyCache,
    chain: Arc<Chain>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
}

impl DpopValidator {
    /// A validator verifying through `chain` and remembering proofs in `store`.
    pub fn new(
        settings: DpopSettings,
        chain: Arc<Chain>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
    ) -> Self {
        Self {
            keys: cache::KeyCache::new(settings.key_cache_capacity),
            settings,
            chain,
            store,
            clock,
            metrics,
        }
    }

    /// A fresh nonce, when nonces are in use.
    pub fn fresh_nonce(&self) -> Option<String> {
        self.settings
            .nonces
            .as_ref()
            .map(|n| n.issue(self.clock.now()))
    }

    /// Counts a refusal decided outside the validator (a proof of the wrong key).
    pub fn count(&self, error: &DpopError) {
        self.metrics.dpop_validation(error.code(), error.reason());
    }

    /// Parsed proof keys held in the cache.
    pub fn cached_keys(&self) -> usize {
        self.keys.len()
    }

    /// Checks `request`'s proof; on success, the key's thumbprint.
    pub async fn validate(
        &self,
        ctx: &CallContext,
        request: ProofRequest<'_>,
    ) -> Result<ValidatedProof, DpopError> {
        let outcome = self.check(ctx, request).await;
        match &outcome {
            Ok(_) => self.metrics.dpop_validation("valid", "ok"),
            Err(error) => {
                self.metrics.dpop_validation(error.code(), error.reason());
                tracing::info!(
                    error = error.code(),
                    reason = error.reason(),
                    "DPoP proof refused"
                );
            }
        }
        outcome
    }

    async fn check(
        &self,
        ctx: &CallContext,
        request: ProofRequest<'_>,
    ) -> Result<ValidatedProof, DpopError> {
        let parsed = proof::parse(
            request.proof,
            self.settings.max_proof_len,
            &self.settings.algorithms,
        )?;
        let claims = &parsed.claims;
        if claims.htm != request.method {
            return Err(InvalidProof::WrongMethod.into());
        }
        if !htu::matches(&claims.htu, request.uri) {
            return Err(InvalidProof::WrongUri.into());
        }
        let now = i64::try_from(self.clock.now()).unwrap_or(i64::MAX);
        let window = i64::try_from(self.settings.iat_window.as_secs()).unwrap_or(i64::MAX);
        if claims.iat < now.saturating_sub(window) {
            return Err(InvalidProof::IatTooOld.into());
        }
        if claims.iat > now.saturating_add(window) {
            return Err(InvalidProof::IatInFuture.into());
        }
        if let Some(token) = request.access_token {
            let ath = claims.ath.as_deref().ok_or(InvalidProof::MissingAth)?;
            let expected = access_token_hash(token);
            if !bool::from(ath.as_bytes().ct_eq(expected.as_bytes())) {
                return Err(InvalidProof::WrongAth.into());
            }
        }
        let key = self
            .keys
            .get(parsed.jwk, parsed.algorithm)
            .map_err(|_| InvalidProof::KeyAlgorithmMismatch)?;
        let verified = self
            .chain
            .verify(
                ctx,
                VerifyRequest {
                    key: VerificationKey::Prepared(&key),
                    algorithm: parsed.algorithm,
                    message: parsed.signing_input.as_bytes(),
                    signature: &parsed.signature,
                },
            )
            .await;
        match verified {
            Ok(()) => {}
            Err(BackendError::VerificationFailed) => return Err(InvalidProof::BadSignature.into()),
            Err(error) if error.class() == ErrorClass::Rejected => {
                return Err(InvalidProof::KeyAlgorithmMismatch.into());
            }
            Err(error) => return Err(DpopError::Unavailable(error.to_string())),
        }
        if let Some(nonces) = &self.settings.nonces {
            let unix_now = self.clock.now();
            let problem = match claims.nonce.as_deref() {
                None => Some(NonceProblem::Missing),
                Some(nonce) if !nonces.check(nonce, unix_now) => Some(NonceProblem::Stale),
                Some(_) => None,
            };
            if let Some(problem) = problem {
                return Err(DpopError::UseNonce {
                    problem,
                    nonce: nonces.issue(unix_now),
                });
            }
        }
        // Remembered until it can no longer pass the iat check anywhere.
        let until = u64::try_from(claims.iat.max(now).saturating_add(window).saturating_add(1))
            .unwrap_or(u64::MAX);
        let replay_key = {
            let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            context.update(b"dpop-jti\0");
            context.update(key.thumbprint.as_bytes());
            context.update(b"\0");
            context.update(claims.jti.as_bytes());
            format!("dpop:{}", B64.encode(context.finish().as_ref()))
        };
        let first = self
            .store
            .first_use(&replay_key, until, self.clock.now())
            .await
            .map_err(|e| DpopError::Unavailable(e.to_string()))?;
        if !first {
            return Err(InvalidProof::Replayed.into());
        }
        Ok(ValidatedProof {
            jkt: key.thumbprint.clone(),
            algorithm: parsed.algorithm,
        })
    }
}
