//! The client backend against a misbehaving Crypto Service: a test double implementing the
//! proto on a loopback socket that answers with another algorithm, a stale key version or a
//! truncated signature. Each is a *security* error, logged as a security event, and never
//! turned into a success by the fallback; a DEPRECATED key is refused before any Sign is sent.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use support::capture::Captured;
use token_service::api::crypto_proto as pb;
use token_service::api::crypto_proto::crypto_service_server::{CryptoService, CryptoServiceServer};
use token_service::backends::chain::{Chain, Routes};
use token_service::backends::crypto_service::wire::{
    metadata_to_wire, parse_key_id, state_to_wire,
};
use token_service::backends::crypto_service::{CryptoServiceBackend, CryptoServiceOptions, NAME};
use token_service::backends::envelope::Envelope;
use token_service::backends::software::{SoftwareBackend, SoftwareOptions};
use token_service::backends::{
    Algorithm, Backend, BackendError, ErrorClass, KeyMetadata, KeyRef, KeyState, Operation,
};
use token_service::context::CallContext;
use token_service::metrics::Metrics;
use token_service::resilience::ResilienceConfig;
use tonic::{Request, Response, Status};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Honest,
    WrongAlgorithm,
    StaleVersion,
    TruncatedSignature,
    /// A signature of the right length with one bit flipped.
    CorruptSignature,
    /// A valid signature by the key, over another message.
    SignatureOfAnotherMessage,
    Deprecated,
    /// ListPublicKeys hands out another key's JWK under the listed kid.
    ForeignPublicKey,
    /// Decrypt answers that another key version opened the ciphertext.
    WrongDecryptKey,
}

/// Calls the double received.
#[derive(Default)]
struct Counts {
    signs: AtomicU32,
    metadata: AtomicU32,
}

/// A Crypto Service that keeps its keys in a software backend and bends its answers.
struct Double {
    mode: Mode,
    keys: Arc<SoftwareBackend>,
    /// Keys of nobody in particular, for [`Mode::ForeignPublicKey`].
    stranger: Arc<SoftwareBackend>,
    counts: Arc<Counts>,
}

fn signing_key() -> KeyRef {
    KeyRef::new("token", "signing").unwrap()
}

fn cache_key() -> KeyRef {
    KeyRef::new("token-cache", "aes").unwrap()
}

fn answer<T>(result: Result<T, BackendError>) -> Result<T, Status> {
    result.map_err(|e| Status::internal(e.to_string()))
}

impl Double {
    async fn versions(&self, key_id: &str) -> Result<(KeyRef, Vec<KeyMetadata>), Status> {
        let key = answer(parse_key_id(key_id))?;
        let mut versions = answer(self.keys.key_metadata(&key).await)?;
        if self.mode == Mode::Deprecated {
            for v in &mut versions {
                v.state = KeyState::Deprecated;
            }
        }
        Ok((key, versions))
    }
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in this double"))
}

#[tonic::async_trait]
impl CryptoService for Double {
    async fn sign(
        &self,
        request: Request<pb::SignRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        self.counts.signs.fetch_add(1, Ordering::SeqCst);
        let r = request.into_inner();
        let message = match self.mode {
            Mode::SignatureOfAnotherMessage => b"another message".to_vec(),
            _ => r.message.clone(),
        };
        let signature = answer(self.keys.sign(&signing_key(), &message).await)?;
        let mut reply = pb::SignResponse {
            key_id: r.key_id,
            key_version: signature.key_version,
            algorithm: pb::Algorithm::Es256 as i32,
            signature: signature.bytes,
            kid: signature.kid,
        };
        match self.mode {
            Mode::WrongAlgorithm => reply.algorithm = pb::Algorithm::Es384 as i32,
            Mode::StaleVersion => reply.key_version -= 1,
            Mode::TruncatedSignature => {
                reply.signature.pop();
            }
            Mode::CorruptSignature => reply.signature[10] ^= 1,
            _ => {}
        }
        Ok(Response::new(reply))
    }
    async fn verify(
        &self,
        _: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        unimplemented()
    }
    async fn encrypt(
        &self,
        request: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let r = request.into_inner();
        let sealed = answer(self.keys.encrypt(&cache_key(), &r.plaintext, &r.aad).await)?;
        let version = answer(Envelope::parse(&sealed))?.kid().version;
        Ok(Response::new(pb::EncryptResponse {
            key_id: r.key_id,
            key_version: version,
            algorithm: pb::Algorithm::A256gcm as i32,
            ciphertext: sealed.into_bytes(),
        }))
    }
    async fn decrypt(
        &self,
        request: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let r = request.into_inner();
        let text =
            String::from_utf8(r.ciphertext).map_err(|_| Status::invalid_argument("utf-8"))?;
        let envelope = answer(Envelope::parse(&text))?;
        let plaintext = answer(self.keys.decrypt(&envelope, &r.aad).await)?;
        let mut version = envelope.kid().version;
        if self.mode == Mode::WrongDecryptKey {
            version += 1;
        }
        Ok(Response::new(pb::DecryptResponse {
            plaintext: plaintext.to_vec(),
            key_id: "token-cache/aes".into(),
            key_version: version,
        }))
    }
    async fn generate_key(
        &self,
        _: Request<pb::GenerateKeyRequest>,
    ) -> Result<Response<pb::KeyMetadata>, Status> {
        unimplemented()
    }
    async fn rotate_key(
        &self,
        _: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::KeyMetadata>, Status> {
        unimplemented()
    }
    async fn get_key_metadata(
        &self,
        request: Request<pb::GetKeyMetadataRequest>,
    ) -> Result<Response<pb::KeyMetadata>, Status> {
        self.counts.metadata.fetch_add(1, Ordering::SeqCst);
        let (key, versions) = self.versions(&request.get_ref().key_id).await?;
        Ok(Response::new(metadata_to_wire(&key, &versions)))
    }
    async fn list_public_keys(
        &self,
        request: Request<pb::ListPublicKeysRequest>,
    ) -> Result<Response<pb::ListPublicKeysResponse>, Status> {
        let (_, versions) = self.versions(&request.get_ref().key_id).await?;
        let stranger = answer(self.stranger.public_keys(&signing_key()).await)?;
        let keys = versions
            .into_iter()
            .map(|m| {
                let jwk = match self.mode {
                    Mode::ForeignPublicKey => stranger[0].clone(),
                    _ => m.public_jwk.clone().unwrap(),
                };
                pb::PublicKey {
                    version: m.version,
                    state: state_to_wire(m.state) as i32,
                    jwk: serde_json::to_string(&jwk).unwrap(),
                    kid: m.kid,
                }
            })
            .collect();
        Ok(Response::new(pb::ListPublicKeysResponse { keys }))
    }
}

/// Starts the double on a free loopback port; returns its address and call counts.
async fn start_double(mode: Mode, dir: &std::path::Path) -> (String, Arc<Counts>) {
    let open = |name: &str| {
        Arc::new(SoftwareBackend::open(&dir.join(name), SoftwareOptions::default()).unwrap())
    };
    let (keys, stranger) = (open("double-keys"), open("stranger-keys"));
    for backend in [&keys, &stranger] {
        backend
            .generate_key(&signing_key(), Algorithm::Es256)
            .await
            .unwrap();
    }
    keys.generate_key(&cache_key(), Algorithm::A256Gcm)
        .await
        .unwrap();
    if mode == Mode::StaleVersion {
        keys.rotate_key(&signing_key()).await.unwrap();
    }
    let counts = Arc::new(Counts::default());
    let double = Double {
        mode,
        keys,
        stranger,
        counts: counts.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CryptoServiceServer::new(double))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (format!("http://{addr}"), counts)
}

/// A chain of [the client → a local software backend with keys of the same names] in
/// front of a double in `mode`.
struct Setup {
    chain: Arc<Chain>,
    metrics: Metrics,
    counts: Arc<Counts>,
    _dir: tempfile::TempDir,
}

async fn setup(mode: Mode) -> Setup {
    setup_checking(mode, true).await
}

/// [`setup`], with the client checking returned signatures or not.
async fn setup_checking(mode: Mode, verify_signatures: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (address, counts) = start_double(mode, dir.path()).await;
    let mut options = CryptoServiceOptions::new(address);
    options.verify_signatures = verify_signatures;
    let remote = CryptoServiceBackend::connect(options).unwrap();
    let local =
        SoftwareBackend::open(&dir.path().join("local"), SoftwareOptions::default()).unwrap();
    local
        .generate_key(&signing_key(), Algorithm::Es256)
        .await
        .unwrap();
    local
        .generate_key(&cache_key(), Algorithm::A256Gcm)
        .await
        .unwrap();
    let metrics = Metrics::new();
    let both = vec![NAME.to_owned(), "software".to_owned()];
    let chain = Chain::new(
        vec![
            (
                Arc::new(remote) as Arc<dyn Backend>,
                ResilienceConfig::default(),
            ),
            (
                Arc::new(local) as Arc<dyn Backend>,
                ResilienceConfig::default(),
            ),
        ],
        &Routes {
            sign: both.clone(),
            verify: vec![],
            encrypt: both,
        },
        true,
        metrics.clone(),
    )
    .unwrap();
    Setup {
        chain: Arc::new(chain),
        metrics,
        counts,
        _dir: dir,
    }
}

impl Setup {
    async fn sign(&self) -> Result<String, BackendError> {
        self.chain
            .sign(&CallContext::new(), &signing_key(), b"header.payload")
            .await
            .map(|s| s.backend)
    }

    fn fallbacks(&self, operation: Operation) -> u64 {
        self.metrics.fallback_count(operation, NAME, "software")
    }
}

#[tokio::test]
async fn an_honest_double_signs_and_seals() {
    let (_log, _guard) = Captured::install();
    let s = setup(Mode::Honest).await;
    assert_eq!(s.sign().await.unwrap(), NAME);
    let ctx = CallContext::new();
    let sealed = s
        .chain
        .encrypt(&ctx, &cache_key(), b"record", b"aad")
        .await
        .unwrap();
    assert!(sealed.starts_with("eyJ"));
    let opened = s.chain.decrypt(&ctx, &sealed, b"aad").await.unwrap();
    assert_eq!(&opened[..], b"record");
    assert_eq!(s.counts.signs.load(Ordering::SeqCst), 1);
    assert_eq!(s.fallbacks(Operation::Sign), 0);
}

#[tokio::test]
async fn a_misbehaving_service_is_a_security_error_without_fallback() {
    for (mode, signs_sent) in [
        (Mode::WrongAlgorithm, 1),
        (Mode::StaleVersion, 1),
        (Mode::TruncatedSignature, 1),
        (Mode::CorruptSignature, 1),
        (Mode::SignatureOfAnotherMessage, 1),
        // Caught when the metadata is fetched, before any Sign.
        (Mode::ForeignPublicKey, 0),
    ] {
        let (log, _guard) = Captured::install();
        let s = setup(mode).await;
        let error = s
            .sign()
            .await
            .expect_err("a bad answer must not become a signature");
        assert_eq!(error.class(), ErrorClass::Security, "{mode:?}: {error}");
        assert_eq!(
            s.counts.signs.load(Ordering::SeqCst),
            signs_sent,
            "{mode:?}"
        );
        assert_eq!(
            s.fallbacks(Operation::Sign),
            0,
            "{mode:?}: no fallback turns it into success"
        );
        assert!(
            log.text().contains("security event"),
            "{mode:?}: a security log line\n{}",
            log.text()
        );
    }
}

/// The check that catches a signature which does not verify is the client's own: with
/// `verify_signatures = false` the corrupt signature goes through as the service's.
#[tokio::test]
async fn unchecked_signatures_are_taken_as_they_come() {
    for mode in [Mode::CorruptSignature, Mode::SignatureOfAnotherMessage] {
        let s = setup_checking(mode, false).await;
        assert_eq!(s.sign().await.unwrap(), NAME, "{mode:?}");
    }
}

#[tokio::test]
async fn a_decryption_answered_by_another_key_version_is_refused() {
    let (log, _guard) = Captured::install();
    let s = setup(Mode::WrongDecryptKey).await;
    let ctx = CallContext::new();
    let sealed = s
        .chain
        .encrypt(&ctx, &cache_key(), b"record", b"")
        .await
        .unwrap();
    let error = s.chain.decrypt(&ctx, &sealed, b"").await.unwrap_err();
    assert_eq!(error.class(), ErrorClass::Security, "{error}");
    assert!(log.text().contains("security event"));
}

#[tokio::test]
async fn a_deprecated_key_is_refused_before_any_sign_is_sent() {
    let (_log, _guard) = Captured::install();
    let s = setup(Mode::Deprecated).await;
    let error = s.sign().await.unwrap_err();
    assert_eq!(error.class(), ErrorClass::Rejected, "{error}");
    assert!(error.to_string().contains("DEPRECATED"), "{error}");
    assert_eq!(s.counts.signs.load(Ordering::SeqCst), 0);
    assert_eq!(s.fallbacks(Operation::Sign), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_on_a_cold_cache_fetch_the_metadata_once() {
    let s = setup(Mode::Honest).await;
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let chain = s.chain.clone();
            tokio::spawn(async move {
                chain
                    .sign(&CallContext::new(), &signing_key(), b"m")
                    .await
                    .map(|s| s.backend)
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), NAME);
    }
    assert_eq!(s.counts.metadata.load(Ordering::SeqCst), 1);
    assert_eq!(s.counts.signs.load(Ordering::SeqCst), 16);
}
