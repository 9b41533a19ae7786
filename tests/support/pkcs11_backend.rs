//! The PKCS#11 backend as the PKCS#11 tests open it: on a test token (SoftHSM or
//! kryoptic, see [`super::softhsm`]), with a small session pool and a 1 s key refresh.

use std::sync::Arc;
use std::time::Duration;

use token_service::backends::chain::{Chain, Routes};
use token_service::backends::pkcs11::Pkcs11Options;
use token_service::backends::pkcs11::token::TokenSelector;
use token_service::backends::software::material::RsaBits;
use token_service::backends::{Backend, KeyRef};
use token_service::metrics::Metrics;
use token_service::resilience::{ResilienceConfig, RetryConfig};
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
        verify_signatures: true,
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

/// A read-write session on `token`, logged in as the user, for a test that changes the
/// token behind the backend's back. Opened after the backend (which initialised the module).
pub fn user_session(token: &Token) -> cryptoki::session::Session {
    let pkcs11 = cryptoki::context::Pkcs11::new(&token.module).unwrap();
    let slot = pkcs11.get_slots_with_token().unwrap()[0];
    let session = pkcs11.open_rw_session(slot).unwrap();
    // Logins are per token and process: the backend's sessions may have logged in already.
    if let Err(error) = session.login(
        cryptoki::session::UserType::User,
        Some(&cryptoki::types::AuthPin::new(PIN.into())),
    ) {
        assert!(error.to_string().contains("already"), "{error}");
    }
    session
}

/// Puts a P-256 key pair on the token the way another application would, its objects
/// labelled `public_label` and `private_label`.
pub fn generate_p256_pair(
    session: &cryptoki::session::Session,
    public_label: &[u8],
    private_label: &[u8],
) {
    use cryptoki::object::Attribute;
    const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    session
        .generate_key_pair(
            &cryptoki::mechanism::Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::EcParams(P256.to_vec()),
                Attribute::Label(public_label.to_vec()),
            ],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sign(true),
                Attribute::Label(private_label.to_vec()),
            ],
        )
        .unwrap();
}

/// Policies that try a backend once: a test sees each failure as it happens.
pub fn single_attempt() -> ResilienceConfig {
    ResilienceConfig {
        retry: RetryConfig {
            max_attempts: 1,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A chain that signs with `backends` in the order given; nothing else is routed.
pub fn sign_chain(backends: Vec<(Arc<dyn Backend>, ResilienceConfig)>) -> Chain {
    let sign = backends.iter().map(|(b, _)| b.name().to_owned()).collect();
    let routes = Routes {
        sign,
        verify: vec![],
        encrypt: vec![],
    };
    Chain::new(backends, &routes, true, Metrics::new()).unwrap()
}

/// A key in the `token` namespace.
pub fn key(name: &str) -> KeyRef {
    KeyRef::new("token", name).unwrap()
}
