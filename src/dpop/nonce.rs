//! Server nonces (RFC 9449 §8, §9), stateless so every instance accepts what another
//! issued: a nonce is a time-step number and an HMAC-SHA256 of it under a secret the fleet
//! shares. A nonce is good in the step it was issued and the next one. A previous secret can
//! be configured beside the current one, so rotating the secret loses no nonces.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use subtle::ConstantTimeEq;

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

const TAG_LEN: usize = 16;
const DOMAIN: &[u8] = b"token-service dpop-nonce v1\0";

/// Issues and checks nonces.
pub struct NonceIssuer {
    /// The current key first; the previous one, if any, is only accepted.
    keys: Vec<hmac::Key>,
    step_secs: u64,
}

impl std::fmt::Debug for NonceIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceIssuer")
            .field("keys", &self.keys.len())
            .field("step_secs", &self.step_secs)
            .finish()
    }
}

/// Why a nonce issuer could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NonceError {
    /// A secret is too short to key a MAC safely.
    #[error("DPoP nonce secret must be at least {MIN_SECRET_LEN} bytes")]
    ShortSecret,
    /// A zero-length time step.
    #[error("DPoP nonce step must be at least one second")]
    ZeroStep,
}

impl NonceIssuer {
    /// An issuer keyed by `current` (and accepting nonces of `previous`), with nonces that
    /// change every `step_secs`.
    pub fn new(
        current: &[u8],
        previous: Option<&[u8]>,
        step_secs: u64,
    ) -> Result<Self, NonceError> {
        if step_secs == 0 {
            return Err(NonceError::ZeroStep);
        }
        let mut keys = Vec::with_capacity(2);
        for secret in std::iter::once(current).chain(previous) {
            if secret.len() < MIN_SECRET_LEN {
                return Err(NonceError::ShortSecret);
            }
            keys.push(hmac::Key::new(hmac::HMAC_SHA256, secret));
        }
        Ok(Self { keys, step_secs })
    }

    fn tag(key: &hmac::Key, step: u64) -> [u8; TAG_LEN] {
        let mut context = hmac::Context::with_key(key);
        context.update(DOMAIN);
        context.update(&step.to_be_bytes());
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&context.sign().as_ref()[..TAG_LEN]);
        tag
    }

    /// A nonce for now.
    pub fn issue(&self, now: u64) -> String {
        let step = now / self.step_secs;
        let mut bytes = Vec::with_capacity(8 + TAG_LEN);
        bytes.extend_from_slice(&step.to_be_bytes());
        bytes.extend_from_slice(&Self::tag(&self.keys[0], step));
        B64.encode(bytes)
    }

    /// Whether `nonce` was issued by a holder of one of the secrets, in this step or the
    /// previous one.
    pub fn check(&self, nonce: &str, now: u64) -> bool {
        let Ok(bytes) = B64.decode(nonce) else {
            return false;
        };
        let Some((step, tag)) = bytes.split_first_chunk::<8>() else {
            return false;
        };
        let step = u64::from_be_bytes(*step);
        let current = now / self.step_secs;
        if tag.len() != TAG_LEN || !(step == current || step + 1 == current) {
            return false;
        }
        // Every key is tried, so the time taken does not tell which one matched.
        self.keys.iter().fold(false, |ok, key| {
            ok | bool::from(Self::tag(key, step).as_slice().ct_eq(tag))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_live_two_steps_and_follow_a_secret_rotation() {
        let old = NonceIssuer::new(&[1; 32], None, 60).unwrap();
        let nonce = old.issue(1000);
        assert!(old.check(&nonce, 1000));
        assert!(old.check(&nonce, 1079), "next step");
        assert!(!old.check(&nonce, 1080), "two steps on");
        assert!(!old.check(&nonce, 900), "from the future");
        let rotated = NonceIssuer::new(&[2; 32], Some(&[1; 32]), 60).unwrap();
        assert!(rotated.check(&nonce, 1000), "previous secret accepted");
        let other = NonceIssuer::new(&[3; 32], None, 60).unwrap();
        assert!(!other.check(&nonce, 1000));
        let mut forged = B64.decode(&nonce).unwrap();
        forged[10] ^= 1;
        assert!(!old.check(&B64.encode(forged), 1000));
        for junk in ["", "!!", "AAAA", &B64.encode([0u8; 40])] {
            assert!(!old.check(junk, 1000), "{junk}");
        }
        assert_eq!(
            NonceIssuer::new(&[1; 31], None, 60).unwrap_err(),
            NonceError::ShortSecret
        );
    }
}
