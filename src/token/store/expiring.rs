//! A bounded map whose entries expire, for the in-memory store.
//!
//! A min-heap of expiry times indexes the map, so expired entries leave in expiry order as
//! new ones arrive: the map's memory follows the live entries, and a map full of live
//! entries refuses in constant time. (Sweeping by scanning the whole map, as this store
//! once did, cost a full pass under the store's one lock for every insertion refused, so
//! a full store stalled every other call.)
//!
//! Entries are never evicted before they expire: a store that forgot a live refresh-token
//! family, revocation or DPoP proof would end a session early, or let a revoked token or a
//! replayed proof through.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;

/// Expired entries removed by each insertion besides the room it needs itself: more than
/// one, so that the map drains faster than entries expire even when every insertion
/// replaces one expired entry (the heap cost is O(log n) each).
const SWEEP_PER_INSERT: usize = 4;

/// The map is full of entries that have not expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

#[derive(Debug)]
struct Timed<V> {
    value: V,
    expires_at: u64,
}

/// One expiry time in the heap. An entry whose expiry was later extended, or that was
/// replaced, leaves a stale mark behind; a mark counts only while it matches its entry.
#[derive(Debug)]
struct Mark<K> {
    expires_at: u64,
    key: K,
}

impl<K> PartialEq for Mark<K> {
    fn eq(&self, other: &Self) -> bool {
        self.expires_at == other.expires_at
    }
}

impl<K> Eq for Mark<K> {}

impl<K> PartialOrd for Mark<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<K> Ord for Mark<K> {
    /// Reversed, so that [`BinaryHeap`] (a max-heap) yields the earliest expiry first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.expires_at.cmp(&self.expires_at)
    }
}

/// A map holding at most `capacity` entries, each until its expiry time (seconds since the
/// epoch; an entry is live while `expires_at > now`).
#[derive(Debug)]
pub struct ExpiringMap<K, V> {
    entries: HashMap<K, Timed<V>>,
    expiries: BinaryHeap<Mark<K>>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> ExpiringMap<K, V> {
    /// An empty map that will hold at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            expiries: BinaryHeap::new(),
            capacity,
        }
    }

    /// The most entries the map holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries held, expired ones not yet removed included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The live entry under `key`.
    pub fn get<Q>(&self, key: &Q, now: u64) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries
            .get(key)
            .filter(|e| e.expires_at > now)
            .map(|e| &e.value)
    }

    /// The live entry under `key`, to change (its expiry stays).
    pub fn get_mut<Q>(&mut self, key: &Q, now: u64) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries
            .get_mut(key)
            .filter(|e| e.expires_at > now)
            .map(|e| &mut e.value)
    }

    /// Holds `value` under `key` until `expires_at`, replacing what the key held. Fails
    /// with [`Full`], changing nothing, when `key` is new and every one of `capacity`
    /// entries is live. (Replacing a live entry leaves its old mark in the heap until that
    /// time passes; the store only replaces entries that have expired.)
    pub fn insert(&mut self, key: K, value: V, expires_at: u64, now: u64) -> Result<(), Full> {
        self.remove_expired(now, SWEEP_PER_INSERT);
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            // Room for one, if an expired entry is left to give it.
            self.remove_expired(now, 1);
            if self.entries.len() >= self.capacity {
                return Err(Full);
            }
        }
        self.expiries.push(Mark {
            expires_at,
            key: key.clone(),
        });
        self.entries.insert(key, Timed { value, expires_at });
        Ok(())
    }

    /// Keeps the live entry under `key` until `expires_at` if that is later than its
    /// expiry. Returns whether a live entry was there.
    pub fn extend<Q>(&mut self, key: &Q, expires_at: u64, now: u64) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let Some(entry) = self.entries.get_mut(key).filter(|e| e.expires_at > now) else {
            return false;
        };
        if expires_at > entry.expires_at {
            entry.expires_at = expires_at;
            self.expiries.push(Mark {
                expires_at,
                key: key.to_owned(),
            });
        }
        true
    }

    /// Removes up to `most` expired entries, earliest expiry first, and returns how many
    /// it removed. Stale marks met on the way are dropped without counting.
    fn remove_expired(&mut self, now: u64, most: usize) -> usize {
        let mut removed = 0;
        while removed < most {
            let Some(mark) = self.expiries.peek() else {
                break;
            };
            if mark.expires_at > now {
                break;
            }
            let Some(mark) = self.expiries.pop() else {
                break;
            };
            let current = self
                .entries
                .get(&mark.key)
                .is_some_and(|e| e.expires_at == mark.expires_at);
            if current {
                self.entries.remove(&mark.key);
                removed += 1;
            }
        }
        removed
    }

    /// Heap marks held (for tests: stale marks must not pile up).
    #[cfg(test)]
    fn marks(&self) -> usize {
        self.expiries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(capacity: usize) -> ExpiringMap<u32, &'static str> {
        ExpiringMap::new(capacity)
    }

    #[test]
    fn an_entry_is_live_until_its_expiry() {
        let mut m = map(4);
        m.insert(1, "a", 100, 0).unwrap();
        assert_eq!(m.get(&1, 99), Some(&"a"));
        assert_eq!(m.get(&1, 100), None, "expires_at itself is past");
        assert_eq!(m.get_mut(&1, 100), None);
    }

    #[test]
    fn a_full_map_of_live_entries_refuses_and_keeps_every_entry() {
        let mut m = map(3);
        for k in 0..3 {
            m.insert(k, "live", 100 + u64::from(k), 0).unwrap();
        }
        assert_eq!(m.insert(9, "new", 200, 50), Err(Full));
        assert_eq!(m.len(), 3);
        for k in 0..3 {
            assert_eq!(m.get(&k, 50), Some(&"live"), "nothing live was evicted");
        }
        // Replacing a key already held needs no room.
        m.insert(1, "again", 300, 50).unwrap();
        assert_eq!(m.get(&1, 250), Some(&"again"));
    }

    #[test]
    fn a_full_map_makes_room_from_expired_entries_only() {
        let mut m = map(3);
        m.insert(0, "short", 10, 0).unwrap();
        m.insert(1, "long", 1000, 0).unwrap();
        m.insert(2, "long", 1000, 0).unwrap();
        m.insert(3, "new", 1000, 20).unwrap();
        assert_eq!(m.get(&0, 20), None);
        assert_eq!(m.len(), 3);
        assert_eq!(m.insert(4, "new", 1000, 20), Err(Full));
    }

    #[test]
    fn expired_entries_leave_as_new_ones_arrive_before_the_map_is_full() {
        let mut m = ExpiringMap::new(1_000);
        for k in 0..100u32 {
            m.insert(k, (), 10, 0).unwrap();
        }
        // Every later insertion removes up to SWEEP_PER_INSERT expired entries.
        for k in 100..130u32 {
            m.insert(k, (), 1000, 20).unwrap();
        }
        assert_eq!(m.len(), 30, "the 100 expired entries are gone");
        assert_eq!(m.marks(), 30);
    }

    #[test]
    fn an_extended_entry_outlives_its_first_expiry() {
        let mut m = map(2);
        m.insert(1, "denied", 10, 0).unwrap();
        assert!(m.extend(&1, 50, 5));
        assert!(m.extend(&1, 20, 5), "an earlier expiry does not shorten it");
        m.insert(2, "other", 100, 30).unwrap();
        assert_eq!(m.get(&1, 30), Some(&"denied"), "the old mark is stale");
        assert_eq!(m.insert(3, "x", 100, 30), Err(Full));
        m.insert(3, "x", 100, 60).unwrap();
        assert_eq!(m.get(&1, 60), None);
        assert!(!m.extend(&1, 500, 60), "an expired entry is not revived");
        assert_eq!(m.marks(), 2, "stale marks are dropped as their time passes");
    }

    #[test]
    fn a_replaced_entry_keeps_its_new_expiry() {
        let mut m = map(3);
        m.insert(1, "first", 100, 0).unwrap();
        m.insert(1, "shorter", 10, 0).unwrap();
        m.insert(2, "other", 1000, 20).unwrap();
        assert_eq!(m.get(&1, 20), None, "the shorter expiry counts");
        m.insert(1, "again", 200, 20).unwrap();
        // At 150 the mark left by "first" (100) is due, but key 1 now expires at 200.
        m.insert(3, "later", 1000, 150).unwrap();
        assert_eq!(m.get(&1, 150), Some(&"again"));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn a_zero_capacity_map_refuses_everything() {
        let mut m = map(0);
        assert_eq!(m.insert(1, "a", 10, 0), Err(Full));
        assert_eq!(m.len(), 0);
    }
}
