//! Classification of PKCS#11 return values into the framework's error classes, and what
//! each means for the session and the module.

use cryptoki::error::{Error as CkError, RvError};

use crate::backends::error::{BackendError, Rejection};

/// What a failure means for the resources that produced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// The session is fine.
    None,
    /// The session is gone or logged out: drop it and open (and log in) a new one.
    Session,
    /// The module or device is gone: re-initialise the module, re-find the token.
    Module,
    /// An object handle is stale (the object was replaced or destroyed elsewhere): forget
    /// the cached handles and find the objects again.
    Handles,
}

/// What a failed call means.
pub fn damage(error: &CkError) -> Damage {
    match error {
        CkError::Pkcs11(rv, _) => match rv {
            RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::UserNotLoggedIn
            | RvError::DeviceError => Damage::Session,
            RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::CryptokiNotInitialized
            | RvError::TokenNotRecognized => Damage::Module,
            RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid => Damage::Handles,
            _ => Damage::None,
        },
        _ => Damage::None,
    }
}

/// Maps a failed call onto the error classes. `what` says what was being done (no secrets).
pub fn classify(backend: &str, what: &str, error: &CkError) -> BackendError {
    let detail = || format!("{what}: {error}");
    match error {
        CkError::Pkcs11(rv, _) => match rv {
            RvError::SignatureInvalid | RvError::SignatureLenRange => {
                BackendError::VerificationFailed
            }
            RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange => {
                BackendError::DecryptionFailed
            }
            RvError::MechanismInvalid
            | RvError::MechanismParamInvalid
            | RvError::ArgumentsBad
            | RvError::KeyTypeInconsistent
            | RvError::KeyFunctionNotPermitted
            | RvError::KeySizeRange
            | RvError::DataLenRange
            | RvError::DataInvalid
            | RvError::AttributeValueInvalid
            | RvError::AttributeTypeInvalid
            | RvError::TemplateIncomplete
            | RvError::TemplateInconsistent
            | RvError::DomainParamsInvalid
            | RvError::CurveNotSupported
            | RvError::FunctionNotSupported
            | RvError::PinIncorrect
            | RvError::PinLocked
            | RvError::PinExpired => BackendError::Rejected(Rejection::InvalidInput(detail())),
            _ => BackendError::unavailable(backend, detail()),
        },
        CkError::LibraryLoading(_) | CkError::MissingSymbol(_) | CkError::NullFunctionPointer => {
            BackendError::unavailable(backend, detail())
        }
        _ => BackendError::Rejected(Rejection::InvalidInput(detail())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;

    fn rv(rv: RvError) -> CkError {
        CkError::Pkcs11(rv, Function::Sign)
    }

    #[test]
    fn outages_are_unavailable_and_damage_the_right_thing() {
        for (code, expected) in [
            (RvError::SessionHandleInvalid, Damage::Session),
            (RvError::SessionClosed, Damage::Session),
            (RvError::UserNotLoggedIn, Damage::Session),
            (RvError::DeviceError, Damage::Session),
            (RvError::DeviceRemoved, Damage::Module),
            (RvError::TokenNotPresent, Damage::Module),
            (RvError::CryptokiNotInitialized, Damage::Module),
            (RvError::KeyHandleInvalid, Damage::Handles),
            (RvError::ObjectHandleInvalid, Damage::Handles),
        ] {
            assert_eq!(damage(&rv(code)), expected, "{code:?}");
            assert!(
                matches!(
                    classify("pkcs11", "sign", &rv(code)),
                    BackendError::Unavailable { .. }
                ),
                "{code:?}"
            );
        }
    }

    #[test]
    fn answers_and_bad_requests_are_not_outages() {
        assert_eq!(
            classify("p", "verify", &rv(RvError::SignatureInvalid)),
            BackendError::VerificationFailed
        );
        assert_eq!(
            classify("p", "decrypt", &rv(RvError::EncryptedDataInvalid)),
            BackendError::DecryptionFailed
        );
        for code in [
            RvError::MechanismInvalid,
            RvError::KeyFunctionNotPermitted,
            RvError::PinIncorrect,
        ] {
            assert!(
                matches!(classify("p", "x", &rv(code)), BackendError::Rejected(_)),
                "{code:?}"
            );
            assert_eq!(damage(&rv(code)), Damage::None);
        }
    }
}
