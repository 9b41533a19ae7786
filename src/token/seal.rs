//! Sealing family grants under data keys (envelope encryption with data-key caching).
//!
//! A family's grant used to be sealed by the chain's encrypt operation itself: one remote
//! call per issuance and one per refresh when the Crypto Service is first for encryption,
//! and no refresh at all of the families it sealed while it is down. Here a random 256-bit
//! data key seals grants locally with AES-256-GCM; the data key itself is sealed
//! ("wrapped") by the chain once, and the wrapped key travels inside every grant it sealed,
//! so any instance can open the grant by unwrapping it (through the backend that wrapped it,
//! as the envelope's `kid` says). Unwrapped keys are kept in memory:
//!
//! - a data key seals new grants for [`DataKeySettings::rotate_after`] (and at most
//!   [`MAX_SEALS_PER_KEY`] of them, far below the 2^32 random-nonce limit of NIST SP 800-38D);
//! - an unwrapped data key is kept for [`DataKeySettings::cache_for`], so a running
//!   instance opens the grants of every key it has seen without the backend that wrapped it:
//!   refreshes go on through an outage of the Crypto Service. An instance started during
//!   the outage has seen no key and cannot open older grants until the service is back.
//!
//! What this trades: a data key lives in process memory for `cache_for` (the key sealing
//! now, for the longer of `rotate_after` and `cache_for`), and an instance keeps opening
//! grants for that long after the wrapping key has been disabled. `cache_for = "0s"` keeps
//! only the key that seals now. Keys past their time are dropped at the next open or new
//! data key, and by [`Sealer::forget_expired`], which a serving instance calls every
//! [`DataKeySettings::sweep_interval`] so that an idle one forgets too.
//!
//! Format: `dk1~<wrapped key>~<BASE64URL(nonce)>~<BASE64URL(ciphertext || tag)>`, the
//! wrapped key being the chain's compact envelope as it is (base64url and dots, never `~`),
//! with the GCM AAD `dk1~<wrapped key>~` followed by the caller's AAD (the family id).
//! Grants sealed before data keys (a chain envelope, `eyJ...`) still open through the chain.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, LessSafeKey, NONCE_LEN, UnboundKey};
use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use zeroize::Zeroizing;

use crate::backends::chain::Chain;
use crate::backends::clock::Clock;
use crate::backends::envelope::{Envelope, MAX_ENVELOPE_LEN, TAG_LEN, gcm_open, gcm_seal};
use crate::backends::error::{BackendError, Rejection};
use crate::backends::types::KeyRef;
use crate::context::CallContext;

/// The prefix of a grant sealed under a data key.
const PREFIX: &str = "dk1~";
/// Separates the parts of a sealed grant.
const SEPARATOR: char = '~';
/// The AAD of a data key's own sealing: a wrapped data key opens as nothing else.
const WRAP_AAD: &[u8] = b"token-service data key v1";
/// Grants one data key seals at most (2^28): with random 96-bit nonces the chance of a
/// repeated nonce stays below 2^-40.
pub const MAX_SEALS_PER_KEY: u64 = 1 << 28;
/// Unwrapped data keys kept at most; beyond it, those closest to expiry go first.
pub const MAX_CACHED_KEYS: usize = 16_384;

/// How long data keys seal and are remembered (`[tokens.data_keys]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataKeySettings {
    /// How long one data key seals new grants before the next is made (default 1 h).
    #[serde(with = "humantime_serde")]
    pub rotate_after: Duration,
    /// How long an unwrapped data key is kept to open grants (default 7 days, the default
    /// refresh-token lifetime); zero keeps only the one that seals now.
    #[serde(with = "humantime_serde")]
    pub cache_for: Duration,
}

impl DataKeySettings {
    /// How often a serving instance sweeps data keys past their time: a tenth of the
    /// shortest time a key is kept (`cache_for`, or `rotate_after` when nothing is kept),
    /// between 1 s and 60 s. A key leaves an idle instance's memory that much late at most.
    pub fn sweep_interval(&self) -> Duration {
        let kept_for = if self.cache_for.is_zero() {
            self.rotate_after
        } else {
            self.cache_for
        };
        (kept_for / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// How long the key sealing now stays in memory after it was made: it seals for
    /// `rotate_after` and is kept for `cache_for`.
    fn current_kept_for(&self) -> u64 {
        self.rotate_after.max(self.cache_for).as_secs()
    }
}

impl Default for DataKeySettings {
    fn default() -> Self {
        Self {
            rotate_after: Duration::from_secs(3600),
            cache_for: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// An unwrapped data key.
struct DataKey {
    key: LessSafeKey,
    /// `dk1~<wrapped key>~`: what starts every grant it seals and opens their GCM AAD,
    /// built once rather than per grant.
    header: String,
    /// Its id ([`key_id`] of its wrapped form), computed once.
    id: KeyId,
    /// When it was made or unwrapped (clock seconds).
    made_at: u64,
    /// Grants sealed with it so far.
    seals: std::sync::atomic::AtomicU64,
}

impl DataKey {
    fn new(key: LessSafeKey, wrapped: &str, made_at: u64, seals: u64) -> Self {
        Self {
            key,
            header: format!("{PREFIX}{wrapped}{SEPARATOR}"),
            id: key_id(wrapped),
            made_at,
            seals: std::sync::atomic::AtomicU64::new(seals),
        }
    }

    /// Its wrapped form (the chain's envelope), as it appears in grants.
    fn wrapped(&self) -> &str {
        &self.header[PREFIX.len()..self.header.len() - SEPARATOR.len_utf8()]
    }
}

/// Identifies a data key by its wrapped form.
type KeyId = [u8; 32];

fn key_id(wrapped: &str) -> KeyId {
    let mut id = [0u8; 32];
    id.copy_from_slice(digest(&SHA256, wrapped.as_bytes()).as_ref());
    id
}

/// Seals and opens grants under cached data keys wrapped by the chain.
pub struct Sealer {
    chain: Arc<Chain>,
    wrapping_key: KeyRef,
    clock: Arc<dyn Clock>,
    settings: DataKeySettings,
    /// The key sealing now.
    current: Mutex<Option<Arc<DataKey>>>,
    /// One wrap at a time: a rotation under load makes one data key, not one per caller.
    rotating: tokio::sync::Mutex<()>,
    /// Unwrapped keys by id, with when they are forgotten.
    opened: Mutex<KeptKeys>,
    /// Unwraps under way, by key id: the first opens of one key (a new instance under
    /// load) wait for one unwrap instead of each asking the backend.
    unwrapping: Mutex<HashMap<KeyId, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("wrapping_key", &self.wrapping_key)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// Seals under data keys wrapped by `chain` with `wrapping_key`.
    pub fn new(
        chain: Arc<Chain>,
        wrapping_key: KeyRef,
        clock: Arc<dyn Clock>,
        settings: DataKeySettings,
    ) -> Self {
        Self {
            chain,
            wrapping_key,
            clock,
            settings,
            current: Mutex::new(None),
            rotating: tokio::sync::Mutex::new(()),
            opened: Mutex::new(KeptKeys::default()),
            unwrapping: Mutex::new(HashMap::new()),
        }
    }

    /// Seals `plaintext` bound to `aad` under the current data key (made and wrapped
    /// first when there is none, or it is old or used up).
    pub async fn seal(
        &self,
        ctx: &CallContext,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<String, BackendError> {
        let key = self.sealing_key(ctx).await?;
        let nonce = Envelope::fresh_nonce("data-keys")?;
        let header = &key.header;
        let sealed = gcm_seal(&key.key, nonce, &gcm_aad(header, aad), plaintext)?;
        Ok(format!(
            "{header}{}{SEPARATOR}{}",
            B64.encode(nonce),
            B64.encode(sealed.as_slice())
        ))
    }

    /// Opens what [`Sealer::seal`] made (or a chain envelope from before data keys),
    /// checking `aad`. The data key is unwrapped through the chain only when it is not in
    /// memory. Any mismatch is [`BackendError::DecryptionFailed`].
    pub async fn open(
        &self,
        ctx: &CallContext,
        sealed: &str,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let Some(rest) = sealed.strip_prefix(PREFIX) else {
            return self.chain.decrypt(ctx, sealed, aad).await;
        };
        if sealed.len() > MAX_ENVELOPE_LEN {
            return Err(malformed("sealed grant too long"));
        }
        let mut parts = rest.split(SEPARATOR);
        let (Some(wrapped), Some(nonce_b64), Some(body_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("expected dk1~<wrapped key>~<nonce>~<ciphertext>"));
        };
        let nonce: [u8; NONCE_LEN] = B64
            .decode(nonce_b64)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| malformed("nonce"))?;
        let body = B64.decode(body_b64).map_err(|_| malformed("ciphertext"))?;
        if body.len() < TAG_LEN {
            return Err(malformed("ciphertext shorter than its tag"));
        }
        let key = self.opening_key(ctx, wrapped).await?;
        let header = &sealed[..PREFIX.len() + wrapped.len() + SEPARATOR.len_utf8()];
        gcm_open(&key.key, nonce, &gcm_aad(header, aad), body)
    }

    /// The current data key, or a new one when it is missing, old or used up.
    async fn sealing_key(&self, ctx: &CallContext) -> Result<Arc<DataKey>, BackendError> {
        if let Some(key) = self.usable_current() {
            return Ok(key);
        }
        let _rotating = self.rotating.lock().await;
        // Another caller may have made one while this one waited.
        if let Some(key) = self.usable_current() {
            return Ok(key);
        }
        let mut raw = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(raw.as_mut())
            .map_err(|_| BackendError::unavailable("data-keys", "system RNG failed"))?;
        let wrapped = self
            .chain
            .encrypt(ctx, &self.wrapping_key, raw.as_ref(), WRAP_AAD)
            .await?;
        let key = Arc::new(DataKey::new(
            aes_key(raw.as_ref())?,
            &wrapped,
            self.clock.now(),
            0,
        ));
        self.remember(&key);
        self.events().data_key_made();
        *lock(&self.current) = Some(key.clone());
        self.forget_expired();
        tracing::info!(wrapping_key = %self.wrapping_key, "new data key for sealing token families");
        self.usable_current()
            .ok_or_else(|| BackendError::unavailable("data-keys", "a fresh data key was refused"))
    }

    /// The current key, counting one more seal, if it is neither old nor used up.
    fn usable_current(&self) -> Option<Arc<DataKey>> {
        let current = lock(&self.current);
        let key = current.as_ref()?;
        let age = self.clock.now().saturating_sub(key.made_at);
        if age >= self.settings.rotate_after.as_secs() {
            return None;
        }
        let seals = key.seals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (seals < MAX_SEALS_PER_KEY).then(|| key.clone())
    }

    /// The key `wrapped` holds: from memory, or unwrapped through the chain (once, however
    /// many callers ask at the same time) and kept.
    async fn opening_key(
        &self,
        ctx: &CallContext,
        wrapped: &str,
    ) -> Result<Arc<DataKey>, BackendError> {
        let id = key_id(wrapped);
        if let Some(key) = self.known(&id, wrapped) {
            return Ok(key);
        }
        let gate = lock(&self.unwrapping).entry(id).or_default().clone();
        let _turn = gate.lock().await;
        // Another caller may have unwrapped it while this one waited.
        if let Some(key) = self.known(&id, wrapped) {
            return Ok(key);
        }
        let unwrapped = self.unwrap(ctx, wrapped).await;
        lock(&self.unwrapping).remove(&id);
        unwrapped
    }

    /// The key `wrapped` holds, if it is kept or is the one sealing now (usable even with
    /// nothing kept, `cache_for` zero), and not past its time.
    fn known(&self, id: &KeyId, wrapped: &str) -> Option<Arc<DataKey>> {
        let now = self.clock.now();
        let mut opened = lock(&self.opened);
        let mut current = lock(&self.current);
        self.forget_expired_locked(&mut opened, &mut current, now);
        opened.get(id, now).or_else(|| {
            current
                .as_ref()
                .filter(|key| key.wrapped() == wrapped)
                .cloned()
        })
    }

    /// Drops every data key past its time from memory: kept keys after `cache_for`, and the
    /// key sealing now once it neither seals nor is kept. Lookups and new keys do this too;
    /// a serving instance also calls it every [`DataKeySettings::sweep_interval`], so that
    /// key material leaves an idle instance on time.
    pub fn forget_expired(&self) {
        let now = self.clock.now();
        let mut opened = lock(&self.opened);
        let mut current = lock(&self.current);
        self.forget_expired_locked(&mut opened, &mut current, now);
    }

    /// [`Sealer::forget_expired`] under the locks (taken in this order everywhere: `opened`,
    /// then `current`); sets the gauge of keys held.
    fn forget_expired_locked(
        &self,
        opened: &mut KeptKeys,
        current: &mut Option<Arc<DataKey>>,
        now: u64,
    ) {
        opened.forget_expired(now);
        let kept_for = self.settings.current_kept_for();
        if current
            .as_ref()
            .is_some_and(|key| now.saturating_sub(key.made_at) >= kept_for)
        {
            *current = None;
        }
        self.events().data_keys_held(held(opened, current));
    }

    /// Unwraps `wrapped` through the chain (routed by its envelope's `kid`) and keeps it.
    async fn unwrap(&self, ctx: &CallContext, wrapped: &str) -> Result<Arc<DataKey>, BackendError> {
        let raw = self.chain.decrypt(ctx, wrapped, WRAP_AAD).await?;
        // Counted as used up: it never seals, only a key made here does.
        let key = Arc::new(DataKey::new(
            aes_key(&raw)?,
            wrapped,
            self.clock.now(),
            MAX_SEALS_PER_KEY,
        ));
        self.remember(&key);
        self.events().data_key_unwrapped();
        Ok(key)
    }

    /// Keeps `key` for `cache_for`, dropping expired keys, and the soonest to expire when
    /// the cache is full.
    fn remember(&self, key: &Arc<DataKey>) {
        let ttl = self.settings.cache_for.as_secs();
        let now = self.clock.now();
        let mut opened = lock(&self.opened);
        if ttl > 0 {
            opened.insert(key, now, now.saturating_add(ttl));
        }
        let mut current = lock(&self.current);
        self.forget_expired_locked(&mut opened, &mut current, now);
    }

    /// Where data keys are counted (the chain's metrics registry).
    fn events(&self) -> &super::events::TokenEventFamilies {
        self.chain.metrics().tokens()
    }

    /// Data keys in memory now: those kept to open grants and the one sealing now (for
    /// tests; `token_service_data_keys_held` shows it).
    pub fn cached_keys(&self) -> usize {
        let opened = lock(&self.opened);
        held(&opened, &lock(&self.current))
    }
}

/// Unwrapped data keys with when each is forgotten. Keys past their time are dropped (and
/// with them the key material) at the first lookup or insertion after it, not only when
/// the map is full: `cache_for` bounds how long a key stays in memory, not just its use.
#[derive(Default)]
struct KeptKeys {
    keys: HashMap<KeyId, (Arc<DataKey>, u64)>,
    /// The earliest time a kept key is forgotten; None when none is kept.
    next_expiry: Option<u64>,
}

impl KeptKeys {
    /// The key `id` names, unless forgotten by `now`.
    fn get(&mut self, id: &KeyId, now: u64) -> Option<Arc<DataKey>> {
        self.forget_expired(now);
        self.keys.get(id).map(|(key, _)| key.clone())
    }

    /// Keeps `key` until `forget_at`; when full, the soonest to be forgotten goes first.
    fn insert(&mut self, key: &Arc<DataKey>, now: u64, forget_at: u64) {
        self.forget_expired(now);
        if self.keys.len() >= MAX_CACHED_KEYS
            && let Some(soonest) = self
                .keys
                .iter()
                .min_by_key(|(_, (_, forget_at))| *forget_at)
                .map(|(id, _)| *id)
        {
            self.keys.remove(&soonest);
        }
        self.keys.insert(key.id, (key.clone(), forget_at));
        self.next_expiry = Some(self.next_expiry.map_or(forget_at, |t| t.min(forget_at)));
    }

    /// Drops every key forgotten by `now`: a scan only when one is due.
    fn forget_expired(&mut self, now: u64) {
        if self.next_expiry.is_none_or(|due| due > now) {
            return;
        }
        self.keys.retain(|_, (_, forget_at)| *forget_at > now);
        self.next_expiry = self.keys.values().map(|(_, forget_at)| *forget_at).min();
    }
}

/// Data keys in memory: those kept, and the one sealing now if it is not kept as well.
fn held(opened: &KeptKeys, current: &Option<Arc<DataKey>>) -> usize {
    let sealing_only = current
        .as_ref()
        .is_some_and(|key| !opened.keys.contains_key(&key.id));
    opened.keys.len() + usize::from(sealing_only)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded maps hold no invariant a panic could break halfway.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn aes_key(raw: &[u8]) -> Result<LessSafeKey, BackendError> {
    if raw.len() != 32 {
        return Err(BackendError::DecryptionFailed);
    }
    UnboundKey::new(&AES_256_GCM, raw)
        .map(LessSafeKey::new)
        .map_err(|_| BackendError::DecryptionFailed)
}

fn gcm_aad(header: &str, aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len() + aad.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(aad);
    out
}

fn malformed(detail: &str) -> BackendError {
    BackendError::Rejected(Rejection::MalformedEnvelope(detail.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_key(wrapped: &str) -> Arc<DataKey> {
        Arc::new(DataKey::new(aes_key(&[7u8; 32]).unwrap(), wrapped, 0, 0))
    }

    #[test]
    fn kept_keys_are_dropped_from_memory_once_forgotten_not_only_unused() {
        let mut kept = KeptKeys::default();
        let (early, late) = (data_key("early"), data_key("late"));
        kept.insert(&early, 0, 100);
        kept.insert(&late, 0, 200);
        assert!(kept.get(&key_id("early"), 99).is_some());
        assert_eq!(kept.next_expiry, Some(100));

        // Looking up another key at 100 drops the one forgotten at 100 (and its material:
        // this map held the last reference).
        assert!(kept.get(&key_id("late"), 100).is_some());
        assert_eq!(kept.keys.len(), 1);
        assert_eq!(Arc::strong_count(&early), 1);
        assert_eq!(kept.next_expiry, Some(200));

        // A new key's insertion drops the expired ones too.
        kept.insert(&data_key("new"), 250, 300);
        assert_eq!(kept.keys.len(), 1);
        assert!(kept.get(&key_id("late"), 250).is_none());
        assert_eq!(kept.next_expiry, Some(300));
        assert!(kept.get(&key_id("new"), 300).is_none());
        assert!(kept.keys.is_empty());
        assert_eq!(kept.next_expiry, None);
    }

    #[test]
    fn the_idle_sweep_runs_at_a_tenth_of_the_shortest_keeping_between_1_s_and_60_s() {
        let settings = |rotate_after: u64, cache_for: u64| DataKeySettings {
            rotate_after: Duration::from_secs(rotate_after),
            cache_for: Duration::from_secs(cache_for),
        };
        assert_eq!(
            DataKeySettings::default().sweep_interval(),
            Duration::from_secs(60)
        );
        assert_eq!(
            settings(3600, 100).sweep_interval(),
            Duration::from_secs(10)
        );
        assert_eq!(settings(3600, 3).sweep_interval(), Duration::from_secs(1));
        assert_eq!(settings(50, 0).sweep_interval(), Duration::from_secs(5));
    }

    #[test]
    fn a_full_cache_makes_room_by_dropping_the_key_closest_to_its_end() {
        let mut kept = KeptKeys::default();
        for i in 0..MAX_CACHED_KEYS {
            let forget_at = 1_000 + u64::try_from(i).unwrap();
            kept.insert(&data_key(&format!("k{i}")), 0, forget_at);
        }
        kept.insert(&data_key("newest"), 0, 5_000);
        assert_eq!(kept.keys.len(), MAX_CACHED_KEYS);
        assert!(
            kept.get(&key_id("k0"), 0).is_none(),
            "the soonest to go went"
        );
        assert!(kept.get(&key_id("k1"), 0).is_some());
        assert!(kept.get(&key_id("newest"), 0).is_some());
    }
}
