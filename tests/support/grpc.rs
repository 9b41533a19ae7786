//! One-line Token API calls for tests that speak gRPC to the real binary.

use token_service::api::proto::token_service_client::TokenServiceClient;
use token_service::api::proto::{IntrospectTokenRequest, RefreshTokensRequest, TokenResponse};
use tonic::transport::Channel;

/// RefreshTokens with `token` and no DPoP proof.
pub async fn refresh(
    client: &mut TokenServiceClient<Channel>,
    token: &str,
) -> Result<TokenResponse, tonic::Status> {
    client
        .refresh_tokens(RefreshTokensRequest {
            refresh_token: token.to_owned(),
            dpop: None,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Whether IntrospectToken (no audience) calls `token` active.
pub async fn is_active(client: &mut TokenServiceClient<Channel>, token: &str) -> bool {
    client
        .introspect_token(IntrospectTokenRequest {
            token: token.to_owned(),
            audience: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .active
}

/// Whether GenerateTokens for `subject` succeeds again within about 5 s (50 tries, 100 ms
/// apart): the service's recovery after a dependency came back.
pub async fn issues_again(client: &mut TokenServiceClient<Channel>, subject: &str) -> bool {
    for _ in 0..50 {
        if client
            .generate_tokens(super::token_request(subject))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}
