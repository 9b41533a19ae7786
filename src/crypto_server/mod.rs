//! The reference Crypto Service: `proto/crypto_service.proto` served over a chain of this
//! framework's backends (software or PKCS#11). It is what the tests run the client backend
//! against, and useful on its own as a network front for an HSM.
//!
//! Keys are managed on the *home* backend: the first of the sign chain for signature keys,
//! the first of the encrypt chain for AES keys. Every log line of a call carries its
//! correlation id and trace id; no line carries a payload, plaintext or key.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::api::crypto_proto as pb;
use crate::api::crypto_proto::crypto_service_server::{CryptoService, CryptoServiceServer};
use crate::backends::PublicJwk;
use crate::backends::chain::{Chain, GuardedBackend};
use crate::backends::crypto_service::wire::{
    algorithm_from_wire, algorithm_to_wire, error_to_status, key_id, metadata_to_wire, parse_key_id,
};
use crate::backends::envelope::Envelope;
use crate::backends::error::{BackendError, Rejection};
use crate::backends::types::{
    Algorithm, KeyRef, KeyState, Operation, VerificationKey, VerifyRequest,
};
use crate::caller::Caller;
use crate::config::crypto_service::NamespacePolicy;
use crate::context::CallContext;

mod serve;

pub use serve::{CryptoServerError, serve};

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct CryptoServer {
    chain: Arc<Chain>,
    max_payload: usize,
    /// Per key namespace, the callers (client certificate names) that may use its keys.
    namespaces: Arc<std::collections::BTreeMap<String, NamespacePolicy>>,
}

fn invalid(detail: impl Into<String>) -> Status {
    error_to_status(&BackendError::invalid_input(detail))
}

fn status(error: BackendError) -> Status {
    error_to_status(&error)
}

impl CryptoServer {
    /// A service over `chain`, refusing payloads over `max_payload` bytes.
    pub fn new(chain: Arc<Chain>, max_payload: usize) -> Self {
        Self {
            chain,
            max_payload,
            namespaces: Arc::default(),
        }
    }

    /// Restricts the keys of each namespace in `namespaces` to the callers named for it (see
    /// [`Caller::is_one_of`]): signing, encryption, decryption, key creation and rotation.
    /// Verification, metadata and public keys stay open to every admitted caller.
    pub fn with_namespaces(
        mut self,
        namespaces: std::collections::BTreeMap<String, NamespacePolicy>,
    ) -> Self {
        self.namespaces = Arc::new(namespaces);
        self
    }

    /// Whether `caller` may use the keys of `namespace`.
    fn authorize(&self, caller: &Caller, namespace: &str) -> Result<(), Status> {
        match self.namespaces.get(namespace) {
            Some(policy) if !caller.is_one_of(&policy.callers) => {
                tracing::warn!(target: "audit", event = "caller_refused", namespace, caller = %caller, "caller may not use this namespace's keys");
                Err(Status::permission_denied(format!(
                    "caller {caller} may not use the keys of namespace `{namespace}`"
                )))
            }
            _ => Ok(()),
        }
    }

    /// The tonic service, with message limits a little above the payload limit so that an
    /// oversized payload gets our clear INVALID_ARGUMENT rather than a transport error.
    pub fn into_server(self) -> CryptoServiceServer<Self> {
        let limit = self.max_payload * 2 + 64 * 1024;
        CryptoServiceServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }

    fn payload(&self, what: &str, bytes: &[u8]) -> Result<(), Status> {
        if bytes.is_empty() {
            return Err(invalid(format!("{what} is empty")));
        }
        if bytes.len() > self.max_payload {
            return Err(invalid(format!(
                "{what} of {} bytes exceeds the {}-byte limit",
                bytes.len(),
                self.max_payload
            )));
        }
        Ok(())
    }

    fn key(text: &str, version: u32) -> Result<KeyRef, Status> {
        let key = parse_key_id(text).map_err(status)?;
        Ok(if version == 0 {
            key
        } else {
            key.with_version(version)
        })
    }

    /// The backend that holds `key`: the home of signature keys, else of AES keys.
    async fn home(
        &self,
        ctx: &CallContext,
        key: &KeyRef,
    ) -> Result<(Arc<GuardedBackend>, Vec<crate::backends::KeyMetadata>), Status> {
        let homes = [
            self.chain.sign_backends().first(),
            self.chain.encrypt_backends().first(),
        ];
        let mut last = BackendError::Rejected(Rejection::UnknownKey(key.to_string()));
        for home in homes.into_iter().flatten() {
            let ring = key.ring();
            match home
                .call(ctx, Operation::KeyMetadata, &ring, |b| {
                    b.key_metadata(&ring)
                })
                .await
            {
                Ok(versions) if !versions.is_empty() => return Ok((home.clone(), versions)),
                Ok(_) => {}
                Err(BackendError::Rejected(Rejection::UnknownKey(_))) => {}
                Err(error) => last = error,
            }
        }
        Err(status(last))
    }

    fn home_for(&self, algorithm: Algorithm) -> Result<Arc<GuardedBackend>, Status> {
        let list = if algorithm.is_signing() {
            self.chain.sign_backends()
        } else {
            self.chain.encrypt_backends()
        };
        list.iter()
            .find(|g| {
                let c = g.backend().capabilities();
                c.supports(Operation::GenerateKey) && c.supports_algorithm(algorithm)
            })
            .cloned()
            .ok_or_else(|| {
                status(BackendError::Rejected(Rejection::UnsupportedAlgorithm(
                    algorithm.as_str().to_owned(),
                )))
            })
    }
}

/// The context and log span of an inbound call.
fn begin<T>(
    request: &Request<T>,
    field: &str,
    method: &'static str,
) -> (CallContext, tracing::Span) {
    let ctx = crate::api::inbound_context(request.metadata(), Some(field));
    let span = tracing::info_span!(
        "crypto_rpc",
        method,
        correlation_id = ctx.correlation_id(),
        trace_id = %ctx.trace().trace_id(),
    );
    (ctx, span)
}

/// Runs a call's work in its span and logs how it ended, in the same span.
async fn traced<T>(
    span: tracing::Span,
    work: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let result = work.instrument(span.clone()).await;
    span.in_scope(|| match &result {
        Ok(_) => tracing::info!("served"),
        Err(s) => tracing::info!(code = ?s.code(), message = s.message(), "refused"),
    });
    result
}

#[tonic::async_trait]
impl CryptoService for CryptoServer {
    async fn sign(
        &self,
        request: Request<pb::SignRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        let (ctx, span) = begin(&request, &request.get_ref().correlation_id, "Sign");
        let caller = crate::api::inbound_caller(&request);
        let r = request.into_inner();
        traced(span, async {
            self.payload("message", &r.message)?;
            let key = Self::key(&r.key_id, r.key_version)?;
            self.authorize(&caller, key.namespace())?;
            let expected = algorithm_from_wire(r.algorithm);
            if r.algorithm != 0 && expected.is_none() {
                return Err(invalid(format!("unknown algorithm {}", r.algorithm)));
            }
            let signature = self
                .chain
                .sign(&ctx, &key, &r.message)
                .await
                .map_err(status)?;
            // Checked on the answer rather than with a metadata lookup before every sign:
            // a signature made with a key of another algorithm is dropped, never returned.
            if let Some(expected) = expected {
                signature
                    .algorithm
                    .check_serves(&key.ring(), expected)
                    .map_err(status)?;
            }
            Ok(Response::new(pb::SignResponse {
                key_id: key_id(&key),
                key_version: signature.key_version,
                algorithm: algorithm_to_wire(signature.algorithm) as i32,
                signature: signature.bytes,
                kid: signature.kid,
            }))
        })
        .await
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let (ctx, span) = begin(&request, &request.get_ref().correlation_id, "Verify");
        let r = request.into_inner();
        traced(span, async {
            self.payload("message", &r.message)?;
            let algorithm = algorithm_from_wire(r.algorithm)
                .filter(|a| a.is_signing())
                .ok_or_else(|| invalid("algorithm: expected a signature algorithm"))?;
            let jwk: PublicJwk;
            let managed: KeyRef;
            let key = match &r.key {
                Some(pb::verify_request::Key::Managed(m)) => {
                    managed = Self::key(&m.key_id, m.key_version)?;
                    VerificationKey::Managed {
                        key: &managed,
                        kid: (!m.kid.is_empty()).then_some(m.kid.as_str()),
                    }
                }
                Some(pb::verify_request::Key::PublicJwk(text)) => {
                    jwk = serde_json::from_str(text)
                        .map_err(|_| invalid("public_jwk is not a JSON Web Key"))?;
                    VerificationKey::Jwk(&jwk)
                }
                None => return Err(invalid("key: expected managed or public_jwk")),
            };
            let outcome = self
                .chain
                .verify(
                    &ctx,
                    VerifyRequest {
                        key,
                        algorithm,
                        message: &r.message,
                        signature: &r.signature,
                    },
                )
                .await;
            match outcome {
                Ok(()) => Ok(Response::new(pb::VerifyResponse { valid: true })),
                Err(BackendError::VerificationFailed) => {
                    Ok(Response::new(pb::VerifyResponse { valid: false }))
                }
                Err(error) => Err(status(error)),
            }
        })
        .await
    }

    async fn encrypt(
        &self,
        request: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let (ctx, span) = begin(&request, &request.get_ref().correlation_id, "Encrypt");
        let caller = crate::api::inbound_caller(&request);
        let r = request.into_inner();
        traced(span, async {
            self.payload("plaintext", &r.plaintext)?;
            let key = Self::key(&r.key_id, 0)?;
            self.authorize(&caller, key.namespace())?;
            let sealed = self
                .chain
                .encrypt(&ctx, &key, &r.plaintext, &r.aad)
                .await
                .map_err(status)?;
            let version = Envelope::parse(&sealed).map_err(status)?.kid().version;
            Ok(Response::new(pb::EncryptResponse {
                key_id: key_id(&key),
                key_version: version,
                algorithm: pb::Algorithm::A256gcm as i32,
                ciphertext: sealed.into_bytes(),
            }))
        })
        .await
    }

    async fn decrypt(
        &self,
        request: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let (ctx, span) = begin(&request, &request.get_ref().correlation_id, "Decrypt");
        let caller = crate::api::inbound_caller(&request);
        let r = request.into_inner();
        traced(span, async {
            if r.ciphertext.len() > self.max_payload * 2 {
                return Err(invalid("ciphertext exceeds the size limit"));
            }
            let text = std::str::from_utf8(&r.ciphertext).map_err(|_| {
                status(BackendError::Rejected(Rejection::MalformedEnvelope(
                    "ciphertext is not one this service produced".into(),
                )))
            })?;
            let envelope = Envelope::parse(text).map_err(status)?;
            let kid = envelope.kid();
            self.authorize(&caller, &kid.namespace)?;
            let plaintext = self
                .chain
                .decrypt_parsed(&ctx, &envelope, &r.aad)
                .await
                .map_err(status)?;
            Ok(Response::new(pb::DecryptResponse {
                plaintext: plaintext.to_vec(),
                key_id: format!("{}/{}", kid.namespace, kid.name),
                key_version: kid.version,
            }))
        })
        .await
    }

    async fn generate_key(
        &self,
        request: Request<pb::GenerateKeyRequest>,
    ) -> Result<Response<pb::KeyMetadata>, Status> {
        let (ctx, span) = begin(&request, &request.get_ref().correlation_id, "GenerateKey");
        let caller = crate::api::inbound_caller(&request);
        let r = request.into_inner();
        traced(span, async {
            let key = Self::key(&r.key_id, 0)?;
            self.authorize(&caller, key.namespace())?;
            let algorithm = algorithm_from_wire(r.algorithm).ok_or_else(|| {
                invalid(
                    "algorithm: expected one of ES256, ES384, PS256, PS384, PS512, EDDSA, A256GCM",
                )
            })?;
            let home = self.home_for(algorithm)?;
            home.call(&ctx, Operation::GenerateKey, &key, |b| {
                b.generate_key(&key, algorithm)
            })
            .await
            .map_err(status)?;
            let versions = home
                .call(&ctx, Operation::KeyMetadata, &key, |b| b.key_metadata(&key))
                .await
                .map_err(status)?;
            tracing::info!(target: "audit", key = %key, %algorithm, "key generated");
            Ok(Response::new(metadata_to_wire(&key, &versions)))
        })
        .await
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::KeyMetadata>, Status> {
        let (ctx, span) = begin(&request, &request.get_ref().correlation_id, "RotateKey");
        let caller = crate::api::inbound_caller(&request);
        let r = request.into_inner();
        traced(span, async {
            let key = Self::key(&r.key_id, 0)?;
            self.authorize(&caller, key.namespace())?;
            let (home, _) = self.home(&ctx, &key).await?;
            let rotated = home
                .call(&ctx, Operation::RotateKey, &key, |b| b.rotate_key(&key))
                .await
                .map_err(status)?;
            let versions = home
                .call(&ctx, Operation::KeyMetadata, &key, |b| b.key_metadata(&key))
                .await
                .map_err(status)?;
            tracing::info!(target: "audit", key = %key, version = rotated.version, "key rotated");
            Ok(Response::new(metadata_to_wire(&key, &versions)))
        })
        .await
    }

    async fn get_key_metadata(
        &self,
        request: Request<pb::GetKeyMetadataRequest>,
    ) -> Result<Response<pb::KeyMetadata>, Status> {
        let (ctx, span) = begin(
            &request,
            &request.get_ref().correlation_id,
            "GetKeyMetadata",
        );
        let r = request.into_inner();
        traced(span, async {
            let key = Self::key(&r.key_id, 0)?;
            let (_, versions) = self.home(&ctx, &key).await?;
            Ok(Response::new(metadata_to_wire(&key, &versions)))
        })
        .await
    }

    async fn list_public_keys(
        &self,
        request: Request<pb::ListPublicKeysRequest>,
    ) -> Result<Response<pb::ListPublicKeysResponse>, Status> {
        let (ctx, span) = begin(
            &request,
            &request.get_ref().correlation_id,
            "ListPublicKeys",
        );
        let r = request.into_inner();
        traced(span, async {
            let key = Self::key(&r.key_id, 0)?;
            let (_, versions) = self.home(&ctx, &key).await?;
            let mut keys = Vec::new();
            for m in versions {
                if !matches!(m.state, KeyState::Active | KeyState::Deprecated) {
                    continue;
                }
                let Some(jwk) = m.public_jwk else { continue };
                let jwk = jwk.published(m.algorithm).map_err(status)?;
                keys.push(pb::PublicKey {
                    version: m.version,
                    state: crate::backends::crypto_service::wire::state_to_wire(m.state) as i32,
                    kid: m.kid,
                    jwk: serde_json::to_string(&jwk)
                        .map_err(|e| status(BackendError::invalid_input(e.to_string())))?,
                });
            }
            Ok(Response::new(pb::ListPublicKeysResponse { keys }))
        })
        .await
    }
}
