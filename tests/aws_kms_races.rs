//! Instances of a fleet racing on one KMS ring: creating it at start-up, and rotating it.
//! Aliases are the registry, and CreateAlias fails for the loser, so exactly one wins and
//! every instance then reads the same ring.

mod support;

use std::sync::Arc;

use support::kms::MotoKms;
use token_service::backends::{Algorithm, Backend, BackendError, KeyRef, KeyState, Rejection};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creation_makes_one_ring_and_concurrent_rotation_one_version() {
    let Some(kms) = MotoKms::start() else { return };
    let ring = KeyRef::new("token", "signing").unwrap();
    let instances: Vec<_> = (0..4)
        .map(|_| Arc::new(kms.backend(kms.options())))
        .collect();

    let created: Vec<_> = futures_join(instances.iter().map(|b| {
        let (b, ring) = (b.clone(), ring.clone());
        async move { b.generate_key(&ring, Algorithm::Es256).await }
    }))
    .await;
    let winners = created.iter().filter(|r| r.is_ok()).count();
    assert_eq!(winners, 1, "{created:?}");
    for result in &created {
        if let Err(error) = result {
            assert!(
                matches!(error, BackendError::Rejected(Rejection::KeyExists(_))),
                "{error}"
            );
        }
    }
    let kids: Vec<_> = futures_join(instances.iter().map(|b| {
        let (b, ring) = (b.clone(), ring.clone());
        async move { b.public_keys(&ring).await.unwrap() }
    }))
    .await;
    assert!(
        kids.iter()
            .all(|k| k.len() == 1 && k[0].kid == kids[0][0].kid)
    );

    let rotated: Vec<_> = futures_join(instances.iter().map(|b| {
        let (b, ring) = (b.clone(), ring.clone());
        async move { b.rotate_key(&ring).await }
    }))
    .await;
    let succeeded: Vec<_> = rotated.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert!(!succeeded.is_empty(), "{rotated:?}");
    for result in &rotated {
        if let Err(error) = result {
            assert!(error.to_string().contains("at the same time"), "{error}");
        }
    }
    // However the race went, the ring is consistent: one ACTIVE version, every other one
    // DEPRECATED (still verifying), one version per successful rotation; a fresh instance
    // signs with the ACTIVE one. (KMS has no compare-and-set on aliases: when two rotations
    // interleave their alias moves, the ACTIVE one may be the older of the two new keys.)
    let fresh = kms.backend(kms.options());
    let metadata = fresh.key_metadata(&ring).await.unwrap();
    assert_eq!(metadata.len(), 1 + succeeded.len());
    let active: Vec<_> = metadata
        .iter()
        .filter(|m| m.state == KeyState::Active)
        .collect();
    assert_eq!(active.len(), 1, "{metadata:?}");
    assert!(
        metadata
            .iter()
            .all(|m| matches!(m.state, KeyState::Active | KeyState::Deprecated))
    );
    assert_eq!(
        fresh.sign(&ring, b"m").await.unwrap().key_version,
        active[0].version
    );
}

/// Runs the futures concurrently and collects their outputs in order.
async fn futures_join<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
