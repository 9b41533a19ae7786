//! Wycheproof signature vectors run through any backend's verify, with the public key given
//! as a JWK. One definition of the expected verdicts, shared by every backend's test.

use token_service::backends::jwk::PublicJwk;
use token_service::backends::{Algorithm, Backend, VerificationKey, VerifyRequest};
use wycheproof::{HashFunction, Mgf, TestResult};

/// Counts and mismatches of one run.
#[derive(Default, Debug)]
pub struct Tally {
    pub ran: usize,
    pub acceptable: usize,
    pub mismatches: Vec<String>,
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

async fn verifies(
    backend: &dyn Backend,
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

/// ECDSA P-256/SHA-256 and P-384/SHA-384 in P1363 (r||s) form.
pub async fn ecdsa_p1363(backend: &dyn Backend) -> Tally {
    use wycheproof::ecdsa::{TestName, TestSet};
    let mut tally = Tally::default();
    for (name, algorithm) in [
        (TestName::EcdsaSecp256r1Sha256P1363, Algorithm::Es256),
        (TestName::EcdsaSecp384r1Sha384P1363, Algorithm::Es384),
    ] {
        let set = TestSet::load(name).unwrap();
        for group in &set.test_groups {
            let jwk = PublicJwk::from_ec_point(algorithm, &group.key.key);
            for test in &group.tests {
                let verified = match &jwk {
                    Ok(jwk) => verifies(backend, jwk, algorithm, &test.msg, &test.sig).await,
                    Err(_) => false,
                };
                tally.check(&format!("{name:?}"), test.tc_id, test.result, verified);
            }
        }
    }
    tally
}

/// Every RSA-PSS set whose hash JWS names (SHA-256/384/512 with MGF1 of the same hash).
/// JWS PSxxx fixes the salt length to the hash length (RFC 7518 §3.5): in groups with another
/// salt length, or keys outside 2048-8192 bits, every vector is expected invalid — except
/// those Wycheproof re-made with salt = hash length ("s_len changed to 32"), which are PSxxx
/// signatures and must verify. Returns the tally and the number of groups skipped.
pub async fn rsa_pss(backend: &dyn Backend) -> (Tally, usize) {
    use wycheproof::rsa_pss_verify::{TestName, TestSet};
    let mut tally = Tally::default();
    let mut skipped = 0;
    for name in TestName::all() {
        let set = TestSet::load(name).unwrap();
        for group in &set.test_groups {
            let (algorithm, hash_len) = match group.hash {
                HashFunction::Sha2_256 => (Algorithm::Ps256, 32),
                HashFunction::Sha2_384 => (Algorithm::Ps384, 48),
                HashFunction::Sha2_512 => (Algorithm::Ps512, 64),
                _ => {
                    skipped += 1;
                    continue;
                }
            };
            if group.mgf != Mgf::Mgf1 || group.mgf_hash != Some(group.hash) {
                skipped += 1;
                continue;
            }
            let jws_parameters =
                group.salt_size == hash_len && (2048..=8192).contains(&group.key_size);
            let jwk = PublicJwk::from_rsa_components(&group.key.n, &group.key.e);
            for test in &group.tests {
                let verified = verifies(backend, &jwk, algorithm, &test.msg, &test.sig).await;
                let expected = if jws_parameters {
                    test.result
                } else if test.comment == format!("s_len changed to {hash_len}") {
                    TestResult::Valid
                } else {
                    TestResult::Invalid
                };
                tally.check(&format!("{name:?}"), test.tc_id, expected, verified);
            }
        }
    }
    (tally, skipped)
}

/// Ed25519.
pub async fn ed25519(backend: &dyn Backend) -> Tally {
    use wycheproof::eddsa::{TestName, TestSet};
    let set = TestSet::load(TestName::Ed25519).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        let jwk = PublicJwk::from_ed25519(&group.key.pk);
        for test in &group.tests {
            let verified = verifies(backend, &jwk, Algorithm::EdDsa, &test.msg, &test.sig).await;
            tally.check("Ed25519", test.tc_id, test.result, verified);
        }
    }
    tally
}
