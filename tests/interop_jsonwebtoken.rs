//! Every signing algorithm's JWS, made through the chain, verifies with an independent
//! implementation (jsonwebtoken on aws-lc-rs) given only the published JWK.

mod support;

use std::sync::Arc;

use token_service::backends::chain::{Chain, Routes};
use token_service::backends::software::material::RsaBits;
use token_service::backends::software::{SoftwareBackend, SoftwareOptions};
use token_service::backends::{Algorithm, Backend, KeyRef};
use token_service::context::CallContext;
use token_service::jws;
use token_service::metrics::Metrics;
use token_service::resilience::ResilienceConfig;

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Claims {
    sub: String,
    exp: u64,
}

#[tokio::test]
async fn every_algorithm_verifies_with_jsonwebtoken_from_the_published_jwk() {
    let dir = tempfile::tempdir().unwrap();
    for (algorithm, rsa_bits) in [
        (Algorithm::Es256, RsaBits::B2048),
        (Algorithm::Es384, RsaBits::B2048),
        (Algorithm::Ps256, RsaBits::B2048),
        (Algorithm::Ps384, RsaBits::B3072),
        (Algorithm::Ps512, RsaBits::B4096),
        (Algorithm::EdDsa, RsaBits::B2048),
    ] {
        let backend = Arc::new(
            SoftwareBackend::open(
                &dir.path().join(algorithm.as_str()),
                SoftwareOptions {
                    rsa_bits,
                    ..SoftwareOptions::default()
                },
            )
            .unwrap(),
        );
        let chain = Chain::new(
            vec![(
                backend.clone() as Arc<dyn Backend>,
                ResilienceConfig::default(),
            )],
            &Routes {
                sign: vec!["software".into()],
                verify: vec!["software".into()],
                encrypt: vec![],
            },
            true,
            Metrics::new(),
        )
        .unwrap();
        let key = KeyRef::new("token", "signing").unwrap();
        backend.generate_key(&key, algorithm).await.unwrap();
        let ctx = CallContext::new();
        let claims = Claims {
            sub: "alice".into(),
            exp: 4_000_000_000,
        };
        let token = jws::sign(
            &chain,
            &ctx,
            &key,
            Some("JWT"),
            &serde_json::to_vec(&claims).unwrap(),
        )
        .await
        .unwrap();
        // The kid reported is the one in the header.
        assert_eq!(
            jsonwebtoken::decode_header(&token.compact)
                .unwrap()
                .kid
                .as_deref(),
            Some(token.kid.as_str())
        );
        let token = token.compact;

        let published = chain.public_keys(&ctx, &key).await.unwrap();
        assert_eq!(published.len(), 1);
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(serde_json::to_value(&published[0]).unwrap()).unwrap();
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let validation = jsonwebtoken::Validation::new(support::jsonwebtoken_algorithm(algorithm));
        let decoded = jsonwebtoken::decode::<Claims>(&token, &decoding, &validation)
            .unwrap_or_else(|e| panic!("{algorithm}: jsonwebtoken refused our token: {e}"));
        assert_eq!(decoded.claims, claims, "{algorithm}");
        assert_eq!(decoded.header.kid, published[0].kid, "{algorithm}");

        // A flipped signature bit fails there too.
        let (head, sig) = token.rsplit_once('.').unwrap();
        let mut sig = sig.as_bytes().to_vec();
        sig[2] = if sig[2] == b'A' { b'B' } else { b'A' };
        let tampered = format!("{head}.{}", String::from_utf8(sig).unwrap());
        assert!(
            jsonwebtoken::decode::<Claims>(&tampered, &decoding, &validation).is_err(),
            "{algorithm}: tampered token accepted"
        );
        println!(
            "{algorithm}: verified by jsonwebtoken with kid {}",
            published[0].kid.as_deref().unwrap()
        );
    }
}
