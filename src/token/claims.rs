//! Access-token claims (RFC 9068) and the checks every request passes before anything is
//! signed or stored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::TokenError;

/// Longest subject, audience or client id accepted.
pub const MAX_IDENTIFIER_LEN: usize = 255;
/// Most scopes (or audiences) in one request.
pub const MAX_LIST_LEN: usize = 32;
/// Longest scope token.
pub const MAX_SCOPE_LEN: usize = 64;

/// The claims of an access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Subject.
    pub sub: String,
    /// Audiences.
    pub aud: Vec<String>,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Issued at.
    pub iat: u64,
    /// Not before.
    pub nbf: u64,
    /// Unique id, for revocation.
    pub jti: String,
    /// The client the token was issued to.
    pub client_id: String,
    /// Space-separated scopes (RFC 8693 §4.2 form).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// The refresh-token family the token belongs to: revoking the family deactivates it.
    /// Absent for a client issued access tokens only, which has no families.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fid: Option<String>,
    /// Confirmation (RFC 7800): the DPoP key the token is bound to (RFC 9449 §6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

impl AccessClaims {
    /// `DPoP` for a token bound to a proof key, else `Bearer` (RFC 9449 §7.1).
    pub fn token_type(&self) -> &'static str {
        if self.cnf.is_some() { "DPoP" } else { "Bearer" }
    }
}

/// The `cnf` claim of a DPoP-bound token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// The RFC 7638 thumbprint of the key.
    pub jkt: String,
}

/// What a client may ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientPolicy {
    /// Scopes the client may request; empty means none.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Audiences the client may request; at least one.
    pub audiences: Vec<String>,
    /// The callers allowed to act for this client (GenerateTokens, RefreshTokens), by the
    /// SPIFFE IDs, DNS names or IP addresses of their mTLS client certificates. Empty: any
    /// caller the gRPC port admits. Needs `server.tls.client_ca_file`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub callers: Vec<String>,
    /// Issue this client access tokens only: no refresh token, and nothing stored per token
    /// (RFC 6749 §4.4.3: a client-credentials grant should get no refresh token). Its
    /// tokens are revoked by jti. Families issued before the switch keep refreshing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub access_tokens_only: bool,
}

fn check_identifier(what: &str, value: &str) -> Result<(), TokenError> {
    if value.is_empty() {
        return Err(TokenError::InvalidArgument(format!("{what} is empty")));
    }
    if value.len() > MAX_IDENTIFIER_LEN {
        return Err(TokenError::InvalidArgument(format!(
            "{what} is longer than {MAX_IDENTIFIER_LEN} bytes"
        )));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(TokenError::InvalidArgument(format!(
            "{what} contains whitespace or control characters"
        )));
    }
    Ok(())
}

/// RFC 6749 §3.3 scope-token: printable ASCII except space, `"` and `\\`.
fn check_scope(scope: &str) -> Result<(), TokenError> {
    let valid = !scope.is_empty()
        && scope.len() <= MAX_SCOPE_LEN
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
    if valid {
        Ok(())
    } else {
        Err(TokenError::InvalidArgument(format!(
            "scope `{}` is not a valid scope token (RFC 6749 §3.3, at most {MAX_SCOPE_LEN} characters)",
            crate::backends::types::truncate_for_message(scope)
        )))
    }
}

/// A validated grant request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Subject.
    pub subject: String,
    /// Client.
    pub client_id: String,
    /// Scopes, de-duplicated and sorted.
    pub scopes: Vec<String>,
    /// Audiences, de-duplicated and sorted.
    pub audiences: Vec<String>,
}

impl Grant {
    /// Checks a request against the syntax rules and the client's policy.
    pub fn validate(
        clients: &BTreeMap<String, ClientPolicy>,
        subject: &str,
        client_id: &str,
        scopes: &[String],
        audiences: &[String],
    ) -> Result<Self, TokenError> {
        check_identifier("subject", subject)?;
        check_identifier("client_id", client_id)?;
        let policy = clients
            .get(client_id)
            .ok_or_else(|| TokenError::InvalidArgument(format!("unknown client `{client_id}`")))?;
        if scopes.len() > MAX_LIST_LEN || audiences.len() > MAX_LIST_LEN {
            return Err(TokenError::InvalidArgument(format!(
                "at most {MAX_LIST_LEN} scopes and {MAX_LIST_LEN} audiences"
            )));
        }
        for scope in scopes {
            check_scope(scope)?;
            if !policy.scopes.contains(scope) {
                return Err(TokenError::InvalidArgument(format!(
                    "scope `{scope}` is not allowed for client `{client_id}`"
                )));
            }
        }
        let audiences: Vec<String> = if audiences.is_empty() {
            policy.audiences.iter().take(1).cloned().collect()
        } else {
            audiences.to_vec()
        };
        if audiences.is_empty() {
            return Err(TokenError::InvalidArgument(
                "no audience requested or configured".into(),
            ));
        }
        for audience in &audiences {
            check_identifier("audience", audience)?;
            if !policy.audiences.contains(audience) {
                return Err(TokenError::InvalidArgument(format!(
                    "audience `{audience}` is not allowed for client `{client_id}`"
                )));
            }
        }
        let mut scopes = scopes.to_vec();
        scopes.sort();
        scopes.dedup();
        let mut audiences = audiences;
        audiences.sort();
        audiences.dedup();
        Ok(Self {
            subject: subject.to_owned(),
            client_id: client_id.to_owned(),
            scopes,
            audiences,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients() -> BTreeMap<String, ClientPolicy> {
        [(
            "web".to_owned(),
            ClientPolicy {
                scopes: vec!["read".into(), "write".into()],
                audiences: vec!["api".into(), "admin".into()],
                ..Default::default()
            },
        )]
        .into()
    }

    #[test]
    fn valid_requests_are_normalised() {
        let grant = Grant::validate(
            &clients(),
            "alice",
            "web",
            &["write".into(), "read".into(), "read".into()],
            &[],
        )
        .unwrap();
        assert_eq!(grant.scopes, vec!["read", "write"]);
        assert_eq!(grant.audiences, vec!["api"]);
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let c = clients();
        for (result, needle) in [
            (Grant::validate(&c, "", "web", &[], &[]), "subject is empty"),
            (
                Grant::validate(&c, &"a".repeat(256), "web", &[], &[]),
                "longer than",
            ),
            (Grant::validate(&c, "al ice", "web", &[], &[]), "whitespace"),
            (
                Grant::validate(&c, "alice", "mobile", &[], &[]),
                "unknown client",
            ),
            (
                Grant::validate(&c, "alice", "web", &["delete".into()], &[]),
                "not allowed",
            ),
            (
                Grant::validate(&c, "alice", "web", &["a\"b".into()], &[]),
                "scope token",
            ),
            (
                Grant::validate(&c, "alice", "web", &[], &["other".into()]),
                "audience `other`",
            ),
            (
                Grant::validate(&c, "alice", "web", &vec!["read".to_owned(); 33], &[]),
                "at most",
            ),
        ] {
            match result {
                Err(TokenError::InvalidArgument(reason)) => {
                    assert!(reason.contains(needle), "{reason}")
                }
                other => panic!("{needle}: {other:?}"),
            }
        }
    }
}
