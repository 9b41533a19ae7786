//! Types shared by every backend: algorithms, key references, key metadata, capabilities.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::{BackendError, Rejection};
use super::jwk::PublicJwk;

/// An algorithm a key is made for. Signing algorithms carry their JWS (RFC 7518) names;
/// `A256GCM` is AES-256-GCM for encryption.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256, signature as fixed-length r||s.
    #[serde(rename = "ES256")]
    Es256,
    /// ECDSA P-384 with SHA-384, signature as fixed-length r||s.
    #[serde(rename = "ES384")]
    Es384,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256, salt length 32.
    #[serde(rename = "PS256")]
    Ps256,
    /// RSASSA-PSS with SHA-384, MGF1-SHA-384, salt length 48.
    #[serde(rename = "PS384")]
    Ps384,
    /// RSASSA-PSS with SHA-512, MGF1-SHA-512, salt length 64.
    #[serde(rename = "PS512")]
    Ps512,
    /// Ed25519 (RFC 8037).
    #[serde(rename = "EdDSA")]
    EdDsa,
    /// AES-256-GCM with a 96-bit random nonce.
    #[serde(rename = "A256GCM")]
    A256Gcm,
}

impl Algorithm {
    /// Every algorithm this crate knows.
    pub const ALL: [Algorithm; 7] = [
        Algorithm::Es256,
        Algorithm::Es384,
        Algorithm::Ps256,
        Algorithm::Ps384,
        Algorithm::Ps512,
        Algorithm::EdDsa,
        Algorithm::A256Gcm,
    ];

    /// The signing algorithms, in the order they are listed to users.
    pub const SIGNING: [Algorithm; 6] = [
        Algorithm::Es256,
        Algorithm::Es384,
        Algorithm::Ps256,
        Algorithm::Ps384,
        Algorithm::Ps512,
        Algorithm::EdDsa,
    ];

    /// The JOSE name (`ES256`, `EdDSA`, `A256GCM`...).
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
            Algorithm::Ps256 => "PS256",
            Algorithm::Ps384 => "PS384",
            Algorithm::Ps512 => "PS512",
            Algorithm::EdDsa => "EdDSA",
            Algorithm::A256Gcm => "A256GCM",
        }
    }

    /// True for the signature algorithms, false for encryption.
    pub fn is_signing(self) -> bool {
        !matches!(self, Algorithm::A256Gcm)
    }

    /// `Ok` if `key`, made for this algorithm, can serve a call for `requested`; else the
    /// rejection naming both.
    pub fn check_serves(
        self,
        key: &dyn fmt::Display,
        requested: Algorithm,
    ) -> Result<(), BackendError> {
        if self == requested {
            Ok(())
        } else {
            Err(BackendError::Rejected(Rejection::AlgorithmMismatch {
                key: key.to_string(),
                requested: requested.as_str().to_owned(),
                actual: self,
            }))
        }
    }

    /// `Ok` if `key`, made for this algorithm, signs; else the rejection naming it.
    pub fn check_signs(self, key: &dyn fmt::Display) -> Result<(), BackendError> {
        if self.is_signing() {
            Ok(())
        } else {
            Err(BackendError::Rejected(Rejection::AlgorithmMismatch {
                key: key.to_string(),
                requested: "a signature algorithm".into(),
                actual: self,
            }))
        }
    }

    /// The exact length of a JWS-form signature, where it is fixed by the algorithm alone.
    /// RSA signature length depends on the modulus, so it is `None`.
    pub fn fixed_signature_len(self) -> Option<usize> {
        match self {
            Algorithm::Es256 => Some(64),
            Algorithm::Es384 => Some(96),
            Algorithm::EdDsa => Some(64),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = BackendError;

    /// Parses a JOSE algorithm name, case-sensitively as RFC 7518 requires. `none` and HMAC
    /// names are not algorithms here, so they are refused like any unknown name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                BackendError::Rejected(Rejection::UnsupportedAlgorithm(truncate_for_message(s)))
            })
    }
}

/// Shortens untrusted text before it goes into an error message.
pub(crate) fn truncate_for_message(s: &str) -> String {
    truncate_to(s, 40)
}

/// Cuts `s` to `limit` characters (marking the cut with `...`) and replaces control
/// characters, so text from elsewhere cannot forge log lines.
pub(crate) fn truncate_to(s: &str, limit: usize) -> String {
    let cleaned: String = s
        .chars()
        .take(limit)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > limit {
        format!("{cleaned}...")
    } else {
        cleaned
    }
}

/// Lifecycle state of one key version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KeyState {
    /// Signs and encrypts (the newest active version does), verifies and decrypts.
    Active,
    /// Verifies and decrypts only, until its retention ends.
    Deprecated,
    /// Does nothing until enabled again.
    Disabled,
    /// Gone; kept in metadata only so its version number is never reused.
    Destroyed,
}

impl KeyState {
    /// The state's name as shown to users (`ACTIVE`...).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "ACTIVE",
            KeyState::Deprecated => "DEPRECATED",
            KeyState::Disabled => "DISABLED",
            KeyState::Destroyed => "DESTROYED",
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Maximum length of a namespace or key name.
pub const MAX_NAME_LEN: usize = 128;

/// Checks that `value` is a valid namespace or key name: 1 to 128 characters from
/// `[A-Za-z0-9._-]`, starting with a letter or digit. Names become file names, PKCS#11
/// labels and KMS aliases, so nothing that could traverse a path or break a label is allowed.
pub fn validate_name(what: &str, value: &str) -> Result<(), BackendError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME_LEN
        && value.as_bytes()[0].is_ascii_alphanumeric()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BackendError::Rejected(Rejection::InvalidInput(format!(
            "{what} `{}` must be 1-{MAX_NAME_LEN} characters of [A-Za-z0-9._-] starting with a letter or digit",
            truncate_for_message(value)
        ))))
    }
}

/// A logical key: a name inside a namespace (`token/signing`), optionally one version of it.
/// Without a version, operations that create signatures or ciphertexts use the newest
/// ACTIVE version.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyRef {
    namespace: String,
    name: String,
    version: Option<u32>,
}

impl KeyRef {
    /// A reference to the key ring `namespace/name`, validated.
    ///
    /// ```
    /// use token_service::backends::KeyRef;
    ///
    /// let key = KeyRef::new("token", "signing").unwrap();
    /// assert_eq!(key.with_version(2).to_string(), "token/signing#2");
    /// // Names become file names and labels: nothing that could leave a directory.
    /// assert!(KeyRef::new("token", "../signing").is_err());
    /// ```
    pub fn new(namespace: &str, name: &str) -> Result<Self, BackendError> {
        validate_name("namespace", namespace)?;
        validate_name("key name", name)?;
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            version: None,
        })
    }

    /// The same key ring, pinned to one version.
    pub fn with_version(mut self, version: u32) -> Self {
        self.version = Some(version);
        self
    }

    /// The same key ring with no version pinned.
    pub fn ring(&self) -> KeyRef {
        KeyRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            version: None,
        }
    }

    /// The namespace (`token`, `token-cache`).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The key name inside the namespace.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pinned version, if any.
    pub fn version(&self) -> Option<u32> {
        self.version
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version {
            Some(v) => write!(f, "{}/{}#{v}", self.namespace, self.name),
            None => write!(f, "{}/{}", self.namespace, self.name),
        }
    }
}

/// What a backend knows about one version of a key. Never holds key material.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMetadata {
    /// Backend that holds the key.
    pub backend: String,
    /// The key, with its version set.
    pub key: KeyRef,
    /// The version number (1, 2, ...), equal to `key.version()`.
    pub version: u32,
    /// The algorithm the key is made for.
    pub algorithm: Algorithm,
    /// The effective state: a DEPRECATED version past its retention is reported DESTROYED.
    pub state: KeyState,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
    /// When a newer version replaced this one (seconds since the epoch), if it was rotated out.
    pub rotated_at: Option<u64>,
    /// Until when a DEPRECATED version still verifies and decrypts (seconds since the epoch).
    pub retained_until: Option<u64>,
    /// Stable identifier: the RFC 7638 thumbprint for asymmetric keys; for symmetric keys
    /// the envelope key id `backend/namespace/name/version`.
    pub kid: String,
    /// The public key, for asymmetric keys.
    pub public_jwk: Option<PublicJwk>,
}

/// The version of a key that signs or encrypts now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveKey {
    /// Its version.
    pub version: u32,
    /// Its kid.
    pub kid: String,
    /// Its algorithm.
    pub algorithm: Algorithm,
}

/// An operation of the [`Backend`](super::Backend) trait.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Create a signature.
    Sign,
    /// Check a signature.
    Verify,
    /// Encrypt into an envelope.
    Encrypt,
    /// Open an envelope.
    Decrypt,
    /// Create a new key ring.
    GenerateKey,
    /// Add a new active version to a ring.
    RotateKey,
    /// Read a ring's metadata.
    KeyMetadata,
    /// Read a ring's public keys.
    PublicKeys,
    /// List the rings in a namespace.
    ListKeys,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 9] = [
        Operation::Sign,
        Operation::Verify,
        Operation::Encrypt,
        Operation::Decrypt,
        Operation::GenerateKey,
        Operation::RotateKey,
        Operation::KeyMetadata,
        Operation::PublicKeys,
        Operation::ListKeys,
    ];

    /// Lower-case name used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Sign => "sign",
            Operation::Verify => "verify",
            Operation::Encrypt => "encrypt",
            Operation::Decrypt => "decrypt",
            Operation::GenerateKey => "generate_key",
            Operation::RotateKey => "rotate_key",
            Operation::KeyMetadata => "key_metadata",
            Operation::PublicKeys => "public_keys",
            Operation::ListKeys => "list_keys",
        }
    }

    /// Whether repeating the operation after an ambiguous failure is harmless.
    /// Creating or rotating a key twice is not: a retried rotation could add two versions.
    pub fn is_idempotent(self) -> bool {
        !matches!(self, Operation::GenerateKey | Operation::RotateKey)
    }

    /// A use of key material (sign, verify, encrypt, decrypt), as opposed to managing or
    /// reading key rings.
    pub fn is_key_use(self) -> bool {
        matches!(
            self,
            Operation::Sign | Operation::Verify | Operation::Encrypt | Operation::Decrypt
        )
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a backend can do, so the chain can skip a backend instead of failing a call on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Operations the backend serves.
    pub operations: Vec<Operation>,
    /// Algorithms the backend can generate keys for and use.
    pub algorithms: Vec<Algorithm>,
}

impl Capabilities {
    /// True if the backend serves `operation`.
    pub fn supports(&self, operation: Operation) -> bool {
        self.operations.contains(&operation)
    }

    /// True if the backend can use keys of `algorithm`.
    pub fn supports_algorithm(&self, algorithm: Algorithm) -> bool {
        self.algorithms.contains(&algorithm)
    }
}

/// A signature in JWS form, with the key that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// The signature bytes: r||s for ECDSA, the RSA block for PSS, 64 bytes for Ed25519.
    pub bytes: Vec<u8>,
    /// The algorithm used.
    pub algorithm: Algorithm,
    /// The `kid` of the public key that verifies it.
    pub kid: String,
    /// The key version that signed.
    pub key_version: u32,
    /// The backend that signed.
    pub backend: String,
}

/// The key a signature is checked against.
#[derive(Clone, Copy, Debug)]
pub enum VerificationKey<'a> {
    /// A key held by the backend; `kid` selects the version when the reference pins none.
    Managed {
        /// The key ring (and optionally version).
        key: &'a KeyRef,
        /// The `kid` from the signed object, if it names one.
        kid: Option<&'a str>,
    },
    /// A public key given by the caller (a JWKS entry, a DPoP proof's `jwk`).
    Jwk(&'a PublicJwk),
    /// A caller's public key already parsed for the request's algorithm (from a cache):
    /// local backends verify with it directly, remote ones send its JWK.
    Prepared(&'a super::jwk::PreparedKey),
}

/// One signature check.
#[derive(Clone, Copy, Debug)]
pub struct VerifyRequest<'a> {
    /// The key to check against.
    pub key: VerificationKey<'a>,
    /// The algorithm the signature claims; it must match the key.
    pub algorithm: Algorithm,
    /// The signed bytes (for JWS, the ASCII signing input).
    pub message: &'a [u8],
    /// The signature in JWS form.
    pub signature: &'a [u8],
}

/// Result of a backend health probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Health {
    /// True if the backend can serve calls.
    pub healthy: bool,
    /// A short human-readable explanation; never contains secrets.
    pub detail: String,
}

impl Health {
    /// A healthy result.
    pub fn ok(detail: impl Into<String>) -> Self {
        Self {
            healthy: true,
            detail: detail.into(),
        }
    }

    /// An unhealthy result.
    pub fn failing(detail: impl Into<String>) -> Self {
        Self {
            healthy: false,
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_round_trip_and_refuse_none_and_hmac() {
        for alg in Algorithm::ALL {
            assert_eq!(alg.as_str().parse::<Algorithm>().unwrap(), alg);
        }
        for bad in ["none", "HS256", "es256", "RS1", ""] {
            assert!(bad.parse::<Algorithm>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn names_that_could_escape_a_directory_are_refused() {
        for bad in ["", "..", ".hidden", "a/b", "a\\b", "a b", "\u{e9}", "-x"] {
            assert!(KeyRef::new("token", bad).is_err(), "{bad:?} accepted");
            assert!(KeyRef::new(bad, "signing").is_err(), "{bad:?} accepted");
        }
        assert!(KeyRef::new("token-cache", "aes.v2_x").is_ok());
        assert!(KeyRef::new("token", &"a".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn truncation_bounds_length_and_neutralises_control_characters() {
        assert_eq!(truncate_to("abc", 5), "abc");
        assert_eq!(truncate_to("abcdef", 3), "abc...");
        assert_eq!(truncate_to("a\nb", 10), "a?b");
        assert_eq!(truncate_for_message(&"x".repeat(50)).len(), 43);
        assert_eq!(truncate_to(&"y".repeat(400), 300).len(), 303);
    }

    #[test]
    fn key_ref_display_names_the_version() {
        let k = KeyRef::new("token", "signing").unwrap();
        assert_eq!(k.to_string(), "token/signing");
        assert_eq!(k.with_version(3).to_string(), "token/signing#3");
    }
}
