//! The gRPC Token API (`token.v1.TokenService`) over the token logic. Each call gets a
//! [`CallContext`] whose correlation id comes from the caller's `x-correlation-id` metadata
//! when it is well-formed, and is returned in the response metadata.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::proto;
use super::proto::token_service_server::TokenService as TokenApi;
use crate::context::CallContext;
use crate::dpop::{DpopError, ProofRequest};
use crate::token::refresh::FamilyId;
use crate::token::{DpopInput, IssuedTokens, TokenError, TokenRequest, TokenService};

/// Largest message accepted by the server, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct GrpcTokenService {
    tokens: Arc<TokenService>,
    max_access_ttl_secs: u64,
}

impl GrpcTokenService {
    /// The service over the token logic.
    pub fn new(tokens: Arc<TokenService>, max_access_ttl_secs: u64) -> Self {
        Self {
            tokens,
            max_access_ttl_secs,
        }
    }

    /// The tonic server for this service, with message limits.
    pub fn into_server(self) -> proto::token_service_server::TokenServiceServer<Self> {
        proto::token_service_server::TokenServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

fn context<T>(request: &Request<T>) -> CallContext {
    super::inbound_context(request.metadata(), None)
}

fn status(error: TokenError) -> Status {
    match error {
        TokenError::InvalidArgument(reason) => Status::invalid_argument(reason),
        TokenError::Unauthenticated(reason) => Status::unauthenticated(reason),
        TokenError::PermissionDenied(reason) => Status::permission_denied(reason),
        TokenError::Unavailable(reason) => Status::unavailable(reason),
        TokenError::RateLimited {
            client_id,
            retry_after_ms,
        } => {
            let mut status = Status::resource_exhausted(format!(
                "rate limit of client `{client_id}` reached; retry in {retry_after_ms} ms"
            ));
            // Whole seconds, rounded up, as HTTP's Retry-After.
            if let Ok(value) = retry_after_ms.div_ceil(1000).to_string().parse() {
                status.metadata_mut().insert("retry-after", value);
            }
            status
        }
        TokenError::Dpop(DpopError::Unavailable(reason)) => Status::unavailable(reason),
        TokenError::Dpop(error) => {
            let nonce = match &error {
                DpopError::UseNonce { nonce, .. } => Some(nonce.clone()),
                _ => None,
            };
            let mut status = Status::invalid_argument(error.to_string());
            if let Some(value) = nonce.and_then(|n| n.parse().ok()) {
                status.metadata_mut().insert("dpop-nonce", value);
            }
            status
        }
        TokenError::Internal => Status::internal("internal error"),
    }
}

/// A proof from the API, refused at once if it is present but incomplete.
fn dpop_input(proof: Option<proto::DPoPProof>) -> Result<Option<DpopInput>, Status> {
    match proof {
        None => Ok(None),
        Some(p) if p.proof.is_empty() || p.http_method.is_empty() || p.http_uri.is_empty() => Err(
            Status::invalid_argument("dpop needs proof, http_method and http_uri"),
        ),
        Some(p) => Ok(Some(DpopInput {
            proof: p.proof,
            method: p.http_method,
            uri: p.http_uri,
        })),
    }
}

fn respond<T>(ctx: &CallContext, body: T) -> Response<T> {
    let mut response = Response::new(body);
    if let Ok(value) = ctx.correlation_id().parse() {
        response.metadata_mut().insert("x-correlation-id", value);
    }
    response
}

fn token_response(issued: IssuedTokens) -> proto::TokenResponse {
    let token_type = issued.token_type();
    proto::TokenResponse {
        access_token: issued.access_token,
        // Empty for a client issued access tokens only.
        refresh_token: issued
            .refresh_token
            .as_ref()
            .map(|token| token.to_string())
            .unwrap_or_default(),
        token_type: token_type.into(),
        expires_in: issued.expires_in,
        scope: issued.claims.scope,
        kid: issued.kid,
    }
}

#[tonic::async_trait]
impl TokenApi for GrpcTokenService {
    async fn generate_tokens(
        &self,
        request: Request<proto::GenerateTokensRequest>,
    ) -> Result<Response<proto::TokenResponse>, Status> {
        let ctx = context(&request);
        let caller = super::inbound_caller(&request);
        let body = request.into_inner();
        let ttl = match body.access_token_ttl_seconds {
            0 => None,
            n if u64::from(n) > self.max_access_ttl_secs => {
                return Err(Status::invalid_argument(format!(
                    "access_token_ttl_seconds above the maximum of {}",
                    self.max_access_ttl_secs
                )));
            }
            n => Some(std::time::Duration::from_secs(u64::from(n))),
        };
        let issued = self
            .tokens
            .generate_as(
                &ctx,
                &caller,
                &TokenRequest {
                    subject: body.subject,
                    client_id: body.client_id,
                    scopes: body.scopes,
                    audiences: body.audiences,
                    access_ttl: ttl,
                    dpop: dpop_input(body.dpop)?,
                },
            )
            .await
            .map_err(status)?;
        Ok(respond(&ctx, token_response(issued)))
    }

    async fn refresh_tokens(
        &self,
        request: Request<proto::RefreshTokensRequest>,
    ) -> Result<Response<proto::TokenResponse>, Status> {
        let ctx = context(&request);
        let caller = super::inbound_caller(&request);
        let body = request.into_inner();
        let proof = dpop_input(body.dpop)?;
        let issued = self
            .tokens
            .refresh_as(&ctx, &caller, &body.refresh_token, proof.as_ref())
            .await
            .map_err(status)?;
        Ok(respond(&ctx, token_response(issued)))
    }

    async fn revoke_token(
        &self,
        request: Request<proto::RevokeTokenRequest>,
    ) -> Result<Response<proto::RevokeTokenResponse>, Status> {
        use proto::revoke_token_request::Target;
        let ctx = context(&request);
        let caller = super::inbound_caller(&request);
        let revoked = match request.into_inner().target {
            Some(Target::RefreshToken(token)) => {
                self.tokens.revoke_refresh_token_as(&caller, &token).await
            }
            Some(Target::FamilyId(id)) => match FamilyId::parse(&id) {
                Ok(family) => self.tokens.revoke_family_as(&caller, &family).await,
                Err(e) => Err(e),
            },
            Some(Target::AccessTokenJti(jti)) => self
                .tokens
                .revoke_jti_as(&caller, &jti)
                .await
                .map(|()| true),
            Some(Target::AccessToken(token)) => {
                self.tokens
                    .revoke_access_token_as(&ctx, &caller, &token)
                    .await
            }
            None => Err(TokenError::InvalidArgument(
                "name a refresh_token, family_id, access_token_jti or access_token".into(),
            )),
        }
        .map_err(status)?;
        Ok(respond(&ctx, proto::RevokeTokenResponse { revoked }))
    }

    async fn get_jwks(
        &self,
        request: Request<proto::GetJwksRequest>,
    ) -> Result<Response<proto::GetJwksResponse>, Status> {
        let ctx = context(&request);
        let jwks = self.tokens.jwks(&ctx).await.map_err(status)?;
        let jwks_json =
            serde_json::to_string(&jwks).map_err(|_| Status::internal("internal error"))?;
        Ok(respond(&ctx, proto::GetJwksResponse { jwks_json }))
    }

    async fn introspect_token(
        &self,
        request: Request<proto::IntrospectTokenRequest>,
    ) -> Result<Response<proto::IntrospectTokenResponse>, Status> {
        let ctx = context(&request);
        let caller = super::inbound_caller(&request);
        let body = request.into_inner();
        let seen = self
            .tokens
            .introspect_as(
                &ctx,
                &caller,
                &body.token,
                Some(body.audience.as_str()).filter(|a| !a.is_empty()),
            )
            .await
            .map_err(status)?;
        let response = match seen.claims {
            Some(c) if seen.active => proto::IntrospectTokenResponse {
                token_type: c.token_type().into(),
                active: true,
                iss: c.iss,
                sub: c.sub,
                aud: c.aud,
                exp: c.exp,
                iat: c.iat,
                nbf: c.nbf,
                jti: c.jti,
                client_id: c.client_id,
                scope: c.scope,
                cnf_jkt: c.cnf.map(|cnf| cnf.jkt).unwrap_or_default(),
            },
            _ => proto::IntrospectTokenResponse::default(),
        };
        Ok(respond(&ctx, response))
    }

    async fn validate_d_po_p(
        &self,
        request: Request<proto::ValidateDPoPRequest>,
    ) -> Result<Response<proto::ValidateDPoPResponse>, Status> {
        let ctx = context(&request);
        self.tokens
            .authorize_introspection(&super::inbound_caller(&request))
            .map_err(status)?;
        let body = request.into_inner();
        let checked = self
            .tokens
            .dpop()
            .validate(
                &ctx,
                ProofRequest {
                    proof: &body.proof,
                    method: &body.http_method,
                    uri: &body.http_uri,
                    access_token: (!body.access_token.is_empty())
                        .then_some(body.access_token.as_str()),
                },
            )
            .await;
        let response = match checked {
            Ok(proof) => proto::ValidateDPoPResponse {
                valid: true,
                jkt: proof.jkt,
                ..Default::default()
            },
            Err(DpopError::Unavailable(reason)) => return Err(Status::unavailable(reason)),
            Err(error) => proto::ValidateDPoPResponse {
                valid: false,
                reason: error.reason().into(),
                error: error.code().into(),
                nonce: match error {
                    DpopError::UseNonce { nonce, .. } => nonce,
                    _ => String::new(),
                },
                ..Default::default()
            },
        };
        Ok(respond(&ctx, response))
    }
}
