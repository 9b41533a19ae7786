//! Assembling the framework from a [`Config`]: backends, chain, keys; and running the
//! admin endpoint until a shutdown signal.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::api::grpc::GrpcTokenService;
use crate::api::listener::{HttpsListener, ListenerKind, ReloadingTls, scheme};
use crate::api::proto;
use crate::backends::aws_kms::{self, AwsKmsBackend};
use crate::backends::chain::{Chain, ChainBuildError, ConfiguredBackend, Routes};
use crate::backends::clock::SystemClock;
use crate::backends::crypto_service::{self, CryptoServiceBackend};
use crate::backends::pkcs11::{Pkcs11Backend, Pkcs11Options};
use crate::backends::software::{SoftwareBackend, SoftwareOptions};
use crate::backends::{BackendError, KeyRef, Operation};
use crate::config::{BackendsConfig, ChainConfig, Config, StoreKind, VerifyMode};
use crate::context::CallContext;
use crate::metrics::Metrics;
use crate::token::store::Store;
use crate::token::store::memory::MemoryStore;
use crate::token::store::redis::RedisStore;
use crate::token::{TokenService, TokenSettings};
use zeroize::Zeroizing;

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
    /// The token store could not be reached.
    #[error("token store: {0}")]
    Store(String),
    /// A setting could only be checked at start-up (a secret file, for instance).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A listener's TLS files could not be read or used.
    #[error("TLS: {0}")]
    Tls(String),
    /// A listener (gRPC, public HTTP or admin) could not be bound.
    #[error("could not listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The assembled service: the chain, the keys the configuration names, the token logic and
/// its store.
#[derive(Debug, Clone)]
pub struct Service {
    /// The chain.
    pub chain: Arc<Chain>,
    /// The token logic.
    pub tokens: Arc<TokenService>,
    /// The token store.
    pub store: Arc<dyn Store>,
    /// The token signing key (`crypto.key_namespace` / `keys.signing.name`).
    pub signing_key: KeyRef,
    /// The cache encryption key.
    pub encryption_key: KeyRef,
    /// The configuration it was built from.
    pub config: Arc<Config>,
}

/// Opens every configured backend.
///
/// `signing` is the Token Service's signing key, which `backends.aws_kms.key_id`
/// (`KMS_KEY_ID`) maps to a KMS key; `None` for the reference Crypto Service.
pub async fn open_backends(
    config: &BackendsConfig,
    signing: Option<&KeyRef>,
) -> Result<Vec<ConfiguredBackend>, ServiceError> {
    let mut backends: Vec<ConfiguredBackend> = Vec::new();
    if let Some(software) = &config.software {
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
    if let Some(pkcs11) = &config.pkcs11 {
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
            verify_signatures: pkcs11.verify_signatures,
            retention: pkcs11.retention,
            rsa_bits: pkcs11.rsa_bits,
            refresh_interval: pkcs11.refresh_interval,
        })
        .map_err(failed)?;
        backends.push((Arc::new(backend), pkcs11.resilience.clone()));
    }
    if let Some(remote) = &config.crypto_service {
        let backend = CryptoServiceBackend::connect(remote.options()).map_err(|source| {
            ServiceError::Backend {
                backend: crypto_service::NAME.into(),
                source,
            }
        })?;
        backends.push((Arc::new(backend), remote.resilience.clone()));
    }
    if let Some(kms) = &config.aws_kms {
        let failed = |source| ServiceError::Backend {
            backend: aws_kms::NAME.into(),
            source,
        };
        let options = kms
            .options(signing)
            .map_err(|e| failed(BackendError::invalid_input(e.to_string())))?;
        let backend = AwsKmsBackend::connect(options).await.map_err(failed)?;
        backends.push((Arc::new(backend), kms.resilience.clone()));
    }
    Ok(backends)
}

/// The routes of `chain`, without the Crypto Service where its signing or encryption is
/// switched off (`CRYPTO_SIGNING_ENABLED`, `CRYPTO_ENCRYPTION_ENABLED`).
pub fn routes(chain: &ChainConfig, backends: &BackendsConfig) -> Routes {
    let (signing, encryption) = backends
        .crypto_service
        .as_ref()
        .map_or((true, true), |c| (c.signing_enabled, c.encryption_enabled));
    let keep = |list: &[String], enabled: bool| -> Vec<String> {
        list.iter()
            .filter(|name| enabled || name.as_str() != crypto_service::NAME)
            .cloned()
            .collect()
    };
    Routes {
        sign: keep(&chain.sign, signing),
        verify: keep(&chain.verify, signing),
        encrypt: keep(&chain.encrypt, encryption),
    }
}

/// The Redis connection settings of `[tokens]`: TLS files read, and the timeouts.
fn redis_options(
    tokens: &crate::config::TokensConfig,
) -> Result<crate::token::store::redis::RedisOptions, ServiceError> {
    Ok(crate::token::store::redis::RedisOptions {
        tls: tokens.redis_tls.as_ref().map(read_redis_tls).transpose()?,
        connect_timeout: tokens.redis_connect_timeout,
        response_timeout: tokens.redis_response_timeout,
        revocation_replicas: tokens.redis_revocation_replicas,
    })
}

/// Reads the files of `[tokens.redis_tls]`; an unreadable one is named with its setting.
fn read_redis_tls(
    tls: &crate::config::redis_tls::RedisTlsConfig,
) -> Result<crate::token::store::redis::RedisTls, ServiceError> {
    let read = |setting: &str, path: &Path| {
        std::fs::read(path).map_err(|e| {
            ServiceError::Store(format!(
                "tokens.redis_tls.{setting}: cannot read {}: {e}",
                path.display()
            ))
        })
    };
    let client = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some((
            read("cert_file", cert)?,
            Zeroizing::new(read("key_file", key)?),
        )),
        _ => None,
    };
    Ok(crate::token::store::redis::RedisTls::new(
        read("ca_file", &tls.ca_file)?,
        client,
    ))
}

/// Warns when a Redis URL is plaintext to another host (loopback is left quiet).
fn warn_if_plaintext(url: &str) {
    if let Some(host) = crate::token::store::redis::plaintext_remote_host(url) {
        tracing::warn!(
            %host,
            "the token store is reached without TLS: refresh-token hashes and revocations cross the network in clear and can be altered; use rediss:// and [tokens.redis_tls]"
        );
    }
}

/// Opens the configured token store. Every kind is matched by name: a Redis or Redis Cluster
/// setting never falls back to the in-memory store, which would leave each instance of a
/// fleet with state of its own (revocations and rotations unseen by the others).
async fn open_store(
    tokens: &crate::config::TokensConfig,
    registry: &prometheus::Registry,
) -> Result<Arc<dyn Store>, ServiceError> {
    let connect_error = |e: crate::token::store::StoreError| ServiceError::Store(e.to_string());
    let (store, nodes): (Arc<dyn Store>, usize) = match (tokens.store, tokens.redis_url.as_deref())
    {
        (StoreKind::Memory, _) => {
            tracing::info!(
                store = "memory",
                capacity = tokens.memory_capacity,
                "token store ready"
            );
            let store = Arc::new(MemoryStore::new(tokens.memory_capacity));
            if let Err(error) = store.register_metrics(registry) {
                // Only a second store in one registry (tests): the first one's figures stay.
                tracing::warn!(%error, "memory store metrics not registered");
            }
            return Ok(store);
        }
        (StoreKind::Redis, Some(url)) => {
            warn_if_plaintext(url);
            let store = RedisStore::connect_with(url, &redis_options(tokens)?)
                .await
                .map_err(connect_error)?;
            (Arc::new(store), 1)
        }
        (StoreKind::RedisCluster, Some(urls)) => {
            let seeds: Vec<String> = urls.split(',').map(|u| u.trim().to_owned()).collect();
            seeds.iter().for_each(|seed| warn_if_plaintext(seed));
            let store = RedisStore::connect_cluster_with(&seeds, &redis_options(tokens)?)
                .await
                .map_err(connect_error)?;
            (Arc::new(store), seeds.len())
        }
        (StoreKind::Redis | StoreKind::RedisCluster, None) => {
            return Err(ServiceError::Store(
                "tokens.redis_url (or REDIS_URL) is required for a Redis store".into(),
            ));
        }
    };
    // The URL may hold a password: only the kind and the node count are logged.
    tracing::info!(
        store = tokens.store.as_str(),
        nodes,
        "token store connected"
    );
    Ok(store)
}

impl Service {
    /// Builds the chain and connects the token store, without touching keys.
    pub async fn build(config: Config, metrics: Metrics) -> Result<Self, ServiceError> {
        let routes = routes(&config.chain, &config.backends);
        let key_error = |source| ServiceError::Keys {
            key: "configured key".into(),
            source,
        };
        let signing_key = KeyRef::new(&config.crypto.key_namespace, &config.keys.signing.name)
            .map_err(key_error)?;
        let chain = Chain::new(
            open_backends(&config.backends, Some(&signing_key)).await?,
            &routes,
            config.crypto.fallback_enabled,
            metrics,
        )?;
        let encryption_key = KeyRef::new(
            &config.keys.encryption.namespace,
            &config.keys.encryption.name,
        )
        .map_err(key_error)?;
        let chain = Arc::new(chain);
        let store: Arc<dyn Store> = Arc::new(crate::token::store::metered::MeteredStore::new(
            open_store(&config.tokens, chain.metrics().registry()).await?,
            chain.metrics().store().clone(),
        ));
        let tokens = Arc::new(
            TokenService::new(
                chain.clone(),
                store.clone(),
                TokenSettings {
                    issuer: config.tokens.issuer.clone(),
                    access_ttl: config.tokens.access_ttl,
                    max_access_ttl: config.tokens.max_access_ttl,
                    refresh_ttl: config.tokens.refresh_ttl,
                    clock_skew: config.tokens.clock_skew,
                    clients: config.tokens.clients.clone(),
                    rate_limit: config.tokens.rate_limit.clone(),
                    callers: config.tokens.callers.clone(),
                    data_keys: config.tokens.data_keys,
                },
                signing_key.clone(),
                encryption_key.clone(),
                Arc::new(SystemClock),
            )
            .with_dpop(config.dpop.settings().map_err(ServiceError::Config)?),
        );
        Ok(Self {
            chain,
            tokens,
            store,
            signing_key,
            encryption_key,
            config: Arc::new(config),
        })
    }

    /// Creates the configured signing key on every backend of the sign chain, and the
    /// encryption key on every backend of the encrypt chain, where missing; then reads the
    /// published keys once.
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
        // Read the published keys once, so that from the start the chain has each backend's
        // keys to stand in for it if it stops answering (see Chain::public_keys). A failure
        // here is not fatal: the JWKS is read again on every request for it.
        if let Err(error) = self.chain.public_keys(&ctx, &self.signing_key).await {
            tracing::warn!(%error, "public keys not readable at start-up");
        }
        Ok(())
    }

    /// Rotates the signing key on every backend of the sign chain, every `every`. Failures
    /// are logged and retried at the next tick; the old versions keep verifying for their
    /// retention, so a missed rotation never breaks a token.
    async fn rotate_every(self, every: std::time::Duration) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate: rotate only after a full interval
        loop {
            ticks.tick().await;
            let ctx = CallContext::new();
            for guarded in self.chain.sign_backends() {
                if !guarded
                    .backend()
                    .capabilities()
                    .supports(Operation::RotateKey)
                {
                    continue;
                }
                let key = &self.signing_key;
                match guarded
                    .call(&ctx, Operation::RotateKey, key, |b| b.rotate_key(key))
                    .await
                {
                    Ok(m) => {
                        tracing::info!(target: "audit", event = "scheduled_rotation", backend = guarded.name(), key = %key, version = m.version, kid = %m.kid, "signing key rotated")
                    }
                    Err(error) => {
                        tracing::warn!(backend = guarded.name(), %error, "scheduled rotation failed; retrying at the next interval")
                    }
                }
            }
        }
    }

    /// Sweeps data keys past their time out of memory on a timer: lookups and new keys
    /// sweep too, but an idle instance makes neither.
    async fn forget_data_keys_on_time(self) {
        let mut ticks = tokio::time::interval(self.tokens.data_key_sweep_interval());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.tokens.forget_expired_data_keys();
        }
    }

    /// Serves the gRPC API, the public HTTP endpoint and the admin endpoint until SIGTERM
    /// or SIGINT; then stops accepting, lets in-flight calls finish, and returns.
    pub async fn serve(&self) -> Result<(), ServiceError> {
        let bind = |addr: SocketAddr| async move {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServiceError::Listen { addr, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| ServiceError::Listen { addr, source })?;
            Ok::<_, ServiceError>((listener, bound))
        };
        let server = &self.config.server;
        let (grpc_listener, grpc_addr) = bind(SocketAddr::new(server.host, server.port)).await?;
        let (public_listener, public_addr) = bind(server.public_listen).await?;
        let (admin_listener, admin_addr) = bind(self.config.admin.listen).await?;

        let (stop, stopped) = tokio::sync::watch::channel(false);
        let stopped_for_public = stopped.clone();
        let signal = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        };

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<proto::token_service_server::TokenServiceServer<GrpcTokenService>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ServiceError::Listen {
                addr: grpc_addr,
                source: std::io::Error::other(e.to_string()),
            })?;
        let api = GrpcTokenService::new(
            self.tokens.clone(),
            self.config.tokens.max_access_ttl.as_secs(),
        );
        let tls_error = |e: crate::api::listener::TlsSetupError| ServiceError::Tls(e.to_string());
        let metrics = self.chain.metrics();
        let tls = ReloadingTls::load_configured(server.tls.as_ref(), ListenerKind::Grpc, metrics)
            .map_err(tls_error)?;
        let public_tls = ReloadingTls::load_configured(
            server.public_tls.as_ref(),
            ListenerKind::Public,
            metrics,
        )
        .map_err(tls_error)?;
        let (scheme, public_scheme) = (scheme(tls.as_ref()), scheme(public_tls.as_ref()));
        let limits = &server.limits;
        // Shed inside Metered: a refused call still counts as UNAVAILABLE for its method.
        let api =
            crate::api::overload::Shed::new(api.into_server(), limits.max_in_flight, metrics.api());
        let router = crate::api::overload::server_builder(limits)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(crate::api::metrics::Metered::new(api, metrics.api()));
        let grpc = crate::api::listener::serve(router, grpc_listener, tls, signal());
        let public: std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> =
            match public_tls {
                Some(tls) => Box::pin(crate::admin::run_public(
                    HttpsListener::new(public_listener, tls, stopped_for_public).map_err(
                        |source| ServiceError::Listen {
                            addr: public_addr,
                            source,
                        },
                    )?,
                    self.clone(),
                    signal(),
                )),
                None => Box::pin(crate::admin::run_public(
                    public_listener,
                    self.clone(),
                    signal(),
                )),
            };
        let admin = crate::admin::run(admin_listener, self.clone(), signal());
        tracing::info!(%grpc_addr, "gRPC API listening on {scheme}://{grpc_addr}");
        match &server.tls {
            None if !server.host.is_loopback() => tracing::warn!(
                %grpc_addr,
                "gRPC API has no TLS and no caller authentication: anyone who reaches this port can issue tokens; set [server.tls] with client_ca_file"
            ),
            Some(tls) if !tls.requires_client_certificates() => tracing::warn!(
                %grpc_addr,
                "gRPC API has TLS but no client certificates: anyone who reaches this port can issue tokens; set server.tls.client_ca_file"
            ),
            _ => {}
        }
        tracing::info!(%public_addr, "public HTTP listening on {public_scheme}://{public_addr}");
        tracing::info!(%admin_addr, "admin endpoint listening on http://{admin_addr}");

        let (deadline_tx, deadline) = tokio::sync::oneshot::channel::<()>();
        let grace = server.shutdown_grace;
        let rotation = self
            .config
            .keys
            .rotation_interval
            .map(|every| tokio::spawn(self.clone().rotate_every(every)));
        let sweeper = tokio::spawn(self.clone().forget_data_keys_on_time());
        let stopper = tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop.send(true);
            // In-flight calls get the grace period; then the rest is dropped.
            tokio::time::sleep(grace).await;
            let _ = deadline_tx.send(());
        });
        let servers = async { tokio::join!(grpc, public, admin) };
        let (grpc, public, admin) = tokio::select! {
            finished = servers => finished,
            _ = deadline => {
                tracing::warn!(grace_secs = grace.as_secs(), "connections still open after the shutdown grace period; dropping them");
                return Ok(());
            }
        };
        stopper.abort();
        sweeper.abort();
        if let Some(rotation) = rotation {
            rotation.abort();
        }
        grpc.map_err(|e| ServiceError::Listen {
            addr: grpc_addr,
            source: std::io::Error::other(e.to_string()),
        })?;
        public.map_err(|source| ServiceError::Listen {
            addr: public_addr,
            source,
        })?;
        admin.map_err(|source| ServiceError::Listen {
            addr: admin_addr,
            source,
        })?;
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
