//! Wycheproof vectors through the software backend's verify (the public key given as a JWK,
//! as the chain verifies tokens and DPoP proofs): every vector's verdict must match. The
//! expected verdicts, including how RSA-PSS sets outside JWS parameters are judged, are in
//! `support::vectors`.

mod support;

use token_service::backends::software::{SoftwareBackend, SoftwareOptions};

fn backend() -> (tempfile::TempDir, SoftwareBackend) {
    let dir = tempfile::tempdir().unwrap();
    let backend =
        SoftwareBackend::open(&dir.path().join("keys"), SoftwareOptions::default()).unwrap();
    (dir, backend)
}

#[tokio::test]
async fn ecdsa_p1363_vectors() {
    let (_dir, backend) = backend();
    let tally = support::vectors::ecdsa_p1363(&backend).await;
    println!(
        "ECDSA P1363 (P-256, P-384): {} vectors ran, {} acceptable",
        tally.ran, tally.acceptable
    );
    assert!(tally.ran > 500, "ran only {}", tally.ran);
    assert!(tally.mismatches.is_empty(), "{:#?}", tally.mismatches);
}

#[tokio::test]
async fn rsa_pss_vectors() {
    let (_dir, backend) = backend();
    let (tally, skipped) = support::vectors::rsa_pss(&backend).await;
    println!(
        "RSA-PSS: {} vectors ran, {} acceptable, {skipped} groups skipped (hash not used by JWS)",
        tally.ran, tally.acceptable
    );
    assert!(tally.ran > 1500, "ran only {}", tally.ran);
    assert!(tally.mismatches.is_empty(), "{:#?}", tally.mismatches);
}

#[tokio::test]
async fn ed25519_vectors() {
    let (_dir, backend) = backend();
    let tally = support::vectors::ed25519(&backend).await;
    println!(
        "Ed25519: {} vectors ran, {} acceptable",
        tally.ran, tally.acceptable
    );
    assert!(tally.ran > 100);
    assert!(tally.mismatches.is_empty(), "{:#?}", tally.mismatches);
}
