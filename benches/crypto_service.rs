//! Sign through the Crypto Service client over loopback gRPC vs the reference server's own
//! in-process chain (the same software key), in the same run: rate and p50/p99 latency at
//! concurrency 1 and 16, the overhead per call, and what checking each returned signature
//! (`verify_signatures`) costs against a client that does not.
//!
//! Run: `cargo bench --bench crypto_service` (ROUND_SECONDS=2 by default).

#[path = "support/measure.rs"]
mod measure;

use std::sync::Arc;

use measure::{measure, round_length};

use token_service::backends::chain::{Chain, Routes};
use token_service::backends::crypto_service::{CryptoServiceBackend, CryptoServiceOptions};
use token_service::backends::software::{SoftwareBackend, SoftwareOptions};
use token_service::backends::{Algorithm, Backend, KeyRef};
use token_service::context::CallContext;
use token_service::crypto_server::CryptoServer;
use token_service::metrics::Metrics;
use token_service::resilience::ResilienceConfig;

const MESSAGE: &[u8] = b"eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJ1c2VyLTQyIn0";

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let round = round_length(quick, 0.05, 2.0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let software: Arc<dyn Backend> =
            Arc::new(SoftwareBackend::open(&dir.path().join("keys"), SoftwareOptions::default()).unwrap());
        let key = KeyRef::new("token", "signing").unwrap();
        software.generate_key(&key, Algorithm::Es256).await.unwrap();
        let routes = Routes {
            sign: vec!["software".into()],
            verify: vec!["software".into()],
            encrypt: vec!["software".into()],
        };
        let server_chain = Arc::new(
            Chain::new(
                vec![(software, ResilienceConfig::default())],
                &routes,
                true,
                Metrics::new(),
            )
            .unwrap(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(CryptoServer::new(server_chain.clone(), 65536).into_server())
                .serve_with_incoming(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                ),
        );
        let client = Arc::new(
            CryptoServiceBackend::connect(CryptoServiceOptions::new(format!("http://{addr}")))
            .unwrap(),
        );
        client.sign(&key, MESSAGE).await.unwrap();
        // The same client without the local check of each returned signature: the
        // difference is what `verify_signatures` costs.
        let mut options = CryptoServiceOptions::new(format!("http://{addr}"));
        options.verify_signatures = false;
        let unchecked = Arc::new(CryptoServiceBackend::connect(options).unwrap());
        unchecked.sign(&key, MESSAGE).await.unwrap();
        if quick {
            println!("crypto_service: smoke run (figures are not measurements; use `cargo bench`)");
        }
        println!("ES256 sign, {:.1} s per measurement", round.as_secs_f64());
        println!(
            "{:<28} {:>5} {:>10} {:>9} {:>9}",
            "path", "conc", "ops/s", "p50 us", "p99 us"
        );
        for concurrency in [1usize, 16] {
            let (chain, k) = (server_chain.clone(), key.clone());
            let local = measure(concurrency, round, move || {
                let (chain, k) = (chain.clone(), k.clone());
                async move {
                    chain.sign(&CallContext::new(), &k, MESSAGE).await.unwrap();
                }
            })
            .await;
            let (c, k) = (client.clone(), key.clone());
            let remote = measure(concurrency, round, move || {
                let (c, k) = (c.clone(), k.clone());
                async move {
                    c.sign(&k, MESSAGE).await.unwrap();
                }
            })
            .await;
            let (c, k) = (unchecked.clone(), key.clone());
            let remote_unchecked = measure(concurrency, round, move || {
                let (c, k) = (c.clone(), k.clone());
                async move {
                    c.sign(&k, MESSAGE).await.unwrap();
                }
            })
            .await;
            for (path, f) in [
                ("server chain, in process", &local),
                ("client over loopback gRPC", &remote),
                ("client, signatures unchecked", &remote_unchecked),
            ] {
                println!(
                    "{path:<28} {concurrency:>5} {:>10.0} {:>9.1} {:>9.1}",
                    f.rate, f.p50_us, f.p99_us
                );
            }
            println!(
                "overhead at concurrency {concurrency}: p50 +{:.1} us per call; rate {:.2} of in-process; checking signatures: rate {:.2} of unchecked",
                remote.p50_us - local.p50_us,
                remote.rate / local.rate,
                remote.rate / remote_unchecked.rate
            );
        }
    });
}
