//! The Crypto Service's key metadata as this backend caches it, and the checks of an
//! answer's key version against it.

use std::sync::Arc;

use aws_lc_rs::signature::ParsedPublicKey;

use super::request::{correlation_id, outbound};
use super::wire::{key_id, metadata_from_wire};
use super::{CryptoServiceBackend, NAME, violation};
use crate::api::crypto_proto as pb;
use crate::backends::error::{BackendError, Rejection};
use crate::backends::jwk::{PublicJwk, check_own_signature};
use crate::backends::types::{KeyMetadata, KeyRef, KeyState, Operation};

/// A key's versions and public keys as last fetched.
pub(super) struct CachedKey {
    pub(super) versions: Vec<KeyMetadata>,
    /// Each signing version's public key, parsed once per fetch: every signature the
    /// service returns is checked against it.
    verifiers: Vec<(u32, ParsedPublicKey)>,
}

impl std::fmt::Debug for CachedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedKey")
            .field("versions", &self.versions)
            .finish_non_exhaustive()
    }
}

impl CachedKey {
    /// The versions, with their public keys parsed into verifiers; a public key that does
    /// not parse for its version's algorithm is a violation.
    pub(super) fn new(ring: &KeyRef, versions: Vec<KeyMetadata>) -> Result<Self, BackendError> {
        let verifiers = versions
            .iter()
            .filter_map(|m| m.public_jwk.as_ref().map(|jwk| (m, jwk)))
            .map(|(m, jwk)| {
                jwk.verifier(m.algorithm)
                    .map(|verifier| (m.version, verifier))
                    .map_err(|e| {
                        violation(format!(
                            "public key of {ring} version {} is unusable: {e}",
                            m.version
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            versions,
            verifiers,
        })
    }

    /// Checks that `signature` over `message` verifies with `version`'s public key: a
    /// service that answers otherwise is misbehaving (a fault, or another key), and the
    /// signature must not reach a token.
    pub(super) fn check_signature(
        &self,
        key: &KeyRef,
        version: u32,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), BackendError> {
        let verifier = self
            .verifiers
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, verifier)| verifier);
        check_own_signature(verifier, message, signature).map_err(|why| {
            violation(format!(
                "signature from {} version {version}: {why}",
                key.ring()
            ))
        })
    }

    pub(super) fn active(&self) -> Option<&KeyMetadata> {
        self.versions
            .iter()
            .rev()
            .find(|m| m.state == KeyState::Active)
    }

    pub(super) fn version(&self, version: u32) -> Option<&KeyMetadata> {
        self.versions.iter().find(|m| m.version == version)
    }
}

impl CryptoServiceBackend {
    pub(super) fn forget(&self, ring: &KeyRef) {
        self.cache.forget(ring);
    }

    /// The key's metadata, from the cache unless stale or `refresh` (one fetch at a time).
    pub(super) async fn metadata(
        &self,
        key: &KeyRef,
        refresh: bool,
    ) -> Result<Arc<CachedKey>, BackendError> {
        let ring = key.ring();
        self.cache
            .get(&ring, refresh, || self.fetch_metadata(&ring))
            .await
    }

    pub(super) async fn fetch_metadata(&self, ring: &KeyRef) -> Result<CachedKey, BackendError> {
        let ring = ring.clone();
        let mut client = self.client.clone();
        let wire = client
            .get_key_metadata(outbound(pb::GetKeyMetadataRequest {
                correlation_id: correlation_id(),
                key_id: key_id(&ring),
            }))
            .await
            .map_err(|s| self.failed(&s))?
            .into_inner();
        let mut versions = metadata_from_wire(NAME, &ring, wire)?;
        if versions.first().is_some_and(|m| m.algorithm.is_signing()) {
            self.attach_public_keys(&ring, &mut versions).await?;
        }
        CachedKey::new(&ring, versions)
    }

    /// Fetches the public keys and attaches each to its version, checking that every JWK's
    /// thumbprint is the `kid` the metadata lists for that version.
    pub(super) async fn attach_public_keys(
        &self,
        ring: &KeyRef,
        versions: &mut [KeyMetadata],
    ) -> Result<(), BackendError> {
        let mut client = self.client.clone();
        let listed = client
            .list_public_keys(outbound(pb::ListPublicKeysRequest {
                correlation_id: correlation_id(),
                key_id: key_id(ring),
            }))
            .await
            .map_err(|s| self.failed(&s))?
            .into_inner();
        for key in listed.keys {
            let Some(version) = versions.iter_mut().find(|m| m.version == key.version) else {
                return Err(violation(format!(
                    "public key for {ring} version {} that the metadata does not list",
                    key.version
                )));
            };
            let jwk: PublicJwk = serde_json::from_str(&key.jwk).map_err(|_| {
                violation(format!(
                    "public key of {ring} version {} is not a JWK",
                    key.version
                ))
            })?;
            if jwk.thumbprint()? != version.kid || key.kid != version.kid {
                return Err(violation(format!(
                    "public key of {ring} version {} does not match its kid",
                    key.version
                )));
            }
            version.public_jwk = Some(jwk.published(version.algorithm)?);
        }
        Ok(())
    }

    /// The version a Sign or Encrypt will use, refused before any RPC if it is not ACTIVE.
    pub(super) async fn producing(
        &self,
        key: &KeyRef,
        operation: Operation,
    ) -> Result<(Arc<CachedKey>, KeyMetadata), BackendError> {
        let cached = self.metadata(key, false).await?;
        let chosen = match key.version() {
            Some(v) => cached.version(v).cloned().ok_or_else(|| {
                BackendError::Rejected(Rejection::UnknownKid(format!("{} version {v}", key.ring())))
            })?,
            None => match cached.active() {
                Some(m) => m.clone(),
                None => {
                    let newest = cached.versions.last();
                    return Err(BackendError::Rejected(Rejection::KeyNotActive {
                        key: key.ring().to_string(),
                        version: newest.map_or(0, |m| m.version),
                        state: newest.map_or(KeyState::Disabled, |m| m.state),
                        operation,
                    }));
                }
            },
        };
        if chosen.state != KeyState::Active {
            return Err(BackendError::Rejected(Rejection::KeyNotActive {
                key: key.ring().to_string(),
                version: chosen.version,
                state: chosen.state,
                operation,
            }));
        }
        Ok((cached, chosen))
    }

    /// Checks the key and version an answer names against the request and the metadata.
    /// A newer version than the cached ACTIVE one is a rotation: the metadata is fetched
    /// again, and the answer must then name an ACTIVE version.
    pub(super) async fn answered_version(
        &self,
        key: &KeyRef,
        expected: &KeyMetadata,
        answered_key: &str,
        answered_version: u32,
    ) -> Result<KeyMetadata, BackendError> {
        let ring = key.ring();
        if answered_key != key_id(&ring) {
            return Err(violation(format!(
                "answer names key `{}`, asked for {ring}",
                crate::backends::types::truncate_for_message(answered_key)
            )));
        }
        if answered_version == expected.version {
            return Ok(expected.clone());
        }
        if key.version().is_some() || answered_version < expected.version {
            return Err(violation(format!(
                "answer used {ring} version {answered_version}, expected version {}",
                expected.version
            )));
        }
        let refreshed = self.metadata(key, true).await?;
        match refreshed.version(answered_version) {
            Some(m) if m.state == KeyState::Active => {
                tracing::info!(key = %ring, version = answered_version, "Crypto Service key rotated; metadata and public keys refreshed");
                Ok(m.clone())
            }
            _ => Err(violation(format!(
                "answer used {ring} version {answered_version}, which the metadata does not list as ACTIVE"
            ))),
        }
    }
}

/// Expected JWS signature length for a key version.
pub(super) fn signature_len(version: &KeyMetadata) -> Option<usize> {
    if let Some(len) = version.algorithm.fixed_signature_len() {
        return Some(len);
    }
    let n = version.public_jwk.as_ref()?.n.as_deref()?;
    // base64url without padding: 4 characters per 3 bytes.
    let len = n.len() * 3 / 4;
    Some(len)
}
