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
