//! Encryption with KMS keys: KMS Encrypt for payloads up to 4 KiB, envelope encryption under
//! a GenerateDataKey data key above that; the namespace, key name and a hash of the caller's
//! AAD in the EncryptionContext either way.

use std::collections::HashMap;

use aws_lc_rs::aead::{AES_256_GCM, LessSafeKey, UnboundKey};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, EncryptionAlgorithmSpec};
use zeroize::Zeroizing;

use super::error::classify;
use super::sealed::{self, Sealed};
use super::{AwsKmsBackend, NAME, check_answered_by, violation};
use crate::backends::envelope::{Envelope, EnvelopeKid, gcm_open, gcm_seal};
use crate::backends::error::BackendError;
use crate::backends::types::{Algorithm, KeyRef, Operation};

/// The EncryptionContext: namespace, key name and a SHA-256 of the caller's AAD. The AAD
/// itself is not put there: CloudTrail logs the context in clear.
fn encryption_context(key: &KeyRef, aad: &[u8]) -> HashMap<String, String> {
    use base64::Engine;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, aad);
    HashMap::from([
        (
            "token-service:namespace".to_owned(),
            key.namespace().to_owned(),
        ),
        ("token-service:key".to_owned(), key.name().to_owned()),
        (
            "token-service:aad-sha256".to_owned(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref()),
        ),
    ])
}

/// The GCM AAD of the data-key form: the envelope kid and the caller's AAD.
fn data_key_aad(kid: &EnvelopeKid, aad: &[u8]) -> Vec<u8> {
    let mut out = format!("token-service:{kid}\0").into_bytes();
    out.extend_from_slice(aad);
    out
}

impl AwsKmsBackend {
    pub(super) async fn seal(
        &self,
        key: &KeyRef,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<String, BackendError> {
        let (ring, index) = self.producing(key, Operation::Encrypt).await?;
        let version = &ring.versions[index];
        ring.algorithm
            .check_serves(&key.ring(), Algorithm::A256Gcm)?;
        let kid = EnvelopeKid {
            backend: NAME.to_owned(),
            namespace: key.namespace().to_owned(),
            name: key.name().to_owned(),
            version: version.record.version,
        };
        let context = encryption_context(key, aad);
        let body = if plaintext.len() <= sealed::DIRECT_LIMIT {
            let answer = self
                .client
                .encrypt()
                .key_id(&version.arn)
                .plaintext(Blob::new(plaintext))
                .encryption_algorithm(EncryptionAlgorithmSpec::SymmetricDefault)
                .set_encryption_context(Some(context))
                .send()
                .await
                .map_err(|e| classify(&key.to_string(), e))?;
            check_answered_by(
                format_args!("Encrypt for {key}"),
                &version.arn,
                answer.key_id(),
            )?;
            let blob = answer
                .ciphertext_blob()
                .ok_or_else(|| violation(format!("Encrypt for {key} answered no ciphertext")))?;
            Sealed::direct(blob.as_ref())
        } else {
            let answer = self
                .client
                .generate_data_key()
                .key_id(&version.arn)
                .key_spec(DataKeySpec::Aes256)
                .set_encryption_context(Some(context))
                .send()
                .await
                .map_err(|e| classify(&key.to_string(), e))?;
            check_answered_by(
                format_args!("GenerateDataKey for {key}"),
                &version.arn,
                answer.key_id(),
            )?;
            let data_key = Zeroizing::new(
                answer
                    .plaintext()
                    .ok_or_else(|| violation(format!("GenerateDataKey for {key} gave no key")))?
                    .as_ref()
                    .to_vec(),
            );
            let encrypted_key = answer
                .ciphertext_blob()
                .ok_or_else(|| violation(format!("GenerateDataKey for {key} gave no blob")))?;
            let sealing =
                LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &data_key).map_err(|_| {
                    violation("GenerateDataKey answered a key that is not 256 bits")
                })?);
            let nonce = Envelope::fresh_nonce(NAME)?;
            let sealed = gcm_seal(&sealing, nonce, &data_key_aad(&kid, aad), plaintext)?;
            Sealed::data_key(encrypted_key.as_ref(), &nonce, &sealed)?
        };
        Envelope::remote(&kid, &body)
    }

    pub(super) async fn open(
        &self,
        envelope: &Envelope,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let kid = envelope.kid();
        let key = kid.key_for(NAME)?;
        let body = Sealed::parse(envelope.remote_ciphertext()?)?;
        let ring = self.ring(&key, false).await?;
        ring.algorithm.check_serves(&key, Algorithm::A256Gcm)?;
        let (ring, index) = self.consuming(&key, ring, kid.version).await?;
        let version = &ring.versions[index];
        let context = encryption_context(&key, aad);
        let blob = match &body {
            Sealed::Direct { blob } => blob,
            Sealed::DataKey { encrypted_key, .. } => encrypted_key,
        };
        let answer = self
            .client
            .decrypt()
            .key_id(&version.arn)
            .ciphertext_blob(Blob::new(*blob))
            .encryption_algorithm(EncryptionAlgorithmSpec::SymmetricDefault)
            .set_encryption_context(Some(context))
            .send()
            .await
            .map_err(|e| classify(&key.to_string(), e))?;
        // An answer without plaintext is refused, never read as an empty plaintext.
        let opened = Zeroizing::new(
            answer
                .plaintext()
                .ok_or_else(|| {
                    violation(format!(
                        "Decrypt of an envelope for {kid} gave no plaintext"
                    ))
                })?
                .as_ref()
                .to_vec(),
        );
        check_answered_by(
            format_args!("Decrypt of an envelope for {kid}"),
            &version.arn,
            answer.key_id(),
        )?;
        match body {
            Sealed::Direct { .. } => Ok(opened),
            Sealed::DataKey {
                nonce,
                ciphertext_and_tag,
                ..
            } => {
                let opening = LessSafeKey::new(
                    UnboundKey::new(&AES_256_GCM, &opened)
                        .map_err(|_| BackendError::DecryptionFailed)?,
                );
                gcm_open(
                    &opening,
                    nonce,
                    &data_key_aad(kid, aad),
                    ciphertext_and_tag.to_vec(),
                )
            }
        }
    }
}
