//! Refresh tokens: `rt1.<family>.<secret>`, both parts base64url. The family id (128 bits)
//! locates the family in the store (and becomes its Redis hash tag); the secret is 256 bits
//! from the OS CSPRNG. Only SHA-256 of the secret is stored, and presented secrets are
//! compared with stored hashes in constant time.

use std::fmt;

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::TokenError;

const PREFIX: &str = "rt1";
const FAMILY_BYTES: usize = 16;
const SECRET_BYTES: usize = 32;

/// A refresh-token family id: not secret (it appears in access tokens as `fid`).
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct FamilyId(String);

impl FamilyId {
    /// A fresh random family id.
    pub fn generate() -> Result<Self, TokenError> {
        let mut bytes = [0u8; FAMILY_BYTES];
        aws_lc_rs::rand::fill(&mut bytes)
            .map_err(|_| TokenError::Unavailable("system RNG failed".into()))?;
        Ok(Self(B64.encode(bytes)))
    }

    /// Parses a family id given by a caller.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        match B64.decode(text) {
            Ok(bytes) if bytes.len() == FAMILY_BYTES => Ok(Self(text.to_owned())),
            _ => Err(TokenError::InvalidArgument("malformed family id".into())),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FamilyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// SHA-256 of a refresh-token secret: what the store keeps.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SecretHash(String);

impl SecretHash {
    /// Constant-time equality: the time taken does not depend on where the hashes differ.
    pub fn matches(&self, other: &SecretHash) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }

    /// The hash as a store keeps it: base64url of the SHA-256 digest. Not a secret (the
    /// secret cannot be recovered from it), but still kept out of `Debug` and logs.
    pub fn as_stored(&self) -> &str {
        &self.0
    }

    /// A hash read back from a store; None unless it is base64url of a SHA-256 digest.
    pub fn from_stored(text: &str) -> Option<Self> {
        match B64.decode(text) {
            Ok(digest) if digest.len() == digest::SHA256_OUTPUT_LEN => Some(Self(text.to_owned())),
            _ => None,
        }
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

/// A refresh token as issued: the caller gets [`RefreshToken::expose`] once.
pub struct RefreshToken {
    family: FamilyId,
    secret: Zeroizing<String>,
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshToken")
            .field("family", &self.family)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl RefreshToken {
    /// A new token in `family`.
    pub fn generate(family: FamilyId) -> Result<Self, TokenError> {
        let mut bytes = Zeroizing::new([0u8; SECRET_BYTES]);
        aws_lc_rs::rand::fill(&mut bytes[..])
            .map_err(|_| TokenError::Unavailable("system RNG failed".into()))?;
        Ok(Self {
            family,
            secret: Zeroizing::new(B64.encode(&bytes[..])),
        })
    }

    /// Parses a presented token. Malformed input, including a JWT sent by mistake, is an
    /// invalid argument; nothing about the family is looked up yet.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let malformed =
            |why: &str| TokenError::InvalidArgument(format!("malformed refresh token: {why}"));
        if text.starts_with("eyJ") {
            return Err(malformed(
                "this is a JWT (an access token?), not a refresh token",
            ));
        }
        if text.len() > 128 {
            return Err(malformed("too long"));
        }
        let mut parts = text.split('.');
        let (Some(prefix), Some(family), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("expected rt1.<family>.<secret>"));
        };
        if prefix != PREFIX {
            return Err(malformed("unknown format"));
        }
        let family = FamilyId::parse(family).map_err(|_| malformed("bad family id"))?;
        match B64.decode(secret) {
            Ok(bytes) if bytes.len() == SECRET_BYTES => {}
            _ => return Err(malformed("bad secret")),
        }
        Ok(Self {
            family,
            secret: Zeroizing::new(secret.to_owned()),
        })
    }

    /// The family.
    pub fn family(&self) -> &FamilyId {
        &self.family
    }

    /// SHA-256 of the secret.
    pub fn hash(&self) -> SecretHash {
        SecretHash(B64.encode(digest::digest(&digest::SHA256, self.secret.as_bytes())))
    }

    /// The token text, for the response to the client. Never log it.
    pub fn expose(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{PREFIX}.{}.{}", self.family, self.secret.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_hash_reads_back_and_malformed_ones_are_refused() {
        let token = RefreshToken::generate(FamilyId::generate().unwrap()).unwrap();
        let hash = token.hash();
        let read = SecretHash::from_stored(hash.as_stored()).unwrap();
        assert!(read.matches(&hash));
        let short = &hash.as_stored()[..20];
        for bad in ["", "not base64 !", short, "AAAA"] {
            assert!(SecretHash::from_stored(bad).is_none(), "{bad}");
        }
        assert!(SecretHash::from_stored(&format!("{}AA", hash.as_stored())).is_none());
    }

    #[test]
    fn tokens_round_trip_and_hash_stably() {
        let token = RefreshToken::generate(FamilyId::generate().unwrap()).unwrap();
        let text = token.expose();
        let parsed = RefreshToken::parse(&text).unwrap();
        assert_eq!(parsed.family(), token.family());
        assert!(parsed.hash().matches(&token.hash()));
        let other = RefreshToken::generate(token.family().clone()).unwrap();
        assert!(!other.hash().matches(&token.hash()));
        assert!(!format!("{token:?}").contains(&text[30..]));
        // 256 bits of secret.
        assert_eq!(
            B64.decode(text.rsplit('.').next().unwrap()).unwrap().len(),
            32
        );
    }

    #[test]
    fn malformed_tokens_are_refused_with_a_reason() {
        for (text, why) in [
            ("", "expected"),
            ("rt1.abc", "expected"),
            ("eyJhbGciOiJFUzI1NiJ9.e30.sig", "JWT"),
            ("rt2.AAAAAAAAAAAAAAAAAAAAAA.AAAA", "unknown format"),
            ("rt1.!!.AAAA", "family"),
            ("rt1.AAAAAAAAAAAAAAAAAAAAAA.AAAA", "secret"),
        ] {
            match RefreshToken::parse(text) {
                Err(TokenError::InvalidArgument(reason)) => {
                    assert!(reason.contains(why), "{text}: {reason}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
