//! Making DPoP proofs for tests: a client key of each algorithm, and proofs whose header and
//! claims a test can bend one member at a time; and a validator over a local chain.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair, RSA_PSS_SHA256, RsaKeyPair,
};

/// A client's proof key.
pub enum ClientKey {
    Ec(EcdsaKeyPair, &'static str),
    Rsa(RsaKeyPair),
    Ed(Ed25519KeyPair),
}

impl ClientKey {
    /// A fresh key for `alg` (ES256, ES384, PS256 or EdDSA).
    pub fn generate(alg: &str) -> Self {
        match alg {
            "ES256" => ClientKey::Ec(
                EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
                "ES256",
            ),
            "ES384" => ClientKey::Ec(
                EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap(),
                "ES384",
            ),
            "PS256" => {
                ClientKey::Rsa(RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap())
            }
            "EdDSA" => ClientKey::Ed(Ed25519KeyPair::generate().unwrap()),
            other => panic!("no test key for {other}"),
        }
    }

    /// The JWS algorithm name.
    pub fn alg(&self) -> &'static str {
        match self {
            ClientKey::Ec(_, alg) => alg,
            ClientKey::Rsa(_) => "PS256",
            ClientKey::Ed(_) => "EdDSA",
        }
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> Value {
        match self {
            ClientKey::Ec(pair, alg) => {
                let point = pair.public_key().as_ref();
                let (crv, len) = if *alg == "ES256" {
                    ("P-256", 32)
                } else {
                    ("P-384", 48)
                };
                json!({"kty": "EC", "crv": crv, "x": B64.encode(&point[1..1 + len]), "y": B64.encode(&point[1 + len..])})
            }
            ClientKey::Rsa(pair) => {
                let c = aws_lc_rs::signature::RsaPublicKeyComponents::<Vec<u8>>::from(
                    pair.public_key(),
                );
                json!({"kty": "RSA", "n": B64.encode(&c.n), "e": B64.encode(&c.e)})
            }
            ClientKey::Ed(pair) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(pair.public_key().as_ref())})
            }
        }
    }

    /// Signs `message` in JWS form.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            ClientKey::Ec(pair, _) => pair.sign(&rng, message).unwrap().as_ref().to_vec(),
            ClientKey::Rsa(pair) => {
                let mut out = vec![0u8; pair.public_modulus_len()];
                pair.sign(&RSA_PSS_SHA256, &rng, message, &mut out).unwrap();
                out
            }
            ClientKey::Ed(pair) => pair.sign(message).as_ref().to_vec(),
        }
    }

    /// The standard header: typ, alg and this key.
    pub fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": self.alg(), "jwk": self.public_jwk()})
    }
}

/// Claims of a proof for `htm` `htu` made at `iat`, with a random jti.
pub fn claims(htm: &str, htu: &str, iat: u64) -> Value {
    let mut jti = [0u8; 12];
    aws_lc_rs::rand::fill(&mut jti).unwrap();
    json!({"jti": B64.encode(jti), "htm": htm, "htu": htu, "iat": iat})
}

/// A compact proof with this header and these claims, signed by `key`.
pub fn sign(key: &ClientKey, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        B64.encode(serde_json::to_vec(header).unwrap()),
        B64.encode(serde_json::to_vec(claims).unwrap())
    );
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", B64.encode(signature))
}

/// A valid proof for `htm` `htu` at `iat`.
pub fn proof(key: &ClientKey, htm: &str, htu: &str, iat: u64) -> String {
    sign(key, &key.header(), &claims(htm, htu, iat))
}

/// A validator verifying with a software backend (keys in `dir`) and remembering proofs in
/// a memory store, reading time from `clock`.
pub fn local_validator(
    dir: &std::path::Path,
    settings: token_service::dpop::DpopSettings,
    clock: token_service::backends::clock::ManualClock,
) -> (
    token_service::dpop::DpopValidator,
    token_service::metrics::Metrics,
) {
    use std::sync::Arc;
    use token_service::backends::Backend;
    use token_service::backends::chain::{Chain, Routes};
    use token_service::backends::software::{SoftwareBackend, SoftwareOptions};
    let local =
        Arc::new(SoftwareBackend::open(&dir.join("keys"), SoftwareOptions::default()).unwrap());
    let metrics = token_service::metrics::Metrics::new();
    let chain = Chain::new(
        vec![(
            local as Arc<dyn Backend>,
            token_service::resilience::ResilienceConfig::default(),
        )],
        &Routes {
            sign: vec!["software".into()],
            verify: vec!["software".into()],
            encrypt: vec![],
        },
        true,
        metrics.clone(),
    )
    .unwrap();
    let validator = token_service::dpop::DpopValidator::new(
        settings,
        Arc::new(chain),
        Arc::new(token_service::token::store::memory::MemoryStore::new(
            1_000_000,
        )),
        Arc::new(clock),
        metrics.clone(),
    );
    (validator, metrics)
}
