//! The self-describing encryption envelope: JWE compact serialization (RFC 7516) with
//! `alg: dir`, `enc: A256GCM`, and a `kid` naming the backend, key and version that sealed it,
//! so a decrypt goes to exactly the backend that can open it.
//!
//! Caller-supplied associated data is bound the way RFC 7516 §5.1 step 14 defines for the
//! JSON serialization's `aad` member: the GCM AAD is `ASCII(protected || '.' || BASE64URL(aad))`.
//! With no caller AAD it is `ASCII(protected)`, as in any compact JWE, so such envelopes
//! open with any standard JWE library given the key.
//!
//! A backend that delegates encryption to a remote service (the Crypto Service) gets back a
//! ciphertext only that service can open, in a format of its own. It is carried in the same
//! compact form with `alg: x-remote` (a private algorithm name, so a JWE library refuses it
//! instead of misreading it), the service's ciphertext as the JWE ciphertext, and empty IV
//! and tag: the remote service authenticates its own ciphertext and the caller's AAD.

use aws_lc_rs::aead::{Aad, LessSafeKey, NONCE_LEN, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::error::{BackendError, Rejection};
use super::types::{truncate_for_message, validate_name};

/// Largest envelope accepted by [`Envelope::parse`], in bytes. Envelopes hold cache entries
/// and token-family records: a few KiB. The cap bounds what a hostile input can make us decode.
pub const MAX_ENVELOPE_LEN: usize = 1024 * 1024;
/// GCM tag length.
pub const TAG_LEN: usize = 16;

/// Which backend, key and version sealed an envelope: `backend/namespace/name/version`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EnvelopeKid {
    /// Backend name (`software`, `pkcs11`...).
    pub backend: String,
    /// Key namespace.
    pub namespace: String,
    /// Key name.
    pub name: String,
    /// Key version.
    pub version: u32,
}

impl EnvelopeKid {
    /// Parses `backend/namespace/name/version`, validating every part.
    ///
    /// ```
    /// use token_service::backends::envelope::EnvelopeKid;
    ///
    /// let kid = EnvelopeKid::parse("software/token-cache/aes/3").unwrap();
    /// assert_eq!((kid.backend.as_str(), kid.version), ("software", 3));
    /// assert!(EnvelopeKid::parse("software/token-cache/aes/03").is_err());
    /// ```
    pub fn parse(kid: &str) -> Result<Self, BackendError> {
        let malformed = || {
            BackendError::Rejected(Rejection::MalformedEnvelope(format!(
                "kid `{}` is not backend/namespace/name/version",
                truncate_for_message(kid)
            )))
        };
        let mut parts = kid.split('/');
        let (Some(backend), Some(namespace), Some(name), Some(version), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(malformed());
        };
        for (what, part) in [
            ("backend", backend),
            ("namespace", namespace),
            ("key name", name),
        ] {
            validate_name(what, part).map_err(|_| malformed())?;
        }
        // Only canonical decimal: "01" or "+1" would give two spellings of one kid.
        let canonical = !version.is_empty()
            && version.bytes().all(|b| b.is_ascii_digit())
            && !(version.len() > 1 && version.starts_with('0'));
        let version: u32 = version
            .parse()
            .ok()
            .filter(|v| canonical && *v > 0)
            .ok_or_else(malformed)?;
        Ok(Self {
            backend: backend.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            version,
        })
    }
}

impl EnvelopeKid {
    /// The key ring this envelope names, if it was sealed by `backend`; an envelope of
    /// another backend is refused (decrypt is routed by the envelope, never guessed).
    pub fn key_for(&self, backend: &str) -> Result<super::types::KeyRef, BackendError> {
        if self.backend != backend {
            return Err(BackendError::Rejected(Rejection::UnknownEnvelopeBackend(
                self.backend.clone(),
            )));
        }
        super::types::KeyRef::new(&self.namespace, &self.name)
    }
}

impl std::fmt::Display for EnvelopeKid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.backend, self.namespace, self.name, self.version
        )
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProtectedHeader {
    alg: String,
    enc: String,
    kid: String,
}

/// `alg` of an envelope whose ciphertext only a remote service can open.
pub const REMOTE_ALG: &str = "x-remote";

/// A parsed envelope. Parsing checks structure only; [`Envelope::open`] authenticates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    protected_b64: String,
    kid: EnvelopeKid,
    body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Body {
    /// AES-256-GCM done here, with the key named by the kid.
    Gcm {
        nonce: [u8; NONCE_LEN],
        ciphertext: Vec<u8>,
        tag: [u8; TAG_LEN],
    },
    /// A remote service's ciphertext.
    Remote { ciphertext: Vec<u8> },
}

/// What AES-GCM needs to open a local envelope.
#[derive(Debug)]
pub struct GcmParts {
    /// The nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext followed by the tag, as PKCS#11 and most devices take it.
    pub sealed: Vec<u8>,
    /// The GCM additional data: the protected header and the caller's AAD.
    pub aad: Vec<u8>,
}

fn malformed(detail: &str) -> BackendError {
    BackendError::Rejected(Rejection::MalformedEnvelope(detail.to_owned()))
}

fn gcm_aad(protected_b64: &str, aad: &[u8]) -> Vec<u8> {
    let mut out = protected_b64.as_bytes().to_vec();
    if !aad.is_empty() {
        out.push(b'.');
        out.extend_from_slice(B64.encode(aad).as_bytes());
    }
    out
}

impl Envelope {
    /// Parses a compact envelope. Refuses anything but `dir`/`A256GCM` with exactly our three
    /// header members (an unknown member such as `zip` or `crit` could change the meaning of
    /// the ciphertext, so it is refused rather than ignored), an empty encrypted key, a
    /// 96-bit IV and a 128-bit tag.
    pub fn parse(compact: &str) -> Result<Self, BackendError> {
        if compact.len() > MAX_ENVELOPE_LEN {
            return Err(malformed(&format!(
                "{} bytes exceeds the {MAX_ENVELOPE_LEN}-byte limit",
                compact.len()
            )));
        }
        let parts: Vec<&str> = compact.split('.').collect();
        let [protected_b64, encrypted_key, iv, ciphertext, tag] = parts[..] else {
            return Err(malformed(&format!(
                "expected 5 dot-separated parts, found {}",
                parts.len()
            )));
        };
        let decode = |part: &str, what: &str| {
            B64.decode(part)
                .map_err(|_| malformed(&format!("{what} is not base64url without padding")))
        };
        let header_json = decode(protected_b64, "protected header")?;
        let header: ProtectedHeader = serde_json::from_slice(&header_json)
            .map_err(|_| malformed("protected header is not a JSON object of alg, enc and kid"))?;
        if header.alg == REMOTE_ALG && header.enc == "A256GCM" {
            if !encrypted_key.is_empty() || !iv.is_empty() || !tag.is_empty() {
                return Err(malformed(
                    "a remote envelope has an empty encrypted key, IV and tag",
                ));
            }
            let kid = EnvelopeKid::parse(&header.kid)?;
            let ciphertext = decode(ciphertext, "ciphertext")?;
            if ciphertext.is_empty() {
                return Err(malformed("a remote envelope needs a ciphertext"));
            }
            return Ok(Self {
                protected_b64: protected_b64.to_owned(),
                kid,
                body: Body::Remote { ciphertext },
            });
        }
        if header.alg != "dir" || header.enc != "A256GCM" {
            return Err(malformed(&format!(
                "alg/enc `{}`/`{}` not supported; expected dir/A256GCM",
                truncate_for_message(&header.alg),
                truncate_for_message(&header.enc)
            )));
        }
        if !encrypted_key.is_empty() {
            return Err(malformed("encrypted key must be empty for alg dir"));
        }
        let kid = EnvelopeKid::parse(&header.kid)?;
        let nonce: [u8; NONCE_LEN] = decode(iv, "IV")?
            .try_into()
            .map_err(|_| malformed("IV must be 12 bytes"))?;
        let tag: [u8; TAG_LEN] = decode(tag, "tag")?
            .try_into()
            .map_err(|_| malformed("tag must be 16 bytes"))?;
        let ciphertext = decode(ciphertext, "ciphertext")?;
        Ok(Self {
            protected_b64: protected_b64.to_owned(),
            kid,
            body: Body::Gcm {
                nonce,
                ciphertext,
                tag,
            },
        })
    }

    /// Wraps a remote service's ciphertext in an envelope named `kid`.
    pub fn remote(kid: &EnvelopeKid, ciphertext: &[u8]) -> Result<String, BackendError> {
        let header = serde_json::to_vec(&ProtectedHeader {
            alg: REMOTE_ALG.into(),
            enc: "A256GCM".into(),
            kid: kid.to_string(),
        })
        .map_err(|e| BackendError::invalid_input(format!("envelope header: {e}")))?;
        Ok(format!(
            "{}...{}.",
            B64.encode(header),
            B64.encode(ciphertext)
        ))
    }

    /// The remote service's ciphertext; refused for an envelope sealed here.
    pub fn remote_ciphertext(&self) -> Result<&[u8], BackendError> {
        match &self.body {
            Body::Remote { ciphertext } => Ok(ciphertext),
            Body::Gcm { .. } => Err(malformed(
                "envelope was sealed locally (alg dir), not by a remote service",
            )),
        }
    }

    /// The backend, key and version that sealed this envelope.
    pub fn kid(&self) -> &EnvelopeKid {
        &self.kid
    }

    /// The protected header for `kid`, base64url-encoded: the first part of the envelope and
    /// the start of the GCM AAD.
    pub fn protected_header(kid: &EnvelopeKid) -> Result<String, BackendError> {
        let header = serde_json::to_vec(&ProtectedHeader {
            alg: "dir".into(),
            enc: "A256GCM".into(),
            kid: kid.to_string(),
        })
        .map_err(|e| BackendError::invalid_input(format!("envelope header: {e}")))?;
        Ok(B64.encode(header))
    }

    /// The AES-GCM additional data for a protected header and the caller's AAD.
    pub fn gcm_aad_for(protected_b64: &str, aad: &[u8]) -> Vec<u8> {
        gcm_aad(protected_b64, aad)
    }

    /// A fresh random 96-bit nonce.
    pub fn fresh_nonce(backend: &str) -> Result<[u8; NONCE_LEN], BackendError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| BackendError::unavailable(backend, "system RNG failed"))?;
        Ok(nonce)
    }

    /// Assembles a compact envelope from a protected header and the GCM output.
    pub fn assemble(
        protected_b64: &str,
        nonce: &[u8; NONCE_LEN],
        ciphertext: &[u8],
        tag: &[u8],
    ) -> String {
        format!(
            "{protected_b64}..{}.{}.{}",
            B64.encode(nonce),
            B64.encode(ciphertext),
            B64.encode(tag)
        )
    }

    /// Encrypts `plaintext` under `key`, binding `aad`, into a compact envelope named `kid`.
    /// The 96-bit nonce is random per message.
    pub fn seal(
        kid: &EnvelopeKid,
        key: &LessSafeKey,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<String, BackendError> {
        let protected_b64 = Self::protected_header(kid)?;
        let nonce = Self::fresh_nonce(&kid.backend)?;
        // Plaintext until sealed in place: zeroized if sealing fails.
        let mut in_out = Zeroizing::new(plaintext.to_vec());
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(gcm_aad(&protected_b64, aad)),
                &mut in_out,
            )
            .map_err(|_| BackendError::invalid_input("plaintext too long for AES-GCM"))?;
        Ok(Self::assemble(
            &protected_b64,
            &nonce,
            &in_out,
            tag.as_ref(),
        ))
    }

    /// Nonce, ciphertext-and-tag and GCM AAD (with the caller's `aad`) of an envelope sealed
    /// here; refused for a remote envelope.
    pub fn gcm_parts(&self, aad: &[u8]) -> Result<GcmParts, BackendError> {
        match &self.body {
            Body::Gcm {
                nonce,
                ciphertext,
                tag,
            } => {
                let mut sealed = Vec::with_capacity(ciphertext.len() + TAG_LEN);
                sealed.extend_from_slice(ciphertext);
                sealed.extend_from_slice(tag);
                Ok(GcmParts {
                    nonce: *nonce,
                    sealed,
                    aad: gcm_aad(&self.protected_b64, aad),
                })
            }
            Body::Remote { .. } => Err(malformed(
                "envelope was sealed by a remote service (alg x-remote), not with a local key",
            )),
        }
    }

    /// Authenticates and decrypts with `key` and the caller's `aad`. Any mismatch (key,
    /// ciphertext, tag, header or AAD) is [`BackendError::DecryptionFailed`], with no detail
    /// about which: that detail would be an oracle.
    pub fn open(&self, key: &LessSafeKey, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let parts = self.gcm_parts(aad)?;
        gcm_open(key, parts.nonce, &parts.aad, parts.sealed)
    }
}

/// AES-GCM-encrypts `plaintext` under `key` with `nonce` and `aad`: ciphertext followed by
/// the tag. The plaintext is copied into a buffer that is zeroized if sealing fails.
pub fn gcm_seal(
    key: &LessSafeKey,
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, BackendError> {
    let mut in_out = Zeroizing::new(plaintext.to_vec());
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut *in_out,
    )
    .map_err(|_| BackendError::invalid_input("plaintext too long for AES-GCM"))?;
    Ok(in_out)
}

/// Authenticates and decrypts `sealed` (ciphertext followed by the tag) in place. Any
/// mismatch is [`BackendError::DecryptionFailed`], with no detail about which.
pub fn gcm_open(
    key: &LessSafeKey,
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    sealed: Vec<u8>,
) -> Result<Zeroizing<Vec<u8>>, BackendError> {
    let mut in_out = Zeroizing::new(sealed);
    let len = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut in_out,
        )
        .map_err(|_| BackendError::DecryptionFailed)?
        .len();
    in_out.truncate(len);
    Ok(in_out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::aead::{AES_256_GCM, UnboundKey};

    fn key(byte: u8) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[byte; 32]).unwrap())
    }

    fn kid() -> EnvelopeKid {
        EnvelopeKid::parse("software/token-cache/aes/3").unwrap()
    }

    #[test]
    fn round_trip_with_and_without_aad() {
        for aad in [&b""[..], b"family:42"] {
            let sealed = Envelope::seal(&kid(), &key(1), b"secret payload", aad).unwrap();
            let env = Envelope::parse(&sealed).unwrap();
            assert_eq!(env.kid(), &kid());
            assert_eq!(&env.open(&key(1), aad).unwrap()[..], b"secret payload");
        }
    }

    #[test]
    fn wrong_key_aad_or_tampering_fail_to_authenticate() {
        let sealed = Envelope::seal(&kid(), &key(1), b"secret payload", b"ctx").unwrap();
        let env = Envelope::parse(&sealed).unwrap();
        assert_eq!(
            env.open(&key(2), b"ctx"),
            Err(BackendError::DecryptionFailed)
        );
        assert_eq!(
            env.open(&key(1), b"other"),
            Err(BackendError::DecryptionFailed)
        );
        assert_eq!(env.open(&key(1), b""), Err(BackendError::DecryptionFailed));
        type Flip = fn(&mut Vec<u8>, &mut [u8; TAG_LEN]);
        let flips: [Flip; 2] = [|c, _| c[0] ^= 1, |_, t| t[15] ^= 0x80];
        for flip in flips {
            let mut tampered = env.clone();
            let Body::Gcm {
                ciphertext, tag, ..
            } = &mut tampered.body
            else {
                panic!("a local envelope");
            };
            flip(ciphertext, tag);
            assert_eq!(
                tampered.open(&key(1), b"ctx"),
                Err(BackendError::DecryptionFailed)
            );
        }
    }

    #[test]
    fn remote_envelopes_route_but_never_open_locally() {
        let remote = Envelope::remote(&kid(), b"opaque service ciphertext").unwrap();
        let env = Envelope::parse(&remote).unwrap();
        assert_eq!(env.kid(), &kid());
        assert_eq!(
            env.remote_ciphertext().unwrap(),
            b"opaque service ciphertext"
        );
        assert!(matches!(
            env.open(&key(1), b""),
            Err(BackendError::Rejected(Rejection::MalformedEnvelope(_)))
        ));
        let local = Envelope::seal(&kid(), &key(1), b"x", b"").unwrap();
        assert!(
            Envelope::parse(&local)
                .unwrap()
                .remote_ciphertext()
                .is_err()
        );
        // A remote envelope with an IV or tag, or no ciphertext, is malformed.
        let parts: Vec<&str> = remote.split('.').collect();
        for bad in [
            format!("{}..AAAAAAAAAAAAAAAA.{}.", parts[0], parts[3]),
            format!("{}...{}.AAAAAAAAAAAAAAAAAAAAAA", parts[0], parts[3]),
            format!("{}....", parts[0]),
        ] {
            assert!(
                matches!(
                    Envelope::parse(&bad),
                    Err(BackendError::Rejected(Rejection::MalformedEnvelope(_)))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn header_is_authenticated() {
        // Re-point the kid at another version: the header is part of the AAD, so it fails.
        let sealed = Envelope::seal(&kid(), &key(1), b"x", b"").unwrap();
        let forged_header =
            B64.encode(br#"{"alg":"dir","enc":"A256GCM","kid":"software/token-cache/aes/4"}"#);
        let rest = sealed.split_once('.').unwrap().1;
        let env = Envelope::parse(&format!("{forged_header}.{rest}")).unwrap();
        assert_eq!(env.open(&key(1), b""), Err(BackendError::DecryptionFailed));
    }

    #[test]
    fn structural_errors_are_typed() {
        let sealed = Envelope::seal(&kid(), &key(1), b"x", b"").unwrap();
        let parts: Vec<&str> = sealed.split('.').collect();
        let cases = [
            sealed[..sealed.len() - 3].to_owned(),
            parts[..4].join("."),
            format!("{}.AAAA.{}.{}.{}", parts[0], parts[2], parts[3], parts[4]),
            format!("{}..{}.{}.{}", parts[0], "AAAA", parts[3], parts[4]),
            format!("!!.{}", parts[1..].join(".")),
            format!(
                "{}..{}.{}.{}",
                B64.encode(br#"{"alg":"dir","enc":"A256GCM","kid":"k","zip":"DEF"}"#),
                parts[2],
                parts[3],
                parts[4]
            ),
            format!(
                "{}..{}.{}.{}",
                B64.encode(br#"{"alg":"RSA-OAEP","enc":"A256GCM","kid":"software/a/b/1"}"#),
                parts[2],
                parts[3],
                parts[4]
            ),
            "x".repeat(MAX_ENVELOPE_LEN + 1),
        ];
        for case in cases {
            match Envelope::parse(&case) {
                Err(BackendError::Rejected(Rejection::MalformedEnvelope(_))) => {}
                other => panic!("{}: {other:?}", &case[..case.len().min(60)]),
            }
        }
    }

    #[test]
    fn kid_parsing_is_canonical() {
        for bad in [
            "a/b/c",
            "a/b/c/0",
            "a/b/c/01",
            "a/b/c/+1",
            "a/b/c/1/x",
            "a/../c/1",
            "a/b/c/99999999999",
        ] {
            assert!(EnvelopeKid::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(kid().to_string(), "software/token-cache/aes/3");
    }
}
