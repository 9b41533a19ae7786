//! Compact JWS (RFC 7515) over the chain: signing a payload, and verifying a compact JWS
//! against published public keys.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

use crate::backends::chain::Chain;
use crate::backends::error::{BackendError, Rejection};
use crate::backends::jwk::PublicJwk;
use crate::backends::types::{
    Algorithm, KeyRef, VerificationKey, VerifyRequest, truncate_for_message,
};
use crate::context::CallContext;

/// Largest compact JWS accepted for verification.
pub const MAX_JWS_LEN: usize = 16 * 1024 * 1024;

/// The protected header we write and accept: exactly `alg`, `kid` and optionally `typ`.
/// Anything else (`crit`, `jku`, `x5u`, `b64`...) is refused, not ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Algorithm.
    pub alg: String,
    /// Key id.
    pub kid: String,
    /// Media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
}

/// A compact JWS, split and decoded but not yet verified.
#[derive(Clone, Debug)]
pub struct CompactJws {
    /// The protected header.
    pub header: Header,
    /// The algorithm named by the header, on our allowlist.
    pub algorithm: Algorithm,
    /// The decoded payload. Not trustworthy until verified.
    pub payload: Vec<u8>,
    signing_input: String,
    signature: Vec<u8>,
}

/// A compact JWS just made, with the key that signed it.
#[derive(Clone, Debug)]
pub struct SignedJws {
    /// The compact serialization.
    pub compact: String,
    /// The `kid` in its header.
    pub kid: String,
    /// The algorithm.
    pub algorithm: Algorithm,
}

/// Signs `payload` with `key` through the chain, returning a compact JWS whose header names
/// the `alg` and `kid` of the key version that actually signed (which may be a fallback
/// backend's).
pub async fn sign(
    chain: &Chain,
    ctx: &CallContext,
    key: &KeyRef,
    typ: Option<&str>,
    payload: &[u8],
) -> Result<SignedJws, BackendError> {
    let payload_b64 = B64.encode(payload);
    let (signing_input, signature) = chain
        .sign_prepared(ctx, key, |active| {
            let header = Header {
                alg: active.algorithm.as_str().to_owned(),
                kid: active.kid.clone(),
                typ: typ.map(str::to_owned),
            };
            let header_json = serde_json::to_vec(&header)
                .map_err(|e| BackendError::invalid_input(format!("JWS header: {e}")))?;
            Ok(format!("{}.{}", B64.encode(header_json), payload_b64).into_bytes())
        })
        .await?;
    let mut compact = String::from_utf8(signing_input)
        .map_err(|_| BackendError::invalid_input("JWS signing input is not ASCII"))?;
    compact.push('.');
    compact.push_str(&B64.encode(&signature.bytes));
    Ok(SignedJws {
        compact,
        kid: signature.kid,
        algorithm: signature.algorithm,
    })
}

impl CompactJws {
    /// Splits and decodes a compact JWS, checking the header against the allowlist.
    pub fn parse(compact: &str) -> Result<Self, BackendError> {
        let bad = |detail: &str| BackendError::invalid_input(format!("malformed JWS: {detail}"));
        if compact.len() > MAX_JWS_LEN {
            return Err(bad("too large"));
        }
        let compact = compact.trim_end_matches(['\n', '\r']);
        let mut parts = compact.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected three dot-separated parts"));
        };
        let header_bytes = B64.decode(h).map_err(|_| bad("header is not base64url"))?;
        let header: Header = serde_json::from_slice(&header_bytes)
            .map_err(|_| bad("header must be a JSON object with only alg, kid and typ"))?;
        let algorithm: Algorithm = header.alg.parse()?;
        if !algorithm.is_signing() {
            return Err(BackendError::Rejected(Rejection::UnsupportedAlgorithm(
                truncate_for_message(&header.alg),
            )));
        }
        let payload = B64.decode(p).map_err(|_| bad("payload is not base64url"))?;
        let signature = B64
            .decode(s)
            .map_err(|_| bad("signature is not base64url"))?;
        Ok(Self {
            header,
            algorithm,
            payload,
            signing_input: format!("{h}.{p}"),
            signature,
        })
    }

    /// Verifies against `keys` (a JWKS): the key with the header's `kid` must exist and fit
    /// the algorithm; the check runs through the chain's verify operation.
    pub async fn verify(
        &self,
        chain: &Chain,
        ctx: &CallContext,
        keys: &[PublicJwk],
    ) -> Result<(), BackendError> {
        let jwk = keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(self.header.kid.as_str()))
            .ok_or_else(|| {
                BackendError::Rejected(Rejection::UnknownKid(truncate_for_message(
                    &self.header.kid,
                )))
            })?;
        chain
            .verify(
                ctx,
                VerifyRequest {
                    key: VerificationKey::Jwk(jwk),
                    algorithm: self.algorithm,
                    message: self.signing_input.as_bytes(),
                    signature: &self.signature,
                },
            )
            .await
    }
}
