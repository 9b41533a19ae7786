//! Wycheproof vectors through the software backend's verify (with the public key given as
//! a JWK, as the chain verifies tokens and DPoP proofs): every vector's verdict must match.
//!
//! - ECDSA P-256/SHA-256 and P-384/SHA-384 in P1363 (r||s) form: ES256, ES384.
//! - RSA-PSS: every set whose hash is one JWS names (SHA-256/384/512, MGF1 with the same
//!   hash). JWS PSxxx fixes the salt length to the hash length (RFC 7518 §3.5), so in groups
//!   with another salt length, or keys outside 2048-8192 bits, the expected verdict is
//!   "invalid" for every vector: those signatures are valid RSASSA-PSS, but not PSxxx;
//!   except vectors Wycheproof re-made with salt = hash length ("s_len changed to 32"),
//!   which are PSxxx signatures and must verify.
//! - Ed25519: EdDSA.
//!
//! "Acceptable" vectors may go either way; they are counted.

use token_service::backends::jwk::PublicJwk;
use token_service::backends::software::{SoftwareBackend, SoftwareOptions};
use token_service::backends::{Algorithm, Backend, VerificationKey, VerifyRequest};
use wycheproof::{HashFunction, Mgf, TestResult};

#[derive(Default, Debug)]
struct Tally {
    ran: usize,
    acceptable: usize,
    mismatches: Vec<String>,
}

impl Tally {
    fn check(&mut self, set: &str, tc_id: usize, expected: TestResult, verified: bool) {
        self.ran += 1;
        match expected {
            TestResult::Acceptable => self.acceptable += 1,
            TestResult::Valid if !verified => self
                .mismatches
                .push(format!("{set} #{tc_id}: valid vector refused")),
            TestResult::Invalid if verified => self
                .mismatches
                .push(format!("{set} #{tc_id}: invalid vector accepted")),
            _ => {}
        }
    }
}

fn backend() -> (tempfile::TempDir, SoftwareBackend) {
    let dir = tempfile::tempdir().unwrap();
    let backend =
        SoftwareBackend::open(&dir.path().join("keys"), SoftwareOptions::default()).unwrap();
    (dir, backend)
}

async fn verifies(
    backend: &SoftwareBackend,
    jwk: &PublicJwk,
    algorithm: Algorithm,
    msg: &[u8],
    sig: &[u8],
) -> bool {
    backend
        .verify(VerifyRequest {
            key: VerificationKey::Jwk(jwk),
            algorithm,
            message: msg,
            signature: sig,
        })
        .await
        .is_ok()
}

#[tokio::test]
async fn ecdsa_p1363_vectors() {
    use wycheproof::ecdsa::{TestName, TestSet};
    let (_dir, backend) = backend();
    for (name, algorithm) in [
        (TestName::EcdsaSecp256r1Sha256P1363, Algorithm::Es256),
        (TestName::EcdsaSecp384r1Sha384P1363, Algorithm::Es384),
    ] {
        let set = TestSet::load(name).unwrap();
        let mut tally = Tally::default();
        for group in &set.test_groups {
            let jwk = PublicJwk::from_ec_point(algorithm, &group.key.key);
            for test in &group.tests {
                let verified = match &jwk {
                    Ok(jwk) => verifies(&backend, jwk, algorithm, &test.msg, &test.sig).await,
                    Err(_) => false,
                };
                tally.check(&format!("{name:?}"), test.tc_id, test.result, verified);
            }
        }
        println!(
            "{name:?}: {} vectors ran, {} acceptable",
            tally.ran, tally.acceptable
        );
        assert!(tally.ran > 200, "{name:?} ran only {}", tally.ran);
        assert!(tally.mismatches.is_empty(), "{:#?}", tally.mismatches);
    }
}

#[tokio::test]
async fn rsa_pss_vectors() {
    use wycheproof::rsa_pss_verify::{TestName, TestSet};
    let (_dir, backend) = backend();
    let mut total = Tally::default();
    let mut skipped_groups = 0;
    let mut sets_run = Vec::new();
    for name in TestName::all() {
        let set = TestSet::load(name).unwrap();
        let mut ran_here = 0;
        for group in &set.test_groups {
            let (algorithm, hash_len) = match group.hash {
                HashFunction::Sha2_256 => (Algorithm::Ps256, 32),
                HashFunction::Sha2_384 => (Algorithm::Ps384, 48),
                HashFunction::Sha2_512 => (Algorithm::Ps512, 64),
                _ => {
                    skipped_groups += 1;
                    continue;
                }
            };
            if group.mgf != Mgf::Mgf1 || group.mgf_hash != Some(group.hash) {
                skipped_groups += 1;
                continue;
            }
            let jws_parameters =
                group.salt_size == hash_len && (2048..=8192).contains(&group.key_size);
            let jwk = PublicJwk::from_rsa_components(&group.key.n, &group.key.e);
            for test in &group.tests {
                let verified = verifies(&backend, &jwk, algorithm, &test.msg, &test.sig).await;
                let expected = if jws_parameters {
                    test.result
                } else if test.comment == format!("s_len changed to {hash_len}") {
                    // A signature re-made with salt = hash length: invalid under the set's
                    // parameters, but exactly what PSxxx means, so it must verify.
                    TestResult::Valid
                } else {
                    TestResult::Invalid
                };
                total.check(&format!("{name:?}"), test.tc_id, expected, verified);
                ran_here += 1;
            }
        }
        if ran_here > 0 {
            sets_run.push(format!("{name:?} ({ran_here})"));
        }
    }
    println!(
        "RSA-PSS: {} vectors ran in {} sets, {} acceptable, {} groups skipped (SHA-1/224, SHA-512/t, SHAKE, or MGF1 hash differing)",
        total.ran,
        sets_run.len(),
        total.acceptable,
        skipped_groups
    );
    println!("RSA-PSS sets: {}", sets_run.join(", "));
    assert!(
        sets_run
            .iter()
            .any(|s| s.starts_with("RsaPss2048Sha256Mgf1SaltLen32 "))
    );
    assert!(total.ran > 500, "ran only {}", total.ran);
    assert!(total.mismatches.is_empty(), "{:#?}", total.mismatches);
}

#[tokio::test]
async fn ed25519_vectors() {
    use wycheproof::eddsa::{TestName, TestSet};
    let (_dir, backend) = backend();
    let set = TestSet::load(TestName::Ed25519).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        let jwk = PublicJwk::from_ed25519(&group.key.pk);
        for test in &group.tests {
            let verified = verifies(&backend, &jwk, Algorithm::EdDsa, &test.msg, &test.sig).await;
            tally.check("Ed25519", test.tc_id, test.result, verified);
        }
    }
    println!(
        "Ed25519: {} vectors ran, {} acceptable",
        tally.ran, tally.acceptable
    );
    assert!(tally.ran > 100);
    assert!(tally.mismatches.is_empty(), "{:#?}", tally.mismatches);
}
