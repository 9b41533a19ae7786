//! Revocation: of a family (by its current refresh token, or by its id for a caller allowed
//! to act for its client or an operator) and of one access token (presented whole by its
//! client's caller, or by its jti alone by an operator). Every instance sharing the store
//! sees a revocation at once. Who may do what is in `access.rs`.

use super::events::Event;
use super::refresh::{FamilyId, RefreshToken};
use super::{Caller, TokenError, TokenService};
use crate::context::CallContext;

impl TokenService {
    /// Revokes the family of a refresh token, if it is the family's current one; false when
    /// nothing was revoked (a forged, rotated-out or expired token, or an already revoked
    /// family). For an unidentified caller (see [`TokenService::revoke_refresh_token_as`]).
    pub async fn revoke_refresh_token(&self, refresh_token: &str) -> Result<bool, TokenError> {
        self.revoke_refresh_token_as(&Caller::unidentified(), refresh_token)
            .await
    }

    /// As [`TokenService::revoke_refresh_token`], for `caller`, who must be allowed to act
    /// for the family's client.
    pub async fn revoke_refresh_token_as(
        &self,
        caller: &Caller,
        refresh_token: &str,
    ) -> Result<bool, TokenError> {
        let presented = RefreshToken::parse(refresh_token)?;
        let family = presented.family();
        // The family id is public (every access token carries it as `fid`): only the
        // family's current secret may revoke it through this path. Anything else revokes
        // nothing, without an error (RFC 7009 §2.2).
        let record = self
            .store
            .get_family(family, self.clock.now())
            .await?
            .filter(|record| record.current.matches(&presented.hash()));
        let Some(record) = record else {
            tracing::info!(target: "audit", event = "revoke_family", fid = %family, revoked = false, caller = %caller, "not the family's current refresh token");
            return Ok(false);
        };
        self.authorize(caller, &record.client_id)?;
        self.revoke_family_unchecked(caller, family).await
    }

    /// Revokes a family by id, for an unidentified caller (see
    /// [`TokenService::revoke_family_as`]).
    pub async fn revoke_family(&self, family: &FamilyId) -> Result<bool, TokenError> {
        self.revoke_family_as(&Caller::unidentified(), family).await
    }

    /// Revokes a family by id: its refresh token stops working and its access tokens turn
    /// inactive. The id is public (`fid` in every access token), so when the family's client
    /// names its callers, only they and the operators (`tokens.callers.revoke`) may revoke
    /// it this way.
    pub async fn revoke_family_as(
        &self,
        caller: &Caller,
        family: &FamilyId,
    ) -> Result<bool, TokenError> {
        // Read the family's client only where a client names callers: elsewhere any caller
        // may revoke, without the extra read.
        if !self.is_operator(caller)
            && self.clients_name_callers()
            && let Some(record) = self.store.get_family(family, self.clock.now()).await?
        {
            self.authorize(caller, &record.client_id)?;
        }
        self.revoke_family_unchecked(caller, family).await
    }

    async fn revoke_family_unchecked(
        &self,
        caller: &Caller,
        family: &FamilyId,
    ) -> Result<bool, TokenError> {
        let revoked = self.store.revoke_family(family, self.clock.now()).await?;
        if revoked {
            self.events().count(Event::FamilyRevoked);
        }
        tracing::info!(target: "audit", event = "revoke_family", fid = %family, revoked, caller = %caller);
        Ok(revoked)
    }

    /// Denies one access token (by jti) until its expiry: the embedding application's own
    /// call, not checked against any caller.
    pub async fn revoke_access_token(&self, jti: &str, exp: u64) -> Result<(), TokenError> {
        self.deny(&Caller::unidentified(), jti, exp).await
    }

    async fn deny(&self, caller: &Caller, jti: &str, exp: u64) -> Result<(), TokenError> {
        self.deny_counted(caller, jti, exp, true).await
    }

    /// Denies `jti` until `exp`; `revoking` says whether this revokes a token that was
    /// active (counted and audited as a revocation) or confirms an earlier one.
    async fn deny_counted(
        &self,
        caller: &Caller,
        jti: &str,
        exp: u64,
        revoking: bool,
    ) -> Result<(), TokenError> {
        if jti.is_empty() || jti.len() > 64 {
            return Err(TokenError::InvalidArgument("malformed jti".into()));
        }
        self.store.deny_jti(jti, exp).await?;
        if revoking {
            self.events().count(Event::AccessRevoked);
            tracing::info!(target: "audit", event = "revoke_access", jti, exp, revoked = true, caller = %caller, "access token revoked");
        } else {
            tracing::info!(target: "audit", event = "revoke_access", jti, exp, revoked = false, caller = %caller, "inactive access token denied again");
        }
        Ok(())
    }

    /// Denies one access token by jti alone, until no token it could name can still be live:
    /// now + the longest access-token lifetime + the clock skew. A jti does not say whose
    /// token it is, so where callers are named this is for operators only.
    pub async fn revoke_jti_as(&self, caller: &Caller, jti: &str) -> Result<(), TokenError> {
        self.authorize_revocation_by_jti(caller)?;
        let until = self.clock.now()
            + self.settings.max_access_ttl.as_secs()
            + self.settings.clock_skew.as_secs();
        self.deny(caller, jti, until).await
    }

    /// RFC 7009 revocation of an access token presented whole, by a caller allowed to act
    /// for the client it was issued to, or an operator: its jti is denied until the token
    /// expires. False when there is nothing to revoke: a token that does not verify or has
    /// expired (not an error, RFC 7009 §2.2), or one already inactive. The family and its
    /// refresh token are left alone.
    pub async fn revoke_access_token_as(
        &self,
        ctx: &CallContext,
        caller: &Caller,
        token: &str,
    ) -> Result<bool, TokenError> {
        let claims = match self.verified_claims(ctx, token, None).await? {
            Ok(claims) => claims,
            Err(why) => {
                tracing::info!(target: "audit", event = "revoke_access", revoked = false, caller = %caller, reason = why, "not an access token within its lifetime");
                return Ok(false);
            }
        };
        if !self.is_operator(caller) {
            self.authorize(caller, &claims.client_id)?;
        }
        let active = self.revoked(&claims).await?.is_none();
        // An inactive token is denied all the same: it may have been revoked by an attempt
        // reported unavailable (its replicas did not acknowledge it), and this retry must
        // wait for them as the first attempt did. Denying twice changes nothing else.
        // Introspection accepts a token up to the skew past its exp: denied that long too.
        let until = claims
            .exp
            .saturating_add(self.settings.clock_skew.as_secs());
        self.deny_counted(caller, &claims.jti, until, active)
            .await?;
        Ok(active)
    }
}
