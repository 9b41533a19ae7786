//! The PKCS#11 backend: keys generated and used on an HSM (or SoftHSM, kryoptic...) through
//! `cryptoki`.
//!
//! - [`token`]: the module (initialised once per process with OS locking) and the token,
//!   chosen by label or serial, never by slot id.
//! - [`pool`]: worker threads, one logged-in session each; recovery from lost sessions and
//!   from a finalised or removed module without a restart.
//! - [`objects`]: the label scheme, the ring record kept on the token, key templates.
//! - [`ops`]: mechanisms chosen by probing the token.
//! - [`uri`]: RFC 7512 `pkcs11:` URIs.
//!
//! Every signature the token makes is verified with the version's public key before it is
//! returned (`verify_signatures`, on by default): a token whose private object no longer
//! matches the key it publishes gets a security error instead of signing tokens that do not
//! verify.
//!
//! Rings are cached in memory, with their public keys parsed once; the cache is re-read
//! from the token at most once per `refresh_interval`, so a rotation or state change made by
//! another process is seen without a restart.

mod cache;
pub mod error;
pub mod objects;
pub mod ops;
pub mod pool;
pub mod token;
pub mod uri;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use zeroize::Zeroizing;

use self::cache::{CachedRing, RingCache};
use self::objects::{Kind, require, version_label};
use self::ops::Mechanisms;
use self::pool::{OpError, Pool};
use self::token::{LoadedModule, TokenSelector};
use super::Backend;
use super::clock::{Clock, SystemClock};
use super::envelope::{Envelope, EnvelopeKid, TAG_LEN};
use super::error::{BackendError, Rejection};
use super::jwk::{self, PublicJwk};
use super::lifecycle::{Lifecycle, RingRecord, VersionRecord};
use super::software::material::RsaBits;
use super::types::{
    ActiveKey, Algorithm, Capabilities, Health, KeyMetadata, KeyRef, KeyState, Operation,
    Signature, VerificationKey, VerifyRequest,
};
use crate::secret::Secret;

/// Settings of the PKCS#11 backend.
#[derive(Clone, Debug)]
pub struct Pkcs11Options {
    /// The module (shared library).
    pub module: PathBuf,
    /// Which token.
    pub token: TokenSelector,
    /// The user PIN.
    pub pin: Secret,
    /// Sessions (and worker threads), capped by the token's own limit.
    pub max_sessions: usize,
    /// Verify on the token instead of locally with the public key.
    pub verify_on_token: bool,
    /// Check every signature the token makes against the version's public key before
    /// returning it (a signature that does not verify is a security error, never a token).
    pub verify_signatures: bool,
    /// How long a rotated-out version still verifies and decrypts.
    pub retention: Duration,
    /// Modulus size of new RSA keys.
    pub rsa_bits: RsaBits,
    /// How often a cached ring is re-read from the token.
    pub refresh_interval: Duration,
}

/// The PKCS#11 backend. See the module documentation.
pub struct Pkcs11Backend {
    name: String,
    pool: Pool,
    mechanisms: Mechanisms,
    capabilities: Capabilities,
    options: Pkcs11Options,
    clock: Arc<dyn Clock>,
    cache: RingCache,
    /// Serialises changes to rings made by this process (generate, rotate, state changes).
    writes: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Backend")
            .field("module", &self.options.module)
            .field("token", &self.options.token)
            .field("sessions", &self.pool.size())
            .field("algorithms", &self.capabilities.algorithms)
            .finish_non_exhaustive()
    }
}

fn other(e: BackendError) -> OpError {
    OpError::Other(e)
}

impl Pkcs11Backend {
    /// Loads the module, finds the token, logs in and starts the session pool. Every
    /// misconfiguration that can be found now is an error now: a missing module, an unknown
    /// token, a wrong PIN.
    pub fn open(options: Pkcs11Options) -> Result<Self, BackendError> {
        Self::open_with_clock(options, Arc::new(SystemClock))
    }

    /// As [`Pkcs11Backend::open`], with an injected clock (tests of retention).
    pub fn open_with_clock(
        options: Pkcs11Options,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, BackendError> {
        let name = "pkcs11".to_owned();
        let module = LoadedModule::get(&options.module)?;
        let pool = Pool::start(
            &name,
            module,
            options.token.clone(),
            options.pin.clone(),
            options.max_sessions,
        )?;
        let mechanisms = Mechanisms::probe(&pool.shared().token().mechanisms);
        let capabilities = Capabilities {
            operations: Operation::ALL.to_vec(),
            algorithms: mechanisms.algorithms(),
        };
        tracing::info!(
            token = %pool.shared().token().label,
            sessions = pool.size(),
            algorithms = ?capabilities.algorithms,
            "PKCS#11 token ready"
        );
        Ok(Self {
            name,
            pool,
            mechanisms,
            capabilities,
            cache: RingCache::new(options.refresh_interval),
            options,
            clock,
            writes: tokio::sync::Mutex::new(()),
        })
    }

    /// Number of sessions in the pool.
    pub fn sessions(&self) -> usize {
        self.pool.size()
    }

    /// How many times the module has been re-initialised after a failure.
    pub fn reinitializations(&self) -> u64 {
        self.pool.shared().reinitializations()
    }

    fn lifecycle(&self) -> Lifecycle {
        Lifecycle {
            now: self.clock.now(),
            retention: self.options.retention.as_secs(),
        }
    }

    fn forget(&self, key: &KeyRef) {
        self.cache.forget(key);
    }

    async fn load(&self, key: &KeyRef) -> Result<Arc<CachedRing>, BackendError> {
        let ring_key = key.ring();
        let backend = self.name.clone();
        let loaded = self
            .pool
            .call(move |session, shared| cache::read(session, shared, &backend, ring_key))
            .await?;
        Ok(self.cache.insert(loaded))
    }

    async fn ring(&self, key: &KeyRef) -> Result<Arc<CachedRing>, BackendError> {
        match self.cache.fresh(key) {
            Some(ring) => Ok(ring),
            None => self.load(key).await,
        }
    }

    fn metadata(
        &self,
        ring: &CachedRing,
        record: &VersionRecord,
        lifecycle: &Lifecycle,
    ) -> KeyMetadata {
        ring.metadata(&self.name, record, lifecycle)
    }

    /// Sets the recorded state of one version (disable, re-enable, destroy). Destroying
    /// removes the version's objects from the token.
    pub async fn set_version_state(
        &self,
        key: &KeyRef,
        version: u32,
        state: KeyState,
    ) -> Result<KeyMetadata, BackendError> {
        let _guard = self.writes.lock().await;
        let ring_key = key.ring();
        self.pool
            .call(move |session, shared| {
                let stored = objects::require_ring(session, &ring_key)?;
                let mut record = stored.record.clone();
                let v = record
                    .versions
                    .iter_mut()
                    .find(|v| v.version == version)
                    .ok_or_else(|| {
                        other(BackendError::Rejected(Rejection::UnknownKey(format!(
                            "{ring_key}#{version}"
                        ))))
                    })?;
                if v.state == KeyState::Destroyed && state != KeyState::Destroyed {
                    return Err(other(BackendError::Rejected(Rejection::KeyUnusable {
                        key: ring_key.to_string(),
                        version,
                        state: KeyState::Destroyed,
                    })));
                }
                v.state = state;
                objects::write_ring(session, &ring_key, Some(&stored), &record)?;
                if state == KeyState::Destroyed {
                    objects::destroy_version(session, shared, &ring_key, version)?;
                }
                Ok(())
            })
            .await?;
        self.forget(key);
        let ring = self.load(key).await?;
        let record = ring
            .record(version)
            .ok_or_else(|| BackendError::Rejected(Rejection::UnknownKey(key.to_string())))?;
        Ok(self.metadata(&ring, record, &self.lifecycle()))
    }

    async fn verify_jwk_on_token(
        &self,
        jwk: &PublicJwk,
        request: &VerifyRequest<'_>,
    ) -> Result<(), BackendError> {
        let jwk = jwk.clone();
        let algorithm = request.algorithm;
        let message = request.message.to_vec();
        let signature = request.signature.to_vec();
        let mechanisms = self.mechanisms.clone();
        self.pool
            .call(move |session, _shared| {
                let handle = objects::import_public(session, &jwk, algorithm)?;
                let result = ops::verify(
                    session,
                    &mechanisms,
                    handle,
                    algorithm,
                    &message,
                    &signature,
                );
                // A session object would vanish with the session anyway; remove it now.
                let _ = session.destroy_object(handle);
                result
            })
            .await
    }
}

#[async_trait]
impl Backend for Pkcs11Backend {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn sign(&self, key: &KeyRef, message: &[u8]) -> Result<Signature, BackendError> {
        let ring = self.ring(key).await?;
        let algorithm = ring.record.algorithm;
        algorithm.check_signs(&ring.key)?;
        let record = self.lifecycle().producing(
            &ring.key,
            &ring.record.versions,
            key.version(),
            Operation::Sign,
        )?;
        let view = ring.view(record.version)?;
        let label = version_label(&ring.key, record.version);
        let mechanisms = self.mechanisms.clone();
        let owned_message = message.to_vec();
        let bytes = self
            .pool
            .call(move |session, shared| {
                let handle = require(session, shared, Kind::Private, &label)?;
                ops::sign(session, &mechanisms, handle, algorithm, &owned_message)
            })
            .await?;
        // A private object swapped or damaged under its label, or a faulty computation (an
        // RSA-CRT fault would even leak the key), must not sign a token nobody can verify.
        if self.options.verify_signatures {
            jwk::check_own_signature(view.verifier.as_ref(), message, &bytes).map_err(|why| {
                BackendError::security(
                    &self.name,
                    format!(
                        "signature by `{}` (kid {}): {why}",
                        version_label(&ring.key, record.version),
                        view.kid
                    ),
                )
            })?;
        }
        Ok(Signature {
            bytes,
            algorithm,
            kid: view.kid.clone(),
            key_version: record.version,
            backend: self.name.clone(),
        })
    }

    async fn verify(&self, request: VerifyRequest<'_>) -> Result<(), BackendError> {
        match request.key {
            VerificationKey::Prepared(key) if !self.options.verify_on_token => {
                key.verify(request.algorithm, request.message, request.signature)
            }
            VerificationKey::Prepared(key) => self.verify_jwk_on_token(&key.jwk, &request).await,
            VerificationKey::Jwk(jwk) => {
                if self.options.verify_on_token {
                    self.verify_jwk_on_token(jwk, &request).await
                } else {
                    let verifier = jwk.verifier(request.algorithm)?;
                    jwk::verify_with(&verifier, request.message, request.signature)
                }
            }
            VerificationKey::Managed { key, kid } => {
                let ring = self.ring(key).await?;
                ring.check_algorithm(request.algorithm)?;
                let view = match (key.version(), kid) {
                    (Some(n), _) => ring.views.iter().find(|v| v.version == n),
                    (None, Some(kid)) => ring.views.iter().find(|v| v.kid == kid),
                    (None, None) => {
                        return Err(BackendError::invalid_input(
                            "verifying with a managed key needs a kid or a version",
                        ));
                    }
                }
                .filter(|v| kid.is_none_or(|k| v.kid == k))
                .ok_or_else(|| {
                    BackendError::Rejected(Rejection::UnknownKid(
                        kid.map(super::types::truncate_for_message)
                            .unwrap_or_else(|| key.to_string()),
                    ))
                })?;
                let record = ring.record(view.version).ok_or_else(|| {
                    BackendError::Rejected(Rejection::UnknownKey(key.to_string()))
                })?;
                self.lifecycle().check_consuming(&ring.key, record)?;
                if self.options.verify_on_token {
                    let label = version_label(&ring.key, view.version);
                    let (algorithm, mechanisms) = (request.algorithm, self.mechanisms.clone());
                    let (message, signature) =
                        (request.message.to_vec(), request.signature.to_vec());
                    self.pool
                        .call(move |session, shared| {
                            let handle = require(session, shared, Kind::Public, &label)?;
                            ops::verify(
                                session,
                                &mechanisms,
                                handle,
                                algorithm,
                                &message,
                                &signature,
                            )
                        })
                        .await
                } else {
                    let verifier = view
                        .verifier
                        .as_ref()
                        .ok_or_else(|| BackendError::invalid_input("key has no public part"))?;
                    jwk::verify_with(verifier, request.message, request.signature)
                }
            }
        }
    }

    async fn encrypt(
        &self,
        key: &KeyRef,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<String, BackendError> {
        let ring = self.ring(key).await?;
        ring.check_algorithm(Algorithm::A256Gcm)?;
        let record = self.lifecycle().producing(
            &ring.key,
            &ring.record.versions,
            key.version(),
            Operation::Encrypt,
        )?;
        let kid = EnvelopeKid {
            backend: self.name.clone(),
            namespace: ring.key.namespace().to_owned(),
            name: ring.key.name().to_owned(),
            version: record.version,
        };
        let protected = Envelope::protected_header(&kid)?;
        let nonce = Envelope::fresh_nonce(&self.name)?;
        let gcm_aad = Envelope::gcm_aad_for(&protected, aad);
        let label = version_label(&ring.key, record.version);
        let plaintext = Zeroizing::new(plaintext.to_vec());
        let sealed = self
            .pool
            .call(move |session, shared| {
                let handle = require(session, shared, Kind::Secret, &label)?;
                ops::encrypt_gcm(session, handle, &nonce, &gcm_aad, &plaintext)
            })
            .await?;
        if sealed.len() < TAG_LEN {
            return Err(BackendError::security(
                &self.name,
                "AES-GCM output shorter than its tag",
            ));
        }
        let (ciphertext, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        Ok(Envelope::assemble(&protected, &nonce, ciphertext, tag))
    }

    async fn decrypt(
        &self,
        envelope: &Envelope,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let kid = envelope.kid();
        let key = kid.key_for(&self.name)?;
        let parts = envelope.gcm_parts(aad)?;
        let ring = self.ring(&key).await?;
        ring.check_algorithm(Algorithm::A256Gcm)?;
        let record = ring
            .record(kid.version)
            .ok_or_else(|| BackendError::Rejected(Rejection::UnknownKid(kid.to_string())))?;
        self.lifecycle().check_consuming(&ring.key, record)?;
        let label = version_label(&ring.key, kid.version);
        self.pool
            .call(move |session, shared| {
                let handle = require(session, shared, Kind::Secret, &label)?;
                ops::decrypt_gcm(session, handle, &parts.nonce, &parts.aad, &parts.sealed)
            })
            .await
    }

    async fn generate_key(
        &self,
        key: &KeyRef,
        algorithm: Algorithm,
    ) -> Result<KeyMetadata, BackendError> {
        if !self.capabilities.supports_algorithm(algorithm) {
            return Err(BackendError::Rejected(Rejection::UnsupportedAlgorithm(
                format!("{algorithm} (this token's mechanisms do not provide it)"),
            )));
        }
        let _guard = self.writes.lock().await;
        let ring_key = key.ring();
        let (now, rsa_bits) = (self.clock.now(), self.options.rsa_bits);
        self.pool
            .call(move |session, _shared| {
                if objects::read_ring(session, &ring_key)?.is_some() {
                    return Err(other(BackendError::Rejected(Rejection::KeyExists(
                        ring_key.to_string(),
                    ))));
                }
                let mut record = RingRecord::new(algorithm);
                let (version, _) = record.rotate(now, 0);
                objects::generate(session, &ring_key, version, algorithm, rsa_bits)?;
                objects::write_ring(session, &ring_key, None, &record)
            })
            .await?;
        self.forget(key);
        let ring = self.load(key).await?;
        let record = ring.record.versions.last().ok_or_else(|| {
            BackendError::unavailable(&self.name, "generated ring has no version")
        })?;
        let metadata = self.metadata(&ring, record, &self.lifecycle());
        tracing::info!(backend = %self.name, key = %ring.key, algorithm = %algorithm, kid = %metadata.kid, "key generated on the token");
        Ok(metadata)
    }

    async fn rotate_key(&self, key: &KeyRef) -> Result<KeyMetadata, BackendError> {
        let _guard = self.writes.lock().await;
        let ring_key = key.ring();
        let (now, retention, rsa_bits) = (
            self.clock.now(),
            self.options.retention.as_secs(),
            self.options.rsa_bits,
        );
        self.pool
            .call(move |session, shared| {
                let stored = objects::require_ring(session, &ring_key)?;
                let mut record = stored.record.clone();
                let (version, destroyed) = record.rotate(now, retention);
                // The new key first: the record never names a key that is not there.
                objects::generate(session, &ring_key, version, record.algorithm, rsa_bits)?;
                objects::write_ring(session, &ring_key, Some(&stored), &record)?;
                for old in destroyed {
                    objects::destroy_version(session, shared, &ring_key, old)?;
                }
                Ok(())
            })
            .await?;
        self.forget(key);
        let ring = self.load(key).await?;
        let record =
            ring.record.versions.last().ok_or_else(|| {
                BackendError::unavailable(&self.name, "rotated ring has no version")
            })?;
        let metadata = self.metadata(&ring, record, &self.lifecycle());
        tracing::info!(backend = %self.name, key = %ring.key, version = metadata.version, kid = %metadata.kid, "key rotated on the token");
        Ok(metadata)
    }

    async fn key_metadata(&self, key: &KeyRef) -> Result<Vec<KeyMetadata>, BackendError> {
        let ring = self.ring(key).await?;
        let lifecycle = self.lifecycle();
        let all: Vec<KeyMetadata> = ring
            .record
            .versions
            .iter()
            .filter(|v| key.version().is_none_or(|n| v.version == n))
            .map(|v| self.metadata(&ring, v, &lifecycle))
            .collect();
        if all.is_empty() {
            return Err(BackendError::Rejected(Rejection::UnknownKey(
                key.to_string(),
            )));
        }
        Ok(all)
    }

    async fn active_key(&self, key: &KeyRef) -> Result<ActiveKey, BackendError> {
        let ring = self.ring(key).await?;
        let record =
            self.lifecycle()
                .producing(&ring.key, &ring.record.versions, None, Operation::Sign)?;
        Ok(ActiveKey {
            version: record.version,
            kid: ring.view(record.version)?.kid.clone(),
            algorithm: ring.record.algorithm,
        })
    }

    async fn public_keys(&self, key: &KeyRef) -> Result<Vec<PublicJwk>, BackendError> {
        let ring = self.ring(key).await?;
        let lifecycle = self.lifecycle();
        Ok(ring
            .record
            .versions
            .iter()
            .filter(|v| {
                matches!(
                    lifecycle.effective_state(v),
                    KeyState::Active | KeyState::Deprecated
                )
            })
            .filter_map(|v| ring.views.iter().find(|view| view.version == v.version))
            .filter_map(|view| view.jwk.clone())
            .collect())
    }

    async fn list_keys(&self, namespace: &str) -> Result<Vec<String>, BackendError> {
        super::types::validate_name("namespace", namespace)?;
        let namespace = namespace.to_owned();
        self.pool
            .call(move |session, _shared| objects::list_rings(session, &namespace))
            .await
    }

    async fn health(&self) -> Health {
        let label = self.pool.shared().token().label;
        match self
            .pool
            .call(|session, _shared| session.get_session_info().map_err(pool::ck("session info")))
            .await
        {
            Ok(_) => Health::ok(format!("token `{label}` answers")),
            Err(e) => Health::failing(format!("token `{label}`: {e}")),
        }
    }
}
