//! The Token Service with AWS KMS as its primary signer, as the real binary against a real
//! KMS-compatible server: `KMS_KEY_ID` adopts a team's existing key through its alias,
//! tokens are signed by that key and verify from the published JWKS, which holds the
//! software fallback's key too; with KMS gone, tokens keep coming, signed by the fallback.

mod support;

use support::kms::MotoKms;
use support::process::{Sandbox, ServiceProcess, http_get};
use support::{token_kid, verifies_with};
use token_service::api::proto::GenerateTokensRequest;
use token_service::api::proto::token_service_client::TokenServiceClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_signed_by_the_kms_key_named_by_kms_key_id_and_fall_back_when_kms_dies() {
    let Some(mut kms) = MotoKms::start() else {
        return;
    };
    // The team's existing key, created outside the service.
    let client = kms.client();
    let key_id = kms
        .create_signing_key(aws_sdk_kms::types::KeySpec::EccNistP256)
        .await;
    client
        .create_alias()
        .alias_name("alias/team-signing")
        .target_key_id(&key_id)
        .send()
        .await
        .unwrap();
    let spki = client
        .get_public_key()
        .key_id(&key_id)
        .send()
        .await
        .unwrap();
    let (team_jwk, _) =
        token_service::backends::aws_kms::der::spki_to_jwk(spki.public_key().unwrap().as_ref())
            .unwrap();
    let team_kid = team_jwk.thumbprint().unwrap();

    let sandbox = Sandbox::new("");
    let config = std::fs::read_to_string(sandbox.config_path())
        .unwrap()
        .replace(
            "sign = [\"software\"]",
            "sign = [\"aws_kms\", \"software\"]",
        )
        + &format!(
            "\n[backends.aws_kms]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nrequest_timeout = \"1s\"\nconnect_timeout = \"300ms\"\n\n[backends.aws_kms.resilience.breaker]\nfailure_threshold = 2\nopen_duration = \"60s\"\n",
            kms.endpoint()
        );
    sandbox.write_config(&config);
    let service = ServiceProcess::start_with_env(
        Some(&sandbox.config_path()),
        sandbox.dir.path(),
        &[
            ("KMS_KEY_ID", "alias/team-signing"),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    let mut grpc = TokenServiceClient::connect(format!("http://{}", service.grpc))
        .await
        .unwrap();
    let request = || GenerateTokensRequest {
        subject: "alice".into(),
        client_id: "demo".into(),
        scopes: vec!["read".into()],
        ..Default::default()
    };
    let by_kms = grpc.generate_tokens(request()).await.unwrap().into_inner();
    assert_eq!(
        token_kid(&by_kms.access_token),
        team_kid,
        "signed by the team's KMS key"
    );
    let (status, jwks) = http_get(service.public, "/.well-known/jwks.json");
    assert_eq!(status, 200);
    let published: serde_json::Value = serde_json::from_str(&jwks).unwrap();
    assert_eq!(
        published["keys"].as_array().unwrap().len(),
        2,
        "KMS and software keys: {jwks}"
    );
    assert!(verifies_with(&by_kms.access_token, &jwks));

    kms.kill();
    let mut fallback_kids = Vec::new();
    for _ in 0..4 {
        let tokens = grpc
            .generate_tokens(request())
            .await
            .expect("the software fallback signs")
            .into_inner();
        assert!(
            verifies_with(&tokens.access_token, &jwks),
            "verifies with the JWKS published before the outage"
        );
        fallback_kids.push(token_kid(&tokens.access_token));
    }
    assert!(fallback_kids.iter().all(|k| k != &team_kid));
    let (_, metrics) = http_get(service.admin, "/metrics");
    assert!(
        metrics.contains("token_service_breaker_state{backend=\"aws_kms\"} 1"),
        "breaker open: {}",
        metrics
            .lines()
            .filter(|l| l.contains("breaker"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(metrics.contains("to=\"software\""), "fallback counted");
    assert!(
        !service.settled_log().contains("testing"),
        "no credential in the log"
    );
    assert!(service.terminate().success());
}
