//! The bytes a KMS envelope carries (inside the shared `x-remote` envelope, whose `kid`
//! names the backend, key and version).
//!
//! Two forms, told apart by the first byte:
//! - `0x01 || blob`: KMS Encrypt's ciphertext blob (payloads up to [`DIRECT_LIMIT`]).
//! - `0x02 || len(u16 BE) || encrypted data key || nonce(12) || ciphertext || tag(16)`:
//!   envelope encryption for larger payloads. The data key came from GenerateDataKey under
//!   the same key and encryption context; the payload is AES-256-GCM under it, with the
//!   caller's AAD as GCM AAD. KMS authenticates the data key, GCM the payload.

use aws_lc_rs::aead::NONCE_LEN;

use crate::backends::envelope::TAG_LEN;
use crate::backends::error::{BackendError, Rejection};

/// The largest plaintext KMS Encrypt takes (AWS: 4096 bytes).
pub const DIRECT_LIMIT: usize = 4096;

const DIRECT: u8 = 1;
const DATA_KEY: u8 = 2;

/// A parsed KMS envelope body.
#[derive(Debug, PartialEq, Eq)]
pub enum Sealed<'a> {
    /// A KMS Encrypt ciphertext blob.
    Direct {
        /// The blob, for KMS Decrypt.
        blob: &'a [u8],
    },
    /// A payload under a data key.
    DataKey {
        /// The data key as KMS encrypted it, for KMS Decrypt.
        encrypted_key: &'a [u8],
        /// The GCM nonce.
        nonce: [u8; NONCE_LEN],
        /// The GCM ciphertext followed by its tag.
        ciphertext_and_tag: &'a [u8],
    },
}

fn malformed(detail: &str) -> BackendError {
    BackendError::Rejected(Rejection::MalformedEnvelope(format!("KMS body: {detail}")))
}

impl<'a> Sealed<'a> {
    /// Parses a body, refusing unknown forms and inconsistent lengths.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BackendError> {
        let (&form, rest) = bytes.split_first().ok_or_else(|| malformed("empty"))?;
        match form {
            DIRECT if !rest.is_empty() => Ok(Sealed::Direct { blob: rest }),
            DIRECT => Err(malformed("empty ciphertext blob")),
            DATA_KEY => {
                let (len, rest) = rest
                    .split_first_chunk::<2>()
                    .ok_or_else(|| malformed("truncated data key length"))?;
                let len = usize::from(u16::from_be_bytes(*len));
                if len == 0 || rest.len() < len + NONCE_LEN + TAG_LEN {
                    return Err(malformed("truncated data-key form"));
                }
                let (encrypted_key, rest) = rest.split_at(len);
                let (nonce, ciphertext_and_tag) = rest.split_at(NONCE_LEN);
                let nonce = nonce
                    .try_into()
                    .map_err(|_| malformed("nonce must be 12 bytes"))?;
                Ok(Sealed::DataKey {
                    encrypted_key,
                    nonce,
                    ciphertext_and_tag,
                })
            }
            other => Err(malformed(&format!("unknown form {other}"))),
        }
    }

    /// The body for a KMS Encrypt blob.
    pub fn direct(blob: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + blob.len());
        out.push(DIRECT);
        out.extend_from_slice(blob);
        out
    }

    /// The body for a payload sealed under a data key.
    pub fn data_key(
        encrypted_key: &[u8],
        nonce: &[u8; NONCE_LEN],
        ciphertext_and_tag: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        let len = u16::try_from(encrypted_key.len())
            .map_err(|_| malformed("encrypted data key longer than 65535 bytes"))?;
        let mut out =
            Vec::with_capacity(3 + encrypted_key.len() + NONCE_LEN + ciphertext_and_tag.len());
        out.push(DATA_KEY);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(encrypted_key);
        out.extend_from_slice(nonce);
        out.extend_from_slice(ciphertext_and_tag);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_round_trip() {
        let direct = Sealed::direct(b"blob");
        assert_eq!(
            Sealed::parse(&direct).unwrap(),
            Sealed::Direct { blob: b"blob" }
        );
        let body = Sealed::data_key(b"edk", &[7; 12], &[9; 20]).unwrap();
        assert_eq!(
            Sealed::parse(&body).unwrap(),
            Sealed::DataKey {
                encrypted_key: b"edk",
                nonce: [7; 12],
                ciphertext_and_tag: &[9; 20],
            }
        );
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let body = Sealed::data_key(b"edk", &[7; 12], &[9; 16]).unwrap();
        for bad in [
            &[][..],
            &[1],
            &[3, 1, 2],
            &[2, 0],
            &[2, 0, 0, 1],
            &body[..body.len() - 1],
        ] {
            assert!(Sealed::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
