//! The AWS KMS backend, on aws-sdk-kms.
//!
//! Keys never leave KMS. Signing hashes locally and sends the digest
//! (`MessageType=DIGEST`), so a message of any size costs one small request; ECDSA's DER
//! answer is converted to JWS r||s. Every signature KMS returns is verified locally with
//! the key's cached public key before it is used: a server that signed something else (a
//! double-hashed digest, another key) is a *security* error, never a token.
//!
//! Encryption names the namespace, the key and a hash of the caller's AAD in the
//! EncryptionContext, which KMS binds to the ciphertext. Payloads over KMS's 4 KiB limit use
//! envelope encryption: a data key from GenerateDataKey seals the payload locally with
//! AES-256-GCM and travels encrypted beside it ([`sealed`]).
//!
//! Key metadata (DescribeKey, GetPublicKey, the aliases of [`ring`]) is cached for
//! `metadata_ttl` and checked before every Sign and Encrypt: a key disabled in KMS is refused
//! here within that time, whatever the server would do. The SDK's own retries are off: the
//! chain's retry policy is the one place retries are decided.

pub mod der;
mod error;
pub mod ring;
pub mod sealed;
mod sealing;
mod session;
mod signing;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use zeroize::Zeroizing;

use crate::backends::Backend;
use crate::backends::envelope::{Envelope, EnvelopeKid};
use crate::backends::error::{BackendError, Rejection};
use crate::backends::jwk::PublicJwk;
use crate::backends::lifecycle::Lifecycle;
use crate::backends::remote_cache::RemoteCache;
use crate::backends::software::material::RsaBits;
use crate::backends::types::{
    ActiveKey, Algorithm, Capabilities, Health, KeyMetadata, KeyRef, KeyState, Operation,
    Signature, VerifyRequest,
};

use error::classify;
use ring::{KmsVersion, Location, Ring};

/// The backend's name in configuration, metrics and envelopes.
pub const NAME: &str = "aws_kms";

/// Settings of the AWS KMS backend.
#[derive(Clone, Debug)]
pub struct AwsKmsOptions {
    /// The region; `None` takes it from the environment (`AWS_REGION`, profile, IMDS).
    pub region: Option<String>,
    /// Another endpoint than AWS's (a KMS-compatible server, a VPC endpoint).
    pub endpoint_url: Option<String>,
    /// Prefix of the aliases this backend manages: `alias/<prefix>/<namespace>/<name>`.
    pub alias_prefix: String,
    /// Rings mapped to a KMS key of their own (`KMS_KEY_ID` maps the signing ring): a key
    /// id, key ARN, `alias/NAME` or alias ARN.
    pub keys: Vec<(KeyRef, String)>,
    /// How long key metadata and public keys are cached.
    pub metadata_ttl: Duration,
    /// How long a rotated-out version still verifies and decrypts.
    pub retention: Duration,
    /// Modulus size of RSA keys this backend creates.
    pub rsa_bits: RsaBits,
    /// Verify managed-key signatures with KMS Verify instead of locally.
    pub kms_verify: bool,
    /// Limit on establishing a connection.
    pub connect_timeout: Duration,
    /// Limit on each call.
    pub request_timeout: Duration,
}

impl AwsKmsOptions {
    /// Options with the documented defaults: aliases under `token-service`, metadata cached
    /// 60 s, 24 h retention, RSA 3072, local verification, 2 s connect and 5 s call limits.
    pub fn new() -> Self {
        Self {
            region: None,
            endpoint_url: None,
            alias_prefix: DEFAULT_ALIAS_PREFIX.into(),
            keys: Vec::new(),
            metadata_ttl: Duration::from_secs(60),
            retention: Duration::from_secs(24 * 3600),
            rsa_bits: RsaBits::B3072,
            kms_verify: false,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl Default for AwsKmsOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// Default prefix of managed aliases.
pub const DEFAULT_ALIAS_PREFIX: &str = "token-service";

/// The AWS KMS backend.
pub struct AwsKmsBackend {
    client: aws_sdk_kms::Client,
    options: AwsKmsOptions,
    locations: HashMap<KeyRef, Location>,
    capabilities: Capabilities,
    cache: RemoteCache<Ring>,
    clock: Arc<dyn crate::backends::clock::Clock>,
}

impl std::fmt::Debug for AwsKmsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKmsBackend")
            .field("endpoint_url", &self.options.endpoint_url)
            .field("alias_prefix", &self.options.alias_prefix)
            .finish_non_exhaustive()
    }
}

fn violation(detail: impl Into<String>) -> BackendError {
    let error = BackendError::security(NAME, detail);
    tracing::error!(target: "security", backend = NAME, error = %error, "KMS answer refused");
    error
}

/// A KMS answer must come from the key that was asked (`arn`); any other key is a security
/// violation. `call` names the request in the error, e.g. "Sign for ns/name".
fn check_answered_by(
    call: std::fmt::Arguments<'_>,
    arn: &str,
    answered: Option<&str>,
) -> Result<(), BackendError> {
    if answered == Some(arn) {
        return Ok(());
    }
    Err(violation(format!(
        "{call} answered by key `{}`",
        answered.unwrap_or_default()
    )))
}

impl AwsKmsBackend {
    /// A backend on the default credential chain and region (overridden by `options`).
    pub async fn connect(options: AwsKmsOptions) -> Result<Self, BackendError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &options.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let sdk = loader.load().await;
        Self::from_sdk_config(&sdk, options)
    }

    /// A backend on an SDK configuration built elsewhere (credentials, region), with this
    /// backend's endpoint, timeouts and retry settings applied on top.
    pub fn from_sdk_config(
        sdk: &aws_config::SdkConfig,
        options: AwsKmsOptions,
    ) -> Result<Self, BackendError> {
        let mut config = aws_sdk_kms::config::Builder::from(sdk)
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(options.connect_timeout)
                    .operation_attempt_timeout(options.request_timeout)
                    .operation_timeout(options.request_timeout)
                    .build(),
            )
            .retry_config(aws_config::retry::RetryConfig::disabled());
        if let Some(region) = &options.region {
            config = config.region(aws_config::Region::new(region.clone()));
        }
        if let Some(url) = &options.endpoint_url {
            config = config.endpoint_url(url);
        }
        let config = config.build();
        if config.region().is_none() {
            return Err(BackendError::invalid_input(
                "no AWS region: set backends.aws_kms.region or AWS_REGION",
            ));
        }
        let mut locations = HashMap::new();
        for (ring, reference) in &options.keys {
            let location = Location::parse(reference)
                .map_err(|e| BackendError::invalid_input(format!("KMS key for {ring}: {e}")))?;
            locations.insert(ring.ring(), location);
        }
        Ok(Self {
            client: aws_sdk_kms::Client::from_conf(config),
            locations,
            capabilities: Capabilities {
                operations: Operation::ALL.to_vec(),
                algorithms: vec![
                    Algorithm::Es256,
                    Algorithm::Es384,
                    Algorithm::Ps256,
                    Algorithm::Ps384,
                    Algorithm::Ps512,
                    Algorithm::A256Gcm,
                ],
            },
            cache: RemoteCache::new(options.metadata_ttl),
            clock: Arc::new(crate::backends::clock::SystemClock),
            options,
        })
    }

    /// The same backend reading time from `clock` (retention tests).
    pub fn with_clock(mut self, clock: Arc<dyn crate::backends::clock::Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The SDK client, for tools that need a call this backend does not make.
    pub fn client(&self) -> &aws_sdk_kms::Client {
        &self.client
    }

    fn lifecycle(&self) -> Lifecycle {
        Lifecycle {
            now: self.clock.now(),
            retention: self.options.retention.as_secs(),
        }
    }

    /// Where `ring` lives: its configured KMS key, else the managed alias.
    pub fn location(&self, ring: &KeyRef) -> Result<Location, BackendError> {
        match self.locations.get(&ring.ring()) {
            Some(location) => Ok(location.clone()),
            None => Ok(Location::Alias(ring::default_alias(
                &self.options.alias_prefix,
                &ring.ring(),
            )?)),
        }
    }

    fn forget(&self, ring: &KeyRef) {
        self.cache.forget(ring);
    }

    /// The ring as KMS shows it, from the cache unless stale or `refresh`.
    async fn ring(&self, key: &KeyRef, refresh: bool) -> Result<Arc<Ring>, BackendError> {
        let ring_ref = key.ring();
        self.cache
            .get(&ring_ref, refresh, || async {
                let location = self.location(&ring_ref)?;
                session::read_ring(&self.client, &ring_ref, location).await
            })
            .await
    }

    /// The ring and the position of the version a Sign or Encrypt uses, refused before any
    /// call if it is not ACTIVE.
    async fn producing(
        &self,
        key: &KeyRef,
        operation: Operation,
    ) -> Result<(Arc<Ring>, usize), BackendError> {
        let ring = self.ring(key, false).await?;
        let records = ring.records();
        let chosen = self
            .lifecycle()
            .producing(&key.ring(), &records, key.version(), operation)?
            .version;
        let index = ring
            .position(chosen)
            .ok_or_else(|| BackendError::Rejected(Rejection::UnknownKey(key.to_string())))?;
        Ok((ring, index))
    }

    /// The ring and the position of `version`, which must be able to verify or decrypt
    /// (ACTIVE, or DEPRECATED within retention). `ring` is the copy the caller already holds;
    /// it is read again only when it does not know the version (another instance rotated).
    async fn consuming(
        &self,
        key: &KeyRef,
        ring: Arc<Ring>,
        version: u32,
    ) -> Result<(Arc<Ring>, usize), BackendError> {
        let ring = match ring.position(version) {
            Some(_) => ring,
            None => self.ring(key, true).await?,
        };
        let index = ring.position(version).ok_or_else(|| {
            BackendError::Rejected(Rejection::UnknownKey(format!("{}#{version}", key.ring())))
        })?;
        self.lifecycle()
            .check_consuming(&key.ring(), &ring.versions[index].record)?;
        Ok((ring, index))
    }

    /// A version's kid: its thumbprint, or for a symmetric key the envelope key id.
    fn kid_of(key: &KeyRef, version: &KmsVersion) -> String {
        match version.public_jwk.as_ref().and_then(|jwk| jwk.kid.clone()) {
            Some(kid) => kid,
            None => EnvelopeKid {
                backend: NAME.to_owned(),
                namespace: key.namespace().to_owned(),
                name: key.name().to_owned(),
                version: version.record.version,
            }
            .to_string(),
        }
    }

    fn metadata_of(&self, ring: &Ring, key: &KeyRef, version: &KmsVersion) -> KeyMetadata {
        let lifecycle = self.lifecycle();
        let kid = Self::kid_of(key, version);
        KeyMetadata {
            backend: NAME.to_owned(),
            key: key.ring().with_version(version.record.version),
            version: version.record.version,
            algorithm: ring.algorithm,
            state: lifecycle.effective_state(&version.record),
            created_at: version.record.created_at,
            rotated_at: version.record.rotated_at,
            retained_until: lifecycle.retained_until(&version.record),
            kid,
            public_jwk: version.public_jwk.clone(),
        }
    }
}

#[async_trait]
impl Backend for AwsKmsBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn sign(&self, key: &KeyRef, message: &[u8]) -> Result<Signature, BackendError> {
        self.sign_message(key, message).await
    }

    async fn verify(&self, request: VerifyRequest<'_>) -> Result<(), BackendError> {
        self.verify_signature(request).await
    }

    async fn encrypt(
        &self,
        key: &KeyRef,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<String, BackendError> {
        self.seal(key, plaintext, aad).await
    }

    async fn decrypt(
        &self,
        envelope: &Envelope,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        self.open(envelope, aad).await
    }

    async fn generate_key(
        &self,
        key: &KeyRef,
        algorithm: Algorithm,
    ) -> Result<KeyMetadata, BackendError> {
        let ring_ref = key.ring();
        let Location::Alias(alias) = self.location(&ring_ref)? else {
            // A ring pinned to one key id exists by configuration.
            return Err(BackendError::Rejected(Rejection::KeyExists(
                ring_ref.to_string(),
            )));
        };
        session::create_ring(
            &self.client,
            &ring_ref,
            &alias,
            algorithm,
            self.options.rsa_bits,
        )
        .await?;
        self.forget(&ring_ref);
        let ring = self.ring(&ring_ref, true).await?;
        let newest = ring
            .versions
            .last()
            .ok_or_else(|| violation(format!("{ring_ref} has no version after creation")))?;
        Ok(self.metadata_of(&ring, &ring_ref, newest))
    }

    async fn rotate_key(&self, key: &KeyRef) -> Result<KeyMetadata, BackendError> {
        let ring_ref = key.ring();
        let ring = self.ring(&ring_ref, true).await?;
        let Location::Alias(alias) = &ring.location else {
            return Err(BackendError::invalid_input(format!(
                "{ring_ref} is configured by KMS key id; rotate it in KMS and point the configuration at the new key, or configure an alias"
            )));
        };
        session::rotate_ring(&self.client, &ring_ref, alias, &ring, self.options.rsa_bits).await?;
        self.forget(&ring_ref);
        let ring = self.ring(&ring_ref, true).await?;
        let active = ring
            .versions
            .iter()
            .rev()
            .find(|v| v.record.state == KeyState::Active)
            .ok_or_else(|| violation(format!("rotation of {ring_ref} left no ACTIVE version")))?;
        Ok(self.metadata_of(&ring, &ring_ref, active))
    }

    async fn key_metadata(&self, key: &KeyRef) -> Result<Vec<KeyMetadata>, BackendError> {
        let ring = self.ring(key, false).await?;
        Ok(ring
            .versions
            .iter()
            .filter(|v| key.version().is_none_or(|n| n == v.record.version))
            .map(|v| self.metadata_of(&ring, key, v))
            .collect())
    }

    async fn active_key(&self, key: &KeyRef) -> Result<ActiveKey, BackendError> {
        let (ring, index) = self.producing(&key.ring(), Operation::Sign).await?;
        let version = &ring.versions[index];
        Ok(ActiveKey {
            version: version.record.version,
            kid: Self::kid_of(key, version),
            algorithm: ring.algorithm,
        })
    }

    async fn public_keys(&self, key: &KeyRef) -> Result<Vec<PublicJwk>, BackendError> {
        let ring = self.ring(key, false).await?;
        Ok(ring
            .versions
            .iter()
            .map(|v| self.metadata_of(&ring, key, v))
            .filter(|m| matches!(m.state, KeyState::Active | KeyState::Deprecated))
            .filter_map(|m| m.public_jwk)
            .collect())
    }

    async fn list_keys(&self, namespace: &str) -> Result<Vec<String>, BackendError> {
        crate::backends::types::validate_name("namespace", namespace)?;
        let prefix = format!("alias/{}/{namespace}/", self.options.alias_prefix);
        let aliases = session::list_aliases(&self.client).await?;
        let mut names: Vec<String> = aliases
            .into_iter()
            .filter_map(|(alias, _)| {
                let rest = alias.strip_prefix(&prefix)?;
                (!rest.contains('/')).then(|| rest.to_owned())
            })
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn health(&self) -> Health {
        match self.client.list_aliases().limit(1).send().await {
            Ok(_) => Health::ok(format!(
                "KMS answering{}",
                self.options
                    .endpoint_url
                    .as_deref()
                    .map(|u| format!(" at {u}"))
                    .unwrap_or_default()
            )),
            Err(e) => Health::failing(classify("health probe", e).to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::error::ErrorClass;

    const ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/asked";

    #[test]
    fn an_answer_from_the_asked_key_passes() {
        assert!(check_answered_by(format_args!("Sign for ns/k"), ARN, Some(ARN)).is_ok());
    }

    #[test]
    fn an_answer_from_another_key_or_none_is_a_security_error_naming_both() {
        let other = "arn:aws:kms:us-east-1:111122223333:key/other";
        let error = check_answered_by(format_args!("Sign for ns/k"), ARN, Some(other)).unwrap_err();
        assert_eq!(error.class(), ErrorClass::Security);
        let message = error.to_string();
        assert!(
            message.contains("Sign for ns/k") && message.contains(other),
            "{message}"
        );
        let error = check_answered_by(format_args!("Decrypt"), ARN, None).unwrap_err();
        assert_eq!(error.class(), ErrorClass::Security);
    }
}
