//! Who may do what through the Token API, by the caller the transport identified:
//!
//! - a client's own operations (issue, refresh, revoke its families) are for the callers the
//!   client names (`tokens.clients.<id>.callers`);
//! - introspection and DPoP-proof validation are for the resource servers named in
//!   `tokens.callers.introspect` (RFC 7662 §2.1: an open introspection endpoint lets anyone
//!   probe tokens they found);
//! - revoking any family by id, or any access token by its jti alone, is for the operators
//!   named in `tokens.callers.revoke`.
//!
//! An empty list leaves its operations to any caller the port admits, except revocation by
//! jti alone where clients name their callers: a jti does not say whose token it is, so
//! it cannot be checked against the client's callers and needs an operator.

use serde::{Deserialize, Serialize};

use super::events::Event;
use super::{Caller, TokenError, TokenService};

/// Callers allowed the operations that are not a client's own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OperationCallers {
    /// May call IntrospectToken and ValidateDPoP: the resource servers. Empty: any caller
    /// the gRPC port admits.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub introspect: Vec<String>,
    /// May revoke any family by id and any access token by jti alone: operators. Empty:
    /// family ids are revoked by their client's callers, and jtis alone by any caller only
    /// while no client names its callers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub revoke: Vec<String>,
}

impl OperationCallers {
    /// Whether neither list names anyone (the section is then left out of rendered config).
    pub fn is_empty(&self) -> bool {
        self.introspect.is_empty() && self.revoke.is_empty()
    }
}

/// An operation that is not a client's own, for refusals and audit lines.
#[derive(Clone, Copy, Debug)]
enum Operation {
    Introspect,
    RevokeByJti,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Introspect => "introspect",
            Operation::RevokeByJti => "revoke_by_jti",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Operation::Introspect => "introspect tokens or validate DPoP proofs",
            Operation::RevokeByJti => "revoke an access token by jti alone",
        }
    }
}

impl TokenService {
    /// Whether `caller` may act for `client_id`: any caller when the client names none,
    /// else only one whose certificate is valid for a named caller. Checked before the rate
    /// limit, so a refused caller spends none of the client's budget. An unknown client
    /// passes here and is refused by the grant's validation.
    pub(super) fn authorize(&self, caller: &Caller, client_id: &str) -> Result<(), TokenError> {
        let Some(policy) = self.settings.clients.get(client_id) else {
            return Ok(());
        };
        if policy.callers.is_empty() || caller.is_one_of(&policy.callers) {
            return Ok(());
        }
        self.events().count(Event::CallerRefused);
        tracing::warn!(target: "audit", event = "caller_refused", client_id, caller = %caller, "caller may not act for this client");
        Err(TokenError::PermissionDenied(format!(
            "caller {caller} may not act for client `{client_id}`"
        )))
    }

    /// Whether `caller` may introspect tokens and validate DPoP proofs
    /// (`tokens.callers.introspect`).
    pub fn authorize_introspection(&self, caller: &Caller) -> Result<(), TokenError> {
        let named = &self.settings.callers.introspect;
        if named.is_empty() || caller.is_one_of(named) {
            return Ok(());
        }
        Err(self.refuse(caller, Operation::Introspect))
    }

    /// Whether `caller` is one of the operators of `tokens.callers.revoke`.
    pub(super) fn is_operator(&self, caller: &Caller) -> bool {
        caller.is_one_of(&self.settings.callers.revoke)
    }

    /// Whether `caller` may revoke an access token by its jti alone: an operator, or anyone
    /// while no operator and no client's callers are named.
    pub(super) fn authorize_revocation_by_jti(&self, caller: &Caller) -> Result<(), TokenError> {
        if self.is_operator(caller) || !self.names_any_caller() {
            return Ok(());
        }
        Err(self.refuse(caller, Operation::RevokeByJti))
    }

    /// Whether any client, or the operators' list, names callers: then identities matter
    /// and what cannot be checked against a client is for operators only.
    pub(super) fn names_any_caller(&self) -> bool {
        !self.settings.callers.revoke.is_empty() || self.clients_name_callers()
    }

    /// Whether any client names the callers that may act for it.
    pub(super) fn clients_name_callers(&self) -> bool {
        self.settings
            .clients
            .values()
            .any(|c| !c.callers.is_empty())
    }

    /// Counts, logs and returns the refusal of `caller` for `operation`.
    fn refuse(&self, caller: &Caller, operation: Operation) -> TokenError {
        self.events().count(Event::CallerRefused);
        let (name, what) = (operation.name(), operation.describe());
        tracing::warn!(target: "audit", event = "caller_refused", operation = name, caller = %caller, "caller may not {what}");
        TokenError::PermissionDenied(format!("caller {caller} may not {what}"))
    }
}
