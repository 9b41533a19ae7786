//! A fault-injecting backend for chain tests: each call does what its current mode says and
//! is counted, with its (tokio) start time, so tests can see exactly what reached it.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use token_service::backends::envelope::Envelope;
use token_service::backends::{
    Algorithm, Backend, BackendError, Capabilities, Health, KeyMetadata, KeyRef, Operation,
    PublicJwk, Rejection, Signature, VerifyRequest,
};
use tokio::time::Instant;
use zeroize::Zeroizing;

/// What the next calls do.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    Ok,
    Unavailable,
    Rejected,
    VerificationFailed,
    /// Answers sign with a signature of the wrong length.
    WrongSignatureLength,
    /// Sleeps this long, then answers Ok.
    Slow(Duration),
}

#[derive(Debug)]
pub struct FaultBackend {
    name: String,
    capabilities: Capabilities,
    mode: Mutex<Mode>,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    starts: Mutex<Vec<Instant>>,
    in_process: AtomicBool,
}

impl FaultBackend {
    pub fn new(name: &str, mode: Mode) -> Arc<Self> {
        Self::with_operations(name, mode, Operation::ALL.to_vec())
    }

    pub fn with_operations(name: &str, mode: Mode, operations: Vec<Operation>) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            capabilities: Capabilities {
                operations,
                algorithms: Algorithm::ALL.to_vec(),
            },
            mode: Mutex::new(mode),
            calls: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            starts: Mutex::new(Vec::new()),
            in_process: AtomicBool::new(false),
        })
    }

    /// Makes the backend say it runs in this process ([`Backend::is_in_process`]).
    pub fn set_in_process(&self, in_process: bool) {
        self.in_process.store(in_process, Ordering::SeqCst);
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn starts(&self) -> Vec<Instant> {
        self.starts.lock().unwrap().clone()
    }

    async fn act(&self) -> Result<(), BackendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.starts.lock().unwrap().push(Instant::now());
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let mode = self.mode.lock().unwrap().clone();
        let result = match mode {
            Mode::Ok | Mode::WrongSignatureLength => Ok(()),
            Mode::Unavailable => Err(BackendError::unavailable(&self.name, "connection refused")),
            Mode::Rejected => Err(BackendError::Rejected(Rejection::UnknownKey("x".into()))),
            Mode::VerificationFailed => Err(BackendError::VerificationFailed),
            Mode::Slow(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

#[async_trait]
impl Backend for FaultBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn is_in_process(&self) -> bool {
        self.in_process.load(Ordering::SeqCst)
    }

    async fn sign(&self, _key: &KeyRef, _message: &[u8]) -> Result<Signature, BackendError> {
        self.act().await?;
        let len = if *self.mode.lock().unwrap() == Mode::WrongSignatureLength {
            63
        } else {
            64
        };
        Ok(Signature {
            bytes: vec![0; len],
            algorithm: Algorithm::Es256,
            kid: format!("{}-kid", self.name),
            key_version: 1,
            backend: self.name.clone(),
        })
    }

    async fn verify(&self, _request: VerifyRequest<'_>) -> Result<(), BackendError> {
        self.act().await
    }

    async fn encrypt(&self, _key: &KeyRef, _p: &[u8], _aad: &[u8]) -> Result<String, BackendError> {
        self.act().await?;
        Ok(format!("{}-envelope", self.name))
    }

    async fn decrypt(
        &self,
        _e: &Envelope,
        _aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        self.act().await?;
        Ok(Zeroizing::new(self.name.as_bytes().to_vec()))
    }

    async fn generate_key(&self, _k: &KeyRef, _a: Algorithm) -> Result<KeyMetadata, BackendError> {
        self.act().await?;
        Err(BackendError::Rejected(Rejection::UnsupportedOperation(
            Operation::GenerateKey,
        )))
    }

    async fn rotate_key(&self, _k: &KeyRef) -> Result<KeyMetadata, BackendError> {
        self.act().await?;
        Err(BackendError::Rejected(Rejection::UnsupportedOperation(
            Operation::RotateKey,
        )))
    }

    async fn key_metadata(&self, _k: &KeyRef) -> Result<Vec<KeyMetadata>, BackendError> {
        self.act().await?;
        Ok(Vec::new())
    }

    async fn public_keys(&self, _k: &KeyRef) -> Result<Vec<PublicJwk>, BackendError> {
        self.act().await?;
        Ok(Vec::new())
    }

    async fn list_keys(&self, _ns: &str) -> Result<Vec<String>, BackendError> {
        self.act().await?;
        Ok(Vec::new())
    }

    async fn health(&self) -> Health {
        Health::ok("fault backend")
    }
}
