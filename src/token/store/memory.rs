//! The in-memory store: the embedded default, for one instance. Bounded (a full store
//! refuses new families rather than evicting live ones) and expiring (expired entries are
//! ignored when read and removed, earliest first, as new ones arrive: see
//! [`ExpiringMap`]).

use std::sync::Mutex;

use async_trait::async_trait;

use super::expiring::{ExpiringMap, Full};
use super::{FamilyRecord, MAX_RETIRED, Rotation, Store, StoreError};
use crate::token::refresh::{FamilyId, SecretHash};

/// Default capacity (families, and separately denied jtis and DPoP proofs seen).
pub const DEFAULT_CAPACITY: usize = 1_000_000;

#[derive(Debug)]
struct State {
    families: ExpiringMap<FamilyId, FamilyRecord>,
    /// Denied access-token jtis, until the token's expiry.
    denied: ExpiringMap<String, ()>,
    /// First uses (DPoP proof jtis), until the proof could no longer be accepted.
    seen: ExpiringMap<String, ()>,
}

impl From<Full> for StoreError {
    fn from(_: Full) -> Self {
        StoreError::Full
    }
}

/// The in-memory store.
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
    clock: fn() -> u64,
}

fn system_now() -> u64 {
    crate::backends::clock::Clock::now(&crate::backends::clock::SystemClock)
}

impl MemoryStore {
    /// A store holding at most `capacity` families, `capacity` denied jtis and `capacity`
    /// DPoP proofs seen.
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                families: ExpiringMap::new(capacity),
                denied: ExpiringMap::new(capacity),
                seen: ExpiringMap::new(capacity),
            }),
            clock: system_now,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl MemoryStore {
    /// Number of families held (expired ones included until newer ones push them out).
    pub fn families(&self) -> usize {
        self.lock().families.len()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_family(
        &self,
        family: &FamilyId,
        record: FamilyRecord,
    ) -> Result<(), StoreError> {
        let now = (self.clock)();
        let mut state = self.lock();
        if let Some(taken) = state.families.get_mut(family, now) {
            // As the Redis store does (see [`Store::create_family`]).
            taken.revoked = true;
            return Err(StoreError::Exists);
        }
        let expires_at = record.expires_at;
        state
            .families
            .insert(family.clone(), record, expires_at, now)?;
        Ok(())
    }

    async fn get_family(
        &self,
        family: &FamilyId,
        now: u64,
    ) -> Result<Option<FamilyRecord>, StoreError> {
        Ok(self.lock().families.get(family, now).cloned())
    }

    async fn rotate(
        &self,
        family: &FamilyId,
        presented: &SecretHash,
        next: SecretHash,
        now: u64,
    ) -> Result<Rotation, StoreError> {
        let mut state = self.lock();
        let Some(record) = state.families.get_mut(family, now) else {
            return Ok(Rotation::Unknown);
        };
        if record.revoked {
            return Ok(Rotation::Revoked);
        }
        if record.current.matches(presented) {
            let used = std::mem::replace(&mut record.current, next);
            record.retired.push(used);
            if record.retired.len() > MAX_RETIRED {
                record.retired.remove(0);
            }
            record.generation += 1;
            return Ok(Rotation::Rotated);
        }
        // Check every retired hash (no early exit), so timing does not tell which matched.
        let reused = record
            .retired
            .iter()
            .fold(false, |found, old| found | old.matches(presented));
        if reused {
            record.revoked = true;
            return Ok(Rotation::Reused);
        }
        Ok(Rotation::Unknown)
    }

    async fn revoke_family(&self, family: &FamilyId, now: u64) -> Result<bool, StoreError> {
        let mut state = self.lock();
        match state.families.get_mut(family, now) {
            Some(record) if !record.revoked => {
                record.revoked = true;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn family_active(&self, family: &FamilyId, now: u64) -> Result<bool, StoreError> {
        let state = self.lock();
        Ok(state.families.get(family, now).is_some_and(|f| !f.revoked))
    }

    async fn deny_jti(&self, jti: &str, until: u64) -> Result<(), StoreError> {
        let now = (self.clock)();
        let mut state = self.lock();
        let key = jti.to_owned();
        if !state.denied.extend(&key, until, now) {
            state.denied.insert(key, (), until, now)?;
        }
        Ok(())
    }

    async fn is_denied(&self, jti: &str, now: u64) -> Result<bool, StoreError> {
        Ok(self.lock().denied.get(jti, now).is_some())
    }

    async fn first_use(&self, key: &str, until: u64, now: u64) -> Result<bool, StoreError> {
        let mut state = self.lock();
        if state.seen.get(key, now).is_some() {
            return Ok(false);
        }
        // Full of live entries: refusing is safe, forgetting one would allow a replay.
        state.seen.insert(key.to_owned(), (), until, now)?;
        Ok(true)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::token::refresh::RefreshToken;

    /// Test clocks: each test moves its own.
    static FULL_CLOCK: AtomicU64 = AtomicU64::new(1_000);
    static DENY_CLOCK: AtomicU64 = AtomicU64::new(1_000);

    fn store(capacity: usize, clock: fn() -> u64) -> MemoryStore {
        MemoryStore {
            clock,
            ..MemoryStore::new(capacity)
        }
    }

    fn family(expires_at: u64) -> (FamilyId, SecretHash, FamilyRecord) {
        let id = FamilyId::generate().unwrap();
        let current = RefreshToken::generate(id.clone()).unwrap().hash();
        let record = FamilyRecord {
            current: current.clone(),
            retired: Vec::new(),
            generation: 0,
            revoked: false,
            expires_at,
            client_id: "web".into(),
            data: "sealed".into(),
        };
        (id, current, record)
    }

    #[tokio::test]
    async fn a_full_store_refuses_new_families_serves_the_others_and_makes_room_as_they_expire() {
        let store = store(3, || FULL_CLOCK.load(Ordering::SeqCst));
        let short = family(1_100);
        let long = [family(5_000), family(5_000)];
        for (id, _, record) in [&short, &long[0], &long[1]] {
            store.create_family(id, record.clone()).await.unwrap();
        }
        let (extra, _, extra_record) = family(5_000);
        assert_eq!(
            store.create_family(&extra, extra_record.clone()).await,
            Err(StoreError::Full)
        );
        // The families held are untouched and keep rotating.
        let (id, current, _) = &long[0];
        let next = RefreshToken::generate(id.clone()).unwrap().hash();
        assert_eq!(
            store.rotate(id, current, next, 1_050).await,
            Ok(Rotation::Rotated)
        );
        assert!(store.family_active(&short.0, 1_050).await.unwrap());
        // Once the short family has expired, its room goes to a new one.
        FULL_CLOCK.store(1_200, Ordering::SeqCst);
        store.create_family(&extra, extra_record).await.unwrap();
        assert_eq!(store.families(), 3);
        assert!(!store.family_active(&short.0, 1_200).await.unwrap());
        assert!(store.family_active(&extra, 1_200).await.unwrap());
    }

    #[tokio::test]
    async fn a_denial_lasts_until_its_latest_expiry() {
        let store = store(2, || DENY_CLOCK.load(Ordering::SeqCst));
        store.deny_jti("a", 1_100).await.unwrap();
        store.deny_jti("a", 1_500).await.unwrap();
        store.deny_jti("a", 1_200).await.unwrap();
        DENY_CLOCK.store(1_300, Ordering::SeqCst);
        store.deny_jti("b", 2_000).await.unwrap();
        assert!(store.is_denied("a", 1_300).await.unwrap());
        assert_eq!(
            store.deny_jti("c", 2_000).await,
            Err(StoreError::Full),
            "two live denials fill a capacity of 2"
        );
        DENY_CLOCK.store(1_600, Ordering::SeqCst);
        store.deny_jti("c", 2_000).await.unwrap();
        assert!(!store.is_denied("a", 1_600).await.unwrap());
        assert!(store.is_denied("c", 1_600).await.unwrap());
    }

    #[tokio::test]
    async fn a_full_replay_record_still_recognizes_a_replay() {
        let store = MemoryStore::new(2);
        assert_eq!(store.first_use("p1", 1_100, 1_000).await, Ok(true));
        assert_eq!(store.first_use("p2", 1_100, 1_000).await, Ok(true));
        assert_eq!(store.first_use("p1", 1_100, 1_050).await, Ok(false));
        assert_eq!(
            store.first_use("p3", 1_100, 1_050).await,
            Err(StoreError::Full)
        );
        assert_eq!(store.first_use("p3", 1_200, 1_100).await, Ok(true));
        assert_eq!(store.first_use("p3", 1_200, 1_150).await, Ok(false));
    }
}
