//! The software backend: key rings in a local data directory, every primitive from aws-lc-rs.
//!
//! It is the embedded default and the last-resort fallback of production chains. Rings are
//! loaded once and kept parsed in memory, so the sign path is a map lookup and one aws-lc-rs
//! call. See [`store`] for the on-disk discipline.

pub mod material;
mod ring;
pub mod store;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use zeroize::Zeroizing;

use self::material::{MaterialError, RsaBits};
use self::ring::{LoadedRing, material_error, store_error};
use self::store::{Store, StoreError};
use super::Backend;
use super::clock::{Clock, SystemClock};
use super::envelope::{Envelope, EnvelopeKid};
use super::error::{BackendError, Rejection};
use super::jwk::{self, PublicJwk};
use super::lifecycle::{Lifecycle, RingRecord, VersionRecord};
use super::types::{
    ActiveKey, Algorithm, Capabilities, Health, KeyMetadata, KeyRef, KeyState, Operation,
    Signature, VerificationKey, VerifyRequest,
};

/// Settings of the software backend.
#[derive(Clone, Debug)]
pub struct SoftwareOptions {
    /// How long a rotated-out version still verifies and decrypts.
    pub retention: Duration,
    /// Modulus size of new RSA keys.
    pub rsa_bits: RsaBits,
    /// How often a cached ring is checked against its file, so that a change made by
    /// another process (a key disabled or rotated with the CLI) takes effect without a
    /// restart. Zero checks on every use.
    pub refresh_interval: Duration,
}

impl Default for SoftwareOptions {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(24 * 3600),
            rsa_bits: RsaBits::B2048,
            refresh_interval: Duration::from_secs(1),
        }
    }
}

/// The software backend. See the module documentation.
#[derive(Debug)]
pub struct SoftwareBackend {
    name: String,
    store: Store,
    options: SoftwareOptions,
    clock: Arc<dyn Clock>,
    capabilities: Capabilities,
    /// Loaded rings by namespace, then name: nested so a lookup needs no allocation.
    rings: RwLock<HashMap<String, HashMap<String, Arc<LoadedRing>>>>,
    opened: Instant,
}

impl SoftwareBackend {
    /// Opens the backend on `data_dir` (created 0700 if missing; refused if group- or
    /// world-accessible).
    pub fn open(data_dir: &Path, options: SoftwareOptions) -> Result<Self, BackendError> {
        Self::open_with_clock(data_dir, options, Arc::new(SystemClock))
    }

    /// As [`SoftwareBackend::open`], with an injected clock (tests of retention).
    pub fn open_with_clock(
        data_dir: &Path,
        options: SoftwareOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, BackendError> {
        let store = Store::open(data_dir)
            .map_err(|e| BackendError::unavailable("software", e.to_string()))?;
        Ok(Self {
            name: "software".to_owned(),
            store,
            options,
            clock,
            capabilities: Capabilities {
                operations: Operation::ALL.to_vec(),
                algorithms: Algorithm::ALL.to_vec(),
            },
            rings: RwLock::new(HashMap::new()),
            opened: Instant::now(),
        })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.store.root()
    }

    /// Path of a version's key file (for tooling and benchmarks that need the raw key).
    pub fn key_file(&self, key: &KeyRef, version: u32) -> std::path::PathBuf {
        self.store.key_file(key, version)
    }

    fn lifecycle(&self) -> Lifecycle {
        Lifecycle {
            now: self.clock.now(),
            retention: self.options.retention.as_secs(),
        }
    }

    fn cached(&self, key: &KeyRef) -> Option<Arc<LoadedRing>> {
        let rings = self.rings.read().unwrap_or_else(|p| p.into_inner());
        rings.get(key.namespace())?.get(key.name()).cloned()
    }

    fn remember(&self, ring: Arc<LoadedRing>) {
        let mut rings = self.rings.write().unwrap_or_else(|p| p.into_inner());
        rings
            .entry(ring.key.namespace().to_owned())
            .or_default()
            .insert(ring.key.name().to_owned(), ring);
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// True if the cached ring may be used as is. At most once per refresh interval (and by
    /// one caller at a time), the file's stamp is compared with the cached one.
    fn still_current(&self, ring: &LoadedRing) -> bool {
        let now = self.elapsed_ms();
        let last = ring.checked_ms.load(Ordering::Relaxed);
        let interval = u64::try_from(self.options.refresh_interval.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(last) < interval && last != 0 {
            return true;
        }
        if ring
            .checked_ms
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return true; // another caller is checking right now
        }
        // One stat call (~1 µs), at most once per interval per ring.
        matches!(self.store.ring_stamp(&ring.key), Ok(stamp) if stamp == ring.stamp)
    }

    async fn ring(&self, key: &KeyRef) -> Result<Arc<LoadedRing>, BackendError> {
        if let Some(ring) = self.cached(key)
            && self.still_current(&ring)
        {
            return Ok(ring);
        }
        let store = self.store.clone();
        let backend = self.name.clone();
        let key_owned = key.clone();
        let loaded =
            tokio::task::spawn_blocking(move || LoadedRing::load(&store, &backend, &key_owned))
                .await
                .map_err(|e| {
                    BackendError::unavailable(&self.name, format!("loader task failed: {e}"))
                })??;
        let ring = Arc::new(loaded);
        ring.checked_ms
            .store(self.elapsed_ms().max(1), Ordering::Relaxed);
        self.remember(ring.clone());
        Ok(ring)
    }

    /// Runs a read-modify-write of one ring under its lock on a blocking thread, then
    /// reloads the ring into memory.
    async fn modify<F>(
        &self,
        key: &KeyRef,
        create: bool,
        change: F,
    ) -> Result<Arc<LoadedRing>, BackendError>
    where
        F: FnOnce(&Store, &store::RingLock, Option<RingRecord>) -> Result<(), BackendError>
            + Send
            + 'static,
    {
        let store = self.store.clone();
        let backend = self.name.clone();
        let ring_key = key.ring();
        let loaded = tokio::task::spawn_blocking(move || {
            let lock = store
                .lock_ring(&ring_key, create)
                .map_err(|e| store_error(&backend, &ring_key, e))?;
            let existing = match store.read_ring(&ring_key) {
                Ok(r) => Some(r),
                Err(StoreError::NotFound) => None,
                Err(e) => return Err(store_error(&backend, &ring_key, e)),
            };
            change(&store, &lock, existing)?;
            LoadedRing::load(&store, &backend, &ring_key)
        })
        .await
        .map_err(|e| BackendError::unavailable(&self.name, format!("key task failed: {e}")))??;
        let ring = Arc::new(loaded);
        ring.checked_ms
            .store(self.elapsed_ms().max(1), Ordering::Relaxed);
        self.remember(ring.clone());
        Ok(ring)
    }

    /// Sets the recorded state of one version (operator action: disable, re-enable, destroy).
    /// Destroying removes the key file; a destroyed version cannot come back.
    pub async fn set_version_state(
        &self,
        key: &KeyRef,
        version: u32,
        state: KeyState,
    ) -> Result<KeyMetadata, BackendError> {
        let ring_key = key.ring();
        let label = key.ring().to_string();
        let ring = self
            .modify(key, false, move |store, lock, existing| {
                let mut record = existing
                    .ok_or_else(|| BackendError::Rejected(Rejection::UnknownKey(label.clone())))?;
                let v = record
                    .versions
                    .iter_mut()
                    .find(|v| v.version == version)
                    .ok_or_else(|| {
                        BackendError::Rejected(Rejection::UnknownKey(format!("{label}#{version}")))
                    })?;
                if v.state == KeyState::Destroyed && state != KeyState::Destroyed {
                    return Err(BackendError::Rejected(Rejection::KeyUnusable {
                        key: label.clone(),
                        version,
                        state: KeyState::Destroyed,
                    }));
                }
                v.state = state;
                store
                    .write_ring(lock, &ring_key, &record)
                    .map_err(|e| store_error("software", &ring_key, e))?;
                if state == KeyState::Destroyed {
                    store
                        .remove_key(lock, &ring_key, version)
                        .map_err(|e| store_error("software", &ring_key, e))?;
                }
                Ok(())
            })
            .await?;
        let v = ring
            .versions
            .iter()
            .find(|v| v.record.version == version)
            .ok_or_else(|| BackendError::Rejected(Rejection::UnknownKey(key.ring().to_string())))?;
        Ok(ring.metadata(&self.name, &self.lifecycle(), v))
    }
}

#[async_trait]
impl Backend for SoftwareBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn is_in_process(&self) -> bool {
        true
    }

    async fn sign(&self, key: &KeyRef, message: &[u8]) -> Result<Signature, BackendError> {
        let ring = self.ring(key).await?;
        ring.algorithm.check_signs(&ring.key)?;
        let (version, material) = ring.producing(key, Operation::Sign, &self.lifecycle())?;
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let bytes = if material.is_slow_to_sign() && multi_thread {
            // RSA signing takes 0.3-3 ms: tell the runtime, so its other tasks move to
            // another worker meanwhile. Measured: spawn_blocking's thread hand-off cost
            // ~20 % of PS256 throughput; block_in_place keeps the work on this thread.
            tokio::task::block_in_place(|| material.sign(message))
        } else {
            material.sign(message)
        }
        .map_err(|e| material_error(&self.name, key, e))?;
        Ok(Signature {
            bytes,
            algorithm: ring.algorithm,
            kid: version.kid.clone(),
            key_version: version.record.version,
            backend: self.name.clone(),
        })
    }

    async fn verify(&self, request: VerifyRequest<'_>) -> Result<(), BackendError> {
        match request.key {
            VerificationKey::Jwk(jwk) => {
                let verifier = jwk.verifier(request.algorithm)?;
                jwk::verify_with(&verifier, request.message, request.signature)
            }
            VerificationKey::Prepared(key) => {
                key.verify(request.algorithm, request.message, request.signature)
            }
            VerificationKey::Managed { key, kid } => {
                let ring = self.ring(key).await?;
                ring.check_algorithm(request.algorithm)?;
                let version = match (key.version(), kid) {
                    (Some(n), _) => ring.versions.iter().find(|v| v.record.version == n),
                    (None, Some(kid)) => ring.versions.iter().find(|v| v.kid == kid),
                    (None, None) => {
                        return Err(BackendError::invalid_input(
                            "verifying with a managed key needs a kid or a version",
                        ));
                    }
                }
                .ok_or_else(|| {
                    BackendError::Rejected(Rejection::UnknownKid(
                        kid.map(super::types::truncate_for_message)
                            .unwrap_or_else(|| key.to_string()),
                    ))
                })?;
                if let Some(kid) = kid
                    && version.kid != kid
                {
                    return Err(BackendError::Rejected(Rejection::UnknownKid(
                        super::types::truncate_for_message(kid),
                    )));
                }
                let material = ring.consuming(version, &self.lifecycle())?;
                let verifier = material.verifier().ok_or_else(|| {
                    BackendError::invalid_input("key has no public part to verify with")
                })?;
                jwk::verify_with(verifier, request.message, request.signature)
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
        let (version, material) = ring.producing(key, Operation::Encrypt, &self.lifecycle())?;
        let aead = material.aead_key().ok_or_else(|| {
            material_error(&self.name, key, MaterialError::Parse(Algorithm::A256Gcm))
        })?;
        let kid = EnvelopeKid {
            backend: self.name.clone(),
            namespace: ring.key.namespace().to_owned(),
            name: ring.key.name().to_owned(),
            version: version.record.version,
        };
        Envelope::seal(&kid, aead, plaintext, aad)
    }

    async fn decrypt(
        &self,
        envelope: &Envelope,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let kid = envelope.kid();
        let key = kid.key_for(&self.name)?;
        let ring = self.ring(&key).await?;
        ring.check_algorithm(Algorithm::A256Gcm)?;
        let version = ring
            .versions
            .iter()
            .find(|v| v.record.version == kid.version)
            .ok_or_else(|| BackendError::Rejected(Rejection::UnknownKid(kid.to_string())))?;
        let material = ring.consuming(version, &self.lifecycle())?;
        let aead = material.aead_key().ok_or_else(|| {
            material_error(&self.name, &key, MaterialError::Parse(Algorithm::A256Gcm))
        })?;
        envelope.open(aead, aad)
    }

    async fn generate_key(
        &self,
        key: &KeyRef,
        algorithm: Algorithm,
    ) -> Result<KeyMetadata, BackendError> {
        let ring_key = key.ring();
        let rsa_bits = self.options.rsa_bits;
        let now = self.clock.now();
        let label = ring_key.to_string();
        let ring = self
            .modify(key, true, move |store, lock, existing| {
                if existing.is_some() {
                    return Err(BackendError::Rejected(Rejection::KeyExists(label)));
                }
                let material = material::generate(algorithm, rsa_bits)
                    .map_err(|e| material_error("software", &ring_key, e))?;
                let mut record = RingRecord::new(algorithm);
                record.versions.push(VersionRecord {
                    version: 1,
                    state: KeyState::Active,
                    created_at: now,
                    rotated_at: None,
                });
                store
                    .write_key(lock, &ring_key, 1, &material)
                    .and_then(|()| store.write_ring(lock, &ring_key, &record))
                    .map_err(|e| store_error("software", &ring_key, e))
            })
            .await?;
        let newest = ring.versions.last().ok_or_else(|| {
            BackendError::unavailable(&self.name, "generated ring has no version")
        })?;
        tracing::info!(backend = %self.name, key = %ring.key, algorithm = %algorithm, kid = %newest.kid, "key generated");
        Ok(ring.metadata(&self.name, &self.lifecycle(), newest))
    }

    async fn rotate_key(&self, key: &KeyRef) -> Result<KeyMetadata, BackendError> {
        let ring_key = key.ring();
        let rsa_bits = self.options.rsa_bits;
        let retention = self.options.retention.as_secs();
        let now = self.clock.now();
        let label = ring_key.to_string();
        let ring = self
            .modify(key, false, move |store, lock, existing| {
                let mut record =
                    existing.ok_or(BackendError::Rejected(Rejection::UnknownKey(label)))?;
                let material = material::generate(record.algorithm, rsa_bits)
                    .map_err(|e| material_error("software", &ring_key, e))?;
                let (version, expired) = record.rotate(now, retention);
                store
                    .write_key(lock, &ring_key, version, &material)
                    .and_then(|()| store.write_ring(lock, &ring_key, &record))
                    .map_err(|e| store_error("software", &ring_key, e))?;
                for v in expired {
                    store
                        .remove_key(lock, &ring_key, v)
                        .map_err(|e| store_error("software", &ring_key, e))?;
                }
                Ok(())
            })
            .await?;
        let newest = ring
            .versions
            .last()
            .ok_or_else(|| BackendError::unavailable(&self.name, "rotated ring has no version"))?;
        tracing::info!(backend = %self.name, key = %ring.key, version = newest.record.version, kid = %newest.kid, "key rotated");
        Ok(ring.metadata(&self.name, &self.lifecycle(), newest))
    }

    async fn key_metadata(&self, key: &KeyRef) -> Result<Vec<KeyMetadata>, BackendError> {
        let ring = self.ring(key).await?;
        let all: Vec<KeyMetadata> = ring
            .versions
            .iter()
            .filter(|v| key.version().is_none_or(|n| v.record.version == n))
            .map(|v| ring.metadata(&self.name, &self.lifecycle(), v))
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
        let (version, _) = ring.producing(&key.ring(), Operation::Sign, &self.lifecycle())?;
        Ok(ActiveKey {
            version: version.record.version,
            kid: version.kid.clone(),
            algorithm: ring.algorithm,
        })
    }

    async fn public_keys(&self, key: &KeyRef) -> Result<Vec<PublicJwk>, BackendError> {
        let ring = self.ring(key).await?;
        let lifecycle = self.lifecycle();
        Ok(ring
            .versions
            .iter()
            .filter(|v| {
                matches!(
                    lifecycle.effective_state(&v.record),
                    KeyState::Active | KeyState::Deprecated
                )
            })
            .filter_map(|v| v.material.as_ref().and_then(|m| m.public_jwk().cloned()))
            .collect())
    }

    async fn list_keys(&self, namespace: &str) -> Result<Vec<String>, BackendError> {
        super::types::validate_name("namespace", namespace)?;
        let store = self.store.clone();
        let namespace = namespace.to_owned();
        tokio::task::spawn_blocking(move || store.list(&namespace))
            .await
            .map_err(|e| BackendError::unavailable(&self.name, format!("list task failed: {e}")))?
            .map_err(|e| BackendError::unavailable(&self.name, e.to_string()))
    }

    async fn health(&self) -> Health {
        let root = self.store.root().to_path_buf();
        match tokio::task::spawn_blocking(move || std::fs::metadata(&root)).await {
            Ok(Ok(m)) if m.is_dir() => Health::ok("data directory readable"),
            Ok(Ok(_)) => Health::failing("data directory is not a directory"),
            Ok(Err(e)) => Health::failing(format!("data directory: {e}")),
            Err(e) => Health::failing(format!("probe task failed: {e}")),
        }
    }
}
