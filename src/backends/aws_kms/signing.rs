//! Signing and verification with KMS keys: the digest sent with `MessageType=DIGEST`, the
//! DER answer turned into JWS form, and every signature checked against the key's public key
//! before it is used.

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::MessageType;

use super::error::classify;
use super::ring::{self, KmsVersion, Ring};
use super::{AwsKmsBackend, NAME, check_answered_by, der, violation};
use crate::backends::error::{BackendError, Rejection};
use crate::backends::jwk::{check_own_signature, verify_with};
use crate::backends::types::{
    Algorithm, KeyRef, Operation, Signature, VerificationKey, VerifyRequest,
};

impl AwsKmsBackend {
    pub(super) async fn sign_message(
        &self,
        key: &KeyRef,
        message: &[u8],
    ) -> Result<Signature, BackendError> {
        let (ring, index) = self.producing(key, Operation::Sign).await?;
        let version = &ring.versions[index];
        ring.algorithm.check_signs(&key.ring())?;
        let (kms_algorithm, hash) = ring::signing_algorithm(ring.algorithm).ok_or_else(|| {
            BackendError::Rejected(Rejection::UnsupportedAlgorithm(
                ring.algorithm.as_str().into(),
            ))
        })?;
        // The digest's hash is the one the KMS algorithm names, so its length is the one KMS
        // requires (ring::signing_algorithm, checked by its test).
        let digest = aws_lc_rs::digest::digest(hash, message);
        let answer = self
            .client
            .sign()
            .key_id(&version.arn)
            .message(Blob::new(digest.as_ref()))
            .message_type(MessageType::Digest)
            .signing_algorithm(kms_algorithm.clone())
            .send()
            .await
            .map_err(|e| classify(&key.to_string(), e))?;
        check_answered_by(
            format_args!("Sign for {key}"),
            &version.arn,
            answer.key_id(),
        )?;
        if answer.signing_algorithm() != Some(&kms_algorithm) {
            return Err(violation(format!(
                "Sign for {key} answered with algorithm {:?}",
                answer.signing_algorithm()
            )));
        }
        let raw = answer
            .signature()
            .ok_or_else(|| violation(format!("Sign for {key} answered no signature")))?
            .as_ref();
        let bytes = match ring.algorithm {
            Algorithm::Es256 | Algorithm::Es384 => der::ecdsa_der_to_fixed(ring.algorithm, raw)
                .map_err(|e| violation(format!("ECDSA signature for {key}: {e}")))?,
            _ => raw.to_vec(),
        };
        self.check_signature(key, version, message, &bytes)?;
        Ok(Signature {
            bytes,
            algorithm: ring.algorithm,
            kid: Self::kid_of(key, version),
            key_version: version.record.version,
            backend: NAME.to_owned(),
        })
    }

    pub(super) async fn verify_signature(
        &self,
        request: VerifyRequest<'_>,
    ) -> Result<(), BackendError> {
        let (key, kid) = match request.key {
            VerificationKey::Jwk(jwk) => {
                let verifier = jwk.verifier(request.algorithm)?;
                return verify_with(&verifier, request.message, request.signature);
            }
            VerificationKey::Prepared(key) => {
                return key.verify(request.algorithm, request.message, request.signature);
            }
            VerificationKey::Managed { key, kid } => (key, kid),
        };
        let ring = self.ring(key, false).await?;
        ring.algorithm
            .check_serves(&key.ring(), request.algorithm)?;
        let number = match (key.version(), kid) {
            (Some(v), _) => v,
            (None, Some(kid)) => {
                let found = |ring: &Ring| {
                    ring.versions
                        .iter()
                        .find(|v| v.public_jwk.as_ref().and_then(|j| j.kid.as_deref()) == Some(kid))
                        .map(|v| v.record.version)
                };
                match found(&ring) {
                    Some(v) => v,
                    None => found(&*self.ring(key, true).await?).ok_or_else(|| {
                        BackendError::Rejected(Rejection::UnknownKid(
                            crate::backends::types::truncate_for_message(kid),
                        ))
                    })?,
                }
            }
            (None, None) => {
                let (active, index) = self.producing(key, Operation::Verify).await?;
                active.versions[index].record.version
            }
        };
        let (ring, index) = self.consuming(key, ring, number).await?;
        let version = &ring.versions[index];
        if self.options.kms_verify {
            let (kms_algorithm, hash) = ring::signing_algorithm(ring.algorithm)
                .ok_or_else(|| BackendError::invalid_input("not a signing key"))?;
            let digest = aws_lc_rs::digest::digest(hash, request.message);
            // KMS takes DER for ECDSA; our signatures are r||s.
            let signature = match ring.algorithm {
                Algorithm::Es256 | Algorithm::Es384 => {
                    der::ecdsa_fixed_to_der(request.signature)
                        .map_err(|_| BackendError::VerificationFailed)?
                }
                _ => request.signature.to_vec(),
            };
            let answer = self
                .client
                .verify()
                .key_id(&version.arn)
                .message(Blob::new(digest.as_ref()))
                .message_type(MessageType::Digest)
                .signature(Blob::new(signature))
                .signing_algorithm(kms_algorithm)
                .send()
                .await
                .map_err(|e| classify(&key.to_string(), e))?;
            return if answer.signature_valid() {
                Ok(())
            } else {
                Err(BackendError::VerificationFailed)
            };
        }
        let verifier = version
            .verifier
            .as_ref()
            .ok_or_else(|| BackendError::invalid_input(format!("{key} has no public key")))?;
        verify_with(verifier, request.message, request.signature)
    }

    /// Checks a signature KMS made against the key it must have used.
    fn check_signature(
        &self,
        key: &KeyRef,
        version: &KmsVersion,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), BackendError> {
        if version
            .signature_len
            .is_some_and(|len| len != signature.len())
        {
            return Err(violation(format!(
                "signature of {} bytes from {key} version {}",
                signature.len(),
                version.record.version
            )));
        }
        check_own_signature(version.verifier.as_deref(), message, signature).map_err(|why| {
            violation(format!(
                "KMS signature from {key} version {}: {why}",
                version.record.version
            ))
        })
    }
}
