//! Parsing a DPoP proof (RFC 9449 §4.2) into its checked parts, before any cryptography:
//! the compact form, the header (`typ`, `alg`, a public `jwk`) and the claims.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Map, Value};

use super::error::InvalidProof;
use crate::backends::jwk::PublicJwk;
use crate::backends::types::Algorithm;

/// The media type a proof's `typ` must name.
pub const PROOF_TYPE: &str = "dpop+jwt";

/// Longest `jti` accepted: it is hashed and stored per proof.
pub const MAX_JTI_LEN: usize = 256;

/// JWK members that only private or symmetric keys have (RFC 7518 §6.2.2, §6.3.2, §6.4).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// The claims of a proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProofClaims {
    /// Unique id of the proof.
    pub jti: String,
    /// HTTP method.
    pub htm: String,
    /// HTTP target URI.
    pub htu: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Hash of the access token, when one is presented.
    pub ath: Option<String>,
    /// The server nonce, when one was asked for.
    pub nonce: Option<String>,
}

/// A proof split, decoded and syntactically checked; its signature is not checked yet.
#[derive(Clone, Debug)]
pub struct ParsedProof<'a> {
    /// `alg`, on the allowlist.
    pub algorithm: Algorithm,
    /// The public key from the header.
    pub jwk: PublicJwk,
    /// The claims.
    pub claims: ProofClaims,
    /// `header.payload`, the signed bytes.
    pub signing_input: &'a str,
    /// The signature.
    pub signature: Vec<u8>,
}

fn object(segment: &str) -> Result<Map<String, Value>, InvalidProof> {
    let bytes = B64.decode(segment).map_err(|_| InvalidProof::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(InvalidProof::Malformed),
    }
}

fn string<'m>(map: &'m Map<String, Value>, name: &str) -> Option<&'m str> {
    map.get(name).and_then(Value::as_str)
}

/// Parses `proof`, refusing anything larger than `max_len` bytes and any `alg` not in
/// `allowed`.
pub fn parse<'a>(
    proof: &'a str,
    max_len: usize,
    allowed: &[Algorithm],
) -> Result<ParsedProof<'a>, InvalidProof> {
    if proof.len() > max_len {
        return Err(InvalidProof::TooLarge);
    }
    // Several DPoP header fields arrive joined by commas.
    if proof.contains(',') {
        return Err(InvalidProof::MultipleProofs);
    }
    let mut segments = proof.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(InvalidProof::Malformed);
    };
    let header = object(header)?;
    if string(&header, "typ") != Some(PROOF_TYPE) {
        return Err(InvalidProof::WrongType);
    }
    let algorithm = string(&header, "alg")
        .and_then(|alg| alg.parse::<Algorithm>().ok())
        .filter(|alg| alg.is_signing() && allowed.contains(alg))
        .ok_or(InvalidProof::AlgorithmNotAllowed)?;
    if header.contains_key("crit") {
        return Err(InvalidProof::CriticalHeader);
    }
    let Some(Value::Object(jwk)) = header.get("jwk") else {
        return Err(InvalidProof::MissingKey);
    };
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m))
        || jwk.get("kty").and_then(Value::as_str) == Some("oct")
    {
        return Err(InvalidProof::PrivateKey);
    }
    let jwk: PublicJwk =
        serde_json::from_value(Value::Object(jwk.clone())).map_err(|_| InvalidProof::MissingKey)?;

    let claims = object(payload)?;
    let jti = string(&claims, "jti")
        .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_LEN)
        .ok_or(InvalidProof::MissingJti)?;
    let htm = string(&claims, "htm").ok_or(InvalidProof::MissingHtm)?;
    let htu = string(&claims, "htu").ok_or(InvalidProof::MissingHtu)?;
    // A NumericDate may have a fraction (RFC 7519 §2); whole seconds are compared.
    let iat = claims
        .get("iat")
        .and_then(|v| {
            v.as_i64().or_else(|| {
                v.as_f64()
                    .filter(|f| f.is_finite() && f.abs() < 1e15)
                    .map(|f| f.floor() as i64)
            })
        })
        .ok_or(InvalidProof::MissingIat)?;
    let optional = |name: &str| match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(InvalidProof::Malformed),
    };
    let claims = ProofClaims {
        jti: jti.to_owned(),
        htm: htm.to_owned(),
        htu: htu.to_owned(),
        iat,
        ath: optional("ath")?,
        nonce: optional("nonce")?,
    };
    let signature = B64.decode(signature).map_err(|_| InvalidProof::Malformed)?;
    if signature.is_empty() {
        return Err(InvalidProof::Malformed);
    }
    let cut = proof.rfind('.').ok_or(InvalidProof::Malformed)?;
    let signing_input = &proof[..cut];
    Ok(ParsedProof {
        algorithm,
        jwk,
        claims,
        signing_input,
        signature,
    })
}
