//! Test support: fault injection for chain tests, and a harness that runs the real
//! `token-service` binary on free loopback ports.

#![allow(dead_code)]

pub mod capture;
pub mod crypto_server;
pub mod dpop;
pub mod fault;
pub mod kms;
pub mod pki;
pub mod process;
pub mod redis;
pub mod softhsm;
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
