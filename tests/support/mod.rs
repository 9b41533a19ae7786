//! Test support: fault injection for chain tests, and a harness that runs the real
//! `token-service` binary on free loopback ports.

#![allow(dead_code)]

pub mod api_tls;
pub mod capture;
pub mod crypto_server;
pub mod dpop;
pub mod fault;
pub mod grpc;
pub mod kms;
pub mod pkcs11_backend;
pub mod pki;
pub mod ports;
pub mod process;
pub mod redis;
pub mod softhsm;
pub mod token_fixture;
pub mod vectors;

/// jsonwebtoken's name for one of our signing algorithms.
pub fn jsonwebtoken_algorithm(
    algorithm: token_service::backends::Algorithm,
) -> jsonwebtoken::Algorithm {
    use token_service::backends::Algorithm;
    match algorithm {
        Algorithm::Es256 => jsonwebtoken::Algorithm::ES256,
        Algorithm::Es384 => jsonwebtoken::Algorithm::ES384,
        Algorithm::Ps256 => jsonwebtoken::Algorithm::PS256,
        Algorithm::Ps384 => jsonwebtoken::Algorithm::PS384,
        Algorithm::Ps512 => jsonwebtoken::Algorithm::PS512,
        Algorithm::EdDsa => jsonwebtoken::Algorithm::EdDSA,
        Algorithm::A256Gcm => unreachable!("not a signing algorithm"),
    }
}

/// The `kid` in a JWT's header.
pub fn token_kid(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

/// Whether `token` verifies with jsonwebtoken against the JWK Set `jwks` (audience `api`):
/// false when its kid is not published.
pub fn verifies_with(token: &str, jwks: &str) -> bool {
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(jwks).unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    let Some(jwk) = jwks.find(header.kid.as_deref().unwrap()) else {
        return false;
    };
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&["api"]);
    jsonwebtoken::decode::<serde_json::Value>(
        token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &validation,
    )
    .is_ok()
}

/// A GenerateTokens request of the embedded profile's `demo` client for `subject`.
pub fn token_request(subject: &str) -> token_service::api::proto::GenerateTokensRequest {
    token_service::api::proto::GenerateTokensRequest {
        subject: subject.into(),
        client_id: "demo".into(),
        scopes: vec!["read".into()],
        ..Default::default()
    }
}

/// Seconds since the epoch (Redis expires keys by its own clock, so store tests use it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Creates a fresh family for client `web` in `store`; returns its id and the hash of its
/// current refresh token.
pub async fn stored_family(
    store: &dyn token_service::token::store::Store,
) -> (
    token_service::token::refresh::FamilyId,
    token_service::token::refresh::SecretHash,
) {
    use token_service::token::refresh::{FamilyId, RefreshToken};
    let family = FamilyId::generate().unwrap();
    let current = RefreshToken::generate(family.clone()).unwrap().hash();
    store
        .create_family(&family, family_record(current.clone(), "web"))
        .await
        .unwrap();
    (family, current)
}

/// A fresh family record whose current refresh token hashes to `current`, for `client_id`,
/// ending in an hour.
pub fn family_record(
    current: token_service::token::refresh::SecretHash,
    client_id: &str,
) -> token_service::token::store::FamilyRecord {
    token_service::token::store::FamilyRecord {
        current,
        retired: Vec::new(),
        generation: 0,
        revoked: false,
        expires_at: unix_now() + 3_600,
        client_id: client_id.into(),
        data: format!("sealed for {client_id}"),
    }
}
