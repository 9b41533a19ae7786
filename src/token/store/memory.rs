//! The in-memory store: the embedded default, for one instance. Bounded (a full store
//! refuses new families rather than evicting live ones) and expiring (expired entries are
//! swept when space is needed and ignored when read).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{FamilyRecord, MAX_RETIRED, Rotation, Store, StoreError};
use crate::token::refresh::{FamilyId, SecretHash};

/// Default capacity (families, and separately denied jtis).
pub const DEFAULT_CAPACITY: usize = 1_000_000;

#[derive(Debug, Default)]
struct State {
    families: HashMap<FamilyId, FamilyRecord>,
    denied: HashMap<String, u64>,
    seen: HashMap<String, u64>,
}

/// The in-memory store.
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
    capacity: usize,
    clock: fn() -> u64,
}

fn system_now() -> u64 {
    crate::backends::clock::Clock::now(&crate::backends::clock::SystemClock)
}

impl MemoryStore {
    /// A store holding at most `capacity` families and `capacity` denied jtis.
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            capacity,
            clock: system_now,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl MemoryStore {
    /// Number of families held (expired ones included until swept).
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
        if state.families.len() >= self.capacity {
            state.families.retain(|_, f| f.expires_at > now);
            if state.families.len() >= self.capacity {
                return Err(StoreError::Full);
            }
        }
        if let Some(taken) = state
            .families
            .get_mut(family)
            .filter(|f| f.expires_at > now)
        {
            // As the Redis store does (see [`Store::create_family`]).
            taken.revoked = true;
            return Err(StoreError::Exists);
        }
        state.families.insert(family.clone(), record);
        Ok(())
    }

    async fn get_family(
        &self,
        family: &FamilyId,
        now: u64,
    ) -> Result<Option<FamilyRecord>, StoreError> {
        Ok(self
            .lock()
            .families
            .get(family)
            .filter(|f| f.expires_at > now)
            .cloned())
    }

    async fn rotate(
        &self,
        family: &FamilyId,
        presented: &SecretHash,
        next: SecretHash,
        now: u64,
    ) -> Result<Rotation, StoreError> {
        let mut state = self.lock();
        let Some(record) = state
            .families
            .get_mut(family)
            .filter(|f| f.expires_at > now)
        else {
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
        match state
            .families
            .get_mut(family)
            .filter(|f| f.expires_at > now)
        {
            Some(record) if !record.revoked => {
                record.revoked = true;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn family_active(&self, family: &FamilyId, now: u64) -> Result<bool, StoreError> {
        let state = self.lock();
        Ok(state
            .families
            .get(family)
            .is_some_and(|f| !f.revoked && f.expires_at > now))
    }

    async fn deny_jti(&self, jti: &str, until: u64) -> Result<(), StoreError> {
        let now = (self.clock)();
        let mut state = self.lock();
        if state.denied.len() >= self.capacity {
            state.denied.retain(|_, until| *until > now);
            if state.denied.len() >= self.capacity {
                return Err(StoreError::Full);
            }
        }
        let entry = state.denied.entry(jti.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
        Ok(())
    }

    async fn is_denied(&self, jti: &str, now: u64) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .denied
            .get(jti)
            .is_some_and(|until| *until > now))
    }

    async fn first_use(&self, key: &str, until: u64, now: u64) -> Result<bool, StoreError> {
        let mut state = self.lock();
        if let Some(expires) = state.seen.get(key)
            && *expires > now
        {
            return Ok(false);
        }
        if state.seen.len() >= self.capacity {
            state.seen.retain(|_, expires| *expires > now);
            if state.seen.len() >= self.capacity {
                // Full of live entries: refusing is safe, forgetting one would allow a replay.
                return Err(StoreError::Full);
            }
        }
        state.seen.insert(key.to_owned(), until);
        Ok(true)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
