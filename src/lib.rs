//! token-service: a pluggable crypto-backend framework and the Token Service built on it.
//!
//! Every cryptographic operation goes through the [`backends::Backend`] trait. A
//! [`backends::chain::Chain`] picks, per call, the first healthy backend from an ordered list
//! configured per operation, with each backend wrapped in the policies of [`resilience`]
//! (rate limit, concurrency limit, circuit breaker, timeout, retry).
//!
//! The library is split the way the design brief lays it out:
//! - [`backends`]: the trait, its types and classified errors, the software backend, the chain;
//! - [`resilience`]: policies that wrap any backend;
//! - [`config`]: the strict TOML schema with environment overrides;
//! - [`metrics`], [`admin`]: Prometheus metrics and the admin HTTP endpoint;
//! - [`jws`]: compact JWS encoding on top of the chain.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod backends;
pub mod caller;
pub mod config;
pub mod context;
pub mod crypto_server;
pub mod dpop;
pub mod jws;
pub mod metrics;
pub mod resilience;
pub mod secret;
pub mod service;
pub mod telemetry;
pub mod token;
