//! RFC 7662 introspection: whether an access token is active, and its claims if it is.

use super::claims::AccessClaims;
use super::refresh::FamilyId;
use super::{Caller, TokenError, TokenService};
use crate::backends::error::ErrorClass;
use crate::context::CallContext;
use crate::jws::CompactJws;

/// The result of introspection (RFC 7662): inactive tokens carry no claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Introspection {
    /// Whether the token is active.
    pub active: bool,
    /// Its claims, when active.
    pub claims: Option<AccessClaims>,
}

impl Introspection {
    pub(super) fn inactive(why: &str) -> Self {
        tracing::debug!(reason = why, "token inactive");
        Self {
            active: false,
            claims: None,
        }
    }
}

impl TokenService {
    /// RFC 7662 introspection: signature against the published keys, `typ`, exp/nbf with the
    /// configured skew, issuer, the jti denylist and the family's state. Anything wrong with
    /// the token is "inactive", not an error; only outages are errors. For an unidentified
    /// caller (see [`TokenService::introspect_as`]).
    pub async fn introspect(
        &self,
        ctx: &CallContext,
        token: &str,
    ) -> Result<Introspection, TokenError> {
        self.introspect_as(ctx, &Caller::unidentified(), token, None)
            .await
    }

    /// [`TokenService::introspect`] for `caller`, who must be one of the resource servers
    /// of `tokens.callers.introspect` when that names any (PERMISSION_DENIED otherwise).
    /// With `audience`, a token whose `aud` does not hold it is inactive.
    pub async fn introspect_as(
        &self,
        ctx: &CallContext,
        caller: &Caller,
        token: &str,
        audience: Option<&str>,
    ) -> Result<Introspection, TokenError> {
        self.authorize_introspection(caller)?;
        self.inspect(ctx, token, audience).await
    }

    /// Introspection without the caller check.
    pub(super) async fn inspect(
        &self,
        ctx: &CallContext,
        token: &str,
        audience: Option<&str>,
    ) -> Result<Introspection, TokenError> {
        let claims = match self.verified_claims(ctx, token, audience).await? {
            Ok(claims) => claims,
            Err(why) => return Ok(Introspection::inactive(why)),
        };
        if let Some(why) = self.revoked(&claims).await? {
            return Ok(Introspection::inactive(why));
        }
        Ok(Introspection {
            active: true,
            claims: Some(claims),
        })
    }

    /// The claims of a token this service issued and that is within its lifetime: the
    /// signature against the published keys, `typ`, exp/nbf with the configured skew, the
    /// issuer and (given) the audience. Anything wrong is the reason it is not (`Err`
    /// inside); only outages are errors. Revocation is not looked at (see
    /// [`TokenService::revoked`]).
    pub(super) async fn verified_claims(
        &self,
        ctx: &CallContext,
        token: &str,
        audience: Option<&str>,
    ) -> Result<Result<AccessClaims, &'static str>, TokenError> {
        let Ok(jws) = CompactJws::parse(token) else {
            return Ok(Err("not a JWS we accept"));
        };
        if jws.header.typ.as_deref() != Some("at+jwt") {
            return Ok(Err("typ is not at+jwt"));
        }
        let keys = self.chain.public_keys(ctx, &self.signing_key).await?;
        match jws.verify(&self.chain, ctx, &keys).await {
            Ok(()) => {}
            Err(error) if error.class() == ErrorClass::Unavailable => return Err(error.into()),
            Err(_) => return Ok(Err("signature")),
        }
        let Ok(claims) = serde_json::from_slice::<AccessClaims>(&jws.payload) else {
            return Ok(Err("claims"));
        };
        let now = self.clock.now();
        let skew = self.settings.clock_skew.as_secs();
        if claims.exp.saturating_add(skew) <= now || claims.nbf > now.saturating_add(skew) {
            return Ok(Err("time"));
        }
        if claims.iss != self.settings.issuer {
            return Ok(Err("issuer"));
        }
        if audience.is_some_and(|wanted| !claims.aud.iter().any(|aud| aud == wanted)) {
            return Ok(Err("audience"));
        }
        Ok(Ok(claims))
    }

    /// Why the token carrying `claims` is revoked (its jti denied, or its family revoked or
    /// gone), or `None` while it is not.
    pub(super) async fn revoked(
        &self,
        claims: &AccessClaims,
    ) -> Result<Option<&'static str>, TokenError> {
        let now = self.clock.now();
        if self.store.is_denied(&claims.jti, now).await? {
            return Ok(Some("revoked jti"));
        }
        // A token without a family (its client is issued access tokens only) is revoked by
        // its jti alone.
        if let Some(fid) = &claims.fid {
            let Ok(family) = FamilyId::parse(fid) else {
                return Ok(Some("family id"));
            };
            if !self.store.family_active(&family, now).await? {
                return Ok(Some("family revoked"));
            }
        }
        Ok(None)
    }
}
