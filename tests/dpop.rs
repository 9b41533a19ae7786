//! DPoP proof validation (RFC 9449 §4.3), one test per check: each invalid proof refused with
//! its own reason, each valid variant accepted, so removing any check fails a test here. Also
//! the RFC vectors, replay, nonces, the key cache and the metrics.

mod support;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};
use support::dpop::{ClientKey, claims, local_validator, proof, sign};
use token_service::backends::clock::ManualClock;
use token_service::backends::jwk::PublicJwk;
use token_service::context::CallContext;
use token_service::dpop::nonce::NonceIssuer;
use token_service::dpop::{
    DpopError, DpopSettings, DpopValidator, InvalidProof, NonceProblem, ProofRequest,
    ValidatedProof, access_token_hash,
};
use token_service::metrics::Metrics;

const NOW: u64 = 1_800_000_000;
const URI: &str = "https://server.example.com/token";

struct Fixture {
    validator: DpopValidator,
    clock: ManualClock,
    metrics: Metrics,
    _dir: tempfile::TempDir,
}

fn fixture(settings: DpopSettings) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(NOW);
    let (validator, metrics) = local_validator(dir.path(), settings, clock.clone());
    Fixture {
        validator,
        clock,
        metrics,
        _dir: dir,
    }
}

impl Fixture {
    async fn check_with(
        &self,
        proof: &str,
        method: &str,
        uri: &str,
        token: Option<&str>,
    ) -> Result<ValidatedProof, DpopError> {
        self.validator
            .validate(
                &CallContext::new(),
                ProofRequest {
                    proof,
                    method,
                    uri,
                    access_token: token,
                },
            )
            .await
    }

    async fn check(&self, proof: &str) -> Result<ValidatedProof, DpopError> {
        self.check_with(proof, "POST", URI, None).await
    }
}

fn invalid(why: InvalidProof) -> Result<ValidatedProof, DpopError> {
    Err(DpopError::Invalid(why))
}

fn thumbprint(jwk: &Value) -> String {
    serde_json::from_value::<PublicJwk>(jwk.clone())
        .unwrap()
        .thumbprint()
        .unwrap()
}

#[tokio::test]
async fn valid_proofs_of_every_algorithm_are_accepted_with_their_thumbprint() {
    let f = fixture(DpopSettings::default());
    for alg in ["ES256", "ES384", "PS256", "EdDSA"] {
        let key = ClientKey::generate(alg);
        let accepted = f.check(&proof(&key, "POST", URI, NOW)).await.unwrap();
        assert_eq!(accepted.jkt, thumbprint(&key.public_jwk()), "{alg}");
        assert_eq!(accepted.algorithm.as_str(), alg);
    }
    assert_eq!(f.metrics.dpop_count("valid", "ok"), 4);
}

#[tokio::test]
async fn htu_is_compared_normalized_without_query_and_fragment() {
    let f = fixture(DpopSettings::default());
    let key = ClientKey::generate("ES256");
    for htu in [
        "https://server.example.com/token?state=1",
        "https://server.example.com/token#part",
        "HTTPS://SERVER.Example.com/token",
        "https://server.example.com:443/token",
    ] {
        f.check(&proof(&key, "POST", htu, NOW))
            .await
            .unwrap_or_else(|e| panic!("{htu}: {e}"));
    }
    // The request URI may carry a query too.
    let p = proof(&key, "POST", URI, NOW);
    f.check_with(&p, "POST", "https://server.example.com/token?x=y", None)
        .await
        .unwrap();
    for other in [
        "https://server.example.com/other",
        "https://evil.example.com/token",
        "http://server.example.com/token",
    ] {
        assert_eq!(
            f.check(&proof(&key, "POST", other, NOW)).await,
            invalid(InvalidProof::WrongUri),
            "{other}"
        );
    }
}

#[tokio::test]
async fn header_checks_refuse_each_bad_header() {
    let f = fixture(DpopSettings::default());
    let key = ClientKey::generate("ES256");
    let body = || claims("POST", URI, NOW);
    let with = |change: &dyn Fn(&mut Value)| {
        let mut header = key.header();
        change(&mut header);
        sign(&key, &header, &body())
    };
    // alg none, with and without a signature.
    let none = with(&|h| h["alg"] = json!("none"));
    assert_eq!(
        f.check(&none).await,
        invalid(InvalidProof::AlgorithmNotAllowed)
    );
    let unsigned = format!("{}.", none.rsplit_once('.').unwrap().0);
    assert_eq!(
        f.check(&unsigned).await,
        invalid(InvalidProof::AlgorithmNotAllowed)
    );
    // HS256 with an oct key, the classic confusion.
    let hmac = {
        let header = json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": B64.encode([7u8; 32])}});
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(body().to_string())
        );
        let tag = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &[7u8; 32]),
            input.as_bytes(),
        );
        format!("{input}.{}", B64.encode(tag.as_ref()))
    };
    assert_eq!(
        f.check(&hmac).await,
        invalid(InvalidProof::AlgorithmNotAllowed)
    );
    // An oct key under an asymmetric alg is refused as a secret key.
    let oct = with(&|h| h["jwk"] = json!({"kty": "oct", "k": B64.encode([7u8; 32])}));
    assert_eq!(f.check(&oct).await, invalid(InvalidProof::PrivateKey));
    // A private key in the jwk (the signature itself is fine).
    let private = with(&|h| h["jwk"]["d"] = json!(B64.encode([1u8; 32])));
    assert_eq!(f.check(&private).await, invalid(InvalidProof::PrivateKey));
    // alg and jwk that do not fit each other: ES384 named, P-256 key.
    let mismatch = with(&|h| h["alg"] = json!("ES384"));
    assert_eq!(
        f.check(&mismatch).await,
        invalid(InvalidProof::KeyAlgorithmMismatch)
    );
    let rsa_for_ec = with(&|h| h["jwk"] = ClientKey::generate("PS256").public_jwk());
    assert_eq!(
        f.check(&rsa_for_ec).await,
        invalid(InvalidProof::KeyAlgorithmMismatch)
    );
    // The jwk's own alg member must agree too.
    let declared = with(&|h| h["jwk"]["alg"] = json!("ES384"));
    assert_eq!(
        f.check(&declared).await,
        invalid(InvalidProof::KeyAlgorithmMismatch)
    );
    // typ, jwk, crit.
    assert_eq!(
        f.check(&with(&|h| h["typ"] = json!("JWT"))).await,
        invalid(InvalidProof::WrongType)
    );
    assert_eq!(
        f.check(&with(&|h| {
            h.as_object_mut().unwrap().remove("typ");
        }))
        .await,
        invalid(InvalidProof::WrongType)
    );
    assert_eq!(
        f.check(&with(&|h| {
            h.as_object_mut().unwrap().remove("jwk");
        }))
        .await,
        invalid(InvalidProof::MissingKey)
    );
    assert_eq!(
        f.check(&with(&|h| h["jwk"] = json!("key"))).await,
        invalid(InvalidProof::MissingKey)
    );
    assert_eq!(
        f.check(&with(&|h| h["crit"] = json!(["exp"]))).await,
        invalid(InvalidProof::CriticalHeader)
    );
    // An alg the configuration does not allow.
    let strict = fixture(DpopSettings {
        algorithms: vec![token_service::backends::Algorithm::Es256],
        ..DpopSettings::default()
    });
    let ed = ClientKey::generate("EdDSA");
    assert_eq!(
        strict.check(&proof(&ed, "POST", URI, NOW)).await,
        invalid(InvalidProof::AlgorithmNotAllowed)
    );
}

#[tokio::test]
async fn a_flipped_signature_byte_is_a_bad_signature() {
    let f = fixture(DpopSettings::default());
    for alg in ["ES256", "PS256", "EdDSA"] {
        let key = ClientKey::generate(alg);
        let good = proof(&key, "POST", URI, NOW);
        let (input, signature) = good.rsplit_once('.').unwrap();
        let mut bytes = B64.decode(signature).unwrap();
        bytes[3] ^= 0x01;
        let forged = format!("{input}.{}", B64.encode(bytes));
        assert_eq!(
            f.check(&forged).await,
            invalid(InvalidProof::BadSignature),
            "{alg}"
        );
        // Another key's signature over the same bytes.
        let other = ClientKey::generate(alg);
        let swapped = format!("{input}.{}", B64.encode(other.sign(input.as_bytes())));
        assert_eq!(
            f.check(&swapped).await,
            invalid(InvalidProof::BadSignature),
            "{alg}"
        );
    }
}

#[tokio::test]
async fn claim_checks_refuse_each_bad_claim() {
    let f = fixture(DpopSettings::default());
    let key = ClientKey::generate("ES256");
    let with = |change: &dyn Fn(&mut Value)| {
        let mut body = claims("POST", URI, NOW);
        change(&mut body);
        sign(&key, &key.header(), &body)
    };
    for (claim, why) in [
        ("jti", InvalidProof::MissingJti),
        ("htm", InvalidProof::MissingHtm),
        ("htu", InvalidProof::MissingHtu),
        ("iat", InvalidProof::MissingIat),
    ] {
        let missing = with(&|c| {
            c.as_object_mut().unwrap().remove(claim);
        });
        assert_eq!(f.check(&missing).await, invalid(why), "{claim} missing");
        let wrong_type = with(&|c| c[claim] = json!([1]));
        assert_eq!(
            f.check(&wrong_type).await,
            invalid(why),
            "{claim} not a scalar"
        );
    }
    assert_eq!(
        f.check(&with(&|c| c["jti"] = json!(""))).await,
        invalid(InvalidProof::MissingJti)
    );
    // htm is exact: method names are case-sensitive.
    assert_eq!(
        f.check(&with(&|c| c["htm"] = json!("GET"))).await,
        invalid(InvalidProof::WrongMethod)
    );
    assert_eq!(
        f.check(&with(&|c| c["htm"] = json!("post"))).await,
        invalid(InvalidProof::WrongMethod)
    );
    // iat: ±60 s.
    assert_eq!(
        f.check(&with(&|c| c["iat"] = json!(NOW - 61))).await,
        invalid(InvalidProof::IatTooOld)
    );
    assert_eq!(
        f.check(&with(&|c| c["iat"] = json!(NOW + 61))).await,
        invalid(InvalidProof::IatInFuture)
    );
    f.check(&with(&|c| c["iat"] = json!(NOW - 59)))
        .await
        .unwrap();
    f.check(&with(&|c| c["iat"] = json!(NOW + 59)))
        .await
        .unwrap();
    // A NumericDate with a fraction counts in whole seconds; a string is not one.
    f.check(&with(&|c| c["iat"] = json!(NOW as f64 + 0.5)))
        .await
        .unwrap();
    assert_eq!(
        f.check(&with(&|c| c["iat"] = json!(NOW.to_string()))).await,
        invalid(InvalidProof::MissingIat)
    );
    f.clock.advance(120);
    assert_eq!(
        f.check(&with(&|_| {})).await,
        invalid(InvalidProof::IatTooOld),
        "the clock moved on"
    );
}

#[tokio::test]
async fn ath_binds_the_presented_access_token() {
    let f = fixture(DpopSettings::default());
    let key = ClientKey::generate("ES256");
    let token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.sig";
    let with_ath = |ath: &str| {
        let mut body = claims("GET", "https://api.example.com/data", NOW);
        body["ath"] = json!(ath);
        sign(&key, &key.header(), &body)
    };
    let uri = "https://api.example.com/data";
    f.check_with(
        &with_ath(&access_token_hash(token)),
        "GET",
        uri,
        Some(token),
    )
    .await
    .unwrap();
    assert_eq!(
        f.check_with(
            &with_ath(&access_token_hash("another token")),
            "GET",
            uri,
            Some(token)
        )
        .await,
        invalid(InvalidProof::WrongAth)
    );
    let without = proof(&key, "GET", uri, NOW);
    assert_eq!(
        f.check_with(&without, "GET", uri, Some(token)).await,
        invalid(InvalidProof::MissingAth)
    );
}

#[tokio::test]
async fn malformed_and_oversized_proofs_are_refused() {
    let f = fixture(DpopSettings::default());
    let key = ClientKey::generate("ES256");
    let good = proof(&key, "POST", URI, NOW);
    let parts: Vec<&str> = good.split('.').collect();
    let not_json = format!("{}.{}.{}", B64.encode("{not json"), parts[1], parts[2]);
    let not_object = format!("{}.{}.{}", parts[0], B64.encode("[1,2]"), parts[2]);
    for (bad, why) in [
        (
            format!("{}.{}", parts[0], parts[1]),
            InvalidProof::Malformed,
        ),
        (format!("{good}.extra"), InvalidProof::Malformed),
        (
            format!("{}!.{}.{}", parts[0], parts[1], parts[2]),
            InvalidProof::Malformed,
        ),
        (
            format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
            InvalidProof::Malformed,
        ),
        (not_json, InvalidProof::Malformed),
        (not_object, InvalidProof::Malformed),
        (String::new(), InvalidProof::Malformed),
        (format!("{good}, {good}"), InvalidProof::MultipleProofs),
    ] {
        assert_eq!(f.check(&bad).await, invalid(why), "{bad:.40}");
    }
    let mut big = claims("POST", URI, NOW);
    big["pad"] = json!("x".repeat(9000));
    assert_eq!(
        f.check(&sign(&key, &key.header(), &big)).await,
        invalid(InvalidProof::TooLarge)
    );
    assert!(f.metrics.dpop_count("invalid_dpop_proof", "malformed") >= 7);
    assert_eq!(f.metrics.dpop_count("invalid_dpop_proof", "too_large"), 1);
}

#[tokio::test]
async fn a_proof_is_accepted_once_and_keys_are_parsed_once() {
    let f = fixture(DpopSettings::default());
    let key = ClientKey::generate("ES256");
    let p = proof(&key, "POST", URI, NOW);
    f.check(&p).await.unwrap();
    assert_eq!(f.check(&p).await, invalid(InvalidProof::Replayed));
    for _ in 0..5 {
        f.check(&proof(&key, "POST", URI, NOW)).await.unwrap();
    }
    assert_eq!(f.validator.cached_keys(), 1, "one client key, parsed once");
    f.check(&proof(&ClientKey::generate("ES256"), "POST", URI, NOW))
        .await
        .unwrap();
    assert_eq!(f.validator.cached_keys(), 2);
    assert_eq!(f.metrics.dpop_count("invalid_dpop_proof", "replayed"), 1);
    // A forged proof reusing a good jti does not burn it: the signature is checked first.
    let mut body = claims("POST", URI, NOW);
    body["jti"] = json!("kept-jti");
    let forged = {
        let good = sign(&key, &key.header(), &body);
        let (input, _) = good.rsplit_once('.').unwrap();
        format!("{input}.{}", B64.encode([0u8; 64]))
    };
    assert_eq!(f.check(&forged).await, invalid(InvalidProof::BadSignature));
    f.check(&sign(&key, &key.header(), &body)).await.unwrap();
}

#[tokio::test]
async fn nonces_are_required_when_configured_and_stale_ones_refused() {
    let issuer = || NonceIssuer::new(&[9u8; 32], None, 60).unwrap();
    let f = fixture(DpopSettings {
        nonces: Some(issuer()),
        ..DpopSettings::default()
    });
    let key = ClientKey::generate("ES256");
    let Err(DpopError::UseNonce {
        problem: NonceProblem::Missing,
        nonce,
    }) = f.check(&proof(&key, "POST", URI, NOW)).await
    else {
        panic!("a proof without a nonce is answered with use_dpop_nonce");
    };
    let with_nonce = |nonce: &str| {
        let mut body = claims("POST", URI, NOW);
        body["nonce"] = json!(nonce);
        sign(&key, &key.header(), &body)
    };
    f.check(&with_nonce(&nonce)).await.unwrap();
    // Another instance with the same secret issued it: accepted as well.
    let elsewhere = issuer().issue(NOW);
    f.check(&with_nonce(&elsewhere)).await.unwrap();
    // Two steps old, or made with another secret: stale, with a fresh nonce to use.
    let old = issuer().issue(NOW - 180);
    let foreign = NonceIssuer::new(&[8u8; 32], None, 60).unwrap().issue(NOW);
    for stale in [old, foreign, "not-a-nonce".to_owned()] {
        match f.check(&with_nonce(&stale)).await {
            Err(DpopError::UseNonce {
                problem: NonceProblem::Stale,
                nonce,
            }) => {
                assert!(issuer().check(&nonce, NOW));
            }
            other => panic!("{stale}: {other:?}"),
        }
    }
    assert_eq!(f.metrics.dpop_count("use_dpop_nonce", "nonce_missing"), 1);
    assert_eq!(f.metrics.dpop_count("use_dpop_nonce", "nonce_stale"), 3);
}

/// RFC 7638 §3.1, and RFC 9449 §6.1 (jkt) and §7.1 (ath).
#[test]
fn rfc_vectors() {
    let rfc7638: PublicJwk = serde_json::from_str(r#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#).unwrap();
    assert_eq!(
        rfc7638.thumbprint().unwrap(),
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    );
    let rfc9449: PublicJwk = serde_json::from_str(r#"{"kty":"EC","x":"l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs","y":"9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA","crv":"P-256"}"#).unwrap();
    assert_eq!(
        rfc9449.thumbprint().unwrap(),
        "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
    );
    assert_eq!(
        access_token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
        "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    );
}

#[tokio::test]
async fn the_window_setting_is_honoured() {
    let f = fixture(DpopSettings {
        iat_window: Duration::from_secs(5),
        ..DpopSettings::default()
    });
    let key = ClientKey::generate("ES256");
    assert_eq!(
        f.check(&proof(&key, "POST", URI, NOW - 6)).await,
        invalid(InvalidProof::IatTooOld)
    );
    f.check(&proof(&key, "POST", URI, NOW - 4)).await.unwrap();
}
