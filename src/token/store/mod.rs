//! Where token state lives: refresh-token families and the access-token denylist. The
//! in-memory store serves one instance; Redis (single node or cluster) serves a fleet.
//!
//! Every operation that decides something is atomic in the store: rotation compares the
//! presented hash and replaces it in one step, so of many concurrent refreshes with one token
//! exactly one wins.

mod expiring;
pub mod memory;
pub mod metered;
pub mod redis;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::refresh::{FamilyId, SecretHash};

/// Retired token hashes kept per family for reuse detection; older ones are forgotten (a
/// token that old is then simply invalid).
pub const MAX_RETIRED: usize = 256;

/// A family as stored. `data` is the envelope (encrypted through the chain) holding the
/// grant: subject, client, scope, audience.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FamilyRecord {
    /// The hash of the one refresh token that may be used next.
    pub current: SecretHash,
    /// Hashes of tokens already used, newest last.
    pub retired: Vec<SecretHash>,
    /// Rotations so far.
    pub generation: u64,
    /// Set once reuse is detected or the family is revoked; final.
    pub revoked: bool,
    /// When the family ends (seconds since the epoch).
    pub expires_at: u64,
    /// The client it was granted to, in clear: public (every access token names it), and
    /// needed to authorize a revocation without opening `data`.
    pub client_id: String,
    /// The encrypted grant.
    pub data: String,
}

/// The outcome of presenting a refresh token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// It was the current token: it is retired, `next` is current now.
    Rotated,
    /// It was a retired token: the family is revoked now.
    Reused,
    /// The family was already revoked.
    Revoked,
    /// No such family, expired, or a hash the family never had.
    Unknown,
}

/// Store failures. Outages are distinct from "no": callers map them to UNAVAILABLE.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot answer now.
    #[error("token store unavailable: {0}")]
    Unavailable(String),
    /// The store is full (bounded in-memory store).
    #[error("token store is full")]
    Full,
    /// A family with this id exists already.
    #[error("family exists")]
    Exists,
    /// The store is set up so that it could lose entries that must be kept (a Redis that
    /// may evict keys): refused when connecting, never returned by a call.
    #[error("token store refused: {0}")]
    Unsafe(String),
}

/// Token state storage.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Creates a family. Its lifetime in the store follows `record.expires_at`.
    ///
    /// An id that is already taken (only a broken RNG repeats a 128-bit random id) fails
    /// with [`StoreError::Exists`] and leaves the family holding it revoked: fail closed, as
    /// a store that writes first and checks after cannot give it back intact.
    async fn create_family(
        &self,
        family: &FamilyId,
        record: FamilyRecord,
    ) -> Result<(), StoreError>;

    /// Reads a family (`None` if missing or expired). For preparing a refresh; the decision
    /// is made by [`Store::rotate`].
    async fn get_family(
        &self,
        family: &FamilyId,
        now: u64,
    ) -> Result<Option<FamilyRecord>, StoreError>;

    /// Atomically presents a refresh token: see [`Rotation`]. On `Rotated`, `next` becomes
    /// the current token.
    async fn rotate(
        &self,
        family: &FamilyId,
        presented: &SecretHash,
        next: SecretHash,
        now: u64,
    ) -> Result<Rotation, StoreError>;

    /// Revokes a family. Returns whether it existed (and was not yet revoked).
    async fn revoke_family(&self, family: &FamilyId, now: u64) -> Result<bool, StoreError>;

    /// Whether a family is revoked or gone.
    async fn family_active(&self, family: &FamilyId, now: u64) -> Result<bool, StoreError>;

    /// Denies an access-token jti until `until` (its expiry).
    async fn deny_jti(&self, jti: &str, until: u64) -> Result<(), StoreError>;

    /// Whether a jti is denied.
    async fn is_denied(&self, jti: &str, now: u64) -> Result<bool, StoreError>;

    /// Records `key` until `until` if it is not recorded yet: `true` the first time,
    /// `false` for a repeat. Atomic across every instance sharing the store (DPoP proof
    /// replay: a proof's hashed jti).
    async fn first_use(&self, key: &str, until: u64, now: u64) -> Result<bool, StoreError>;

    /// A cheap liveness probe.
    async fn ping(&self) -> Result<(), StoreError>;
}
