//! The Crypto Service backend: every operation is a call to the central Crypto Service over
//! gRPC (`proto/crypto_service.proto`), the primary backend in production.
//!
//! The service is trusted to hold keys, not to be right: every answer is checked against
//! what was asked and against the key's metadata (cached for `metadata_ttl`). An answer
//! naming another key, another algorithm, an older key version than the metadata says is
//! active, a `kid` the metadata does not list, or a signature of the wrong length is a
//! *security* error, which the chain never turns into a fallback success. A key with no
//! ACTIVE version is refused before any Sign or Encrypt is sent. A response naming a newer
//! version than the cache knows is a rotation: the metadata and public keys are fetched
//! again at once, so the published JWKS follows.

pub mod channel;
mod metadata;
mod request;
pub mod wire;

use std::time::Duration;

use async_trait::async_trait;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::api::crypto_proto as pb;
use crate::api::crypto_proto::crypto_service_client::CryptoServiceClient;
use crate::backends::Backend;
use crate::backends::envelope::{Envelope, EnvelopeKid};
use crate::backends::error::{BackendError, Rejection};
use crate::backends::jwk::PublicJwk;
use crate::backends::remote_cache::RemoteCache;
use crate::backends::types::{
    Algorithm, Capabilities, Health, KeyMetadata, KeyRef, KeyState, Operation, Signature,
    VerificationKey, VerifyRequest,
};

pub use channel::{ChannelOptions, ClientTls};
use metadata::{CachedKey, signature_len};
use request::{correlation_id, outbound};
use wire::{algorithm_to_wire, key_id, metadata_from_wire, status_to_error};

/// The backend's name in configuration, metrics and envelopes.
pub const NAME: &str = "crypto_service";

/// Settings of the Crypto Service backend.
#[derive(Clone, Debug)]
pub struct CryptoServiceOptions {
    /// How to reach the service.
    pub channel: ChannelOptions,
    /// How long key metadata and public keys are cached.
    pub metadata_ttl: Duration,
    /// Serve sign (and verify); false takes the backend out of those chains.
    pub signing_enabled: bool,
    /// Serve encrypt (and decrypt); false takes the backend out of the encrypt chain.
    pub encryption_enabled: bool,
    /// Check each signature the service returns against the version's public key (parsed
    /// once per metadata fetch) before using it.
    pub verify_signatures: bool,
}

impl CryptoServiceOptions {
    /// Plaintext options for `address` with the documented defaults: connect and call
    /// timeouts 2 s, keepalive every 30 s (10 s to answer), metadata cached 30 s, signing
    /// and encryption both enabled, signatures checked.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            channel: ChannelOptions {
                address: address.into(),
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
                keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
                keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
                tls: None,
            },
            metadata_ttl: DEFAULT_METADATA_TTL,
            signing_enabled: true,
            encryption_enabled: true,
            verify_signatures: true,
        }
    }
}

/// Default limit on establishing a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default deadline of each call.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Default HTTP/2 keepalive interval.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Default time a keepalive ping may go unanswered.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default lifetime of cached key metadata.
pub const DEFAULT_METADATA_TTL: Duration = Duration::from_secs(30);

/// The Crypto Service client backend.
pub struct CryptoServiceBackend {
    client: CryptoServiceClient<Channel>,
    health: tonic_health::pb::health_client::HealthClient<Channel>,
    capabilities: Capabilities,
    cache: RemoteCache<CachedKey>,
    address: String,
    tls: bool,
    /// Whether each returned signature is checked against its public key.
    verify_signatures: bool,
}

impl std::fmt::Debug for CryptoServiceBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptoServiceBackend")
            .field("address", &self.address)
            .field("metadata_ttl", &self.cache.ttl())
            .field("verify_signatures", &self.verify_signatures)
            .finish_non_exhaustive()
    }
}

fn violation(detail: impl Into<String>) -> BackendError {
    BackendError::security(NAME, detail)
}

impl CryptoServiceBackend {
    /// A backend talking to the service described by `options`. Connecting is lazy: the
    /// service may be down at start-up.
    pub fn connect(options: CryptoServiceOptions) -> Result<Self, BackendError> {
        let channel = channel::connect(&options.channel)?;
        let mut operations = vec![
            Operation::GenerateKey,
            Operation::RotateKey,
            Operation::KeyMetadata,
        ];
        if options.signing_enabled {
            operations.extend([Operation::Sign, Operation::Verify, Operation::PublicKeys]);
        }
        if options.encryption_enabled {
            operations.extend([Operation::Encrypt, Operation::Decrypt]);
        }
        Ok(Self {
            client: CryptoServiceClient::new(channel.clone()),
            health: tonic_health::pb::health_client::HealthClient::new(channel),
            capabilities: Capabilities {
                operations,
                algorithms: Algorithm::ALL.to_vec(),
            },
            cache: RemoteCache::new(options.metadata_ttl),
            tls: options.channel.tls.is_some(),
            address: options.channel.address,
            verify_signatures: options.verify_signatures,
        })
    }

    /// The error for a failed call, with a hint when a plaintext client meets a TLS server
    /// (which shows up as an HTTP/2 protocol error, not as anything naming TLS).
    fn failed(&self, status: &tonic::Status) -> BackendError {
        let error = status_to_error(NAME, status);
        // Against a TLS server, a plaintext HTTP/2 client sees its connection broken in one
        // of these ways (measured), never an error naming TLS.
        let broken_connection =
            matches!(status.code(), tonic::Code::Unknown | tonic::Code::Cancelled)
                || status.message().contains("h2 protocol error");
        if !self.tls && broken_connection {
            return BackendError::unavailable(
                NAME,
                format!(
                    "{}: the HTTP/2 connection broke ({}); if the Crypto Service uses TLS, use an https:// address and set [backends.crypto_service.tls]",
                    self.address,
                    crate::backends::types::truncate_for_message(status.message())
                ),
            );
        }
        error
    }
}

#[async_trait]
impl Backend for CryptoServiceBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn sign(&self, key: &KeyRef, message: &[u8]) -> Result<Signature, BackendError> {
        let (cached, expected) = self.producing(key, Operation::Sign).await?;
        expected.algorithm.check_signs(&key.ring())?;
        let mut client = self.client.clone();
        let answer = client
            .sign(outbound(pb::SignRequest {
                correlation_id: correlation_id(),
                key_id: key_id(key),
                key_version: key.version().unwrap_or(0),
                algorithm: algorithm_to_wire(expected.algorithm) as i32,
                message: message.to_vec(),
            }))
            .await
            .map_err(|s| self.failed(&s))?
            .into_inner();
        if wire::algorithm_from_wire(answer.algorithm) != Some(expected.algorithm) {
            return Err(violation(format!(
                "signature for {} answered with algorithm {} instead of {}",
                key.ring(),
                answer.algorithm,
                expected.algorithm
            )));
        }
        let version = self
            .answered_version(key, &expected, &answer.key_id, answer.key_version)
            .await?;
        if answer.kid != version.kid {
            return Err(violation(format!(
                "signature for {} version {} names kid `{}`, the metadata says `{}`",
                key.ring(),
                version.version,
                crate::backends::types::truncate_for_message(&answer.kid),
                version.kid
            )));
        }
        match signature_len(&version) {
            Some(len) if len == answer.signature.len() => {}
            Some(len) => {
                return Err(violation(format!(
                    "{} signature of {} bytes from {} version {}; expected {len}",
                    version.algorithm,
                    answer.signature.len(),
                    key.ring(),
                    version.version
                )));
            }
            None => {
                return Err(violation(format!(
                    "no public key known for {} version {}: cannot check the signature length",
                    key.ring(),
                    version.version
                )));
            }
        }
        if self.verify_signatures {
            // The version that answered may be newer than the one expected, after a rotation
            // on the server: its key is in the refreshed metadata.
            let cached = if version.version == expected.version {
                cached
            } else {
                self.metadata(key, false).await?
            };
            cached.check_signature(key, version.version, message, &answer.signature)?;
        }
        Ok(Signature {
            bytes: answer.signature,
            algorithm: version.algorithm,
            kid: version.kid,
            key_version: version.version,
            backend: NAME.to_owned(),
        })
    }

    async fn verify(&self, request: VerifyRequest<'_>) -> Result<(), BackendError> {
        let key = match request.key {
            VerificationKey::Managed { key, kid } => {
                pb::verify_request::Key::Managed(pb::ManagedKey {
                    key_id: key_id(key),
                    key_version: key.version().unwrap_or(0),
                    kid: kid.unwrap_or_default().to_owned(),
                })
            }
            VerificationKey::Jwk(jwk) => pb::verify_request::Key::PublicJwk(
                serde_json::to_string(jwk)
                    .map_err(|e| BackendError::invalid_input(format!("public JWK: {e}")))?,
            ),
            VerificationKey::Prepared(prepared) => pb::verify_request::Key::PublicJwk(
                serde_json::to_string(&prepared.jwk)
                    .map_err(|e| BackendError::invalid_input(format!("public JWK: {e}")))?,
            ),
        };
        let mut client = self.client.clone();
        let answer = client
            .verify(outbound(pb::VerifyRequest {
                correlation_id: correlation_id(),
                algorithm: algorithm_to_wire(request.algorithm) as i32,
                message: request.message.to_vec(),
                signature: request.signature.to_vec(),
                key: Some(key),
            }))
            .await
            .map_err(|s| self.failed(&s))?
            .into_inner();
        if answer.valid {
            Ok(())
        } else {
            Err(BackendError::VerificationFailed)
        }
    }

    async fn encrypt(
        &self,
        key: &KeyRef,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<String, BackendError> {
        let (_, expected) = self.producing(key, Operation::Encrypt).await?;
        expected
            .algorithm
            .check_serves(&key.ring(), Algorithm::A256Gcm)?;
        let mut client = self.client.clone();
        let answer = client
            .encrypt(outbound(pb::EncryptRequest {
                correlation_id: correlation_id(),
                key_id: key_id(key),
                plaintext: plaintext.to_vec(),
                aad: aad.to_vec(),
            }))
            .await
            .map_err(|s| self.failed(&s))?
            .into_inner();
        if wire::algorithm_from_wire(answer.algorithm) != Some(Algorithm::A256Gcm) {
            return Err(violation(format!(
                "encryption under {} answered with algorithm {}",
                key.ring(),
                answer.algorithm
            )));
        }
        let version = self
            .answered_version(key, &expected, &answer.key_id, answer.key_version)
            .await?;
        if answer.ciphertext.is_empty() {
            return Err(violation(format!("empty ciphertext from {}", key.ring())));
        }
        let kid = EnvelopeKid {
            backend: NAME.to_owned(),
            namespace: key.namespace().to_owned(),
            name: key.name().to_owned(),
            version: version.version,
        };
        Envelope::remote(&kid, &answer.ciphertext)
    }

    async fn decrypt(
        &self,
        envelope: &Envelope,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let kid = envelope.kid();
        let key = kid.key_for(NAME)?;
        let ciphertext = envelope.remote_ciphertext()?;
        let mut client = self.client.clone();
        let answer = client
            .decrypt(outbound(pb::DecryptRequest {
                correlation_id: correlation_id(),
                ciphertext: ciphertext.to_vec(),
                aad: aad.to_vec(),
            }))
            .await
            .map_err(|s| self.failed(&s))?
            .into_inner();
        let plaintext = Zeroizing::new(answer.plaintext);
        if answer.key_id != key_id(&key) || answer.key_version != kid.version {
            return Err(violation(format!(
                "decryption of an envelope for {kid} answered by key `{}` version {}",
                crate::backends::types::truncate_for_message(&answer.key_id),
                answer.key_version
            )));
        }
        Ok(plaintext)
    }

    async fn generate_key(
        &self,
        key: &KeyRef,
        algorithm: Algorithm,
    ) -> Result<KeyMetadata, BackendError> {
        let ring = key.ring();
        let mut client = self.client.clone();
        let wire = client
            .generate_key(outbound(pb::GenerateKeyRequest {
                correlation_id: correlation_id(),
                key_id: key_id(&ring),
                algorithm: algorithm_to_wire(algorithm) as i32,
            }))
            .await
            .map_err(|s| self.failed(&s))?
            .into_inner();
        let versions = metadata_from_wire(NAME, &ring, wire)?;
        self.forget(&ring);
        match versions.into_iter().last() {
            Some(m) if m.algorithm == algorithm => Ok(m),
            _ => Err(violation(format!(
                "GenerateKey for {ring} ({algorithm}) answered another key or none"
            ))),
        }
    }

    async fn rotate_key(&self, key: &KeyRef) -> Result<KeyMetadata, BackendError> {
        let ring = key.ring();
        let mut client = self.client.clone();
        let wire = client
            .rotate_key(outbound(pb::RotateKeyRequest {
                correlation_id: correlation_id(),
                key_id: key_id(&ring),
            }))
            .await
            .map_err(|s| self.failed(&s))?
            .into_inner();
        metadata_from_wire(NAME, &ring, wire)?;
        let cached = self.metadata(&ring, true).await?;
        cached
            .versions
            .last()
            .filter(|m| m.state == KeyState::Active)
            .cloned()
            .ok_or_else(|| violation(format!("RotateKey for {ring} left no ACTIVE version")))
    }

    async fn key_metadata(&self, key: &KeyRef) -> Result<Vec<KeyMetadata>, BackendError> {
        let cached = self.metadata(key, false).await?;
        Ok(match key.version() {
            Some(v) => cached.version(v).cloned().into_iter().collect(),
            None => cached.versions.clone(),
        })
    }

    async fn public_keys(&self, key: &KeyRef) -> Result<Vec<PublicJwk>, BackendError> {
        let cached = self.metadata(key, false).await?;
        Ok(cached
            .versions
            .iter()
            .filter(|m| matches!(m.state, KeyState::Active | KeyState::Deprecated))
            .filter_map(|m| m.public_jwk.clone())
            .collect())
    }

    async fn list_keys(&self, _namespace: &str) -> Result<Vec<String>, BackendError> {
        Err(BackendError::Rejected(Rejection::UnsupportedOperation(
            Operation::ListKeys,
        )))
    }

    async fn health(&self) -> Health {
        let mut health = self.health.clone();
        match health
            .check(outbound(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            }))
            .await
        {
            Ok(answer)
                if answer.get_ref().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 =>
            {
                Health::ok(format!("{} serving", self.address))
            }
            Ok(_) => Health::failing(format!("{} not serving", self.address)),
            Err(status) => Health::failing(format!(
                "{}: {}",
                self.address,
                status_to_error(NAME, &status)
            )),
        }
    }
}
