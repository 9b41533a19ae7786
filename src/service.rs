//! Assembling the framework from a [`Config`]: backends, chain, keys; and running the
//! admin endpoint until a shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::backends::chain::{Chain, ChainBuildError, ConfiguredBackend, Routes};
use crate::backends::pkcs11::{Pkcs11Backend, Pkcs11Options};
use crate::backends::software::{SoftwareBackend, SoftwareOptions};
use crate::backends::{BackendError, KeyRef};
use crate::config::{Config, VerifyMode};
use crate::context::CallContext;
use crate::metrics::Metrics;

/// Errors assembling or running the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A backend could not be opened.
    #[error("backend `{backend}` could not start: {source}")]
    Backend {
        /// The backend.
        backend: String,
        /// Why.
        source: BackendError,
    },
    /// The chain could not be built.
    #[error(transparent)]
    Chain(#[from] ChainBuildError),
    /// The configured keys could not be made ready.
    #[error("key {key} is not usable: {source}")]
    Keys {
        /// The key.
        key: String,
        /// Why.
        source: BackendError,
    },
    /// The admin endpoint could not listen.
    #[error("admin endpoint could not listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The assembled framework: the chain and the keys the configuration names.
#[derive(Debug, Clone)]
pub struct Service {
    /// The chain.
    pub chain: Arc<Chain>,
    /// The token signing key (`crypto.key_namespace` / `keys.signing.name`).
    pub signing_key: KeyRef,
    /// The cache encryption key.
    pub encryption_key: KeyRef,
    /// The configuration it was built from.
    pub config: Arc<Config>,
}

/// Opens every configured backend.
pub fn open_backends(config: &Config) -> Result<Vec<ConfiguredBackend>, ServiceError> {
    let mut backends: Vec<ConfiguredBackend> = Vec::new();
    if let Some(software) = &config.backends.software {
        let backend = SoftwareBackend::open(
            &software.data_dir,
            SoftwareOptions {
                retention: software.retention,
                rsa_bits: software.rsa_bits,
                refresh_interval: software.refresh_interval,
            },
        )
        .map_err(|source| ServiceError::Backend {
            backend: "software".into(),
            source,
        })?;
        backends.push((Arc::new(backend), software.resilience.clone()));
    }
    if let Some(pkcs11) = &config.backends.pkcs11 {
        let failed = |source| ServiceError::Backend {
            backend: "pkcs11".into(),
            source,
        };
        let resolved = pkcs11
            .resolve()
            .map_err(|e| failed(BackendError::invalid_input(e.to_string())))?;
        let pin = resolved
            .pin
            .load()
            .map_err(|e| failed(BackendError::invalid_input(format!("user PIN: {e}"))))?;
        let backend = Pkcs11Backend::open(Pkcs11Options {
            module: resolved.module,
            token: resolved.token,
            pin,
            max_sessions: pkcs11.max_sessions,
            verify_on_token: pkcs11.verify == VerifyMode::Token,
            retention: pkcs11.retention,
            rsa_bits: pkcs11.rsa_bits,
            refresh_interval: pkcs11.refresh_interval,
        })
        .map_err(failed)?;
        backends.push((Arc::new(backend), pkcs11.resilience.clone()));
    }
    Ok(backends)
}

impl Service {
    /// Builds the chain from `config`, without touching keys.
    pub fn build(config: Config, metrics: Metrics) -> Result<Self, ServiceError> {
        let routes = Routes {
            sign: config.chain.sign.clone(),
            verify: config.chain.verify.clone(),
            encrypt: config.chain.encrypt.clone(),
        };
        let chain = Chain::new(
            open_backends(&config)?,
            &routes,
            config.crypto.fallback_enabled,
            metrics,
        )?;
        let key_error = |source| ServiceError::Keys {
            key: "configured key".into(),
            source,
        };
        let signing_key = KeyRef::new(&config.crypto.key_namespace, &config.keys.signing.name)
            .map_err(key_error)?;
        let encryption_key = KeyRef::new(
            &config.keys.encryption.namespace,
            &config.keys.encryption.name,
        )
        .map_err(key_error)?;
        Ok(Self {
            chain: Arc::new(chain),
            signing_key,
            encryption_key,
            config: Arc::new(config),
        })
    }

    /// Creates the configured signing key on every backend of the sign chain, and the
    /// encryption key on every backend of the encrypt chain, where missing.
    pub async fn ensure_keys(&self) -> Result<(), ServiceError> {
        let ctx = CallContext::new();
        self.chain
            .ensure_key(
                &ctx,
                self.chain.sign_backends(),
                &self.signing_key,
                self.config.keys.signing.algorithm,
            )
            .await
            .map_err(|source| ServiceError::Keys {
                key: self.signing_key.to_string(),
                source,
            })?;
        self.chain
            .ensure_key(
                &ctx,
                self.chain.encrypt_backends(),
                &self.encryption_key,
                crate::backends::Algorithm::A256Gcm,
            )
            .await
            .map_err(|source| ServiceError::Keys {
                key: self.encryption_key.to_string(),
                source,
            })?;
        Ok(())
    }

    /// Runs the admin endpoint until SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn serve(&self) -> Result<(), ServiceError> {
        let addr = self.config.admin.listen;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServiceError::Listen { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| ServiceError::Listen { addr, source })?;
        tracing::info!(%bound, "admin endpoint listening on http://{bound}");
        crate::admin::run(listener, self.clone(), shutdown_signal())
            .await
            .map_err(|source| ServiceError::Listen { addr, source })?;
        tracing::info!("shut down cleanly");
        Ok(())
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the service");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => tracing::info!("SIGINT received, shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
