//! Binding tokens to DPoP keys: the proof that comes with a token request, and the rule
//! for refreshing a family bound to a key.

use crate::context::CallContext;
use crate::dpop::{DpopError, DpopValidator, InvalidProof, ProofRequest};

use super::TokenError;

/// A DPoP proof with the HTTP request it was made for (the token endpoint's).
#[derive(Clone, Debug, Default)]
pub struct DpopInput {
    /// The compact proof.
    pub proof: String,
    /// The request's method.
    pub method: String,
    /// The request's URI.
    pub uri: String,
}

impl DpopInput {
    pub(super) fn request(&self) -> ProofRequest<'_> {
        ProofRequest {
            proof: &self.proof,
            method: &self.method,
            uri: &self.uri,
            access_token: None,
        }
    }
}

/// The key a refresh's tokens are bound to. A family bound to a key needs a valid proof of
/// that key; an unbound family with a proof gets a bound access token; neither, none.
pub(super) async fn refresh_key(
    validator: &DpopValidator,
    ctx: &CallContext,
    bound: Option<String>,
    proof: Option<&DpopInput>,
) -> Result<Option<String>, TokenError> {
    match (bound, proof) {
        (Some(bound), Some(input)) => {
            let proved = validator.validate(ctx, input.request()).await?;
            if !bool::from(subtle::ConstantTimeEq::ct_eq(
                proved.jkt.as_bytes(),
                bound.as_bytes(),
            )) {
                let refused = DpopError::Invalid(InvalidProof::KeyNotBound);
                validator.count(&refused);
                return Err(refused.into());
            }
            Ok(Some(bound))
        }
        (Some(_), None) => Err(TokenError::Unauthenticated(
            "the refresh token is DPoP-bound: present a DPoP proof of its key".into(),
        )),
        (None, Some(input)) => Ok(Some(validator.validate(ctx, input.request()).await?.jkt)),
        (None, None) => Ok(None),
    }
}
