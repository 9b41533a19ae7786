//! The `Backend` trait every key store implements, its types and errors, the backends,
//! and the priority [`chain::Chain`] that picks a backend for each call.

pub mod aws_kms;
pub mod chain;
pub mod clock;
pub mod crypto_service;
pub mod envelope;
pub mod error;
pub mod jwk;
pub mod lifecycle;
pub mod pkcs11;
pub mod remote_cache;
pub mod software;
pub mod types;

use async_trait::async_trait;
use zeroize::Zeroizing;

pub use error::{BackendError, ErrorClass, Rejection, SecurityViolation, UnavailableReason};
pub use jwk::PublicJwk;
pub use types::{
    ActiveKey, Algorithm, Capabilities, Health, KeyMetadata, KeyRef, KeyState, Operation,
    Signature, VerificationKey, VerifyRequest,
};

/// The contract of a key store. Keys are logical names inside a namespace; each backend maps
/// them to its own references. A key is a ring of versions: the newest ACTIVE version signs
/// and encrypts, DEPRECATED versions still verify and decrypt until their retention ends.
///
/// Implementations return classified [`BackendError`]s: the class decides whether the chain
/// retries, counts a breaker failure, or falls back. They never put key material in errors,
/// logs or `Debug` output.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// The backend's name in configuration, metrics and envelopes (`software`, `pkcs11`...).
    fn name(&self) -> &str;

    /// What the backend can do; the chain skips a backend that cannot do a call.
    fn capabilities(&self) -> &Capabilities;

    /// True when the backend's key uses (sign, verify, encrypt, decrypt) stay inside this
    /// process and log nothing of their own. The chain then opens a call's tracing span only
    /// when it has a line to log about the call, rather than on every call: on the issuance
    /// path the span cost ~5 % of the CPU per token. Backends that reach a network or a
    /// token keep the default, so their own log lines carry the call's correlation id.
    fn is_in_process(&self) -> bool {
        false
    }

    /// Signs `message` with the key's newest ACTIVE version (or the pinned version, which
    /// must be ACTIVE). The signature is in JWS form (ECDSA as fixed-length r||s).
    async fn sign(&self, key: &KeyRef, message: &[u8]) -> Result<Signature, BackendError>;

    /// Checks a JWS-form signature. `Ok(())` means valid; an invalid signature is
    /// [`BackendError::VerificationFailed`].
    async fn verify(&self, request: VerifyRequest<'_>) -> Result<(), BackendError>;

    /// Encrypts `plaintext` with the key's newest ACTIVE version, binding `aad`, into a
    /// compact envelope naming this backend, the key and the version.
    async fn encrypt(
        &self,
        key: &KeyRef,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<String, BackendError>;

    /// Opens an envelope this backend sealed, with the same `aad`.
    async fn decrypt(
        &self,
        envelope: &envelope::Envelope,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError>;

    /// Creates key ring `key` with a first ACTIVE version of `algorithm`. An existing ring is
    /// [`Rejection::KeyExists`].
    async fn generate_key(
        &self,
        key: &KeyRef,
        algorithm: Algorithm,
    ) -> Result<KeyMetadata, BackendError>;

    /// Adds a new ACTIVE version; the previous active version becomes DEPRECATED and is kept
    /// for the retention period.
    async fn rotate_key(&self, key: &KeyRef) -> Result<KeyMetadata, BackendError>;

    /// Metadata of every version of the ring (or only the pinned version), oldest first.
    async fn key_metadata(&self, key: &KeyRef) -> Result<Vec<KeyMetadata>, BackendError>;

    /// The version that signs or encrypts now (the newest ACTIVE one): its version number,
    /// kid and algorithm. On the signing path of every token, so backends that cache their
    /// rings answer it without building the whole ring's metadata.
    async fn active_key(&self, key: &KeyRef) -> Result<ActiveKey, BackendError> {
        let ring = key.ring();
        self.key_metadata(&ring)
            .await?
            .into_iter()
            .rev()
            .find(|m| m.state == KeyState::Active)
            .map(|m| ActiveKey {
                version: m.version,
                kid: m.kid,
                algorithm: m.algorithm,
            })
            .ok_or_else(|| {
                BackendError::Rejected(Rejection::KeyNotActive {
                    key: ring.to_string(),
                    version: 0,
                    state: KeyState::Disabled,
                    operation: Operation::Sign,
                })
            })
    }

    /// The public keys that may verify signatures of this ring: ACTIVE and retained
    /// DEPRECATED versions, with `kid`, `alg` and `use` set.
    async fn public_keys(&self, key: &KeyRef) -> Result<Vec<PublicJwk>, BackendError>;

    /// Names of the key rings in `namespace`.
    async fn list_keys(&self, namespace: &str) -> Result<Vec<String>, BackendError>;

    /// A cheap probe of whether the backend can serve calls.
    async fn health(&self) -> Health;
}
