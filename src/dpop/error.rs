//! Why a DPoP proof was refused: RFC 9449's two error codes, `invalid_dpop_proof` with a
//! specific sub-reason and `use_dpop_nonce` with a fresh nonce, and the service failing.

/// The specific check an `invalid_dpop_proof` failed. Each has a stable name for metrics
/// and responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvalidProof {
    /// Larger than the configured cap.
    TooLarge,
    /// More than one proof where exactly one is allowed.
    MultipleProofs,
    /// Not three base64url segments of JSON objects.
    Malformed,
    /// `typ` is not `dpop+jwt`.
    WrongType,
    /// `alg` is missing, `none`, symmetric, or not on the allowlist.
    AlgorithmNotAllowed,
    /// The header names `crit` extensions, none of which are understood.
    CriticalHeader,
    /// No `jwk` header, or not a JWK.
    MissingKey,
    /// The `jwk` holds private or symmetric key members.
    PrivateKey,
    /// The `jwk` does not fit `alg` (type, curve, size).
    KeyAlgorithmMismatch,
    /// The signature does not verify with the `jwk`.
    BadSignature,
    /// `jti` missing or not a non-empty string.
    MissingJti,
    /// `htm` missing or not a string.
    MissingHtm,
    /// `htu` missing or not a string.
    MissingHtu,
    /// `iat` missing or not an integer.
    MissingIat,
    /// `htm` is not the request's method.
    WrongMethod,
    /// `htu` is not the request's URI.
    WrongUri,
    /// `iat` is older than the window.
    IatTooOld,
    /// `iat` is further ahead than the window.
    IatInFuture,
    /// An access token was presented and the proof has no `ath`.
    MissingAth,
    /// `ath` is not the hash of the presented access token.
    WrongAth,
    /// The proof was used before.
    Replayed,
    /// A DPoP-bound refresh token presented with a proof of another key.
    KeyNotBound,
}

impl InvalidProof {
    /// The sub-reason's name (`iat_too_old`...).
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidProof::TooLarge => "too_large",
            InvalidProof::MultipleProofs => "multiple_proofs",
            InvalidProof::Malformed => "malformed",
            InvalidProof::WrongType => "wrong_typ",
            InvalidProof::AlgorithmNotAllowed => "alg_not_allowed",
            InvalidProof::CriticalHeader => "crit_not_understood",
            InvalidProof::MissingKey => "missing_jwk",
            InvalidProof::PrivateKey => "private_key_in_jwk",
            InvalidProof::KeyAlgorithmMismatch => "jwk_alg_mismatch",
            InvalidProof::BadSignature => "bad_signature",
            InvalidProof::MissingJti => "missing_jti",
            InvalidProof::MissingHtm => "missing_htm",
            InvalidProof::MissingHtu => "missing_htu",
            InvalidProof::MissingIat => "missing_iat",
            InvalidProof::WrongMethod => "htm_mismatch",
            InvalidProof::WrongUri => "htu_mismatch",
            InvalidProof::IatTooOld => "iat_too_old",
            InvalidProof::IatInFuture => "iat_in_future",
            InvalidProof::MissingAth => "missing_ath",
            InvalidProof::WrongAth => "ath_mismatch",
            InvalidProof::Replayed => "replayed",
            InvalidProof::KeyNotBound => "key_not_bound",
        }
    }
}

/// Why a nonce was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NonceProblem {
    /// The proof carries none and the server requires one.
    Missing,
    /// The proof's nonce is not one this service issued recently.
    Stale,
}

impl NonceProblem {
    /// `missing` or `stale`.
    pub fn as_str(self) -> &'static str {
        match self {
            NonceProblem::Missing => "nonce_missing",
            NonceProblem::Stale => "nonce_stale",
        }
    }
}

/// The outcome of a refused validation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    /// `invalid_dpop_proof`.
    #[error("invalid_dpop_proof: {}", .0.as_str())]
    Invalid(InvalidProof),
    /// `use_dpop_nonce`: retry with `nonce` in the proof.
    #[error("use_dpop_nonce: {}", .problem.as_str())]
    UseNonce {
        /// Why.
        problem: NonceProblem,
        /// A fresh nonce to put in the next proof (sent as the `DPoP-Nonce` value).
        nonce: String,
    },
    /// The key backends or the replay store could not answer; the proof was not judged.
    #[error("DPoP validation unavailable: {0}")]
    Unavailable(String),
}

impl DpopError {
    /// The RFC 9449 error code (`invalid_dpop_proof` or `use_dpop_nonce`), or
    /// `temporarily_unavailable`.
    pub fn code(&self) -> &'static str {
        match self {
            DpopError::Invalid(_) => "invalid_dpop_proof",
            DpopError::UseNonce { .. } => "use_dpop_nonce",
            DpopError::Unavailable(_) => "temporarily_unavailable",
        }
    }

    /// The specific reason, for metrics (`bad_signature`, `nonce_missing`...).
    pub fn reason(&self) -> &'static str {
        match self {
            DpopError::Invalid(why) => why.as_str(),
            DpopError::UseNonce { problem, .. } => problem.as_str(),
            DpopError::Unavailable(_) => "unavailable",
        }
    }
}

impl From<InvalidProof> for DpopError {
    fn from(why: InvalidProof) -> Self {
        DpopError::Invalid(why)
    }
}
