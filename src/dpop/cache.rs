//! Parsed proof keys, cached by RFC 7638 thumbprint and algorithm, so a client presenting
//! proofs with the same key pays for parsing it once. Bounded: when full, an arbitrary
//! entry makes room (a miss only costs a parse).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::backends::error::BackendError;
use crate::backends::jwk::{PreparedKey, PublicJwk};
use crate::backends::types::Algorithm;

/// The cache.
#[derive(Debug)]
pub struct KeyCache {
    entries: Mutex<HashMap<(String, Algorithm), Arc<PreparedKey>>>,
    capacity: usize,
}

impl KeyCache {
    /// A cache of at most `capacity` keys (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The parsed key for `jwk` and `algorithm`, from the cache or parsed now. The JWK's own
    /// `alg` member, when present, must be `algorithm`: it is not part of the thumbprint, so
    /// it is checked before the cache is consulted.
    pub fn get(
        &self,
        jwk: PublicJwk,
        algorithm: Algorithm,
    ) -> Result<Arc<PreparedKey>, BackendError> {
        if jwk
            .alg
            .as_deref()
            .is_some_and(|alg| alg != algorithm.as_str())
        {
            return PreparedKey::new(jwk, algorithm).map(Arc::new);
        }
        let id = (jwk.thumbprint()?, algorithm);
        if let Some(hit) = self.lock().get(&id) {
            return Ok(hit.clone());
        }
        let prepared = Arc::new(PreparedKey::new(jwk, algorithm)?);
        if self.capacity > 0 {
            let mut entries = self.lock();
            if entries.len() >= self.capacity
                && let Some(victim) = entries.keys().next().cloned()
            {
                entries.remove(&victim);
            }
            entries.insert(id, prepared.clone());
        }
        Ok(prepared)
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Algorithm), Arc<PreparedKey>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}
