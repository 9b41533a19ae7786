//! The Token Service's logic: access tokens (RFC 9068 JWTs signed through the chain),
//! refresh-token families with rotation and reuse detection, revocation, introspection
//! (RFC 7662 semantics) and the JWKS. Transport (gRPC, HTTP) sits on top of this.

mod access;
mod binding;
pub mod claims;
pub mod events;
mod introspect;
pub mod refresh;
mod revoke;
pub mod seal;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use self::claims::{AccessClaims, ClientPolicy, Confirmation, Grant};
use self::events::{Event, Issue, TokenEventFamilies};
use self::refresh::{FamilyId, RefreshToken};
use self::store::{FamilyRecord, Rotation, Store, StoreError};
use crate::backends::chain::Chain;
use crate::backends::clock::Clock;
use crate::backends::error::{BackendError, ErrorClass};
use crate::backends::jwk::PublicJwk;
use crate::backends::types::KeyRef;
pub use crate::caller::Caller;
use crate::context::CallContext;
use crate::dpop::{DpopError, DpopSettings, DpopValidator};
use crate::jws;
pub use access::OperationCallers;
pub use binding::DpopInput;
pub use introspect::Introspection;

/// What went wrong, in the classes the API reports (gRPC status codes map 1:1).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The request is malformed or not allowed (INVALID_ARGUMENT).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The credential presented is not valid (UNAUTHENTICATED).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller may not act for the client it names (PERMISSION_DENIED).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A dependency (key backends, store) cannot serve now (UNAVAILABLE).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The client is over its rate limit (RESOURCE_EXHAUSTED); retry after the given time.
    #[error("rate limit of client `{client_id}` reached; retry in {retry_after_ms} ms")]
    RateLimited {
        /// The client.
        client_id: String,
        /// When a request will be admitted again.
        retry_after_ms: u64,
    },
    /// A DPoP proof was refused (INVALID_ARGUMENT, with a nonce for `use_dpop_nonce`), or
    /// could not be checked (UNAVAILABLE).
    #[error("{0}")]
    Dpop(DpopError),
    /// Something that must not happen (INTERNAL); details are logged, not returned.
    #[error("internal error")]
    Internal,
}

impl From<DpopError> for TokenError {
    fn from(error: DpopError) -> Self {
        TokenError::Dpop(error)
    }
}

impl From<BackendError> for TokenError {
    fn from(error: BackendError) -> Self {
        match error.class() {
            ErrorClass::Unavailable => TokenError::Unavailable(error.to_string()),
            _ => {
                tracing::error!(%error, "key backend refused a token-service operation");
                TokenError::Internal
            }
        }
    }
}

impl From<StoreError> for TokenError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) | StoreError::Full => {
                TokenError::Unavailable(error.to_string())
            }
            StoreError::Exists | StoreError::Unsafe(_) => TokenError::Internal,
        }
    }
}

/// Settings of the token logic.
#[derive(Clone, Debug)]
pub struct TokenSettings {
    /// `iss` of every token, and what introspection requires.
    pub issuer: String,
    /// Default access-token lifetime.
    pub access_ttl: Duration,
    /// The longest access-token lifetime a request may ask for.
    pub max_access_ttl: Duration,
    /// Refresh-token family lifetime.
    pub refresh_ttl: Duration,
    /// Tolerance on exp/nbf when introspecting.
    pub clock_skew: Duration,
    /// Registered clients.
    pub clients: BTreeMap<String, ClientPolicy>,
    /// Requests per second each client may make (GenerateTokens and RefreshTokens); none
    /// when absent.
    pub rate_limit: Option<crate::resilience::RateLimitConfig>,
    /// Who may introspect, and who may revoke what is not their clients' own.
    pub callers: OperationCallers,
    /// How long data keys seal family grants and are kept in memory.
    pub data_keys: seal::DataKeySettings,
}

/// A token request.
#[derive(Clone, Debug, Default)]
pub struct TokenRequest {
    /// Subject.
    pub subject: String,
    /// Client.
    pub client_id: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Audiences (default: the client's first).
    pub audiences: Vec<String>,
    /// Requested access-token lifetime (default and maximum from settings).
    pub access_ttl: Option<Duration>,
    /// A DPoP proof of the token request: the tokens are bound to its key.
    pub dpop: Option<DpopInput>,
}

/// Tokens as handed to a client.
pub struct IssuedTokens {
    /// The access token (JWT).
    pub access_token: String,
    /// The refresh token, unless the client is issued access tokens only. Never log it.
    pub refresh_token: Option<Zeroizing<String>>,
    /// Access-token lifetime in seconds.
    pub expires_in: u64,
    /// The access token's claims.
    pub claims: AccessClaims,
    /// The key that signed it.
    pub kid: String,
}

impl IssuedTokens {
    /// `DPoP` for a token bound to a proof key, else `Bearer`.
    pub fn token_type(&self) -> &'static str {
        self.claims.token_type()
    }
}

impl std::fmt::Debug for IssuedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedTokens")
            .field("jti", &self.claims.jti)
            .field("kid", &self.kid)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// The grant stored (encrypted) with a family.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredGrant {
    grant: Grant,
    access_ttl: u64,
    /// The DPoP key the family is bound to: every refresh needs a proof of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jkt: Option<String>,
}

/// A JSON Web Key Set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys.
    pub keys: Vec<PublicJwk>,
}

/// The Token Service's logic, over a chain and a store.
#[derive(Debug)]
pub struct TokenService {
    chain: Arc<Chain>,
    store: Arc<dyn Store>,
    settings: TokenSettings,
    signing_key: KeyRef,
    /// Seals family grants under data keys wrapped with the encryption key.
    sealer: seal::Sealer,
    clock: Arc<dyn Clock>,
    dpop: DpopValidator,
    limiters:
        std::sync::Mutex<std::collections::HashMap<String, Arc<crate::resilience::RateLimiter>>>,
}

fn random_id() -> Result<String, TokenError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| TokenError::Unavailable("system RNG failed".into()))?;
    Ok(B64.encode(bytes))
}

impl TokenService {
    /// The service over `chain` and `store`.
    pub fn new(
        chain: Arc<Chain>,
        store: Arc<dyn Store>,
        settings: TokenSettings,
        signing_key: KeyRef,
        encryption_key: KeyRef,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let dpop = DpopValidator::new(
            DpopSettings::default(),
            chain.clone(),
            store.clone(),
            clock.clone(),
            chain.metrics().clone(),
        );
        let sealer = seal::Sealer::new(
            chain.clone(),
            encryption_key,
            clock.clone(),
            settings.data_keys,
        );
        Self {
            chain,
            store,
            settings,
            signing_key,
            sealer,
            clock,
            dpop,
            limiters: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The same service validating DPoP proofs with `settings`.
    pub fn with_dpop(mut self, settings: DpopSettings) -> Self {
        self.dpop = DpopValidator::new(
            settings,
            self.chain.clone(),
            self.store.clone(),
            self.clock.clone(),
            self.chain.metrics().clone(),
        );
        self
    }

    /// Drops data keys past their time from memory (see [`seal::Sealer::forget_expired`]).
    pub fn forget_expired_data_keys(&self) {
        self.sealer.forget_expired();
    }

    /// How often a serving instance calls [`TokenService::forget_expired_data_keys`].
    pub fn data_key_sweep_interval(&self) -> std::time::Duration {
        self.settings.data_keys.sweep_interval()
    }

    /// The DPoP validator (ValidateDPoP, and proofs presented with token requests).
    pub fn dpop(&self) -> &DpopValidator {
        &self.dpop
    }

    /// Admits one request of `client_id` under the per-client rate limit. Only registered
    /// clients get a bucket, so unknown ids cannot grow the table.
    fn admit(&self, client_id: &str) -> Result<(), TokenError> {
        let Some(config) = &self.settings.rate_limit else {
            return Ok(());
        };
        if !self.settings.clients.contains_key(client_id) {
            return Ok(()); // refused later as an unknown client
        }
        let limiter = {
            let mut limiters = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
            limiters
                .entry(client_id.to_owned())
                .or_insert_with(|| Arc::new(crate::resilience::RateLimiter::new(config)))
                .clone()
        };
        limiter.try_acquire_or_wait_time().map_err(|wait| {
            self.events().count(Event::RateLimited);
            TokenError::RateLimited {
                client_id: client_id.to_owned(),
                retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1),
            }
        })
    }

    fn access_ttl(&self, requested: Option<Duration>) -> Result<u64, TokenError> {
        let ttl = requested.unwrap_or(self.settings.access_ttl);
        if ttl.is_zero() || ttl > self.settings.max_access_ttl {
            return Err(TokenError::InvalidArgument(format!(
                "access-token lifetime must be between 1 s and {} s",
                self.settings.max_access_ttl.as_secs()
            )));
        }
        Ok(ttl.as_secs().max(1))
    }

    async fn sign_access(
        &self,
        ctx: &CallContext,
        grant: &Grant,
        family: Option<&FamilyId>,
        ttl: u64,
        jkt: Option<&str>,
    ) -> Result<(String, AccessClaims, String), TokenError> {
        let now = self.clock.now();
        let claims = AccessClaims {
            iss: self.settings.issuer.clone(),
            sub: grant.subject.clone(),
            aud: grant.audiences.clone(),
            exp: now + ttl,
            iat: now,
            nbf: now,
            jti: random_id()?,
            client_id: grant.client_id.clone(),
            scope: grant.scopes.join(" "),
            fid: family.map(FamilyId::to_string),
            cnf: jkt.map(|jkt| Confirmation {
                jkt: jkt.to_owned(),
            }),
        };
        let payload = serde_json::to_vec(&claims).map_err(|_| TokenError::Internal)?;
        let signed = jws::sign(
            &self.chain,
            ctx,
            &self.signing_key,
            Some("at+jwt"),
            &payload,
        )
        .await?;
        Ok((signed.compact, claims, signed.kid))
    }

    /// Where token events are counted (the chain's metrics registry).
    fn events(&self) -> &TokenEventFamilies {
        self.chain.metrics().tokens()
    }

    /// Issues an access token and starts a refresh-token family, for an unidentified
    /// caller (see [`TokenService::generate_as`]).
    pub async fn generate(
        &self,
        ctx: &CallContext,
        request: &TokenRequest,
    ) -> Result<IssuedTokens, TokenError> {
        self.generate_as(ctx, &Caller::unidentified(), request)
            .await
    }

    /// Issues an access token and starts a refresh-token family, if `caller` may act for
    /// the requested client; for a client issued access tokens only, just the access token,
    /// and nothing is stored.
    pub async fn generate_as(
        &self,
        ctx: &CallContext,
        caller: &Caller,
        request: &TokenRequest,
    ) -> Result<IssuedTokens, TokenError> {
        self.authorize(caller, &request.client_id)?;
        self.admit(&request.client_id)?;
        let grant = Grant::validate(
            &self.settings.clients,
            &request.subject,
            &request.client_id,
            &request.scopes,
            &request.audiences,
        )?;
        let ttl = self.access_ttl(request.access_ttl)?;
        let jkt = match &request.dpop {
            Some(input) => Some(self.dpop.validate(ctx, input.request()).await?.jkt),
            None => None,
        };
        if self
            .settings
            .clients
            .get(&grant.client_id)
            .is_some_and(|policy| policy.access_tokens_only)
        {
            let (access_token, claims, kid) = self
                .sign_access(ctx, &grant, None, ttl, jkt.as_deref())
                .await?;
            self.events().issued(Issue::New, caller, &claims, &kid);
            return Ok(IssuedTokens {
                access_token,
                refresh_token: None,
                expires_in: ttl,
                claims,
                kid,
            });
        }
        let family = FamilyId::generate()?;
        // Sign first: if the key backends are down, nothing is stored.
        let (access_token, claims, kid) = self
            .sign_access(ctx, &grant, Some(&family), ttl, jkt.as_deref())
            .await?;
        let stored = serde_json::to_vec(&StoredGrant {
            grant,
            access_ttl: ttl,
            jkt,
        })
        .map_err(|_| TokenError::Internal)?;
        let data = self
            .sealer
            .seal(ctx, &stored, family.as_str().as_bytes())
            .await?;
        let refresh = RefreshToken::generate(family.clone())?;
        let record = FamilyRecord {
            current: refresh.hash(),
            retired: Vec::new(),
            generation: 0,
            revoked: false,
            expires_at: self.clock.now() + self.settings.refresh_ttl.as_secs(),
            client_id: claims.client_id.clone(),
            data,
        };
        self.store.create_family(&family, record).await?;
        self.events().issued(Issue::New, caller, &claims, &kid);
        Ok(IssuedTokens {
            access_token,
            refresh_token: Some(refresh.expose()),
            expires_in: ttl,
            claims,
            kid,
        })
    }

    /// Presents a refresh token: a new access token and the next refresh token, or, for a
    /// token already used, revocation of the whole family.
    ///
    /// The access token is signed *before* the atomic rotation: if the key backends fail,
    /// the presented refresh token stays valid and the client can retry. If the rotation
    /// then loses (a concurrent refresh won, or the token was a used one), the access token
    /// just signed is discarded undelivered.
    pub async fn refresh(
        &self,
        ctx: &CallContext,
        refresh_token: &str,
    ) -> Result<IssuedTokens, TokenError> {
        self.refresh_as(ctx, &Caller::unidentified(), refresh_token, None)
            .await
    }

    /// As [`TokenService::refresh`], for `caller`, with the DPoP proof of the refresh
    /// request. The caller must be allowed to act for the family's client (checked before
    /// the rotation, so a refused caller leaves the token usable). A family bound to a key
    /// is refreshed only with a valid proof of that key; an unbound family with a proof
    /// gets a bound access token.
    pub async fn refresh_as(
        &self,
        ctx: &CallContext,
        caller: &Caller,
        refresh_token: &str,
        dpop: Option<&DpopInput>,
    ) -> Result<IssuedTokens, TokenError> {
        let presented = RefreshToken::parse(refresh_token)?;
        let family = presented.family().clone();
        let now = self.clock.now();
        let record = match self.store.get_family(&family, now).await? {
            None => {
                return Err(TokenError::Unauthenticated(
                    "unknown or expired refresh token".into(),
                ));
            }
            Some(record) if record.revoked => {
                return Err(TokenError::Unauthenticated(
                    "refresh token family is revoked".into(),
                ));
            }
            Some(record) => record,
        };
        let stored = self
            .sealer
            .open(ctx, &record.data, family.as_str().as_bytes())
            .await?;
        let StoredGrant {
            grant,
            access_ttl,
            jkt: bound,
        } = serde_json::from_slice(&stored).map_err(|_| TokenError::Internal)?;
        self.authorize(caller, &grant.client_id)?;
        self.admit(&grant.client_id)?;
        // Checked before the rotation: a refused proof leaves the refresh token usable.
        let jkt = binding::refresh_key(&self.dpop, ctx, bound, dpop).await?;
        let (access_token, claims, kid) = self
            .sign_access(ctx, &grant, Some(&family), access_ttl, jkt.as_deref())
            .await?;
        let next = RefreshToken::generate(family.clone())?;
        match self
            .store
            .rotate(&family, &presented.hash(), next.hash(), now)
            .await?
        {
            Rotation::Rotated => {
                self.events().issued(Issue::Refresh, caller, &claims, &kid);
                Ok(IssuedTokens {
                    access_token,
                    refresh_token: Some(next.expose()),
                    expires_in: access_ttl,
                    claims,
                    kid,
                })
            }
            Rotation::Reused => {
                self.events()
                    .reuse_detected(&grant.subject, &grant.client_id, &family);
                Err(TokenError::Unauthenticated(
                    "refresh token was already used; the token family is revoked".into(),
                ))
            }
            Rotation::Revoked => Err(TokenError::Unauthenticated(
                "refresh token family is revoked".into(),
            )),
            Rotation::Unknown => Err(TokenError::Unauthenticated(
                "unknown or expired refresh token".into(),
            )),
        }
    }

    /// Every key that may have signed a live token: all backends of the sign chain, active
    /// and retained versions.
    pub async fn jwks(&self, ctx: &CallContext) -> Result<Jwks, TokenError> {
        Ok(Jwks {
            keys: self.chain.public_keys(ctx, &self.signing_key).await?,
        })
    }
}
