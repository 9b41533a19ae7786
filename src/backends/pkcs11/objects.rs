//! Objects on the token and how logical keys map onto them.
//!
//! Label scheme (`CKA_LABEL`; `CKA_ID` holds the same bytes):
//!
//! | object | class | label |
//! | --- | --- | --- |
//! | the ring record: algorithm, versions, states, times (JSON) | `CKO_DATA`, `CKA_APPLICATION` = `token-service` | `ts/<namespace>/<name>` |
//! | version N of a signing key | `CKO_PRIVATE_KEY` + `CKO_PUBLIC_KEY` | `ts/<namespace>/<name>/<N>` |
//! | version N of an AES key | `CKO_SECRET_KEY` | `ts/<namespace>/<name>/<N>` |
//!
//! Keeping the ring record on the token means a restart, or a second process, sees the same
//! ring and the same states. Private and secret keys are generated on the token with
//! `CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE` true and `CKA_EXTRACTABLE` false. Every
//! lookup must match exactly one object, or it is an error naming the label.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::types::Ulong;

use super::pool::{OpError, Shared, ck};
use crate::backends::error::{BackendError, Rejection};
use crate::backends::jwk::PublicJwk;
use crate::backends::lifecycle::RingRecord;
use crate::backends::software::material::RsaBits;
use crate::backends::types::{Algorithm, KeyRef};

/// `CKA_APPLICATION` of ring records.
pub const APPLICATION: &[u8] = b"token-service";
/// DER of the P-256 curve OID (1.2.840.10045.3.1.7).
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of the P-384 curve OID (1.3.132.0.34).
const P384_OID: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// DER of the Ed25519 OID (1.3.101.112).
const ED25519_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// Kinds of object we look up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A private key.
    Private = 0,
    /// A public key.
    Public = 1,
    /// A secret (AES) key.
    Secret = 2,
}

impl Kind {
    fn class(self) -> ObjectClass {
        match self {
            Kind::Private => ObjectClass::PRIVATE_KEY,
            Kind::Public => ObjectClass::PUBLIC_KEY,
            Kind::Secret => ObjectClass::SECRET_KEY,
        }
    }
}

/// Label of a ring record.
pub fn ring_label(key: &KeyRef) -> String {
    format!("ts/{}/{}", key.namespace(), key.name())
}

/// Label of one version's key objects.
pub fn version_label(key: &KeyRef, version: u32) -> String {
    format!("ts/{}/{}/{version}", key.namespace(), key.name())
}

/// Finds the one object of `kind` labelled `label` (cached per module generation).
/// `Ok(None)` if there is none; an error if there are several.
pub fn find_one(
    session: &Session,
    shared: &Shared,
    kind: Kind,
    label: &str,
) -> Result<Option<ObjectHandle>, OpError> {
    if let Some(handle) = shared.cached_handle(kind as u8, label) {
        return Ok(Some(handle));
    }
    let template = [
        Attribute::Class(kind.class()),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    let found = session
        .find_objects(&template)
        .map_err(ck(format!("finding {kind:?} object `{label}`")))?;
    match found.as_slice() {
        [] => Ok(None),
        [handle] => {
            shared.remember_handle(kind as u8, label, *handle);
            Ok(Some(*handle))
        }
        many => Err(OpError::Other(BackendError::Rejected(
            Rejection::InvalidInput(format!(
                "label `{label}` matches {} {kind:?} objects on the token; each key version must be exactly one object",
                many.len()
            )),
        ))),
    }
}

/// Like [`find_one`], but a missing object is an error naming it.
pub fn require(
    session: &Session,
    shared: &Shared,
    kind: Kind,
    label: &str,
) -> Result<ObjectHandle, OpError> {
    find_one(session, shared, kind, label)?.ok_or_else(|| {
        OpError::Other(BackendError::Rejected(Rejection::UnknownKey(format!(
            "{kind:?} object `{label}` is not on the token"
        ))))
    })
}

/// A ring record as stored: its revision and every object holding a revision of it.
#[derive(Debug)]
pub struct StoredRing {
    /// The newest revision.
    pub revision: u64,
    /// The record of the newest revision.
    pub record: RingRecord,
    /// Every record object of this ring (the newest and any older ones left over).
    pub objects: Vec<ObjectHandle>,
}

/// What a ring record object holds (`CKA_VALUE`, JSON).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredValue {
    revision: u64,
    ring: RingRecord,
}

/// Reads a ring record. Tokens may refuse to modify a data object's value (SoftHSM does),
/// so a record is replaced, not modified: each write creates the next revision before
/// destroying the older ones, and a reader takes the newest. A reader never sees a moment
/// with no record.
pub fn read_ring(session: &Session, key: &KeyRef) -> Result<Option<StoredRing>, OpError> {
    let label = ring_label(key);
    let objects = session
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Application(APPLICATION.to_vec()),
        ])
        .map_err(ck(format!("finding ring record `{label}`")))?;
    let corrupt = |detail: &str| {
        OpError::Other(BackendError::unavailable(
            "pkcs11",
            format!("ring record `{label}` on the token is corrupt: {detail}"),
        ))
    };
    let mut newest: Option<StoredValue> = None;
    for &handle in &objects {
        let attributes = session
            .get_attributes(handle, &[AttributeType::Value])
            .map_err(ck(format!("reading ring record `{label}`")))?;
        let value = attributes
            .into_iter()
            .find_map(|a| match a {
                Attribute::Value(v) => Some(v),
                _ => None,
            })
            .ok_or_else(|| corrupt("value missing"))?;
        let stored: StoredValue =
            serde_json::from_slice(&value).map_err(|e| corrupt(&e.to_string()))?;
        match &newest {
            Some(n) if n.revision == stored.revision => {
                return Err(corrupt("two objects with the same revision"));
            }
            Some(n) if n.revision > stored.revision => {}
            _ => newest = Some(stored),
        }
    }
    Ok(newest.map(|n| StoredRing {
        revision: n.revision,
        record: n.ring,
        objects,
    }))
}

/// Like [`read_ring`], but a missing ring is [`Rejection::UnknownKey`].
pub fn require_ring(session: &Session, key: &KeyRef) -> Result<StoredRing, OpError> {
    read_ring(session, key)?.ok_or_else(|| {
        OpError::Other(BackendError::Rejected(Rejection::UnknownKey(
            key.to_string(),
        )))
    })
}

/// Writes the next revision of a ring record, then removes the older ones.
pub fn write_ring(
    session: &Session,
    key: &KeyRef,
    previous: Option<&StoredRing>,
    record: &RingRecord,
) -> Result<(), OpError> {
    let label = ring_label(key);
    let revision = previous.map_or(1, |p| p.revision + 1);
    let json = serde_json::to_vec(&StoredValue {
        revision,
        ring: record.clone(),
    })
    .map_err(|e| OpError::Other(BackendError::invalid_input(format!("ring record: {e}"))))?;
    session
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Application(APPLICATION.to_vec()),
            Attribute::Value(json),
        ])
        .map_err(ck(format!(
            "writing ring record `{label}` revision {revision}"
        )))?;
    for &old in previous.map(|p| p.objects.as_slice()).unwrap_or_default() {
        // A leftover older revision is harmless (readers take the newest); keep going.
        if let Err(e) = session.destroy_object(old) {
            tracing::warn!(ring = %label, error = %e, "could not remove an older ring record revision");
        }
    }
    Ok(())
}

/// Labels of every ring record in `namespace`.
pub fn list_rings(session: &Session, namespace: &str) -> Result<Vec<String>, OpError> {
    let handles = session
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(APPLICATION.to_vec()),
        ])
        .map_err(ck("listing ring records"))?;
    let prefix = format!("ts/{namespace}/");
    let mut names = Vec::new();
    for handle in handles {
        let attributes = session
            .get_attributes(handle, &[AttributeType::Label])
            .map_err(ck("reading a ring record label"))?;
        for attribute in attributes {
            if let Attribute::Label(bytes) = attribute
                && let Ok(label) = String::from_utf8(bytes)
                && let Some(name) = label.strip_prefix(&prefix)
            {
                names.push(name.to_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

fn curve_oid(algorithm: Algorithm) -> Option<&'static [u8]> {
    match algorithm {
        Algorithm::Es256 => Some(P256_OID),
        Algorithm::Es384 => Some(P384_OID),
        Algorithm::EdDsa => Some(ED25519_OID),
        _ => None,
    }
}

/// Generates version `version` of `key` on the token: a key pair for signing algorithms,
/// a secret key for AES. Private parts are sensitive and never extractable.
pub fn generate(
    session: &Session,
    key: &KeyRef,
    version: u32,
    algorithm: Algorithm,
    rsa_bits: RsaBits,
) -> Result<(), OpError> {
    let label = version_label(key, version).into_bytes();
    let what = format!(
        "generating {algorithm} key `{}`",
        String::from_utf8_lossy(&label)
    );
    let private_template = |usage: Attribute| {
        vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            usage,
            Attribute::Label(label.clone()),
            Attribute::Id(label.clone()),
        ]
    };
    let public_common = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Label(label.clone()),
        Attribute::Id(label.clone()),
    ];
    match algorithm {
        Algorithm::Es256 | Algorithm::Es384 | Algorithm::EdDsa => {
            let mut public = public_common;
            public.push(Attribute::EcParams(
                curve_oid(algorithm).unwrap_or_default().to_vec(),
            ));
            let mechanism = if algorithm == Algorithm::EdDsa {
                Mechanism::EccEdwardsKeyPairGen
            } else {
                Mechanism::EccKeyPairGen
            };
            session
                .generate_key_pair(
                    &mechanism,
                    &public,
                    &private_template(Attribute::Sign(true)),
                )
                .map_err(ck(what))?;
        }
        Algorithm::Ps256 | Algorithm::Ps384 | Algorithm::Ps512 => {
            let bits: u64 = match rsa_bits {
                RsaBits::B2048 => 2048,
                RsaBits::B3072 => 3072,
                RsaBits::B4096 => 4096,
            };
            let mut public = public_common;
            public.push(Attribute::ModulusBits(Ulong::from(bits)));
            public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
            session
                .generate_key_pair(
                    &Mechanism::RsaPkcsKeyPairGen,
                    &public,
                    &private_template(Attribute::Sign(true)),
                )
                .map_err(ck(what))?;
        }
        Algorithm::A256Gcm => {
            let mut template = private_template(Attribute::Encrypt(true));
            template.extend([
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(Ulong::from(32u64)),
                Attribute::Decrypt(true),
            ]);
            session
                .generate_key(&Mechanism::AesKeyGen, &template)
                .map_err(ck(what))?;
        }
    }
    Ok(())
}

/// Destroys every object of one version.
pub fn destroy_version(
    session: &Session,
    shared: &Shared,
    key: &KeyRef,
    version: u32,
) -> Result<(), OpError> {
    let label = version_label(key, version);
    for kind in [Kind::Private, Kind::Public, Kind::Secret] {
        if let Some(handle) = find_one(session, shared, kind, &label)? {
            session
                .destroy_object(handle)
                .map_err(ck(format!("destroying `{label}`")))?;
        }
    }
    shared.forget_handles(&label);
    Ok(())
}

/// The content of `CKA_EC_POINT`: tokens differ, SoftHSM wraps the point in a DER OCTET
/// STRING (`04 41 04 ...`), others give it raw. Accept both; `raw_len` disambiguates.
pub fn unwrap_ec_point(value: &[u8], raw_len: usize) -> Option<&[u8]> {
    if value.len() == raw_len {
        return Some(value);
    }
    let (&tag, rest) = value.split_first()?;
    if tag != 0x04 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, content) = match first {
        n if n < 0x80 => (usize::from(n), rest),
        0x81 => {
            let (&n, rest) = rest.split_first()?;
            (usize::from(n), rest)
        }
        _ => return None,
    };
    (len == raw_len && content.len() == raw_len).then_some(content)
}

/// DER OCTET STRING around an EC point, as `CKA_EC_POINT` is specified.
pub fn wrap_ec_point(point: &[u8]) -> Vec<u8> {
    let mut out = vec![0x04];
    if point.len() < 0x80 {
        out.push(point.len() as u8);
    } else {
        out.push(0x81);
        out.push(point.len() as u8);
    }
    out.extend_from_slice(point);
    out
}

/// The public key of a version as a JWK.
pub fn public_jwk(
    session: &Session,
    shared: &Shared,
    key: &KeyRef,
    version: u32,
    algorithm: Algorithm,
) -> Result<PublicJwk, OpError> {
    let label = version_label(key, version);
    let handle = require(session, shared, Kind::Public, &label)?;
    let corrupt = |detail: &str| {
        OpError::Other(BackendError::security(
            "pkcs11",
            format!("public key `{label}`: {detail}"),
        ))
    };
    match algorithm {
        Algorithm::Es256 | Algorithm::Es384 | Algorithm::EdDsa => {
            let attributes = session
                .get_attributes(handle, &[AttributeType::EcPoint])
                .map_err(ck(format!("reading the public key of `{label}`")))?;
            let point = attributes
                .into_iter()
                .find_map(|a| match a {
                    Attribute::EcPoint(p) => Some(p),
                    _ => None,
                })
                .ok_or_else(|| corrupt("no CKA_EC_POINT"))?;
            let raw_len = match algorithm {
                Algorithm::Es256 => 65,
                Algorithm::Es384 => 97,
                _ => 32,
            };
            let raw = unwrap_ec_point(&point, raw_len)
                .ok_or_else(|| corrupt("CKA_EC_POINT has an unexpected encoding"))?;
            if algorithm == Algorithm::EdDsa {
                Ok(PublicJwk::from_ed25519(raw))
            } else {
                PublicJwk::from_ec_point(algorithm, raw).map_err(OpError::Other)
            }
        }
        Algorithm::Ps256 | Algorithm::Ps384 | Algorithm::Ps512 => {
            let attributes = session
                .get_attributes(
                    handle,
                    &[AttributeType::Modulus, AttributeType::PublicExponent],
                )
                .map_err(ck(format!("reading the public key of `{label}`")))?;
            let (mut n, mut e) = (None, None);
            for attribute in attributes {
                match attribute {
                    Attribute::Modulus(v) => n = Some(v),
                    Attribute::PublicExponent(v) => e = Some(v),
                    _ => {}
                }
            }
            match (n, e) {
                (Some(n), Some(e)) => Ok(PublicJwk::from_rsa_components(&n, &e)),
                _ => Err(corrupt("modulus or exponent missing")),
            }
        }
        Algorithm::A256Gcm => Err(OpError::Other(BackendError::invalid_input(
            "AES keys have no public key",
        ))),
    }
}

/// Imports a caller's public key as a session object (not stored on the token), for
/// verification on the token.
pub fn import_public(
    session: &Session,
    jwk: &PublicJwk,
    algorithm: Algorithm,
) -> Result<ObjectHandle, OpError> {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let decode = |v: &Option<String>| -> Result<Vec<u8>, OpError> {
        v.as_deref()
            .and_then(|s| B64.decode(s).ok())
            .ok_or_else(|| {
                OpError::Other(BackendError::Rejected(Rejection::InvalidPublicKey(
                    "bad JWK member".into(),
                )))
            })
    };
    // Refuse what the algorithm cannot use before it reaches the token.
    jwk.verifier(algorithm)?;
    let mut template = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::Token(false),
        Attribute::Verify(true),
    ];
    match algorithm {
        Algorithm::Es256 | Algorithm::Es384 => {
            let mut point = vec![0x04];
            point.extend(decode(&jwk.x)?);
            point.extend(decode(&jwk.y)?);
            template.extend([
                Attribute::KeyType(KeyType::EC),
                Attribute::EcParams(curve_oid(algorithm).unwrap_or_default().to_vec()),
                Attribute::EcPoint(wrap_ec_point(&point)),
            ]);
        }
        Algorithm::EdDsa => template.extend([
            Attribute::KeyType(KeyType::EC_EDWARDS),
            Attribute::EcParams(ED25519_OID.to_vec()),
            Attribute::EcPoint(wrap_ec_point(&decode(&jwk.x)?)),
        ]),
        _ => template.extend([
            Attribute::KeyType(KeyType::RSA),
            Attribute::Modulus(decode(&jwk.n)?),
            Attribute::PublicExponent(decode(&jwk.e)?),
        ]),
    }
    session
        .create_object(&template)
        .map_err(ck("importing a public key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_points_are_accepted_raw_and_der_wrapped() {
        let mut raw = vec![0x04];
        raw.extend([7u8; 64]);
        assert_eq!(unwrap_ec_point(&raw, 65), Some(&raw[..]));
        let wrapped = wrap_ec_point(&raw);
        assert_eq!(&wrapped[..2], &[0x04, 0x41]);
        assert_eq!(unwrap_ec_point(&wrapped, 65), Some(&raw[..]));
        let mut p384 = vec![0x04];
        p384.extend([9u8; 96]);
        assert_eq!(unwrap_ec_point(&wrap_ec_point(&p384), 97), Some(&p384[..]));
        assert_eq!(
            unwrap_ec_point(&wrap_ec_point(&[1u8; 32]), 32),
            Some(&[1u8; 32][..])
        );
        assert_eq!(unwrap_ec_point(&raw[..64], 65), None);
        assert_eq!(unwrap_ec_point(&[0x04, 0x41, 0x04], 65), None);
    }

    #[test]
    fn labels_follow_the_scheme() {
        let key = KeyRef::new("token", "signing").unwrap();
        assert_eq!(ring_label(&key), "ts/token/signing");
        assert_eq!(version_label(&key, 3), "ts/token/signing/3");
    }
}
