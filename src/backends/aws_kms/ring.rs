//! How a logical key ring lives in KMS.
//!
//! A ring is a set of KMS keys, one per version, found through aliases:
//! - the **ring alias** (`alias/token-service/<namespace>/<name>` by default, or the alias
//!   configured for the ring, e.g. `KMS_KEY_ID`) points at the version that signs or
//!   encrypts now;
//! - a **version alias** `<ring alias>/v<N>` per version names every key of the ring, so
//!   older versions stay reachable for verification and decryption after a rotation.
//!
//! Rotation creates a key, adds its version alias and moves the ring alias to it. A ring
//! alias that was made outside this service (an existing key adopted through `KMS_KEY_ID`)
//! has no version aliases: its target is version 1 until the first rotation registers it.
//! A ring configured by key id or key ARN is that one key: version 1, never rotated here.
//!
//! States come from KMS: an Enabled key is ACTIVE if the ring alias points at it, else
//! DEPRECATED since the next version was created (and DESTROYED once the retention has
//! passed); Disabled is DISABLED; PendingDeletion and every other state are refused.

use std::sync::Arc;

use aws_lc_rs::signature::ParsedPublicKey;

use crate::backends::error::{BackendError, Rejection};
use crate::backends::jwk::PublicJwk;
use crate::backends::lifecycle::VersionRecord;
use crate::backends::types::{Algorithm, KeyRef, KeyState, truncate_for_message};

/// Where a ring's keys are found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// Through a ring alias (`alias/...`) and its version aliases.
    Alias(String),
    /// One fixed key, by key id or key ARN.
    Key(String),
}

impl Location {
    /// Parses a configured KMS key reference: `alias/NAME`, an alias ARN, a key ARN or a
    /// key id. Alias ARNs are reduced to the alias name (aliases are not usable across
    /// accounts, so the ARN adds nothing but a second spelling).
    pub fn parse(reference: &str) -> Result<Self, String> {
        let alias_chars = |name: &str| {
            !name.is_empty()
                && name.len() <= 256
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b':'))
        };
        if let Some(name) = reference.strip_prefix("alias/") {
            return if alias_chars(name) && !name.starts_with("aws/") {
                Ok(Location::Alias(reference.to_owned()))
            } else {
                Err(format!(
                    "`{}` is not a customer alias name (alias/ then [A-Za-z0-9/_:-], not alias/aws/)",
                    truncate_for_message(reference)
                ))
            };
        }
        if reference.starts_with("arn:") {
            let parts: Vec<&str> = reference.splitn(6, ':').collect();
            return match parts.as_slice() {
                [_, _, "kms", _, _, resource] if resource.starts_with("key/") => {
                    Ok(Location::Key(reference.to_owned()))
                }
                [_, _, "kms", _, _, resource] if resource.starts_with("alias/") => {
                    Location::parse(resource)
                }
                _ => Err(format!(
                    "`{}` is not a KMS key or alias ARN",
                    truncate_for_message(reference)
                )),
            };
        }
        let key_id = reference.strip_prefix("mrk-").unwrap_or(reference);
        let uuid_like = key_id.len() == 36
            && key_id.bytes().enumerate().all(|(i, b)| {
                matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
            });
        if uuid_like {
            Ok(Location::Key(reference.to_owned()))
        } else {
            Err(format!(
                "`{}` is not a key id, key ARN, alias/NAME or alias ARN",
                truncate_for_message(reference)
            ))
        }
    }

    /// The reference as KMS takes it in a KeyId parameter.
    pub fn key_id(&self) -> &str {
        match self {
            Location::Alias(name) | Location::Key(name) => name,
        }
    }
}

/// The default ring alias: `alias/<prefix>/<namespace>/<name>`. KMS alias names allow
/// `[A-Za-z0-9/_:-]`; our names also allow `.`, which is refused here rather than mapped.
pub fn default_alias(prefix: &str, ring: &KeyRef) -> Result<String, BackendError> {
    if ring.namespace().contains('.') || ring.name().contains('.') {
        return Err(BackendError::invalid_input(format!(
            "key {ring}: KMS alias names cannot hold `.`; rename the key or map it to a KMS key in backends.aws_kms.keys"
        )));
    }
    Ok(format!(
        "alias/{prefix}/{}/{}",
        ring.namespace(),
        ring.name()
    ))
}

/// The alias naming version `version` of the ring whose alias is `ring_alias`.
pub fn version_alias(ring_alias: &str, version: u32) -> String {
    format!("{ring_alias}/v{version}")
}

/// The version number `alias` names in the ring of `ring_alias`, if it is one of its
/// version aliases (canonical decimal only, so one version has one alias).
pub fn version_of(ring_alias: &str, alias: &str) -> Option<u32> {
    let digits = alias.strip_prefix(ring_alias)?.strip_prefix("/v")?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Which KMS key holds each version, as read from the aliases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `(version, key id)`, oldest first.
    pub versions: Vec<(u32, String)>,
    /// The version the ring alias points at.
    pub current: u32,
    /// True when the current key has no version alias yet (an adopted key, or a ring alias
    /// moved outside this service): rotation registers it first.
    pub current_unregistered: bool,
}

/// Works out the ring's versions from the ring alias target and the version aliases.
/// `None` if the ring does not exist.
pub fn layout(ring_target: Option<&str>, version_aliases: &[(u32, String)]) -> Option<Layout> {
    let mut versions = version_aliases.to_vec();
    versions.sort();
    versions.dedup_by_key(|(v, _)| *v);
    let target = ring_target?;
    if let Some((current, _)) = versions.iter().rev().find(|(_, key)| key == target) {
        let current = *current;
        return Some(Layout {
            versions,
            current,
            current_unregistered: false,
        });
    }
    let current = versions.last().map_or(1, |(v, _)| v + 1);
    versions.push((current, target.to_owned()));
    Some(Layout {
        versions,
        current,
        current_unregistered: true,
    })
}

/// A KMS key state as a version state. Only `Enabled` can be used; pending deletion is
/// DESTROYED, and every other or unknown state (an empty one included) is DISABLED.
pub fn state_of(kms_state: &str, is_current: bool) -> KeyState {
    match kms_state {
        "Enabled" if is_current => KeyState::Active,
        "Enabled" => KeyState::Deprecated,
        "Disabled" => KeyState::Disabled,
        // PendingDeletion, PendingReplicaDeletion, PendingImport, Unavailable, Creating,
        // Updating: nothing may use the key.
        "PendingDeletion" | "PendingReplicaDeletion" => KeyState::Destroyed,
        _ => KeyState::Disabled,
    }
}

/// The algorithm of a KMS key, from its spec and usage; RSA keys carry the PSS hash in the
/// `token-service:algorithm` tag (PS256 when the key was made elsewhere without it).
pub fn algorithm_of(
    key_spec: &str,
    key_usage: &str,
    algorithm_tag: Option<&str>,
) -> Result<Algorithm, String> {
    match (key_spec, key_usage) {
        ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT") => Ok(Algorithm::A256Gcm),
        ("ECC_NIST_P256", "SIGN_VERIFY") => Ok(Algorithm::Es256),
        ("ECC_NIST_P384", "SIGN_VERIFY") => Ok(Algorithm::Es384),
        ("RSA_2048" | "RSA_3072" | "RSA_4096", "SIGN_VERIFY") => match algorithm_tag {
            None => Ok(Algorithm::Ps256),
            Some(tag) => match tag.parse::<Algorithm>() {
                Ok(alg @ (Algorithm::Ps256 | Algorithm::Ps384 | Algorithm::Ps512)) => Ok(alg),
                _ => Err(format!(
                    "RSA key tagged {ALGORITHM_TAG}={}, expected PS256, PS384 or PS512",
                    truncate_for_message(tag)
                )),
            },
        },
        _ => Err(format!(
            "key spec {} with usage {} is not used by token-service",
            truncate_for_message(key_spec),
            truncate_for_message(key_usage)
        )),
    }
}

/// The tag recording the JWS algorithm of an RSA key.
pub const ALGORITHM_TAG: &str = "token-service:algorithm";
/// The tag recording the ring a key belongs to (for people reading the KMS console).
pub const RING_TAG: &str = "token-service:key";
/// The tag recording the version a key is.
pub const VERSION_TAG: &str = "token-service:version";

/// The KMS key spec and usage that make a key for `algorithm`.
pub fn spec_for(
    algorithm: Algorithm,
    rsa_bits: crate::backends::software::material::RsaBits,
) -> Result<(&'static str, &'static str), BackendError> {
    use crate::backends::software::material::RsaBits;
    Ok(match algorithm {
        Algorithm::A256Gcm => ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"),
        Algorithm::Es256 => ("ECC_NIST_P256", "SIGN_VERIFY"),
        Algorithm::Es384 => ("ECC_NIST_P384", "SIGN_VERIFY"),
        Algorithm::Ps256 | Algorithm::Ps384 | Algorithm::Ps512 => (
            match rsa_bits {
                RsaBits::B2048 => "RSA_2048",
                RsaBits::B3072 => "RSA_3072",
                RsaBits::B4096 => "RSA_4096",
            },
            "SIGN_VERIFY",
        ),
        Algorithm::EdDsa => {
            return Err(BackendError::Rejected(Rejection::UnsupportedAlgorithm(
                "EdDSA (not offered by the aws_kms backend)".into(),
            )));
        }
    })
}

/// The KMS signing algorithm and the local digest for a JWS algorithm.
pub fn signing_algorithm(
    algorithm: Algorithm,
) -> Option<(
    aws_sdk_kms::types::SigningAlgorithmSpec,
    &'static aws_lc_rs::digest::Algorithm,
)> {
    use aws_lc_rs::digest::{SHA256, SHA384, SHA512};
    use aws_sdk_kms::types::SigningAlgorithmSpec as Spec;
    Some(match algorithm {
        Algorithm::Es256 => (Spec::EcdsaSha256, &SHA256),
        Algorithm::Es384 => (Spec::EcdsaSha384, &SHA384),
        Algorithm::Ps256 => (Spec::RsassaPssSha256, &SHA256),
        Algorithm::Ps384 => (Spec::RsassaPssSha384, &SHA384),
        Algorithm::Ps512 => (Spec::RsassaPssSha512, &SHA512),
        Algorithm::EdDsa | Algorithm::A256Gcm => return None,
    })
}

/// One version of a ring as read from KMS.
#[derive(Clone)]
pub struct KmsVersion {
    /// State and dates, in the shared lifecycle's terms.
    pub record: VersionRecord,
    /// The key's ARN: every call names the exact key, never the alias, so a rotation
    /// between reading the metadata and the call cannot switch keys under us.
    pub arn: String,
    /// The public key, for signing keys that KMS still shows.
    pub public_jwk: Option<PublicJwk>,
    /// The parsed public key, for local verification.
    pub verifier: Option<Arc<ParsedPublicKey>>,
    /// The exact JWS signature length.
    pub signature_len: Option<usize>,
}

impl std::fmt::Debug for KmsVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsVersion")
            .field("record", &self.record)
            .field("arn", &self.arn)
            .finish_non_exhaustive()
    }
}

/// A ring as last read from KMS.
#[derive(Debug)]
pub struct Ring {
    /// Where it lives.
    pub location: Location,
    /// The algorithm of every version.
    pub algorithm: Algorithm,
    /// The versions, oldest first.
    pub versions: Vec<KmsVersion>,
    /// See [`Layout::current_unregistered`].
    pub current_unregistered: bool,
}

impl Ring {
    /// Where version `version` is in [`Ring::versions`].
    pub fn position(&self, version: u32) -> Option<usize> {
        self.versions
            .iter()
            .position(|v| v.record.version == version)
    }

    /// The version records, for the shared lifecycle rules.
    pub fn records(&self) -> Vec<VersionRecord> {
        self.versions.iter().map(|v| v.record.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_into_aliases_or_fixed_keys() {
        let key_id = "1234abcd-12ab-34cd-56ef-1234567890ab";
        assert_eq!(Location::parse(key_id), Ok(Location::Key(key_id.into())));
        assert_eq!(
            Location::parse(&format!("mrk-{key_id}")),
            Ok(Location::Key(format!("mrk-{key_id}")))
        );
        let arn = format!("arn:aws:kms:us-east-2:111122223333:key/{key_id}");
        assert_eq!(Location::parse(&arn), Ok(Location::Key(arn.clone())));
        assert_eq!(
            Location::parse("arn:aws:kms:us-east-2:111122223333:alias/prod/signing"),
            Ok(Location::Alias("alias/prod/signing".into()))
        );
        assert_eq!(
            Location::parse("alias/token-signing"),
            Ok(Location::Alias("alias/token-signing".into()))
        );
        for bad in [
            "",
            "alias/",
            "alias/aws/kms",
            "alias/a b",
            "signing",
            "arn:aws:s3:::bucket",
            "1234abcd-12ab-34cd-56ef-1234567890",
            "1234abcd112ab-34cd-56ef-1234567890ab",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn aliases_name_rings_and_versions() {
        let ring = KeyRef::new("token", "signing").unwrap();
        let alias = default_alias("token-service", &ring).unwrap();
        assert_eq!(alias, "alias/token-service/token/signing");
        assert_eq!(version_alias(&alias, 3), format!("{alias}/v3"));
        assert_eq!(version_of(&alias, &format!("{alias}/v12")), Some(12));
        for other in ["/v", "/v03", "/v1x", "x/v1", "/w1"] {
            assert_eq!(
                version_of(&alias, &format!("{alias}{other}")),
                None,
                "{other}"
            );
        }
        // A ring whose name merely starts with ours is another ring.
        assert_eq!(version_of(&alias, &format!("{alias}-2/v1")), None);
        assert!(default_alias("p", &KeyRef::new("token", "aes.v2").unwrap()).is_err());
    }

    #[test]
    fn layout_finds_the_current_version_and_adopts_unregistered_keys() {
        let registered = [(2, "k2".to_string()), (1, "k1".to_string())];
        let l = layout(Some("k2"), &registered).unwrap();
        assert_eq!((l.current, l.current_unregistered), (2, false));
        assert_eq!(l.versions[0], (1, "k1".to_string()));

        let adopted = layout(Some("external"), &[]).unwrap();
        assert_eq!(adopted.versions, vec![(1, "external".to_string())]);
        assert!(adopted.current_unregistered);

        let moved = layout(Some("k3"), &registered).unwrap();
        assert_eq!((moved.current, moved.versions.len()), (3, 3));
        assert!(layout(None, &registered).is_none());
    }

    /// KMS refuses a DIGEST message whose length is not its algorithm's hash length: the
    /// local hash must be the one the KMS algorithm names.
    #[test]
    fn the_local_digest_is_the_hash_the_kms_algorithm_names() {
        for alg in Algorithm::SIGNING {
            let Some((spec, hash)) = signing_algorithm(alg) else {
                assert_eq!(alg, Algorithm::EdDsa);
                continue;
            };
            let bits: usize = spec.as_str().rsplit('_').next().unwrap().parse().unwrap();
            assert_eq!(hash.output_len() * 8, bits, "{alg}: {}", spec.as_str());
            assert!(
                spec.as_str()
                    .starts_with(if alg.as_str().starts_with("ES") {
                        "ECDSA_"
                    } else {
                        "RSASSA_PSS_"
                    })
            );
        }
    }

    #[test]
    fn kms_states_and_specs_map_onto_ours() {
        assert_eq!(state_of("Enabled", true), KeyState::Active);
        assert_eq!(state_of("Enabled", false), KeyState::Deprecated);
        assert_eq!(state_of("Disabled", true), KeyState::Disabled);
        assert_eq!(state_of("PendingDeletion", true), KeyState::Destroyed);
        assert_eq!(state_of("PendingImport", true), KeyState::Disabled);
        assert_eq!(state_of("Unavailable", true), KeyState::Disabled);
        assert_eq!(state_of("", true), KeyState::Disabled, "no state given");
        assert_eq!(
            algorithm_of("RSA_3072", "SIGN_VERIFY", Some("PS384")),
            Ok(Algorithm::Ps384)
        );
        assert_eq!(
            algorithm_of("RSA_3072", "SIGN_VERIFY", None),
            Ok(Algorithm::Ps256)
        );
        assert!(algorithm_of("RSA_3072", "SIGN_VERIFY", Some("ES256")).is_err());
        assert!(algorithm_of("RSA_2048", "ENCRYPT_DECRYPT", None).is_err());
        assert!(algorithm_of("ECC_SECG_P256K1", "SIGN_VERIFY", None).is_err());
        assert!(algorithm_of("HMAC_256", "GENERATE_VERIFY_MAC", None).is_err());
    }
}
