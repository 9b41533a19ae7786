//! The in-memory cache of rings read from the token: the ring record and, per version, the
//! kid and the public key parsed once. Entries older than the refresh interval are read
//! again, so a change made by another process is seen without a restart.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use aws_lc_rs::signature::ParsedPublicKey;
use cryptoki::session::Session;

use super::objects;
use super::pool::{OpError, Shared};
use crate::backends::envelope::EnvelopeKid;
use crate::backends::error::{BackendError, Rejection};
use crate::backends::jwk::PublicJwk;
use crate::backends::lifecycle::{Lifecycle, RingRecord, VersionRecord};
use crate::backends::types::{KeyMetadata, KeyRef, KeyState};

/// A version as cached: its kid and parsed public key.
#[derive(Debug)]
pub(super) struct VersionView {
    pub version: u32,
    pub kid: String,
    pub jwk: Option<PublicJwk>,
    pub verifier: Option<ParsedPublicKey>,
}

/// A ring as cached.
#[derive(Debug)]
pub(super) struct CachedRing {
    pub key: KeyRef,
    pub record: RingRecord,
    pub views: Vec<VersionView>,
    loaded: Instant,
}

impl CachedRing {
    /// The view of one version.
    pub fn view(&self, version: u32) -> Result<&VersionView, BackendError> {
        self.views
            .iter()
            .find(|v| v.version == version)
            .ok_or_else(|| {
                BackendError::Rejected(Rejection::UnknownKey(format!("{}#{version}", self.key)))
            })
    }

    /// Refuses a request for another algorithm than the ring's.
    pub fn check_algorithm(
        &self,
        requested: crate::backends::types::Algorithm,
    ) -> Result<(), BackendError> {
        self.record.algorithm.check_serves(&self.key, requested)
    }

    /// The record of one version.
    pub fn record(&self, version: u32) -> Option<&VersionRecord> {
        self.record.versions.iter().find(|v| v.version == version)
    }

    /// Metadata of one version.
    pub fn metadata(
        &self,
        backend: &str,
        record: &VersionRecord,
        lifecycle: &Lifecycle,
    ) -> KeyMetadata {
        let view = self.views.iter().find(|v| v.version == record.version);
        let key = self.key.clone().with_version(record.version);
        KeyMetadata {
            backend: backend.to_owned(),
            version: record.version,
            algorithm: self.record.algorithm,
            state: lifecycle.effective_state(record),
            created_at: record.created_at,
            rotated_at: record.rotated_at,
            retained_until: lifecycle.retained_until(record),
            kid: view
                .map(|v| v.kid.clone())
                .unwrap_or_else(|| format!("destroyed:{backend}/{key}")),
            public_jwk: view.and_then(|v| v.jwk.clone()),
            key,
        }
    }
}

/// Reads a ring from the token and parses its public keys.
pub(super) fn read(
    session: &Session,
    shared: &Shared,
    backend: &str,
    ring_key: KeyRef,
) -> Result<CachedRing, OpError> {
    let other = OpError::Other;
    let record = objects::require_ring(session, &ring_key)?.record;
    let mut views = Vec::with_capacity(record.versions.len());
    for v in record
        .versions
        .iter()
        .filter(|v| v.state != KeyState::Destroyed)
    {
        views.push(if record.algorithm.is_signing() {
            let jwk = objects::public_jwk(session, shared, &ring_key, v.version, record.algorithm)?
                .published(record.algorithm)
                .map_err(other)?;
            let verifier = jwk.verifier(record.algorithm).map_err(other)?;
            VersionView {
                version: v.version,
                kid: jwk.kid.clone().unwrap_or_default(),
                jwk: Some(jwk),
                verifier: Some(verifier),
            }
        } else {
            VersionView {
                version: v.version,
                kid: EnvelopeKid {
                    backend: backend.to_owned(),
                    namespace: ring_key.namespace().to_owned(),
                    name: ring_key.name().to_owned(),
                    version: v.version,
                }
                .to_string(),
                jwk: None,
                verifier: None,
            }
        });
    }
    Ok(CachedRing {
        key: ring_key,
        record,
        views,
        loaded: Instant::now(),
    })
}

/// Rings by label.
#[derive(Debug)]
pub(super) struct RingCache {
    rings: RwLock<HashMap<String, Arc<CachedRing>>>,
    refresh: Duration,
}

impl RingCache {
    /// An empty cache whose entries are fresh for `refresh`.
    pub fn new(refresh: Duration) -> Self {
        Self {
            rings: RwLock::new(HashMap::new()),
            refresh,
        }
    }

    /// The cached ring, if it is fresh.
    pub fn fresh(&self, key: &KeyRef) -> Option<Arc<CachedRing>> {
        let rings = self.rings.read().unwrap_or_else(|p| p.into_inner());
        rings
            .get(&objects::ring_label(key))
            .filter(|ring| ring.loaded.elapsed() < self.refresh)
            .cloned()
    }

    /// Stores a ring just read.
    pub fn insert(&self, ring: CachedRing) -> Arc<CachedRing> {
        let ring = Arc::new(ring);
        let mut rings = self.rings.write().unwrap_or_else(|p| p.into_inner());
        rings.insert(objects::ring_label(&ring.key), ring.clone());
        ring
    }

    /// Drops a ring (after this process changed it).
    pub fn forget(&self, key: &KeyRef) {
        let mut rings = self.rings.write().unwrap_or_else(|p| p.into_inner());
        rings.remove(&objects::ring_label(key));
    }
}
