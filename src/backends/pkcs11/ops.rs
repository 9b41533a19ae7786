//! Signing, verification and AES-GCM on the token, with mechanisms chosen by probing the
//! token's mechanism list (never by its name). Where a token lacks the hash-and-sign
//! mechanism (SoftHSM has no `CKM_ECDSA_SHA256`), the host hashes and the token signs the
//! digest with the raw mechanism; the result is the same signature.

use aws_lc_rs::digest;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use cryptoki::types::Ulong;
use zeroize::Zeroizing;

use super::pool::{OpError, ck};
use crate::backends::error::BackendError;
use crate::backends::types::Algorithm;

/// What the token can do, from its mechanism list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mechanisms {
    ecdsa: bool,
    ecdsa_sha256: bool,
    ecdsa_sha384: bool,
    ec_keygen: bool,
    rsa_pss: bool,
    sha256_rsa_pss: bool,
    sha384_rsa_pss: bool,
    sha512_rsa_pss: bool,
    rsa_keygen: bool,
    eddsa: bool,
    ed_keygen: bool,
    aes_gcm: bool,
    aes_keygen: bool,
}

impl Mechanisms {
    /// Reads the capabilities from a mechanism list.
    pub fn probe(list: &[MechanismType]) -> Self {
        let has = |m: MechanismType| list.contains(&m);
        Self {
            ecdsa: has(MechanismType::ECDSA),
            ecdsa_sha256: has(MechanismType::ECDSA_SHA256),
            ecdsa_sha384: has(MechanismType::ECDSA_SHA384),
            ec_keygen: has(MechanismType::ECC_KEY_PAIR_GEN),
            rsa_pss: has(MechanismType::RSA_PKCS_PSS),
            sha256_rsa_pss: has(MechanismType::SHA256_RSA_PKCS_PSS),
            sha384_rsa_pss: has(MechanismType::SHA384_RSA_PKCS_PSS),
            sha512_rsa_pss: has(MechanismType::SHA512_RSA_PKCS_PSS),
            rsa_keygen: has(MechanismType::RSA_PKCS_KEY_PAIR_GEN),
            eddsa: has(MechanismType::EDDSA),
            ed_keygen: has(MechanismType::ECC_EDWARDS_KEY_PAIR_GEN),
            aes_gcm: has(MechanismType::AES_GCM),
            aes_keygen: has(MechanismType::AES_KEY_GEN),
        }
    }

    /// The algorithms the token can generate keys for and use.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        let mut out = Vec::new();
        if self.ec_keygen && (self.ecdsa || self.ecdsa_sha256) {
            out.push(Algorithm::Es256);
        }
        if self.ec_keygen && (self.ecdsa || self.ecdsa_sha384) {
            out.push(Algorithm::Es384);
        }
        if self.rsa_keygen {
            if self.rsa_pss || self.sha256_rsa_pss {
                out.push(Algorithm::Ps256);
            }
            if self.rsa_pss || self.sha384_rsa_pss {
                out.push(Algorithm::Ps384);
            }
            if self.rsa_pss || self.sha512_rsa_pss {
                out.push(Algorithm::Ps512);
            }
        }
        if self.ed_keygen && self.eddsa {
            out.push(Algorithm::EdDsa);
        }
        if self.aes_keygen && self.aes_gcm {
            out.push(Algorithm::A256Gcm);
        }
        out
    }
}

fn pss_params(hash: MechanismType, mgf: PkcsMgfType, salt: u64) -> PkcsPssParams {
    PkcsPssParams {
        hash_alg: hash,
        mgf,
        s_len: Ulong::from(salt),
    }
}

/// The mechanism for `algorithm`, and the data to give it: the message itself for
/// hash-and-sign mechanisms, or its host-computed digest for the raw ones.
fn mechanism_for(
    mechanisms: &Mechanisms,
    algorithm: Algorithm,
    message: &[u8],
) -> Result<(Mechanism<'static>, Vec<u8>), OpError> {
    let digest_of =
        |alg: &'static digest::Algorithm| digest::digest(alg, message).as_ref().to_vec();
    let unsupported = || {
        OpError::Other(BackendError::Rejected(
            crate::backends::error::Rejection::UnsupportedAlgorithm(format!(
                "{algorithm} on this token"
            )),
        ))
    };
    Ok(match algorithm {
        Algorithm::Es256 if mechanisms.ecdsa_sha256 => (Mechanism::EcdsaSha256, message.to_vec()),
        Algorithm::Es256 if mechanisms.ecdsa => (Mechanism::Ecdsa, digest_of(&digest::SHA256)),
        Algorithm::Es384 if mechanisms.ecdsa_sha384 => (Mechanism::EcdsaSha384, message.to_vec()),
        Algorithm::Es384 if mechanisms.ecdsa => (Mechanism::Ecdsa, digest_of(&digest::SHA384)),
        Algorithm::Ps256 if mechanisms.sha256_rsa_pss => (
            Mechanism::Sha256RsaPkcsPss(pss_params(
                MechanismType::SHA256,
                PkcsMgfType::MGF1_SHA256,
                32,
            )),
            message.to_vec(),
        ),
        Algorithm::Ps256 if mechanisms.rsa_pss => (
            Mechanism::RsaPkcsPss(pss_params(
                MechanismType::SHA256,
                PkcsMgfType::MGF1_SHA256,
                32,
            )),
            digest_of(&digest::SHA256),
        ),
        Algorithm::Ps384 if mechanisms.sha384_rsa_pss => (
            Mechanism::Sha384RsaPkcsPss(pss_params(
                MechanismType::SHA384,
                PkcsMgfType::MGF1_SHA384,
                48,
            )),
            message.to_vec(),
        ),
        Algorithm::Ps384 if mechanisms.rsa_pss => (
            Mechanism::RsaPkcsPss(pss_params(
                MechanismType::SHA384,
                PkcsMgfType::MGF1_SHA384,
                48,
            )),
            digest_of(&digest::SHA384),
        ),
        Algorithm::Ps512 if mechanisms.sha512_rsa_pss => (
            Mechanism::Sha512RsaPkcsPss(pss_params(
                MechanismType::SHA512,
                PkcsMgfType::MGF1_SHA512,
                64,
            )),
            message.to_vec(),
        ),
        Algorithm::Ps512 if mechanisms.rsa_pss => (
            Mechanism::RsaPkcsPss(pss_params(
                MechanismType::SHA512,
                PkcsMgfType::MGF1_SHA512,
                64,
            )),
            digest_of(&digest::SHA512),
        ),
        Algorithm::EdDsa if mechanisms.eddsa => (
            Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
            message.to_vec(),
        ),
        _ => return Err(unsupported()),
    })
}

/// Signs `message`; the result is in JWS form (PKCS#11 ECDSA already gives r||s).
pub fn sign(
    session: &Session,
    mechanisms: &Mechanisms,
    key: ObjectHandle,
    algorithm: Algorithm,
    message: &[u8],
) -> Result<Vec<u8>, OpError> {
    let (mechanism, data) = mechanism_for(mechanisms, algorithm, message)?;
    session
        .sign(&mechanism, key, &data)
        .map_err(ck(format!("signing with {algorithm}")))
}

/// Verifies on the token; an invalid signature is [`BackendError::VerificationFailed`].
pub fn verify(
    session: &Session,
    mechanisms: &Mechanisms,
    key: ObjectHandle,
    algorithm: Algorithm,
    message: &[u8],
    signature: &[u8],
) -> Result<(), OpError> {
    if let Some(len) = algorithm.fixed_signature_len()
        && signature.len() != len
    {
        return Err(OpError::Other(BackendError::VerificationFailed));
    }
    let (mechanism, data) = mechanism_for(mechanisms, algorithm, message)?;
    match session.verify(&mechanism, key, &data, signature) {
        Ok(()) => Ok(()),
        // Tokens differ in how they report malformed signatures (r or s out of range,
        // wrong length): each is a "no" for the caller, never an outage.
        Err(CkError::Pkcs11(
            RvError::SignatureInvalid
            | RvError::SignatureLenRange
            | RvError::DataInvalid
            | RvError::DataLenRange
            | RvError::EncryptedDataInvalid,
            _,
        )) => Err(OpError::Other(BackendError::VerificationFailed)),
        Err(e) => Err(ck(format!("verifying with {algorithm}"))(e)),
    }
}

/// AES-256-GCM encryption: returns ciphertext || 16-byte tag.
pub fn encrypt_gcm(
    session: &Session,
    key: ObjectHandle,
    nonce: &[u8; 12],
    gcm_aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, OpError> {
    let mut iv = *nonce;
    let params = GcmParams::new(&mut iv, gcm_aad, Ulong::from(128u64))
        .map_err(ck("building GCM parameters"))?;
    session
        .encrypt(&Mechanism::AesGcm(params), key, plaintext)
        .map_err(ck("encrypting with AES-GCM"))
}

/// AES-256-GCM decryption of ciphertext || tag. A tag that does not authenticate is a failed
/// decryption — SoftHSM reports it as `CKR_GENERAL_ERROR`, kryoptic as
/// `CKR_ENCRYPTED_DATA_INVALID` — never an outage.
pub fn decrypt_gcm(
    session: &Session,
    key: ObjectHandle,
    nonce: &[u8; 12],
    gcm_aad: &[u8],
    ciphertext_and_tag: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpError> {
    let mut iv = *nonce;
    let params = GcmParams::new(&mut iv, gcm_aad, Ulong::from(128u64))
        .map_err(ck("building GCM parameters"))?;
    match session.decrypt(&Mechanism::AesGcm(params), key, ciphertext_and_tag) {
        Ok(plaintext) => Ok(Zeroizing::new(plaintext)),
        Err(CkError::Pkcs11(
            RvError::GeneralError | RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange,
            _,
        )) => Err(OpError::Other(BackendError::DecryptionFailed)),
        Err(e) => Err(ck("decrypting with AES-GCM")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithms_follow_the_mechanism_list() {
        let softhsm_like = Mechanisms::probe(&[
            MechanismType::ECDSA,
            MechanismType::ECC_KEY_PAIR_GEN,
            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            MechanismType::SHA256_RSA_PKCS_PSS,
            MechanismType::AES_KEY_GEN,
            MechanismType::AES_GCM,
        ]);
        assert_eq!(
            softhsm_like.algorithms(),
            vec![
                Algorithm::Es256,
                Algorithm::Es384,
                Algorithm::Ps256,
                Algorithm::A256Gcm
            ]
        );
        assert!(matches!(
            mechanism_for(&softhsm_like, Algorithm::Es256, b"m"),
            Ok((Mechanism::Ecdsa, ref d)) if d.len() == 32
        ));
        let with_hash_and_sign = Mechanisms {
            ecdsa_sha256: true,
            ..softhsm_like.clone()
        };
        assert!(matches!(
            mechanism_for(&with_hash_and_sign, Algorithm::Es256, b"m"),
            Ok((Mechanism::EcdsaSha256, ref d)) if d == b"m"
        ));
        assert!(mechanism_for(&softhsm_like, Algorithm::EdDsa, b"m").is_err());
    }
}
