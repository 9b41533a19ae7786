//! `client`: calls a running Token Service over gRPC and prints the answer as JSON.

use clap::{Args, Subcommand};
use token_service::api::proto::token_service_client::TokenServiceClient;
use token_service::api::proto::{
    GenerateTokensRequest, GetJwksRequest, IntrospectTokenRequest, RefreshTokensRequest,
    RevokeTokenRequest, revoke_token_request::Target,
};

use super::Failure;
use super::connect::TokenApiArgs;

#[derive(Debug, Args)]
pub struct ClientArgs {
    #[command(flatten)]
    api: TokenApiArgs,
    #[command(subcommand)]
    command: ClientCommand,
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Issue an access token and a refresh token (only the access token for a client with
    /// `access_tokens_only`).
    Generate {
        /// Subject.
        #[arg(long)]
        subject: String,
        /// Client id.
        #[arg(long, default_value = "demo")]
        client_id: String,
        /// Scope (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Audience (repeatable; default: the client's first).
        #[arg(long = "audience")]
        audiences: Vec<String>,
    },
    /// Rotate a refresh token.
    Refresh {
        /// The refresh token.
        refresh_token: String,
    },
    /// Revoke a refresh token's family, a family by id, or an access token (whole or by jti).
    Revoke {
        /// A refresh token (revokes its family).
        #[arg(long, conflicts_with_all = ["family_id", "jti", "access_token"])]
        refresh_token: Option<String>,
        /// A family id.
        #[arg(long, conflicts_with_all = ["jti", "access_token"])]
        family_id: Option<String>,
        /// An access token's jti (an operator's revocation where callers are named).
        #[arg(long, conflicts_with = "access_token")]
        jti: Option<String>,
        /// An access token (denied until it expires).
        #[arg(long)]
        access_token: Option<String>,
    },
    /// Introspect an access token.
    Introspect {
        /// The access token.
        token: String,
        /// Ask as the resource server of this audience: inactive unless `aud` holds it.
        #[arg(long, default_value = "")]
        audience: String,
    },
    /// Print the JWKS.
    Jwks,
}

fn print_tokens(r: token_service::api::proto::TokenResponse) -> Result<(), Failure> {
    let mut tokens = serde_json::json!({
        "access_token": r.access_token, "refresh_token": r.refresh_token,
        "token_type": r.token_type, "expires_in": r.expires_in, "scope": r.scope, "kid": r.kid,
    });
    // A client issued access tokens only gets no refresh token: none is shown.
    if r.refresh_token.is_empty()
        && let Some(fields) = tokens.as_object_mut()
    {
        fields.remove("refresh_token");
    }
    print_json(tokens)
}

fn print_json(value: serde_json::Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(&value).map_err(|e| Failure::new(e.to_string()))?;
    say!("{text}");
    Ok(())
}

pub async fn run(args: ClientArgs) -> Result<(), Failure> {
    let mut client = TokenServiceClient::new(args.api.connect().await?);
    match args.command {
        ClientCommand::Generate {
            subject,
            client_id,
            scopes,
            audiences,
        } => {
            let r = client
                .generate_tokens(GenerateTokensRequest {
                    subject,
                    client_id,
                    scopes,
                    audiences,
                    access_token_ttl_seconds: 0,
                    dpop: None,
                })
                .await
                .map_err(|status| args.api.failure(status))?
                .into_inner();
            print_tokens(r)
        }
        ClientCommand::Refresh { refresh_token } => {
            let r = client
                .refresh_tokens(RefreshTokensRequest {
                    refresh_token,
                    dpop: None,
                })
                .await
                .map_err(|status| args.api.failure(status))?
                .into_inner();
            print_tokens(r)
        }
        ClientCommand::Revoke {
            refresh_token,
            family_id,
            jti,
            access_token,
        } => {
            let target = match (refresh_token, family_id, jti, access_token) {
                (Some(t), ..) => Target::RefreshToken(t),
                (_, Some(f), ..) => Target::FamilyId(f),
                (_, _, Some(j), _) => Target::AccessTokenJti(j),
                (.., Some(a)) => Target::AccessToken(a),
                _ => {
                    return Err(Failure::new(
                        "give --refresh-token, --family-id, --jti or --access-token",
                    ));
                }
            };
            let r = client
                .revoke_token(RevokeTokenRequest {
                    target: Some(target),
                })
                .await
                .map_err(|status| args.api.failure(status))?
                .into_inner();
            print_json(serde_json::json!({ "revoked": r.revoked }))
        }
        ClientCommand::Introspect { token, audience } => {
            let r = client
                .introspect_token(IntrospectTokenRequest { token, audience })
                .await
                .map_err(|status| args.api.failure(status))?
                .into_inner();
            if !r.active {
                return print_json(serde_json::json!({ "active": false }));
            }
            print_json(serde_json::json!({
                "active": true, "iss": r.iss, "sub": r.sub, "aud": r.aud, "exp": r.exp, "iat": r.iat,
                "nbf": r.nbf, "jti": r.jti, "client_id": r.client_id, "scope": r.scope, "token_type": r.token_type,
            }))
        }
        ClientCommand::Jwks => {
            let r = client
                .get_jwks(GetJwksRequest {})
                .await
                .map_err(|status| args.api.failure(status))?
                .into_inner();
            let value: serde_json::Value =
                serde_json::from_str(&r.jwks_json).map_err(|e| Failure::new(e.to_string()))?;
            print_json(value)
        }
    }
}
