//! The classified error every backend returns. The class decides what the chain does.

use std::fmt;

use super::types::{Algorithm, KeyState, Operation};

/// How the chain treats an error (design brief, "Errors are classified").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The backend could not answer: retry where safe, count against the breaker, fall back.
    Unavailable,
    /// The request is wrong for this key or backend: no retry, no fallback.
    Rejected,
    /// The backend answered "no": the signature or ciphertext does not check out.
    VerificationFailed,
    /// The backend answered something it must not have: refused and logged.
    Security,
}

impl ErrorClass {
    /// Lower-case name used in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::Rejected => "rejected",
            ErrorClass::VerificationFailed => "verification_failed",
            ErrorClass::Security => "security",
        }
    }
}

/// Why a backend could not answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnavailableReason {
    /// The call did not finish within the per-call timeout.
    #[error("timed out")]
    Timeout,
    /// The backend's circuit breaker is open; the backend was not called.
    #[error("circuit breaker open")]
    BreakerOpen,
    /// The outbound rate limit for this backend is exhausted; the backend was not called.
    #[error("outbound rate limit reached")]
    RateLimited,
    /// All concurrency slots for this backend are taken; the backend was not called.
    #[error("concurrency limit reached")]
    ConcurrencyLimited,
    /// The backend reported throttling.
    #[error("throttled by the backend")]
    Throttled,
    /// A connection, session or device failure.
    #[error("{0}")]
    Io(String),
    /// Every backend in the chain for this operation was unavailable.
    #[error("no backend in the {operation} chain could serve the call (tried: {tried})")]
    ChainExhausted {
        /// The operation that failed.
        operation: Operation,
        /// Backends tried, with why each failed.
        tried: String,
    },
}

impl UnavailableReason {
    /// True when the refusal came from a local policy (breaker, rate limit, concurrency),
    /// not from the backend: such a refusal is neither retried nor counted by the breaker.
    pub fn is_local_refusal(&self) -> bool {
        matches!(
            self,
            UnavailableReason::BreakerOpen
                | UnavailableReason::RateLimited
                | UnavailableReason::ConcurrencyLimited
        )
    }
}

/// Why a request was refused. Messages name keys and algorithms, never key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No key ring of that name exists in the backend.
    #[error("unknown key {0}")]
    UnknownKey(String),
    /// No version of the key has this kid (or it is no longer retained).
    #[error("no key version with kid `{0}`")]
    UnknownKid(String),
    /// The key version exists but its state forbids the operation.
    #[error("key {key} version {version} is {state}; {operation} needs an ACTIVE version")]
    KeyNotActive {
        /// The key ring.
        key: String,
        /// The version.
        version: u32,
        /// Its state.
        state: KeyState,
        /// What was attempted.
        operation: Operation,
    },
    /// The key version was rotated out and its retention has ended.
    #[error("key {key} version {version} is past its retention")]
    RetentionExpired {
        /// The key ring.
        key: String,
        /// The version.
        version: u32,
    },
    /// The key is disabled or destroyed.
    #[error("key {key} version {version} is {state}")]
    KeyUnusable {
        /// The key ring.
        key: String,
        /// The version.
        version: u32,
        /// Its state.
        state: KeyState,
    },
    /// The algorithm name is not one this service accepts.
    #[error("unsupported algorithm `{0}`")]
    UnsupportedAlgorithm(String),
    /// The algorithm does not fit the key (ES384 with a P-256 key, signing with an AES key).
    #[error("algorithm {requested} does not fit key {key} ({actual})")]
    AlgorithmMismatch {
        /// The key.
        key: String,
        /// What the request asked for.
        requested: String,
        /// What the key is for.
        actual: Algorithm,
    },
    /// The backend does not implement the operation.
    #[error("operation {0} is not supported by this backend")]
    UnsupportedOperation(Operation),
    /// No backend in the chain for this operation can serve it.
    #[error("no configured backend can {0}")]
    NoCapableBackend(Operation),
    /// The key ring already exists.
    #[error("key {0} already exists")]
    KeyExists(String),
    /// The envelope is not a well-formed envelope of ours.
    #[error("malformed envelope: {0}")]
    MalformedEnvelope(String),
    /// The envelope names a backend that is not configured.
    #[error("envelope was produced by backend `{0}`, which is not configured")]
    UnknownEnvelopeBackend(String),
    /// A public key is malformed or unusable.
    #[error("invalid public key: {0}")]
    InvalidPublicKey(String),
    /// Any other malformed input.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A remote service refused the request for a reason with no closer match here.
    #[error("refused by the remote service: {0}")]
    Remote(String),
}

/// The error type of every [`Backend`](super::Backend) operation and of the chain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The backend could not answer.
    #[error("backend `{backend}` unavailable: {reason}")]
    Unavailable {
        /// The backend (or `chain`).
        backend: String,
        /// Why.
        reason: UnavailableReason,
    },
    /// The request was refused.
    #[error("{0}")]
    Rejected(#[from] Rejection),
    /// The signature does not verify.
    #[error("signature verification failed")]
    VerificationFailed,
    /// The ciphertext, its tag or the AAD do not authenticate.
    #[error("decryption failed: ciphertext, tag or associated data do not authenticate")]
    DecryptionFailed,
    /// The backend answered something it must not have.
    #[error("security check failed: {0}")]
    Security(SecurityViolation),
}

/// A response that breaks the contract: what was asked and what came back differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityViolation {
    /// The backend that answered.
    pub backend: String,
    /// What was wrong, without secrets.
    pub detail: String,
}

impl fmt::Display for SecurityViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backend `{}`: {}", self.backend, self.detail)
    }
}

impl BackendError {
    /// The class of this error, which decides retry, breaker and fallback.
    pub fn class(&self) -> ErrorClass {
        match self {
            BackendError::Unavailable { .. } => ErrorClass::Unavailable,
            BackendError::Rejected(_) => ErrorClass::Rejected,
            // A failed GCM tag is the decrypt-side "no": an answer, never a fault.
            BackendError::VerificationFailed | BackendError::DecryptionFailed => {
                ErrorClass::VerificationFailed
            }
            BackendError::Security(_) => ErrorClass::Security,
        }
    }

    /// Shorthand for an I/O-style unavailability of `backend`.
    pub fn unavailable(backend: &str, detail: impl Into<String>) -> Self {
        BackendError::Unavailable {
            backend: backend.to_owned(),
            reason: UnavailableReason::Io(detail.into()),
        }
    }

    /// Shorthand for a malformed-input rejection.
    pub fn invalid_input(detail: impl Into<String>) -> Self {
        BackendError::Rejected(Rejection::InvalidInput(detail.into()))
    }

    /// Shorthand for a security violation reported by `backend`.
    pub fn security(backend: &str, detail: impl Into<String>) -> Self {
        BackendError::Security(SecurityViolation {
            backend: backend.to_owned(),
            detail: detail.into(),
        })
    }

    /// True if the chain may retry this error on the same backend.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            BackendError::Unavailable { reason, .. } => {
                !reason.is_local_refusal()
                    && !matches!(reason, UnavailableReason::ChainExhausted { .. })
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_design() {
        assert_eq!(
            BackendError::unavailable("b", "refused").class(),
            ErrorClass::Unavailable
        );
        assert_eq!(
            BackendError::invalid_input("x").class(),
            ErrorClass::Rejected
        );
        assert_eq!(
            BackendError::VerificationFailed.class(),
            ErrorClass::VerificationFailed
        );
        assert_eq!(
            BackendError::DecryptionFailed.class(),
            ErrorClass::VerificationFailed
        );
        assert_eq!(
            BackendError::security("b", "alg").class(),
            ErrorClass::Security
        );
    }

    #[test]
    fn local_refusals_are_not_retried() {
        let open = BackendError::Unavailable {
            backend: "b".into(),
            reason: UnavailableReason::BreakerOpen,
        };
        assert!(!open.is_retryable());
        assert!(BackendError::unavailable("b", "conn reset").is_retryable());
        assert!(!BackendError::VerificationFailed.is_retryable());
    }
}
