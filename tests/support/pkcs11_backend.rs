//! The PKCS#11 backend as the PKCS#11 tests open it: on a test token (SoftHSM or
//! kryoptic, see [`super::softhsm`]), with a small session pool and a 1 s key refresh.

use std::time::Duration;

use token_service::backends::KeyRef;
use token_service::backends::pkcs11::Pkcs11Options;
use token_service::backends::pkcs11::token::TokenSelector;
use token_service::backends::software::material::RsaBits;
use token_service::secret::Secret;

use super::softhsm::{LABEL, PIN, Token};

/// The backend's options for `token`: found by label, logged in with the test PIN.
pub fn options(token: &Token) -> Pkcs11Options {
    Pkcs11Options {
        module: token.module.clone(),
        token: TokenSelector::Label(LABEL.into()),
        pin: Secret::new(PIN.into()),
        max_sessions: 4,
        verify_on_token: false,
        retention: Duration::from_secs(24 * 3600),
        rsa_bits: RsaBits::B2048,
        refresh_interval: Duration::from_secs(1),
    }
}

/// A 2-worker runtime for one test body (the token tests run as child processes).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A key in the `token` namespace.
pub fn key(name: &str) -> KeyRef {
    KeyRef::new("token", name).unwrap()
}
