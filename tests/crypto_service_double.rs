//! The client backend against a misbehaving Crypto Service: a test double implementing the
//! proto on a loopback socket that answers with another algorithm, a stale key version or a
//! truncated signature. Each is a *security* error, logged as a security event, and never
//! turned into a success by the fallback; a DEPRECATED key is refused before any Sign is sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use token_service::api::crypto_proto as pb;
use token_service::api::crypto_proto::crypto_service_server::{CryptoService, CryptoServiceServer};
use token_service::backends::chain::{Chain, Routes};
use token_service::backends::crypto_service::wire::{metadata_to_wire, state_to_wire};
use token_service::backends::crypto_service::{
    ChannelOptions, CryptoServiceBackend, CryptoServiceOptions, NAME,
};
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
    Deprecated,
}

struct Double {
    mode: Mode,
    signer: Arc<SoftwareBackend>,
    key: KeyRef,
    signs: Arc<AtomicU32>,
}

impl Double {
    async fn versions(&self) -> Vec<KeyMetadata> {
        let mut versions = self.signer.key_metadata(&self.key).await.unwrap();
        if self.mode == Mode::Deprecated {
            for v in &mut versions {
                v.state = KeyState::Deprecated;
            }
        }
        versions
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
        self.signs.fetch_add(1, Ordering::SeqCst);
        let r = request.into_inner();
        let signature = self.signer.sign(&self.key, &r.message).await.unwrap();
        let mut answer = pb::SignResponse {
            key_id: r.key_id,
            key_version: signature.key_version,
            algorithm: pb::Algorithm::Es256 as i32,
            signature: signature.bytes,
            kid: signature.kid,
        };
        match self.mode {
            Mode::WrongAlgorithm => answer.algorithm = pb::Algorithm::Es384 as i32,
            Mode::StaleVersion => answer.key_version -= 1,
            Mode::TruncatedSignature => {
                answer.signature.pop();
            }
            Mode::Honest | Mode::Deprecated => {}
        }
        Ok(Response::new(answer))
    }
    async fn verify(
        &self,
        _: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        unimplemented()
    }
    async fn encrypt(
        &self,
        _: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        unimplemented()
    }
    async fn decrypt(
        &self,
        _: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        unimplemented()
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
        _: Request<pb::GetKeyMetadataRequest>,
    ) -> Result<Response<pb::KeyMetadata>, Status> {
        Ok(Response::new(metadata_to_wire(
            &self.key,
            &self.versions().await,
        )))
    }
    async fn list_public_keys(
        &self,
        _: Request<pb::ListPublicKeysRequest>,
    ) -> Result<Response<pb::ListPublicKeysResponse>, Status> {
        let keys = self
            .versions()
            .await
            .into_iter()
            .map(|m| pb::PublicKey {
                version: m.version,
                state: state_to_wire(m.state) as i32,
                jwk: serde_json::to_string(&m.public_jwk.unwrap()).unwrap(),
                kid: m.kid,
            })
            .collect();
        Ok(Response::new(pb::ListPublicKeysResponse { keys }))
    }
}

/// Starts the double on a free loopback port; returns its address and Sign counter.
async fn start_double(mode: Mode, dir: &std::path::Path) -> (String, Arc<AtomicU32>) {
    let signer = Arc::new(
        SoftwareBackend::open(&dir.join("double-keys"), SoftwareOptions::default()).unwrap(),
    );
    let key = KeyRef::new("token", "signing").unwrap();
    signer.generate_key(&key, Algorithm::Es256).await.unwrap();
    if mode == Mode::StaleVersion {
        signer.rotate_key(&key).await.unwrap();
    }
    let signs = Arc::new(AtomicU32::new(0));
    let double = Double {
        mode,
        signer,
        key,
        signs: signs.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CryptoServiceServer::new(double))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (format!("http://{addr}"), signs)
}

#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Signs through a chain of [the client → a local software backend] against a double in
/// `mode`; returns the result, the double's Sign count, the fallback count and the log.
async fn sign_against(mode: Mode) -> (Result<String, BackendError>, u32, u64, String) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();
    let (address, signs) = start_double(mode, dir.path()).await;
    let remote = CryptoServiceBackend::connect(CryptoServiceOptions {
        channel: ChannelOptions {
            address,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            tls: None,
        },
        metadata_ttl: Duration::from_secs(30),
        signing_enabled: true,
        encryption_enabled: true,
    })
    .unwrap();
    let local =
        SoftwareBackend::open(&dir.path().join("local"), SoftwareOptions::default()).unwrap();
    let key = KeyRef::new("token", "signing").unwrap();
    local.generate_key(&key, Algorithm::Es256).await.unwrap();
    let metrics = Metrics::new();
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
            sign: vec![NAME.into(), "software".into()],
            verify: vec![],
            encrypt: vec![],
        },
        true,
        metrics.clone(),
    )
    .unwrap();
    let result = chain
        .sign(&CallContext::new(), &key, b"header.payload")
        .await
        .map(|s| s.backend);
    let fallbacks = metrics.fallback_count(Operation::Sign, NAME, "software");
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    (result, signs.load(Ordering::SeqCst), fallbacks, log)
}

#[tokio::test]
async fn an_honest_double_signs() {
    let (result, signs, fallbacks, _) = sign_against(Mode::Honest).await;
    assert_eq!(result.unwrap(), NAME);
    assert_eq!((signs, fallbacks), (1, 0));
}

#[tokio::test]
async fn a_misbehaving_service_is_a_security_error_without_fallback() {
    for mode in [
        Mode::WrongAlgorithm,
        Mode::StaleVersion,
        Mode::TruncatedSignature,
    ] {
        let (result, signs, fallbacks, log) = sign_against(mode).await;
        let error = result.expect_err("a bad answer must not become a signature");
        assert_eq!(error.class(), ErrorClass::Security, "{mode:?}: {error}");
        assert_eq!(signs, 1, "{mode:?}");
        assert_eq!(fallbacks, 0, "{mode:?}: no fallback turns it into success");
        assert!(
            log.contains("security event"),
            "{mode:?}: a security log line\n{log}"
        );
    }
}

#[tokio::test]
async fn a_deprecated_key_is_refused_before_any_sign_is_sent() {
    let (result, signs, fallbacks, _) = sign_against(Mode::Deprecated).await;
    let error = result.unwrap_err();
    assert_eq!(error.class(), ErrorClass::Rejected, "{error}");
    assert!(error.to_string().contains("DEPRECATED"), "{error}");
    assert_eq!((signs, fallbacks), (0, 0));
}
