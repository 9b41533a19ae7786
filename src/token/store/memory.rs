//! The in-memory store: the embedded default, for one instance. Bounded (a full store
//! refuses new families rather than evicting live ones) and expiring (expired entries are
//! ignored when read and removed, earliest first, as new ones arrive: see
//! `expiring::ExpiringMap`).

use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};

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

    /// Publishes how full the store is in `registry`, read at each scrape:
    /// `token_service_memory_store_entries{kind}` (families, denied jtis, DPoP proofs seen;
    /// expired ones not yet removed included) and `token_service_memory_store_capacity`.
    /// A full store refuses new entries, so this is what shows it coming.
    pub fn register_metrics(self: &Arc<Self>, registry: &Registry) -> prometheus::Result<()> {
        let entries = IntGaugeVec::new(
            Opts::new(
                "token_service_memory_store_entries",
                "Entries held by the in-memory token store, by kind (families, denied_jtis, dpop_proofs)",
            ),
            &["kind"],
        )?;
        let capacity = IntGauge::new(
            "token_service_memory_store_capacity",
            "Entries of each kind the in-memory token store holds at most",
        )?;
        registry.register(Box::new(FillMetrics {
            store: Arc::downgrade(self),
            entries,
            capacity,
        }))
    }
}

/// The collector behind [`MemoryStore::register_metrics`].
struct FillMetrics {
    store: Weak<MemoryStore>,
    entries: IntGaugeVec,
    capacity: IntGauge,
}

impl Collector for FillMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.entries
            .desc()
            .into_iter()
            .chain(self.capacity.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if let Some(store) = self.store.upgrade() {
            let (counts, capacity) = {
                let state = store.lock();
                (
                    [
                        ("families", state.families.len()),
                        ("denied_jtis", state.denied.len()),
                        ("dpop_proofs", state.seen.len()),
                    ],
                    state.families.capacity(),
                )
            };
            for (kind, count) in counts {
                self.entries
                    .with_label_values(&[kind])
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
            self.capacity
                .set(i64::try_from(capacity).unwrap_or(i64::MAX));
        }
        let mut families = self.entries.collect();
        families.extend(self.capacity.collect());
        families
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
        if !state.denied.extend(jti, until, now) {
            state.denied.insert(jti.to_owned(), (), until, now)?;
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
    async fn the_fill_of_each_kind_and_the_capacity_are_published_at_each_scrape() {
        let store = Arc::new(MemoryStore::new(10));
        let registry = Registry::new();
        store.register_metrics(&registry).unwrap();
        let (id, _, record) = family(u64::MAX);
        store.create_family(&id, record).await.unwrap();
        store.deny_jti("a", u64::MAX).await.unwrap();
        store.deny_jti("b", u64::MAX).await.unwrap();
        let gathered = registry.gather();
        let value = |name: &str, kind: Option<&str>| {
            gathered
                .iter()
                .find(|f| f.name() == name)
                .and_then(|f| {
                    f.get_metric().iter().find(|m| {
                        kind.is_none_or(|kind| m.get_label().iter().any(|l| l.value() == kind))
                    })
                })
                .map(|m| m.get_gauge().get_value())
        };
        assert_eq!(
            value("token_service_memory_store_entries", Some("families")),
            Some(1.0)
        );
        assert_eq!(
            value("token_service_memory_store_entries", Some("denied_jtis")),
            Some(2.0)
        );
        assert_eq!(
            value("token_service_memory_store_entries", Some("dpop_proofs")),
            Some(0.0)
        );
        assert_eq!(
            value("token_service_memory_store_capacity", None),
            Some(10.0)
        );
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
