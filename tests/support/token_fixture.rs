//! A Token Service over the software chain and the memory store, on a manual clock, for
//! the library-level token tests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use token_service::backends::chain::{Chain, Routes};
use token_service::backends::clock::ManualClock;
use token_service::backends::software::{SoftwareBackend, SoftwareOptions};
use token_service::backends::{Algorithm, Backend, KeyRef};
use token_service::context::CallContext;
use token_service::metrics::Metrics;
use token_service::resilience::ResilienceConfig;
use token_service::token::claims::ClientPolicy;
use token_service::token::store::memory::MemoryStore;
use token_service::token::{
    Caller, IssuedTokens, TokenError, TokenRequest, TokenService, TokenSettings,
};

/// What a test reads of an issuance that started a refresh-token family.
pub trait WithFamily {
    /// The refresh token.
    fn refresh(&self) -> &str;
    /// The family id the access token carries.
    fn fid(&self) -> &str;
}

impl WithFamily for IssuedTokens {
    fn refresh(&self) -> &str {
        self.refresh_token
            .as_ref()
            .map(|token| token.as_str())
            .expect("a refresh token")
    }

    fn fid(&self) -> &str {
        self.claims.fid.as_deref().expect("a family id")
    }
}

/// A Token Service over a software chain and a memory store, on a manual clock.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub backend: Arc<SoftwareBackend>,
    pub store: Arc<MemoryStore>,
    pub service: Arc<TokenService>,
    pub clock: ManualClock,
    /// The chain's metrics (token events are counted there).
    pub metrics: Metrics,
}

impl Fixture {
    /// Whether introspection calls `token` active.
    pub async fn is_active(&self, token: &str) -> bool {
        self.service.introspect(&ctx(), token).await.unwrap().active
    }
}

/// Clients `web` (any caller), `partner` (only `gateway.internal`) and `machine` (access
/// tokens only).
pub fn settings() -> TokenSettings {
    TokenSettings {
        issuer: "https://tokens.example".into(),
        access_ttl: Duration::from_secs(900),
        max_access_ttl: Duration::from_secs(3600),
        refresh_ttl: Duration::from_secs(604_800),
        clock_skew: Duration::from_secs(60),
        rate_limit: None,
        callers: Default::default(),
        data_keys: Default::default(),
        clients: BTreeMap::from([
            (
                "web".to_owned(),
                ClientPolicy {
                    scopes: vec!["read".into(), "write".into()],
                    audiences: vec!["api".into()],
                    ..Default::default()
                },
            ),
            (
                "partner".to_owned(),
                ClientPolicy {
                    scopes: vec!["read".into()],
                    audiences: vec!["api".into()],
                    callers: vec!["gateway.internal".into()],
                    ..Default::default()
                },
            ),
            (
                "machine".to_owned(),
                ClientPolicy {
                    scopes: vec!["read".into()],
                    audiences: vec!["api".into()],
                    access_tokens_only: true,
                    ..Default::default()
                },
            ),
        ]),
    }
}

/// The fixture with [`settings`].
pub async fn fixture() -> Fixture {
    fixture_with(settings()).await
}

/// The fixture with `settings`.
pub async fn fixture_with(settings: TokenSettings) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let clock = ManualClock::new(1_800_000_000);
    let backend = Arc::new(
        SoftwareBackend::open_with_clock(
            &dir.path().join("keys"),
            SoftwareOptions {
                refresh_interval: Duration::ZERO,
                ..Default::default()
            },
            Arc::new(clock.clone()),
        )
        .unwrap(),
    );
    let chain = Arc::new(
        Chain::new(
            vec![(
                backend.clone() as Arc<dyn Backend>,
                ResilienceConfig::default(),
            )],
            &Routes {
                sign: vec!["software".into()],
                verify: vec!["software".into()],
                encrypt: vec!["software".into()],
            },
            true,
            metrics.clone(),
        )
        .unwrap(),
    );
    let signing = KeyRef::new("token", "signing").unwrap();
    let encryption = KeyRef::new("token-cache", "aes").unwrap();
    backend
        .generate_key(&signing, Algorithm::Es256)
        .await
        .unwrap();
    backend
        .generate_key(&encryption, Algorithm::A256Gcm)
        .await
        .unwrap();
    let store = Arc::new(MemoryStore::default());
    let service = Arc::new(TokenService::new(
        chain,
        store.clone(),
        settings,
        signing,
        encryption,
        Arc::new(clock.clone()),
    ));
    Fixture {
        _dir: dir,
        backend,
        store,
        service,
        clock,
        metrics,
    }
}

/// alice asking `web` for `read`.
pub fn request() -> TokenRequest {
    TokenRequest {
        subject: "alice".into(),
        client_id: "web".into(),
        scopes: vec!["read".into()],
        ..Default::default()
    }
}

/// A fresh call context.
pub fn ctx() -> CallContext {
    CallContext::new()
}

/// A caller whose (self-signed, test-only) client certificate names `dns_name`, as the TLS
/// layer would hand it over after verifying it.
pub fn caller_named(dns_name: &str) -> Caller {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![dns_name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    Caller::from_verified_chain(Some(Arc::new(vec![cert.der().clone()])))
}

/// Asserts PERMISSION_DENIED with a reason holding every needle.
pub fn expect_permission_denied<T: std::fmt::Debug>(
    result: Result<T, TokenError>,
    needles: &[&str],
) {
    match result {
        Err(TokenError::PermissionDenied(reason)) => {
            for needle in needles {
                assert!(reason.contains(needle), "{reason} lacks {needle}");
            }
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
}
