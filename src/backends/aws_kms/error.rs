//! Classifying AWS SDK errors into the design brief's classes, by the KMS error code
//! (<https://docs.aws.amazon.com/kms/latest/APIReference/CommonErrors.html> and each
//! operation's Errors section).

use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};

use aws_sdk_kms::config::http::HttpResponse;

use crate::backends::error::{BackendError, Rejection, UnavailableReason};
use crate::backends::types::truncate_to;

use super::NAME;

/// What an error code means to the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodeClass {
    /// Throttled: unavailable, and said so.
    Throttled,
    /// KMS or its dependencies failed: unavailable.
    ServerFault,
    /// The key does not exist (or is not visible to us).
    NotFound,
    /// The request does not fit the key, its state, or our permissions: rejected.
    Refused,
    /// The ciphertext does not authenticate (or was sealed by another key).
    BadCiphertext,
    /// KMS Verify's "no".
    InvalidSignature,
}

/// The class of a KMS error code; unknown codes go by the HTTP status (5xx unavailable).
pub(crate) fn class_of(code: Option<&str>, http_status: Option<u16>) -> CodeClass {
    match code.unwrap_or_default() {
        "ThrottlingException" | "LimitExceededException" | "RequestLimitExceeded" => {
            CodeClass::Throttled
        }
        "KMSInternalException"
        | "DependencyTimeoutException"
        | "KeyUnavailableException"
        | "ServiceUnavailable"
        | "InternalFailure" => CodeClass::ServerFault,
        "NotFoundException" => CodeClass::NotFound,
        "InvalidCiphertextException" | "IncorrectKeyException" => CodeClass::BadCiphertext,
        "KMSInvalidSignatureException" => CodeClass::InvalidSignature,
        _ if http_status.is_some_and(|s| s >= 500) => CodeClass::ServerFault,
        // DisabledException, KMSInvalidStateException, InvalidKeyUsageException,
        // ValidationException, AccessDeniedException, AlreadyExistsException...
        _ => CodeClass::Refused,
    }
}

/// The backend error for a failed SDK call about `subject` (a key or alias, for messages).
pub(crate) fn classify<E>(subject: &str, error: SdkError<E, HttpResponse>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let detail = |error: &SdkError<E, HttpResponse>| {
        let source = aws_sdk_kms::error::DisplayErrorContext(error).to_string();
        truncate_to(&source, MESSAGE_LIMIT)
    };
    match &error {
        SdkError::TimeoutError(_) => BackendError::Unavailable {
            backend: NAME.to_owned(),
            reason: UnavailableReason::Timeout,
        },
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            BackendError::unavailable(NAME, detail(&error))
        }
        SdkError::ServiceError(context) => {
            let code = error.code().map(str::to_owned);
            let message = error
                .message()
                .map(|m| truncate_to(m, MESSAGE_LIMIT))
                .unwrap_or_default();
            let status = context.raw().status().as_u16();
            let named = code.as_deref().unwrap_or("unknown error");
            match class_of(code.as_deref(), Some(status)) {
                CodeClass::Throttled => BackendError::Unavailable {
                    backend: NAME.to_owned(),
                    reason: UnavailableReason::Throttled,
                },
                CodeClass::ServerFault => {
                    BackendError::unavailable(NAME, format!("{named} (HTTP {status}): {message}"))
                }
                CodeClass::NotFound => BackendError::Rejected(Rejection::UnknownKey(format!(
                    "{subject} (KMS: {message})"
                ))),
                CodeClass::BadCiphertext => BackendError::DecryptionFailed,
                CodeClass::InvalidSignature => BackendError::VerificationFailed,
                CodeClass::Refused => BackendError::Rejected(Rejection::Remote(format!(
                    "KMS {named} for {subject}: {message}"
                ))),
            }
        }
        // Building the request failed: our input (or our code) is wrong, not KMS.
        _ => BackendError::invalid_input(format!("KMS request for {subject}: {}", detail(&error))),
    }
}

/// KMS messages name ARNs and states, never key material; they are still bounded.
const MESSAGE_LIMIT: usize = 300;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_onto_the_classes_the_issue_names() {
        for code in ["ThrottlingException", "LimitExceededException"] {
            assert_eq!(class_of(Some(code), Some(400)), CodeClass::Throttled);
        }
        for code in [
            "KMSInternalException",
            "DependencyTimeoutException",
            "KeyUnavailableException",
        ] {
            assert_eq!(class_of(Some(code), Some(500)), CodeClass::ServerFault);
        }
        assert_eq!(
            class_of(Some("Anything"), Some(503)),
            CodeClass::ServerFault
        );
        assert_eq!(class_of(None, Some(502)), CodeClass::ServerFault);
        assert_eq!(
            class_of(Some("NotFoundException"), Some(400)),
            CodeClass::NotFound
        );
        for code in [
            "DisabledException",
            "KMSInvalidStateException",
            "InvalidKeyUsageException",
            "ValidationException",
            "AccessDeniedException",
        ] {
            assert_eq!(
                class_of(Some(code), Some(400)),
                CodeClass::Refused,
                "{code}"
            );
        }
        assert_eq!(
            class_of(Some("InvalidCiphertextException"), Some(400)),
            CodeClass::BadCiphertext
        );
        assert_eq!(
            class_of(Some("KMSInvalidSignatureException"), Some(400)),
            CodeClass::InvalidSignature
        );
    }
}
