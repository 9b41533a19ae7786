//! The public keys each backend last published, kept so that the JWKS still holds them while
//! the backend does not answer: a resource server that fetches the JWKS during an outage of
//! the primary must still verify the tokens the primary signed before it went down.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::backends::jwk::PublicJwk;
use crate::backends::types::KeyRef;

/// How long a backend's last published keys stand in for it while it does not answer.
/// Longer than an access token lives (`tokens.max_access_ttl`, 1 h by default), so tokens
/// signed before an outage keep verifying; bounded, so keys the backend has since destroyed
/// are not published forever on old knowledge.
pub const LAST_KEYS_KEPT_FOR: Duration = Duration::from_secs(24 * 3600);

/// A backend's last answer for a ring, and when it came.
type LastAnswer = (Vec<PublicJwk>, Instant);

/// The last answer of each (backend, ring) to a public-keys call.
#[derive(Debug, Default)]
pub(super) struct PublishedKeys {
    last: Mutex<HashMap<(String, KeyRef), LastAnswer>>,
}

impl PublishedKeys {
    /// Records what `backend` answered for `ring` just now. Every JWKS read and introspection
    /// passes here, so an unchanged answer only refreshes its time, without copying keys.
    pub(super) fn remember(&self, backend: &str, ring: &KeyRef, keys: &[PublicJwk]) {
        let mut last = self.lock();
        match last.get_mut(&(backend.to_owned(), ring.clone())) {
            Some((known, at)) if known.as_slice() == keys => *at = Instant::now(),
            _ => {
                last.insert(
                    (backend.to_owned(), ring.clone()),
                    (keys.to_vec(), Instant::now()),
                );
            }
        }
    }

    /// Forgets `ring` on `backend` (the backend says it has no such ring).
    pub(super) fn forget(&self, backend: &str, ring: &KeyRef) {
        self.lock().remove(&(backend.to_owned(), ring.clone()));
    }

    /// What `backend` last answered for `ring`, unless older than [`LAST_KEYS_KEPT_FOR`].
    pub(super) fn last(&self, backend: &str, ring: &KeyRef) -> Option<Vec<PublicJwk>> {
        self.lock()
            .get(&(backend.to_owned(), ring.clone()))
            .filter(|(_, at)| at.elapsed() <= LAST_KEYS_KEPT_FOR)
            .map(|(keys, _)| keys.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, KeyRef), LastAnswer>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(kid: &str) -> PublicJwk {
        serde_json::from_value(serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": kid
        }))
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn last_keys_stand_in_for_a_bounded_time_and_can_be_forgotten() {
        let published = PublishedKeys::default();
        let ring = KeyRef::new("token", "signing").unwrap();
        assert!(published.last("a", &ring).is_none());
        published.remember("a", &ring, &[jwk("k1")]);
        let kids =
            |keys: Vec<PublicJwk>| keys.into_iter().filter_map(|k| k.kid).collect::<Vec<_>>();
        assert_eq!(kids(published.last("a", &ring).unwrap()), ["k1"]);
        assert!(published.last("b", &ring).is_none(), "per backend");

        tokio::time::advance(LAST_KEYS_KEPT_FOR).await;
        published.remember("a", &ring, &[jwk("k1")]);
        tokio::time::advance(LAST_KEYS_KEPT_FOR).await;
        assert!(
            published.last("a", &ring).is_some(),
            "an unchanged answer refreshes its time; kept up to the bound"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(published.last("a", &ring).is_none(), "not past it");

        published.remember("a", &ring, &[jwk("k2")]);
        published.forget("a", &ring);
        assert!(published.last("a", &ring).is_none());
    }
}
