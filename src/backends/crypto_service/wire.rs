//! Conversions between the framework's types and `crypto.v1` messages, and between
//! [`BackendError`] and gRPC status codes, used by the client backend and the reference
//! server alike so the two sides cannot drift apart.

use prost::Message;
use tonic::{Code, Status};

use crate::api::crypto_proto as pb;
use crate::api::crypto_proto::error_detail::Reason;
use crate::backends::error::{BackendError, Rejection, UnavailableReason};
use crate::backends::types::{Algorithm, KeyMetadata, KeyRef, KeyState};

/// The wire algorithm for ours.
pub fn algorithm_to_wire(algorithm: Algorithm) -> pb::Algorithm {
    match algorithm {
        Algorithm::Es256 => pb::Algorithm::Es256,
        Algorithm::Es384 => pb::Algorithm::Es384,
        Algorithm::Ps256 => pb::Algorithm::Ps256,
        Algorithm::Ps384 => pb::Algorithm::Ps384,
        Algorithm::Ps512 => pb::Algorithm::Ps512,
        Algorithm::EdDsa => pb::Algorithm::Eddsa,
        Algorithm::A256Gcm => pb::Algorithm::A256gcm,
    }
}

/// Our algorithm for a wire value; `None` for UNSPECIFIED or an unknown number.
pub fn algorithm_from_wire(value: i32) -> Option<Algorithm> {
    match pb::Algorithm::try_from(value).ok()? {
        pb::Algorithm::Unspecified => None,
        pb::Algorithm::Es256 => Some(Algorithm::Es256),
        pb::Algorithm::Es384 => Some(Algorithm::Es384),
        pb::Algorithm::Ps256 => Some(Algorithm::Ps256),
        pb::Algorithm::Ps384 => Some(Algorithm::Ps384),
        pb::Algorithm::Ps512 => Some(Algorithm::Ps512),
        pb::Algorithm::Eddsa => Some(Algorithm::EdDsa),
        pb::Algorithm::A256gcm => Some(Algorithm::A256Gcm),
    }
}

/// The wire state for ours.
pub fn state_to_wire(state: KeyState) -> pb::KeyState {
    match state {
        KeyState::Active => pb::KeyState::Active,
        KeyState::Deprecated => pb::KeyState::Deprecated,
        KeyState::Disabled => pb::KeyState::Disabled,
        KeyState::Destroyed => pb::KeyState::Destroyed,
    }
}

/// Our state for a wire value; `None` for UNSPECIFIED or an unknown number.
pub fn state_from_wire(value: i32) -> Option<KeyState> {
    match pb::KeyState::try_from(value).ok()? {
        pb::KeyState::Unspecified => None,
        pb::KeyState::Active => Some(KeyState::Active),
        pb::KeyState::Deprecated => Some(KeyState::Deprecated),
        pb::KeyState::Disabled => Some(KeyState::Disabled),
        pb::KeyState::Destroyed => Some(KeyState::Destroyed),
    }
}

/// `namespace/name` for a key (its version is carried separately).
pub fn key_id(key: &KeyRef) -> String {
    format!("{}/{}", key.namespace(), key.name())
}

/// Parses `namespace/name`.
pub fn parse_key_id(text: &str) -> Result<KeyRef, BackendError> {
    let Some((namespace, name)) = text.split_once('/') else {
        return Err(BackendError::invalid_input(format!(
            "key id `{}` is not namespace/name",
            crate::backends::types::truncate_for_message(text)
        )));
    };
    KeyRef::new(namespace, name)
}

/// A key's versions on the wire.
pub fn metadata_to_wire(key: &KeyRef, versions: &[KeyMetadata]) -> pb::KeyMetadata {
    pb::KeyMetadata {
        key_id: key_id(key),
        algorithm: versions
            .first()
            .map(|m| algorithm_to_wire(m.algorithm))
            .unwrap_or(pb::Algorithm::Unspecified) as i32,
        versions: versions
            .iter()
            .map(|m| pb::KeyVersion {
                version: m.version,
                state: state_to_wire(m.state) as i32,
                kid: m.kid.clone(),
                created_at: m.created_at,
                rotated_at: m.rotated_at.unwrap_or(0),
                retained_until: m.retained_until.unwrap_or(0),
            })
            .collect(),
    }
}

/// A key's versions from the wire, checked: the key must be the one asked for, the
/// algorithm and every state known, versions unique and ascending. A violation is a
/// *security* error: the service answered something other than what was asked.
pub fn metadata_from_wire(
    backend: &str,
    asked: &KeyRef,
    wire: pb::KeyMetadata,
) -> Result<Vec<KeyMetadata>, BackendError> {
    let violation = |detail: String| BackendError::security(backend, detail);
    if wire.key_id != key_id(asked) {
        return Err(violation(format!(
            "metadata for `{}` answered a request for {asked}",
            crate::backends::types::truncate_for_message(&wire.key_id)
        )));
    }
    let algorithm = algorithm_from_wire(wire.algorithm)
        .ok_or_else(|| violation(format!("metadata for {asked} names no known algorithm")))?;
    let mut out: Vec<KeyMetadata> = Vec::with_capacity(wire.versions.len());
    for v in wire.versions {
        if v.version == 0 || out.last().is_some_and(|m| m.version >= v.version) {
            return Err(violation(format!(
                "metadata for {asked} lists versions out of order"
            )));
        }
        let state = state_from_wire(v.state).ok_or_else(|| {
            violation(format!("{asked} version {} has no known state", v.version))
        })?;
        out.push(KeyMetadata {
            backend: backend.to_owned(),
            key: asked.ring().with_version(v.version),
            version: v.version,
            algorithm,
            state,
            created_at: v.created_at,
            rotated_at: (v.rotated_at != 0).then_some(v.rotated_at),
            retained_until: (v.retained_until != 0).then_some(v.retained_until),
            kid: v.kid,
            public_jwk: None,
        });
    }
    Ok(out)
}

fn reason_of(error: &BackendError) -> (Code, Reason) {
    match error {
        BackendError::Unavailable { reason, .. } => match reason {
            UnavailableReason::Timeout => (Code::DeadlineExceeded, Reason::BackendUnavailable),
            UnavailableReason::RateLimited
            | UnavailableReason::ConcurrencyLimited
            | UnavailableReason::Throttled => (Code::ResourceExhausted, Reason::BackendUnavailable),
            _ => (Code::Unavailable, Reason::BackendUnavailable),
        },
        BackendError::Rejected(rejection) => match rejection {
            Rejection::UnknownKey(_) | Rejection::UnknownKid(_) => {
                (Code::NotFound, Reason::UnknownKey)
            }
            Rejection::KeyNotActive { .. }
            | Rejection::RetentionExpired { .. }
            | Rejection::KeyUnusable { .. } => (Code::FailedPrecondition, Reason::KeyNotActive),
            Rejection::AlgorithmMismatch { .. } => {
                (Code::FailedPrecondition, Reason::AlgorithmMismatch)
            }
            Rejection::UnsupportedAlgorithm(_) => (Code::InvalidArgument, Reason::Unsupported),
            Rejection::UnsupportedOperation(_) | Rejection::NoCapableBackend(_) => {
                (Code::FailedPrecondition, Reason::Unsupported)
            }
            Rejection::KeyExists(_) => (Code::AlreadyExists, Reason::KeyExists),
            Rejection::MalformedEnvelope(_) | Rejection::UnknownEnvelopeBackend(_) => {
                (Code::InvalidArgument, Reason::MalformedCiphertext)
            }
            Rejection::InvalidPublicKey(_) | Rejection::InvalidInput(_) => {
                (Code::InvalidArgument, Reason::InvalidInput)
            }
            Rejection::Remote(_) => (Code::FailedPrecondition, Reason::Unspecified),
        },
        BackendError::DecryptionFailed => (Code::InvalidArgument, Reason::DecryptionFailed),
        // The caller gets no detail of a server-side security event.
        BackendError::Security(_) | BackendError::VerificationFailed => {
            (Code::Internal, Reason::Internal)
        }
    }
}

/// The status a server answers for an error, with an [`pb::ErrorDetail`] in its details.
pub fn error_to_status(error: &BackendError) -> Status {
    let (code, reason) = reason_of(error);
    let message = match error {
        BackendError::Security(_) => "internal error".to_owned(),
        other => other.to_string(),
    };
    let detail = pb::ErrorDetail {
        reason: reason as i32,
    };
    Status::with_details(code, message, detail.encode_to_vec().into())
}

/// The error a client sees for a status: transport faults and overload are *unavailable*,
/// answers about the request are *rejected*, a failed decryption is that.
pub fn status_to_error(backend: &str, status: &Status) -> BackendError {
    let reason = pb::ErrorDetail::decode(status.details())
        .ok()
        .and_then(|d| Reason::try_from(d.reason).ok())
        .unwrap_or(Reason::Unspecified);
    let message = crate::backends::types::truncate_for_message(status.message());
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Cancelled
        | Code::Unknown
        | Code::Internal => BackendError::Unavailable {
            backend: backend.to_owned(),
            reason: match status.code() {
                Code::DeadlineExceeded => UnavailableReason::Timeout,
                Code::ResourceExhausted => UnavailableReason::Throttled,
                code => UnavailableReason::Io(format!("{code:?}: {message}")),
            },
        },
        _ => match reason {
            Reason::DecryptionFailed => BackendError::DecryptionFailed,
            Reason::UnknownKey => BackendError::Rejected(Rejection::UnknownKey(message)),
            Reason::KeyExists => BackendError::Rejected(Rejection::KeyExists(message)),
            Reason::MalformedCiphertext => {
                BackendError::Rejected(Rejection::MalformedEnvelope(message))
            }
            Reason::InvalidInput => BackendError::Rejected(Rejection::InvalidInput(message)),
            Reason::Unspecified if status.code() == Code::NotFound => {
                BackendError::Rejected(Rejection::UnknownKey(message))
            }
            other => BackendError::Rejected(Rejection::Remote(format!(
                "{:?} ({other:?}): {message}",
                status.code()
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_and_state_round_trips() {
        for algorithm in Algorithm::ALL {
            assert_eq!(
                algorithm_from_wire(algorithm_to_wire(algorithm) as i32),
                Some(algorithm)
            );
        }
        for state in [
            KeyState::Active,
            KeyState::Deprecated,
            KeyState::Disabled,
            KeyState::Destroyed,
        ] {
            assert_eq!(state_from_wire(state_to_wire(state) as i32), Some(state));
        }
        assert_eq!(algorithm_from_wire(0), None);
        assert_eq!(algorithm_from_wire(99), None);
        assert_eq!(state_from_wire(0), None);
    }

    #[test]
    fn errors_keep_their_class_across_the_wire() {
        let cases = [
            BackendError::unavailable("software", "disk gone"),
            BackendError::Rejected(Rejection::UnknownKey("token/x".into())),
            BackendError::Rejected(Rejection::KeyExists("token/x".into())),
            BackendError::Rejected(Rejection::MalformedEnvelope("bad".into())),
            BackendError::invalid_input("empty message"),
            BackendError::DecryptionFailed,
        ];
        for error in cases {
            let back = status_to_error("crypto_service", &error_to_status(&error));
            assert_eq!(back.class(), error.class(), "{error}");
            if matches!(
                error,
                BackendError::Rejected(_) | BackendError::DecryptionFailed
            ) {
                assert_eq!(
                    std::mem::discriminant(&back),
                    std::mem::discriminant(&error)
                );
            }
        }
        // A server-side security event reaches the client without its detail.
        let status = error_to_status(&BackendError::security("pkcs11", "secret detail"));
        assert!(!status.message().contains("secret detail"));
        // A bare status without details is still classified by its code.
        let plain = status_to_error("crypto_service", &Status::not_found("no such key"));
        assert_eq!(plain.class(), crate::backends::ErrorClass::Rejected);
        let down = status_to_error("crypto_service", &Status::unavailable("connect refused"));
        assert_eq!(down.class(), crate::backends::ErrorClass::Unavailable);
    }

    #[test]
    fn key_ids_parse_strictly() {
        let key = parse_key_id("token/signing").unwrap();
        assert_eq!(key_id(&key), "token/signing");
        for bad in ["token", "token/", "/signing", "a/b/c", "token/sig ning"] {
            assert!(parse_key_id(bad).is_err(), "{bad}");
        }
    }
}
