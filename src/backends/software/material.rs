//! Key material of the software backend: generation, parsing, signing, and the public JWK.
//! Every primitive is aws-lc-rs; private keys only ever live in aws-lc-rs key objects (which
//! cleanse their memory when freed) or in zeroizing buffers.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, LessSafeKey, UnboundKey};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    self, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    Ed25519KeyPair, KeyPair, ParsedPublicKey, RsaKeyPair,
};
use zeroize::Zeroizing;

use crate::backends::jwk::PublicJwk;
use crate::backends::types::Algorithm;

/// Why material could not be made or used. Deliberately without detail: aws-lc-rs errors
/// carry none that is safe and useful.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaterialError {
    /// Generation failed (RNG or library failure).
    #[error("key generation failed")]
    Generation,
    /// Stored material does not parse as a key of the ring's algorithm.
    #[error("stored key material does not parse as a {0} key")]
    Parse(Algorithm),
    /// The signing operation failed.
    #[error("signing failed")]
    Sign,
}

/// RSA modulus size for new PS* keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RsaBits {
    /// 2048 bits.
    #[serde(rename = "2048")]
    B2048,
    /// 3072 bits.
    #[serde(rename = "3072")]
    B3072,
    /// 4096 bits.
    #[serde(rename = "4096")]
    B4096,
}

/// Generates new key material for `algorithm`, serialized for storage: PKCS#8 DER for
/// signing keys, 32 raw bytes for AES-256.
pub fn generate(
    algorithm: Algorithm,
    rsa_bits: RsaBits,
) -> Result<Zeroizing<Vec<u8>>, MaterialError> {
    let bytes = match algorithm {
        Algorithm::Es256 | Algorithm::Es384 => {
            let alg = if algorithm == Algorithm::Es256 {
                &ECDSA_P256_SHA256_FIXED_SIGNING
            } else {
                &ECDSA_P384_SHA384_FIXED_SIGNING
            };
            let pair = EcdsaKeyPair::generate(alg).map_err(|_| MaterialError::Generation)?;
            let doc = pair.to_pkcs8v1().map_err(|_| MaterialError::Generation)?;
            doc.as_ref().to_vec()
        }
        Algorithm::Ps256 | Algorithm::Ps384 | Algorithm::Ps512 => {
            let size = match rsa_bits {
                RsaBits::B2048 => KeySize::Rsa2048,
                RsaBits::B3072 => KeySize::Rsa3072,
                RsaBits::B4096 => KeySize::Rsa4096,
            };
            let pair = RsaKeyPair::generate(size).map_err(|_| MaterialError::Generation)?;
            let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair)
                .map_err(|_| MaterialError::Generation)?;
            der.as_ref().to_vec()
        }
        Algorithm::EdDsa => {
            let pair = Ed25519KeyPair::generate().map_err(|_| MaterialError::Generation)?;
            let doc = pair.to_pkcs8().map_err(|_| MaterialError::Generation)?;
            doc.as_ref().to_vec()
        }
        Algorithm::A256Gcm => {
            let mut key = vec![0u8; 32];
            aws_lc_rs::rand::fill(&mut key).map_err(|_| MaterialError::Generation)?;
            key
        }
    };
    Ok(Zeroizing::new(bytes))
}

enum Inner {
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
    Aes(LessSafeKey),
}

/// A parsed key: the private key object plus, for signing keys, the parsed public key
/// (verification reuses it instead of re-parsing per call) and the published JWK.
pub struct Material {
    algorithm: Algorithm,
    inner: Inner,
    verifier: Option<ParsedPublicKey>,
    public_jwk: Option<PublicJwk>,
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Material")
            .field("algorithm", &self.algorithm)
            .field("private", &"<redacted>")
            .field(
                "kid",
                &self.public_jwk.as_ref().and_then(|j| j.kid.as_deref()),
            )
            .finish()
    }
}

impl Material {
    /// Parses stored material as a key for `algorithm`.
    pub fn parse(algorithm: Algorithm, bytes: &[u8]) -> Result<Self, MaterialError> {
        let err = || MaterialError::Parse(algorithm);
        let (inner, jwk) = match algorithm {
            Algorithm::Es256 | Algorithm::Es384 => {
                let alg = if algorithm == Algorithm::Es256 {
                    &ECDSA_P256_SHA256_FIXED_SIGNING
                } else {
                    &ECDSA_P384_SHA384_FIXED_SIGNING
                };
                let pair = EcdsaKeyPair::from_pkcs8(alg, bytes).map_err(|_| err())?;
                let jwk = PublicJwk::from_ec_point(algorithm, pair.public_key().as_ref())
                    .map_err(|_| err())?;
                (Inner::Ecdsa(pair), Some(jwk))
            }
            Algorithm::Ps256 | Algorithm::Ps384 | Algorithm::Ps512 => {
                let pair = RsaKeyPair::from_pkcs8(bytes).map_err(|_| err())?;
                let public = pair.public_key();
                let jwk = PublicJwk::from_rsa_components(
                    public.modulus().big_endian_without_leading_zero(),
                    public.exponent().big_endian_without_leading_zero(),
                );
                (Inner::Rsa(pair), Some(jwk))
            }
            Algorithm::EdDsa => {
                let pair = Ed25519KeyPair::from_pkcs8(bytes).map_err(|_| err())?;
                let jwk = PublicJwk::from_ed25519(pair.public_key().as_ref());
                (Inner::Ed25519(pair), Some(jwk))
            }
            Algorithm::A256Gcm => {
                let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| err())?;
                (Inner::Aes(LessSafeKey::new(unbound)), None)
            }
        };
        let (verifier, public_jwk) = match jwk {
            Some(jwk) => {
                let published = jwk.published(algorithm).map_err(|_| err())?;
                let verifier = published.verifier(algorithm).map_err(|_| err())?;
                (Some(verifier), Some(published))
            }
            None => (None, None),
        };
        Ok(Self {
            algorithm,
            inner,
            verifier,
            public_jwk,
        })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The published public JWK (with `kid`), for signing keys.
    pub fn public_jwk(&self) -> Option<&PublicJwk> {
        self.public_jwk.as_ref()
    }

    /// The parsed public key, for signing keys.
    pub fn verifier(&self) -> Option<&ParsedPublicKey> {
        self.verifier.as_ref()
    }

    /// The AES key, for encryption keys.
    pub fn aead_key(&self) -> Option<&LessSafeKey> {
        match &self.inner {
            Inner::Aes(k) => Some(k),
            _ => None,
        }
    }

    /// True if signing is slow enough (RSA: ~1 ms) that it belongs on a blocking thread.
    pub fn is_slow_to_sign(&self) -> bool {
        matches!(self.inner, Inner::Rsa(_))
    }

    /// Signs `message`, returning the JWS-form signature. `None` for AES keys.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, MaterialError> {
        match &self.inner {
            Inner::Ecdsa(pair) => pair
                .sign(&SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| MaterialError::Sign),
            Inner::Rsa(pair) => {
                let encoding = match self.algorithm {
                    Algorithm::Ps256 => &signature::RSA_PSS_SHA256,
                    Algorithm::Ps384 => &signature::RSA_PSS_SHA384,
                    _ => &signature::RSA_PSS_SHA512,
                };
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(encoding, &SystemRandom::new(), message, &mut sig)
                    .map_err(|_| MaterialError::Sign)?;
                Ok(sig)
            }
            Inner::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            Inner::Aes(_) => Err(MaterialError::Sign),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_generates_parses_and_signs() {
        for alg in Algorithm::ALL {
            let bytes = generate(alg, RsaBits::B2048).unwrap();
            let m = Material::parse(alg, &bytes).unwrap();
            if alg.is_signing() {
                let sig = m.sign(b"msg").unwrap();
                if let Some(len) = alg.fixed_signature_len() {
                    assert_eq!(sig.len(), len, "{alg}");
                }
                m.verifier().unwrap().verify_sig(b"msg", &sig).unwrap();
                assert!(m.verifier().unwrap().verify_sig(b"msh", &sig).is_err());
            } else {
                assert!(m.aead_key().is_some());
                assert!(m.sign(b"msg").is_err());
            }
        }
    }

    #[test]
    fn material_of_another_algorithm_does_not_parse() {
        let p256 = generate(Algorithm::Es256, RsaBits::B2048).unwrap();
        assert_eq!(
            Material::parse(Algorithm::Es384, &p256).unwrap_err(),
            MaterialError::Parse(Algorithm::Es384)
        );
        assert!(Material::parse(Algorithm::A256Gcm, &[0u8; 16]).is_err());
    }

    #[test]
    fn debug_output_never_shows_the_private_key() {
        let bytes = generate(Algorithm::A256Gcm, RsaBits::B2048).unwrap();
        let m = Material::parse(Algorithm::A256Gcm, &bytes).unwrap();
        let shown = format!("{m:?}");
        assert!(shown.contains("<redacted>"));
        assert!(!shown.contains(&hex::encode(&bytes)));
    }
}
