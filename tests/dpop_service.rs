//! DPoP through the real service: bound tokens over gRPC (GenerateTokens, RefreshTokens,
//! IntrospectToken, ValidateDPoP), nonces across instances, a proof replayed to a second
//! instance sharing a real Redis, and validation carrying on when the Crypto Service dies.

mod support;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use support::crypto_server::{CryptoServerProcess, config as server_config};
use support::dpop::{ClientKey, claims, proof, sign};
use support::process::{Sandbox, ServiceProcess, http_get};
use support::redis::RedisServer;
use token_service::api::proto::token_service_client::TokenServiceClient;
use token_service::api::proto::{
    DPoPProof, GenerateTokensRequest, IntrospectTokenRequest, RefreshTokensRequest,
    ValidateDPoPRequest,
};
use token_service::backends::chain::{Chain, Routes};
use token_service::backends::crypto_service::{CryptoServiceBackend, CryptoServiceOptions};
use token_service::backends::software::{SoftwareBackend, SoftwareOptions};
use token_service::backends::{Backend, Operation};
use token_service::context::CallContext;
use token_service::dpop::{DpopError, DpopSettings, DpopValidator, InvalidProof, ProofRequest};
use token_service::metrics::{Metrics, Outcome};
use token_service::resilience::{BreakerConfig, ResilienceConfig, RetryConfig};
use token_service::token::store::memory::MemoryStore;
use tonic::Code;

const TOKEN_URI: &str = "https://auth.example.com/token";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token_proof(key: &ClientKey) -> Option<DPoPProof> {
    Some(DPoPProof {
        proof: proof(key, "POST", TOKEN_URI, now()),
        http_method: "POST".into(),
        http_uri: TOKEN_URI.into(),
    })
}

fn generate(dpop: Option<DPoPProof>) -> GenerateTokensRequest {
    GenerateTokensRequest {
        subject: "alice".into(),
        client_id: "demo".into(),
        scopes: vec!["read".into()],
        dpop,
        ..Default::default()
    }
}

fn thumbprint(key: &ClientKey) -> String {
    serde_json::from_value::<token_service::backends::PublicJwk>(key.public_jwk())
        .unwrap()
        .thumbprint()
        .unwrap()
}

fn cnf_of(access_token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = access_token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["cnf"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_tokens_and_families_over_grpc() {
    let sandbox = Sandbox::new("");
    let service = ServiceProcess::start(Some(&sandbox.config_path()), sandbox.dir.path());
    let mut client = TokenServiceClient::connect(format!("http://{}", service.grpc))
        .await
        .unwrap();
    let key = ClientKey::generate("ES256");
    let jkt = thumbprint(&key);

    let issued = client
        .generate_tokens(generate(token_proof(&key)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issued.token_type, "DPoP");
    assert_eq!(cnf_of(&issued.access_token), json!({ "jkt": jkt }));
    let seen = client
        .introspect_token(IntrospectTokenRequest {
            token: issued.access_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(seen.active);
    assert_eq!(
        (seen.token_type.as_str(), seen.cnf_jkt.as_str()),
        ("DPoP", jkt.as_str())
    );

    // A resource request: proof with ath, checked by ValidateDPoP.
    let api = "https://api.example.com/orders";
    let mut body = claims("GET", api, now());
    body["ath"] = json!(token_service::dpop::access_token_hash(&issued.access_token));
    let resource_proof = sign(&key, &key.header(), &body);
    let checked = client
        .validate_d_po_p(ValidateDPoPRequest {
            proof: resource_proof.clone(),
            http_method: "GET".into(),
            http_uri: api.into(),
            access_token: issued.access_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(checked.valid, "{checked:?}");
    assert_eq!(checked.jkt, jkt);
    let replayed = client
        .validate_d_po_p(ValidateDPoPRequest {
            proof: resource_proof,
            http_method: "GET".into(),
            http_uri: api.into(),
            access_token: issued.access_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            replayed.valid,
            replayed.error.as_str(),
            replayed.reason.as_str()
        ),
        (false, "invalid_dpop_proof", "replayed")
    );

    // The family is bound: no proof, or another key's proof, does not refresh it.
    let refresh = |dpop| RefreshTokensRequest {
        refresh_token: issued.refresh_token.clone(),
        dpop,
    };
    let unproved = client.refresh_tokens(refresh(None)).await.unwrap_err();
    assert_eq!(unproved.code(), Code::Unauthenticated);
    let thief = ClientKey::generate("ES256");
    let stolen = client
        .refresh_tokens(refresh(token_proof(&thief)))
        .await
        .unwrap_err();
    assert_eq!(stolen.code(), Code::InvalidArgument);
    assert!(
        stolen.message().contains("key_not_bound"),
        "{}",
        stolen.message()
    );
    // Those refusals left the refresh token usable by its owner.
    let next = client
        .refresh_tokens(refresh(token_proof(&key)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.token_type, "DPoP");
    assert_eq!(cnf_of(&next.access_token), json!({ "jkt": jkt }));

    // A bad proof on GenerateTokens, and a replayed one.
    let mut bad = token_proof(&key).unwrap();
    bad.http_uri = "https://auth.example.com/other".into();
    let refused = client
        .generate_tokens(generate(Some(bad)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(refused.message(), "invalid_dpop_proof: htu_mismatch");
    let once = token_proof(&key);
    client
        .generate_tokens(generate(once.clone()))
        .await
        .unwrap();
    let again = client.generate_tokens(generate(once)).await.unwrap_err();
    assert_eq!(again.message(), "invalid_dpop_proof: replayed");
    // A proof without its request is refused before any check.
    let incomplete = client
        .generate_tokens(generate(Some(DPoPProof {
            proof: proof(&key, "POST", TOKEN_URI, now()),
            http_method: "POST".into(),
            http_uri: String::new(),
        })))
        .await
        .unwrap_err();
    assert_eq!(incomplete.code(), Code::InvalidArgument);
    assert_eq!(
        incomplete.message(),
        "dpop needs proof, http_method and http_uri"
    );
    // Without a proof: a bearer token, as before.
    let bearer = client
        .generate_tokens(generate(None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bearer.token_type, "Bearer");
    assert!(cnf_of(&bearer.access_token).is_null());

    let (_, metrics) = http_get(service.admin, "/metrics");
    for line in [
        "token_service_dpop_validations_total{reason=\"replayed\",result=\"invalid_dpop_proof\"} 2",
        "token_service_dpop_validations_total{reason=\"key_not_bound\",result=\"invalid_dpop_proof\"} 1",
        "token_service_dpop_validations_total{reason=\"htu_mismatch\",result=\"invalid_dpop_proof\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(
        !service.settled_log().contains(&issued.access_token),
        "no token in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonces_from_one_instance_work_on_another_and_replays_are_refused_fleet_wide() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sandbox = Sandbox::new(
        "[dpop]\nrequire_nonce = true\nnonce_secret = { env = \"DPOP_NONCE_SECRET\" }\n",
    );
    let config = std::fs::read_to_string(sandbox.config_path())
        .unwrap()
        .replace(
            "[tokens]",
            &format!(
                "[tokens]\nstore = \"redis\"\nredis_url = \"{}\"",
                redis.url()
            ),
        );
    sandbox.write_config(&config);
    let env = [(
        "DPOP_NONCE_SECRET",
        "a fleet-wide secret of at least 32 bytes!",
    )];
    let first =
        ServiceProcess::start_with_env(Some(&sandbox.config_path()), sandbox.dir.path(), &env);
    let second =
        ServiceProcess::start_with_env(Some(&sandbox.config_path()), sandbox.dir.path(), &env);
    let mut a = TokenServiceClient::connect(format!("http://{}", first.grpc))
        .await
        .unwrap();
    let mut b = TokenServiceClient::connect(format!("http://{}", second.grpc))
        .await
        .unwrap();
    let key = ClientKey::generate("ES256");

    // No nonce: use_dpop_nonce with the nonce in the dpop-nonce metadata.
    let asked = a
        .generate_tokens(generate(token_proof(&key)))
        .await
        .unwrap_err();
    assert_eq!(asked.code(), Code::InvalidArgument);
    assert_eq!(asked.message(), "use_dpop_nonce: nonce_missing");
    let nonce = asked
        .metadata()
        .get("dpop-nonce")
        .expect("dpop-nonce metadata")
        .to_str()
        .unwrap()
        .to_owned();
    let with_nonce = |method: &str, uri: &str| {
        let mut body = claims(method, uri, now());
        body["nonce"] = json!(nonce);
        sign(&key, &key.header(), &body)
    };
    // The nonce instance A issued is accepted by instance B.
    let issued = b
        .generate_tokens(generate(Some(DPoPProof {
            proof: with_nonce("POST", TOKEN_URI),
            http_method: "POST".into(),
            http_uri: TOKEN_URI.into(),
        })))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issued.token_type, "DPoP");

    // The same proof sent to both instances at once: exactly one accepts it.
    for round in 0..10 {
        let uri = format!("https://api.example.com/r/{round}");
        let shared = with_nonce("GET", &uri);
        let request = || ValidateDPoPRequest {
            proof: shared.clone(),
            http_method: "GET".into(),
            http_uri: uri.clone(),
            access_token: String::new(),
        };
        let (x, y) = tokio::join!(a.validate_d_po_p(request()), b.validate_d_po_p(request()));
        let (x, y) = (x.unwrap().into_inner(), y.unwrap().into_inner());
        assert!(x.valid ^ y.valid, "round {round}: {x:?} {y:?}");
        let refused = if x.valid { y } else { x };
        assert_eq!(refused.reason, "replayed");
    }
}

fn policies() -> ResilienceConfig {
    ResilienceConfig {
        retry: RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        },
        breaker: BreakerConfig {
            failure_threshold: 2,
            ..BreakerConfig::default()
        },
        ..ResilienceConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_goes_through_the_crypto_service_and_falls_back_to_local_verification() {
    let dir = tempfile::tempdir().unwrap();
    let mut server =
        CryptoServerProcess::start(dir.path(), &server_config(dir.path(), "127.0.0.1:0", ""));
    let remote = Arc::new(
        CryptoServiceBackend::connect(CryptoServiceOptions::new(server.url("http"))).unwrap(),
    );
    let local = Arc::new(
        SoftwareBackend::open(&dir.path().join("local"), SoftwareOptions::default()).unwrap(),
    );
    let metrics = Metrics::new();
    let chain = Chain::new(
        vec![
            (remote as Arc<dyn Backend>, policies()),
            (local as Arc<dyn Backend>, policies()),
        ],
        &Routes {
            sign: vec!["software".into()],
            verify: vec!["crypto_service".into(), "software".into()],
            encrypt: vec![],
        },
        true,
        metrics.clone(),
    )
    .unwrap();
    let validator = DpopValidator::new(
        DpopSettings::default(),
        Arc::new(chain),
        Arc::new(MemoryStore::new(1000)),
        Arc::new(token_service::backends::clock::SystemClock),
        metrics.clone(),
    );
    let check = |proof: String| {
        let validator = &validator;
        async move {
            validator
                .validate(
                    &CallContext::new(),
                    ProofRequest {
                        proof: &proof,
                        method: "POST",
                        uri: TOKEN_URI,
                        access_token: None,
                    },
                )
                .await
        }
    };
    let key = ClientKey::generate("ES256");
    check(proof(&key, "POST", TOKEN_URI, now())).await.unwrap();
    assert_eq!(
        metrics.request_count("crypto_service", Operation::Verify, Outcome::Ok),
        1,
        "the Crypto Service verified it"
    );
    // Invalid per the Crypto Service: final, not asked again locally.
    let good = proof(&key, "POST", TOKEN_URI, now());
    let (input, _) = good.rsplit_once('.').unwrap();
    let forged = format!("{input}.{}", "A".repeat(86));
    assert_eq!(
        check(forged).await,
        Err(DpopError::Invalid(InvalidProof::BadSignature))
    );
    assert_eq!(
        metrics.request_count("software", Operation::Verify, Outcome::Ok)
            + metrics.request_count("software", Operation::Verify, Outcome::VerificationFailed),
        0,
        "local verification was not asked"
    );

    server.kill();
    for _ in 0..3 {
        check(proof(&key, "POST", TOKEN_URI, now()))
            .await
            .expect("local verification takes over");
    }
    assert!(metrics.fallback_count(Operation::Verify, "crypto_service", "software") >= 1);
    assert!(metrics.request_count("software", Operation::Verify, Outcome::Ok) >= 3);
}
