//! The two DER structures KMS hands back: ECDSA signatures (`ECDSA-Sig-Value`, converted to
//! the fixed-length r||s JWS needs) and public keys (X.509 `SubjectPublicKeyInfo`, converted
//! to a JWK). Parsed strictly with the RustCrypto `der`/`spki` crates: trailing bytes,
//! non-minimal integers and unknown curves are refused, never guessed around.

use der::asn1::UintRef;
use der::{Decode, Encode, Sequence};
use spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};

use crate::backends::jwk::PublicJwk;
use crate::backends::types::Algorithm;

/// `id-ecPublicKey` (RFC 5480).
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// `secp256r1` (P-256).
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// `secp384r1` (P-384).
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// `rsaEncryption` (RFC 8017).
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// Why KMS output could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DerError {
    /// Not well-formed DER of the expected structure.
    #[error("malformed DER: {0}")]
    Malformed(String),
    /// Well-formed, but a key or signature this service does not use.
    #[error("{0}")]
    Unsupported(String),
}

impl From<der::Error> for DerError {
    fn from(error: der::Error) -> Self {
        DerError::Malformed(error.to_string())
    }
}

/// `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` (RFC 3279).
#[derive(Sequence)]
struct EcdsaSigValue<'a> {
    r: UintRef<'a>,
    s: UintRef<'a>,
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }` (RFC 8017).
#[derive(Sequence)]
struct RsaPublicKey<'a> {
    n: UintRef<'a>,
    e: UintRef<'a>,
}

/// Converts a DER ECDSA signature into JWS form: r and s left-padded to the curve's size.
pub fn ecdsa_der_to_fixed(algorithm: Algorithm, der: &[u8]) -> Result<Vec<u8>, DerError> {
    let size = match algorithm {
        Algorithm::Es256 => 32,
        Algorithm::Es384 => 48,
        other => {
            return Err(DerError::Unsupported(format!(
                "{other} is not an ECDSA algorithm"
            )));
        }
    };
    let value = EcdsaSigValue::from_der(der)?;
    let mut fixed = vec![0u8; 2 * size];
    for (i, part) in [value.r, value.s].iter().enumerate() {
        let bytes = part.as_bytes();
        if bytes.is_empty() || bytes.len() > size {
            return Err(DerError::Malformed(format!(
                "ECDSA integer of {} bytes for a {size}-byte curve",
                bytes.len()
            )));
        }
        let end = (i + 1) * size;
        fixed[end - bytes.len()..end].copy_from_slice(bytes);
    }
    Ok(fixed)
}

/// Converts a JWS r||s ECDSA signature into DER (what KMS Verify takes). An odd length or
/// a zero r or s is refused.
pub fn ecdsa_fixed_to_der(fixed: &[u8]) -> Result<Vec<u8>, DerError> {
    if fixed.is_empty() || !fixed.len().is_multiple_of(2) {
        return Err(DerError::Malformed(format!(
            "r||s signature of odd length {}",
            fixed.len()
        )));
    }
    let (r, s) = fixed.split_at(fixed.len() / 2);
    let value = EcdsaSigValue {
        r: UintRef::new(r)?,
        s: UintRef::new(s)?,
    };
    if value.r.as_bytes().is_empty() || value.s.as_bytes().is_empty() {
        return Err(DerError::Malformed("r or s is zero".into()));
    }
    Ok(value.to_der()?)
}

/// What a `SubjectPublicKeyInfo` holds, as far as choosing an algorithm goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// An EC key on P-256 or P-384: its algorithm follows from the curve.
    Ec(Algorithm),
    /// An RSA key of this many modulus bits.
    Rsa(usize),
}

/// Parses an X.509 `SubjectPublicKeyInfo` (what KMS GetPublicKey returns) into a JWK.
pub fn spki_to_jwk(der: &[u8]) -> Result<(PublicJwk, KeyKind), DerError> {
    let info = SubjectPublicKeyInfoRef::from_der(der)?;
    let key_bits = info
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| DerError::Malformed("public key BIT STRING has unused bits".into()))?;
    let oid = info.algorithm.oid;
    if oid == EC_PUBLIC_KEY {
        let curve = info
            .algorithm
            .parameters_oid()
            .map_err(|_| DerError::Malformed("EC key without a named curve".into()))?;
        let algorithm = if curve == P256 {
            Algorithm::Es256
        } else if curve == P384 {
            Algorithm::Es384
        } else {
            return Err(DerError::Unsupported(format!(
                "EC curve {curve} is not P-256 or P-384"
            )));
        };
        let jwk = PublicJwk::from_ec_point(algorithm, key_bits)
            .map_err(|e| DerError::Malformed(e.to_string()))?;
        Ok((jwk, KeyKind::Ec(algorithm)))
    } else if oid == RSA_ENCRYPTION {
        let key = RsaPublicKey::from_der(key_bits)?;
        let n = key.n.as_bytes();
        Ok((
            PublicJwk::from_rsa_components(n, key.e.as_bytes()),
            KeyKind::Rsa(crate::backends::jwk::significant_bits(n)),
        ))
    } else {
        Err(DerError::Unsupported(format!(
            "public key algorithm {oid} is neither EC nor RSA"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_ASN1_SIGNING,
        ECDSA_P384_SHA384_FIXED, EcdsaKeyPair, KeyPair, UnparsedPublicKey,
    };

    /// Signs with aws-lc-rs in DER, converts, and checks the result with the fixed verifier.
    #[test]
    fn der_signatures_convert_to_verifiable_fixed_form() {
        let cases = [
            (
                Algorithm::Es256,
                &ECDSA_P256_SHA256_ASN1_SIGNING,
                &ECDSA_P256_SHA256_FIXED,
            ),
            (
                Algorithm::Es384,
                &ECDSA_P384_SHA384_ASN1_SIGNING,
                &ECDSA_P384_SHA384_FIXED,
            ),
        ];
        let rng = SystemRandom::new();
        for (algorithm, signing, fixed_verify) in cases {
            let pair = EcdsaKeyPair::generate(signing).unwrap();
            // Enough signatures that some r or s has a leading zero byte (1 in 128 each).
            for i in 0..400u32 {
                let message = i.to_be_bytes();
                let der = pair.sign(&rng, &message).unwrap();
                let fixed = ecdsa_der_to_fixed(algorithm, der.as_ref()).unwrap();
                assert_eq!(ecdsa_fixed_to_der(&fixed).unwrap(), der.as_ref());
                UnparsedPublicKey::new(fixed_verify, pair.public_key().as_ref())
                    .verify(&message, &fixed)
                    .unwrap();
            }
        }
    }

    #[test]
    fn malformed_der_signatures_are_refused() {
        let good = {
            let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
            pair.sign(&SystemRandom::new(), b"m")
                .unwrap()
                .as_ref()
                .to_vec()
        };
        let mut trailing = good.clone();
        trailing.push(0);
        let mut truncated = good.clone();
        truncated.pop();
        // r = 33 significant bytes: too long for P-256.
        let mut long = vec![0x30, 0x26, 0x02, 0x21];
        long.extend([0x7f; 33]);
        long.extend([0x02, 0x01, 0x01]);
        // A negative integer (top bit set without a leading zero) is not a valid r.
        let negative = vec![0x30, 0x06, 0x02, 0x01, 0x80, 0x02, 0x01, 0x01];
        for bad in [
            trailing,
            truncated,
            long,
            negative,
            vec![],
            vec![0x30, 0x00],
        ] {
            assert!(
                ecdsa_der_to_fixed(Algorithm::Es256, &bad).is_err(),
                "{bad:02x?} accepted"
            );
        }
        assert!(ecdsa_der_to_fixed(Algorithm::Ps256, &good).is_err());
    }

    #[test]
    fn spki_of_ec_and_rsa_keys_become_the_same_jwk_as_their_raw_parts() {
        let pair = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_ASN1_SIGNING).unwrap();
        let spki = pair.public_key().as_der().unwrap();
        let (jwk, kind) = spki_to_jwk(spki.as_ref()).unwrap();
        assert_eq!(kind, KeyKind::Ec(Algorithm::Es384));
        assert_eq!(
            jwk,
            PublicJwk::from_ec_point(Algorithm::Es384, pair.public_key().as_ref()).unwrap()
        );

        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let spki = rsa.public_key().as_der().unwrap();
        let (jwk, kind) = spki_to_jwk(spki.as_ref()).unwrap();
        assert_eq!(kind, KeyKind::Rsa(2048));
        let components =
            aws_lc_rs::signature::RsaPublicKeyComponents::<Vec<u8>>::from(rsa.public_key());
        assert_eq!(
            jwk,
            PublicJwk::from_rsa_components(&components.n, &components.e)
        );
        assert!(spki_to_jwk(&spki.as_ref()[..spki.as_ref().len() - 1]).is_err());
        assert!(spki_to_jwk(b"not der").is_err());
    }
}
