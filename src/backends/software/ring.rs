//! A key ring of the software backend as held in memory: records and parsed material,
//! with the version selection of [`crate::backends::lifecycle`] applied to it.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::material::{Material, MaterialError};
use super::store::{self, Store, StoreError};
use crate::backends::envelope::EnvelopeKid;
use crate::backends::error::{BackendError, Rejection};
use crate::backends::lifecycle::{Lifecycle, VersionRecord};
use crate::backends::types::{Algorithm, KeyMetadata, KeyRef, KeyState, Operation};

/// Maps a store error onto the error classes.
pub(super) fn store_error(backend: &str, key: &KeyRef, e: StoreError) -> BackendError {
    match e {
        StoreError::NotFound => {
            BackendError::Rejected(Rejection::UnknownKey(key.ring().to_string()))
        }
        StoreError::Exists => BackendError::Rejected(Rejection::KeyExists(key.ring().to_string())),
        // A corrupt or unsafe store is a local fault: this backend cannot serve, another may.
        other => BackendError::unavailable(backend, other.to_string()),
    }
}

/// Maps a key-material error onto the error classes.
pub(super) fn material_error(backend: &str, key: &KeyRef, e: MaterialError) -> BackendError {
    BackendError::unavailable(backend, format!("{}: {e}", key.ring()))
}

/// One loaded version: its record and parsed material (absent once destroyed).
#[derive(Debug)]
pub(super) struct LoadedVersion {
    pub record: VersionRecord,
    pub kid: String,
    pub material: Option<Arc<Material>>,
}

/// A ring as kept in memory.
#[derive(Debug)]
pub(super) struct LoadedRing {
    pub key: KeyRef,
    pub algorithm: Algorithm,
    pub versions: Vec<LoadedVersion>,
    /// The records of `versions`, in the same order, for the lifecycle rules.
    pub records: Vec<VersionRecord>,
    /// Identity of the `ring.json` it was loaded from (see [`store::FileStamp`]).
    pub stamp: store::FileStamp,
    /// When the file was last compared with `stamp`, in ms since the backend opened.
    pub checked_ms: AtomicU64,
}

fn destroyed_kid(backend: &str, key: &KeyRef) -> String {
    format!("destroyed:{backend}/{key}")
}

impl LoadedRing {
    /// Builds the in-memory ring from disk. Blocking: call from a blocking thread.
    pub fn load(store: &Store, backend: &str, key: &KeyRef) -> Result<Self, BackendError> {
        let ring_key = key.ring();
        // Stamp before reading: if the file changes in between, the next check reloads.
        let stamp = store
            .ring_stamp(&ring_key)
            .map_err(|e| store_error(backend, key, e))?;
        let record = store
            .read_ring(&ring_key)
            .map_err(|e| store_error(backend, key, e))?;
        let records = record.versions.clone();
        let mut versions = Vec::with_capacity(record.versions.len());
        for v in record.versions {
            let version_key = ring_key.clone().with_version(v.version);
            let (kid, material) = if v.state == KeyState::Destroyed {
                (destroyed_kid(backend, &version_key), None)
            } else {
                let bytes = store
                    .read_key(&ring_key, v.version)
                    .map_err(|e| store_error(backend, key, e))?;
                let material = Material::parse(record.algorithm, &bytes)
                    .map_err(|e| material_error(backend, key, e))?;
                let kid = match material.public_jwk().and_then(|j| j.kid.clone()) {
                    Some(kid) => kid,
                    None => EnvelopeKid {
                        backend: backend.to_owned(),
                        namespace: ring_key.namespace().to_owned(),
                        name: ring_key.name().to_owned(),
                        version: v.version,
                    }
                    .to_string(),
                };
                (kid, Some(Arc::new(material)))
            };
            versions.push(LoadedVersion {
                record: v,
                kid,
                material,
            });
        }
        Ok(Self {
            key: ring_key,
            algorithm: record.algorithm,
            versions,
            records,
            stamp,
            checked_ms: AtomicU64::new(0),
        })
    }

    /// Refuses a request for another algorithm than the ring's.
    pub fn check_algorithm(&self, requested: Algorithm) -> Result<(), BackendError> {
        self.algorithm.check_serves(&self.key, requested)
    }

    /// Metadata of one version.
    pub fn metadata(&self, backend: &str, lifecycle: &Lifecycle, v: &LoadedVersion) -> KeyMetadata {
        KeyMetadata {
            backend: backend.to_owned(),
            key: self.key.clone().with_version(v.record.version),
            version: v.record.version,
            algorithm: self.algorithm,
            state: lifecycle.effective_state(&v.record),
            created_at: v.record.created_at,
            rotated_at: v.record.rotated_at,
            retained_until: lifecycle.retained_until(&v.record),
            kid: v.kid.clone(),
            public_jwk: v.material.as_ref().and_then(|m| m.public_jwk().cloned()),
        }
    }

    /// The version that signs or encrypts, by the rules of [`Lifecycle::producing`].
    pub fn producing(
        &self,
        key: &KeyRef,
        operation: Operation,
        lifecycle: &Lifecycle,
    ) -> Result<(&LoadedVersion, &Arc<Material>), BackendError> {
        let record = lifecycle.producing(&self.key, &self.records, key.version(), operation)?;
        let version = self
            .versions
            .iter()
            .find(|v| v.record.version == record.version)
            .ok_or_else(|| BackendError::Rejected(Rejection::UnknownKey(key.to_string())))?;
        let material = version.material.as_ref().ok_or_else(|| {
            BackendError::unavailable("software", format!("{} has no key material", version.kid))
        })?;
        Ok((version, material))
    }

    /// The material of a version that may verify or decrypt, by the rules of
    /// [`Lifecycle::check_consuming`].
    pub fn consuming<'r>(
        &self,
        version: &'r LoadedVersion,
        lifecycle: &Lifecycle,
    ) -> Result<&'r Arc<Material>, BackendError> {
        lifecycle.check_consuming(&self.key, &version.record)?;
        version.material.as_ref().ok_or_else(|| {
            BackendError::Rejected(Rejection::KeyUnusable {
                key: self.key.to_string(),
                version: version.record.version,
                state: KeyState::Destroyed,
            })
        })
    }
}
