//! Public keys as JWKs (RFC 7517/7518/8037), their RFC 7638 thumbprints, and turning a JWK
//! into a verifier for one algorithm, refusing any algorithm/key combination that does not fit.

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

use super::error::{BackendError, Rejection};
use super::types::Algorithm;

/// Smallest RSA modulus accepted, in bits (RFC 7518 §3.5 requires 2048).
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits: bounds the work an untrusted key can cause.
pub const MAX_RSA_BITS: usize = 8192;

/// A public JWK. Only public members exist in this type, so a private key can never be
/// published through it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    /// Key type: `EC`, `RSA` or `OKP`.
    pub kty: String,
    /// Curve for `EC` (`P-256`, `P-384`) and `OKP` (`Ed25519`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub crv: Option<String>,
    /// EC x coordinate, or the OKP public key.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub x: Option<String>,
    /// EC y coordinate.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub y: Option<String>,
    /// RSA modulus.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub n: Option<String>,
    /// RSA public exponent.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub e: Option<String>,
    /// Key id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kid: Option<String>,
    /// Intended algorithm.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub alg: Option<String>,
    /// Intended use (`sig`).
    #[serde(rename = "use", skip_serializing_if = "Option::is_none", default)]
    pub key_use: Option<String>,
}

fn invalid(detail: impl Into<String>) -> BackendError {
    BackendError::Rejected(Rejection::InvalidPublicKey(detail.into()))
}

fn member<'a>(value: &'a Option<String>, name: &str) -> Result<&'a str, BackendError> {
    value
        .as_deref()
        .ok_or_else(|| invalid(format!("missing member `{name}`")))
}

fn decode_member(value: &Option<String>, name: &str) -> Result<Vec<u8>, BackendError> {
    B64.decode(member(value, name)?)
        .map_err(|_| invalid(format!("member `{name}` is not base64url without padding")))
}

impl PublicJwk {
    /// An EC key from an uncompressed SEC1 point (`04 || x || y`).
    pub fn from_ec_point(algorithm: Algorithm, point: &[u8]) -> Result<Self, BackendError> {
        let (crv, coord) = match algorithm {
            Algorithm::Es256 => ("P-256", 32),
            Algorithm::Es384 => ("P-384", 48),
            other => return Err(invalid(format!("{other} is not an EC algorithm"))),
        };
        if point.len() != 1 + 2 * coord || point[0] != 0x04 {
            return Err(invalid(
                "EC point is not an uncompressed point of the curve",
            ));
        }
        Ok(Self::bare("EC")
            .with_crv(crv)
            .with_x(&point[1..1 + coord])
            .with_y(&point[1 + coord..]))
    }

    /// An RSA key from its big-endian modulus and exponent.
    pub fn from_rsa_components(n: &[u8], e: &[u8]) -> Self {
        let strip = |b: &[u8]| -> Vec<u8> {
            let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
            b[first..].to_vec()
        };
        let mut jwk = Self::bare("RSA");
        jwk.n = Some(B64.encode(strip(n)));
        jwk.e = Some(B64.encode(strip(e)));
        jwk
    }

    /// An Ed25519 key from its 32 public bytes.
    pub fn from_ed25519(public: &[u8]) -> Self {
        Self::bare("OKP").with_crv("Ed25519").with_x(public)
    }

    fn bare(kty: &str) -> Self {
        Self {
            kty: kty.to_owned(),
            crv: None,
            x: None,
            y: None,
            n: None,
            e: None,
            kid: None,
            alg: None,
            key_use: None,
        }
    }

    fn with_crv(mut self, crv: &str) -> Self {
        self.crv = Some(crv.to_owned());
        self
    }

    fn with_x(mut self, x: &[u8]) -> Self {
        self.x = Some(B64.encode(x));
        self
    }

    fn with_y(mut self, y: &[u8]) -> Self {
        self.y = Some(B64.encode(y));
        self
    }

    /// The same key with `kid` set to its thumbprint, `alg` and `use: sig` filled in:
    /// the form published in a JWKS.
    pub fn published(mut self, algorithm: Algorithm) -> Result<Self, BackendError> {
        self.kid = Some(self.thumbprint()?);
        self.alg = Some(algorithm.as_str().to_owned());
        self.key_use = Some("sig".to_owned());
        Ok(self)
    }

    /// The RFC 7638 JWK thumbprint (SHA-256, base64url): a hash over the required public
    /// members only, in lexicographic order, so it is the same wherever the key is published.
    pub fn thumbprint(&self) -> Result<String, BackendError> {
        // Member values are base64url or fixed names, so no JSON escaping is needed; they are
        // still checked, because a quote inside one would change what is hashed.
        let safe = |v: &str, name: &str| -> Result<String, BackendError> {
            if v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                Ok(v.to_owned())
            } else {
                Err(invalid(format!(
                    "member `{name}` has characters outside base64url"
                )))
            }
        };
        let canonical = match self.kty.as_str() {
            "EC" => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                safe(member(&self.crv, "crv")?, "crv")?,
                safe(member(&self.x, "x")?, "x")?,
                safe(member(&self.y, "y")?, "y")?
            ),
            "RSA" => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                safe(member(&self.e, "e")?, "e")?,
                safe(member(&self.n, "n")?, "n")?
            ),
            "OKP" => format!(
                r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#,
                safe(member(&self.crv, "crv")?, "crv")?,
                safe(member(&self.x, "x")?, "x")?
            ),
            other => {
                return Err(invalid(format!(
                    "unsupported kty `{}`",
                    super::types::truncate_for_message(other)
                )));
            }
        };
        Ok(B64.encode(digest::digest(&digest::SHA256, canonical.as_bytes())))
    }

    /// Parses this key into a verifier for `algorithm`, refusing keys that do not fit it:
    /// wrong `kty` or curve, a point not on the curve, an RSA modulus outside 2048-8192 bits,
    /// or an `alg` member naming another algorithm.
    pub fn verifier(&self, algorithm: Algorithm) -> Result<ParsedPublicKey, BackendError> {
        if let Some(declared) = &self.alg
            && declared != algorithm.as_str()
        {
            return Err(BackendError::Rejected(Rejection::AlgorithmMismatch {
                key: "jwk".into(),
                requested: algorithm.as_str().into(),
                actual: declared.parse::<Algorithm>().unwrap_or(algorithm),
            }));
        }
        let mismatch = || {
            invalid(format!(
                "a {} key{} cannot verify {algorithm}",
                self.kty,
                self.crv
                    .as_deref()
                    .map(|c| format!(" on {}", super::types::truncate_for_message(c)))
                    .unwrap_or_default()
            ))
        };
        match algorithm {
            Algorithm::Es256 | Algorithm::Es384 => {
                let (crv, len, verification) = if algorithm == Algorithm::Es256 {
                    ("P-256", 32, &signature::ECDSA_P256_SHA256_FIXED)
                } else {
                    ("P-384", 48, &signature::ECDSA_P384_SHA384_FIXED)
                };
                if self.kty != "EC" || self.crv.as_deref() != Some(crv) {
                    return Err(mismatch());
                }
                let x = decode_member(&self.x, "x")?;
                let y = decode_member(&self.y, "y")?;
                if x.len() != len || y.len() != len {
                    return Err(invalid(format!("{crv} coordinates must be {len} bytes")));
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                ParsedPublicKey::new(verification, &point)
                    .map_err(|_| invalid("EC point is not on the curve"))
            }
            Algorithm::Ps256 | Algorithm::Ps384 | Algorithm::Ps512 => {
                if self.kty != "RSA" {
                    return Err(mismatch());
                }
                let n = decode_member(&self.n, "n")?;
                let e = decode_member(&self.e, "e")?;
                let bits = significant_bits(&n);
                if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                    return Err(invalid(format!(
                        "RSA modulus of {bits} bits is outside {MIN_RSA_BITS}-{MAX_RSA_BITS}"
                    )));
                }
                let params = match algorithm {
                    Algorithm::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Algorithm::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                    _ => &signature::RSA_PSS_2048_8192_SHA512,
                };
                RsaPublicKeyComponents { n: &n, e: &e }
                    .to_parsed_public_key(params)
                    .map_err(|_| invalid("RSA components do not form a valid key"))
            }
            Algorithm::EdDsa => {
                if self.kty != "OKP" || self.crv.as_deref() != Some("Ed25519") {
                    return Err(mismatch());
                }
                let x = decode_member(&self.x, "x")?;
                if x.len() != 32 {
                    return Err(invalid("Ed25519 public key must be 32 bytes"));
                }
                ParsedPublicKey::new(&signature::ED25519, &x)
                    .map_err(|_| invalid("Ed25519 public key rejected"))
            }
            Algorithm::A256Gcm => Err(BackendError::Rejected(Rejection::UnsupportedAlgorithm(
                "A256GCM is not a signature algorithm".into(),
            ))),
        }
    }
}

/// A public JWK parsed once for one algorithm, with its thumbprint: what a cache of
/// caller keys (DPoP proof keys) holds, so a repeated key skips parsing.
pub struct PreparedKey {
    /// The key as given (public members only).
    pub jwk: PublicJwk,
    /// The algorithm it was parsed for.
    pub algorithm: Algorithm,
    /// Its RFC 7638 thumbprint.
    pub thumbprint: String,
    verifier: ParsedPublicKey,
}

impl std::fmt::Debug for PreparedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedKey")
            .field("algorithm", &self.algorithm)
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl PreparedKey {
    /// Parses `jwk` for `algorithm` (see [`PublicJwk::verifier`]) and computes its thumbprint.
    pub fn new(jwk: PublicJwk, algorithm: Algorithm) -> Result<Self, BackendError> {
        let verifier = jwk.verifier(algorithm)?;
        let thumbprint = jwk.thumbprint()?;
        Ok(Self {
            jwk,
            algorithm,
            thumbprint,
            verifier,
        })
    }

    /// Checks a signature made with `algorithm`, which must be the one the key was parsed for.
    pub fn verify(
        &self,
        algorithm: Algorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), BackendError> {
        if algorithm != self.algorithm {
            return Err(BackendError::Rejected(Rejection::AlgorithmMismatch {
                key: "jwk".into(),
                requested: algorithm.as_str().into(),
                actual: self.algorithm,
            }));
        }
        verify_with(&self.verifier, message, signature)
    }
}

/// The number of bits of a big-endian unsigned integer, leading zeros not counted.
pub(crate) fn significant_bits(big_endian: &[u8]) -> usize {
    match big_endian.iter().position(|&b| b != 0) {
        Some(i) => (big_endian.len() - i) * 8 - big_endian[i].leading_zeros() as usize,
        None => 0,
    }
}

/// Why a signature a backend made fails the check against the key it publishes.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OwnSignatureError {
    /// The version has no public key to check with.
    #[error("no public key to check it with")]
    NoPublicKey,
    /// The signature does not verify with the version's public key.
    #[error("does not verify with its public key")]
    Mismatch,
}

/// Checks a signature a backend made (a remote service, KMS, an HSM) with the public key
/// it publishes for that version, before the signature may reach a token. A failure is a
/// fault or another key at work: the caller reports it as a security error.
pub fn check_own_signature(
    verifier: Option<&ParsedPublicKey>,
    message: &[u8],
    signature: &[u8],
) -> Result<(), OwnSignatureError> {
    let verifier = verifier.ok_or(OwnSignatureError::NoPublicKey)?;
    verifier
        .verify_sig(message, signature)
        .map_err(|_| OwnSignatureError::Mismatch)
}

/// Verifies `signature` over `message` with a parsed key, mapping failure to
/// [`BackendError::VerificationFailed`].
pub fn verify_with(
    key: &ParsedPublicKey,
    message: &[u8],
    signature: &[u8],
) -> Result<(), BackendError> {
    key.verify_sig(message, signature)
        .map_err(|_| BackendError::VerificationFailed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7638 §3.1: the example RSA key and its published thumbprint.
    #[test]
    fn rfc7638_example_thumbprint() {
        let jwk: PublicJwk = serde_json::from_str(
            r#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#,
        )
        .unwrap();
        assert_eq!(
            jwk.thumbprint().unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    /// RFC 8037 Appendix A.3: the Ed25519 example key's thumbprint.
    #[test]
    fn rfc8037_okp_thumbprint() {
        let jwk: PublicJwk = serde_json::from_str(
            r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#,
        )
        .unwrap();
        assert_eq!(
            jwk.thumbprint().unwrap(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn thumbprint_refuses_injected_quotes() {
        let mut jwk = PublicJwk::from_ed25519(&[1u8; 32]);
        jwk.x = Some(r#"abc","kty":"EC"#.into());
        assert!(jwk.thumbprint().is_err());
    }

    #[test]
    fn verifier_refuses_keys_that_do_not_fit_the_algorithm() {
        let ed = PublicJwk::from_ed25519(&[7u8; 32]);
        assert!(ed.verifier(Algorithm::Es256).is_err());
        assert!(ed.verifier(Algorithm::Ps256).is_err());
        let small_rsa = PublicJwk::from_rsa_components(&[0xc5; 128], &[1, 0, 1]);
        assert!(small_rsa.verifier(Algorithm::Ps256).is_err());
        let mut declared = PublicJwk::from_ed25519(&[7u8; 32]);
        declared.alg = Some("ES256".into());
        assert!(declared.verifier(Algorithm::EdDsa).is_err());
        // (7, 7...) is not a point on P-256.
        let off_curve = PublicJwk::from_ec_point(Algorithm::Es256, &{
            let mut p = vec![4u8];
            p.extend([7u8; 64]);
            p
        })
        .unwrap();
        assert!(off_curve.verifier(Algorithm::Es256).is_err());
    }

    #[test]
    fn significant_bits_counts_from_the_top_set_bit() {
        assert_eq!(significant_bits(&[0, 0, 1]), 1);
        assert_eq!(significant_bits(&[0x80, 0]), 16);
        assert_eq!(significant_bits(&[]), 0);
    }

    #[test]
    fn a_backends_own_signature_is_checked_with_the_key_it_publishes() {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let other = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let published = ParsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            pair.public_key().as_ref(),
        )
        .unwrap();
        let rng = SystemRandom::new();
        let good = pair.sign(&rng, b"m").unwrap();
        let by_another_key = other.sign(&rng, b"m").unwrap();
        assert_eq!(
            check_own_signature(Some(&published), b"m", good.as_ref()),
            Ok(())
        );
        assert_eq!(
            check_own_signature(Some(&published), b"m", by_another_key.as_ref()),
            Err(OwnSignatureError::Mismatch)
        );
        assert_eq!(
            check_own_signature(None, b"m", good.as_ref()),
            Err(OwnSignatureError::NoPublicKey)
        );
    }
}
