//! The key-metadata cache of the remote backends (Crypto Service, AWS KMS): entries live for
//! a TTL, and one fetch runs at a time, so when an entry expires under load the callers
//! waiting behind the first fetch take its result instead of each asking the service again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::error::BackendError;
use super::types::KeyRef;

struct Entry<V> {
    fetched: Instant,
    value: Arc<V>,
}

/// Metadata per key ring, cached for a TTL.
pub struct RemoteCache<V> {
    entries: Mutex<HashMap<KeyRef, Entry<V>>>,
    /// Held while a fetch runs.
    fetching: tokio::sync::Mutex<()>,
    ttl: Duration,
}

impl<V> std::fmt::Debug for RemoteCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCache")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<V> RemoteCache<V> {
    /// An empty cache whose entries live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            fetching: tokio::sync::Mutex::new(()),
            ttl,
        }
    }

    /// The entry's TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<KeyRef, Entry<V>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fresh entry for `ring` and when it was fetched.
    fn fresh(&self, ring: &KeyRef) -> Option<(Instant, Arc<V>)> {
        self.lock()
            .get(ring)
            .filter(|e| e.fetched.elapsed() < self.ttl)
            .map(|e| (e.fetched, e.value.clone()))
    }

    /// Drops the entry for `ring`.
    pub fn forget(&self, ring: &KeyRef) {
        self.lock().remove(ring);
    }

    /// The entry for `ring`: cached unless stale or `refresh`, else fetched by `fetch`
    /// (one fetch at a time; a caller that waited for another's fetch takes its result).
    pub async fn get<F, Fut>(
        &self,
        ring: &KeyRef,
        refresh: bool,
        fetch: F,
    ) -> Result<Arc<V>, BackendError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, BackendError>>,
    {
        if !refresh && let Some((_, value)) = self.fresh(ring) {
            return Ok(value);
        }
        let asked = Instant::now();
        let _turn = self.fetching.lock().await;
        if let Some((fetched, value)) = self.fresh(ring)
            && fetched >= asked
        {
            return Ok(value);
        }
        let value = Arc::new(fetch().await?);
        self.lock().insert(
            ring.clone(),
            Entry {
                fetched: Instant::now(),
                value: value.clone(),
            },
        );
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_misses_fetch_once_and_refresh_fetches_again() {
        let cache = Arc::new(RemoteCache::<u32>::new(Duration::from_secs(60)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let ring = KeyRef::new("token", "signing").unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (cache, fetches, ring) = (cache.clone(), fetches.clone(), ring.clone());
                tokio::spawn(async move {
                    cache
                        .get(&ring, false, || async {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Ok(7)
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(*t.await.unwrap().unwrap(), 7);
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        let again = cache.get(&ring, true, || async { Ok(8) }).await.unwrap();
        assert_eq!(*again, 8);
        cache.forget(&ring);
        let failed = cache
            .get(&ring, false, || async {
                Err(BackendError::unavailable("b", "down"))
            })
            .await;
        assert!(failed.is_err(), "a failed fetch is not cached as a value");
    }
}
