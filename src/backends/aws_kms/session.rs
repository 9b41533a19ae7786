//! The KMS calls behind a ring: reading it (aliases, DescribeKey, GetPublicKey, tags),
//! creating it, rotating it.

use std::sync::Arc;

use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::types::{KeySpec, KeyUsageType, Tag};

use crate::backends::error::{BackendError, Rejection};
use crate::backends::lifecycle::VersionRecord;
use crate::backends::software::material::RsaBits;
use crate::backends::types::{Algorithm, KeyRef, KeyState};

use super::der::{KeyKind, spki_to_jwk};
use super::error::classify;
use super::ring::{self, KmsVersion, Layout, Location, Ring};

/// Every alias of the account and region, as `(alias name, target key id)`.
pub(crate) async fn list_aliases(
    client: &aws_sdk_kms::Client,
) -> Result<Vec<(String, String)>, BackendError> {
    let mut out = Vec::new();
    let mut pages = client.list_aliases().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify("ListAliases", e))?;
        for alias in page.aliases() {
            if let (Some(name), Some(target)) = (alias.alias_name(), alias.target_key_id()) {
                out.push((name.to_owned(), target.to_owned()));
            }
        }
    }
    Ok(out)
}

/// What one KMS key says about itself.
struct Described {
    arn: String,
    state: String,
    spec: String,
    usage: String,
    created_at: u64,
}

async fn describe(
    client: &aws_sdk_kms::Client,
    ring_ref: &KeyRef,
    key_id: &str,
) -> Result<Option<Described>, BackendError> {
    let answer = match client.describe_key().key_id(key_id).send().await {
        Ok(answer) => answer,
        // A version whose key is gone entirely: nothing can use it, the ring goes on.
        Err(e) if e.code() == Some("NotFoundException") => return Ok(None),
        Err(e) => return Err(classify(&ring_ref.to_string(), e)),
    };
    let meta = answer.key_metadata().ok_or_else(|| {
        BackendError::unavailable(super::NAME, "DescribeKey answered no metadata")
    })?;
    Ok(Some(Described {
        arn: meta.arn().unwrap_or(meta.key_id()).to_owned(),
        state: meta
            .key_state()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        spec: meta
            .key_spec()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|| "SYMMETRIC_DEFAULT".into()),
        usage: meta
            .key_usage()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|| "ENCRYPT_DECRYPT".into()),
        created_at: meta
            .creation_date()
            .map(|d| u64::try_from(d.secs()).unwrap_or(0))
            .unwrap_or(0),
    }))
}

async fn algorithm_tag(
    client: &aws_sdk_kms::Client,
    ring_ref: &KeyRef,
    key_id: &str,
) -> Result<Option<String>, BackendError> {
    let answer = client
        .list_resource_tags()
        .key_id(key_id)
        .send()
        .await
        .map_err(|e| classify(&ring_ref.to_string(), e))?;
    Ok(answer
        .tags()
        .iter()
        .find(|t| t.tag_key() == ring::ALGORITHM_TAG)
        .map(|t| t.tag_value().to_owned()))
}

/// Reads the ring at `location` from KMS.
pub(crate) async fn read_ring(
    client: &aws_sdk_kms::Client,
    ring_ref: &KeyRef,
    location: Location,
) -> Result<Ring, BackendError> {
    let layout = match &location {
        Location::Alias(alias) => {
            let aliases = list_aliases(client).await?;
            let target = aliases
                .iter()
                .find(|(name, _)| name == alias)
                .map(|(_, t)| t.as_str());
            let versions: Vec<(u32, String)> = aliases
                .iter()
                .filter_map(|(name, t)| Some((ring::version_of(alias, name)?, t.clone())))
                .collect();
            ring::layout(target, &versions).ok_or_else(|| {
                BackendError::Rejected(Rejection::UnknownKey(ring_ref.to_string()))
            })?
        }
        Location::Key(key_id) => Layout {
            versions: vec![(1, key_id.clone())],
            current: 1,
            current_unregistered: false,
        },
    };
    let mut described = Vec::with_capacity(layout.versions.len());
    for (version, key_id) in &layout.versions {
        if let Some(d) = describe(client, ring_ref, key_id).await? {
            described.push((*version, d));
        }
    }
    let current = described
        .iter()
        .find(|(v, _)| *v == layout.current)
        .map(|(_, d)| d)
        .ok_or_else(|| BackendError::Rejected(Rejection::UnknownKey(ring_ref.to_string())))?;
    let tag = if current.spec.starts_with("RSA_") {
        algorithm_tag(client, ring_ref, &current.arn).await?
    } else {
        None
    };
    let algorithm = ring::algorithm_of(&current.spec, &current.usage, tag.as_deref())
        .map_err(|e| BackendError::invalid_input(format!("KMS key of {ring_ref}: {e}")))?;
    let mut versions = Vec::with_capacity(described.len());
    for (i, (version, d)) in described.iter().enumerate() {
        if d.spec != current.spec || d.usage != current.usage {
            return Err(BackendError::invalid_input(format!(
                "KMS keys of {ring_ref} differ: version {version} is {} {}, the current one {} {}",
                d.spec, d.usage, current.spec, current.usage
            )));
        }
        let is_current = *version == layout.current;
        let state = ring::state_of(&d.state, is_current);
        // Rotated out when the version after it was created.
        let rotated_at = (state == KeyState::Deprecated)
            .then(|| described.get(i + 1).map(|(_, next)| next.created_at))
            .flatten();
        let record = VersionRecord {
            version: *version,
            state,
            created_at: d.created_at,
            rotated_at,
        };
        // Past-retention versions keep their public key too, so a verify naming their kid
        // is told "retention expired", not "unknown kid"; JWKS leaves them out.
        let usable = matches!(record.state, KeyState::Active | KeyState::Deprecated);
        let mut entry = KmsVersion {
            record,
            arn: d.arn.clone(),
            public_jwk: None,
            verifier: None,
            signature_len: algorithm.fixed_signature_len(),
        };
        if algorithm.is_signing() && usable {
            attach_public_key(client, ring_ref, algorithm, &mut entry).await?;
        }
        versions.push(entry);
    }
    Ok(Ring {
        location,
        algorithm,
        versions,
        current_unregistered: layout.current_unregistered,
    })
}

/// Fetches a version's public key, checks it fits the ring's algorithm, and caches its
/// JWK (with `kid` = thumbprint) and parsed verifier.
async fn attach_public_key(
    client: &aws_sdk_kms::Client,
    ring_ref: &KeyRef,
    algorithm: Algorithm,
    entry: &mut KmsVersion,
) -> Result<(), BackendError> {
    let answer = client
        .get_public_key()
        .key_id(&entry.arn)
        .send()
        .await
        .map_err(|e| classify(&ring_ref.to_string(), e))?;
    let spki = answer
        .public_key()
        .ok_or_else(|| BackendError::unavailable(super::NAME, "GetPublicKey answered no key"))?;
    let (jwk, kind) = spki_to_jwk(spki.as_ref()).map_err(|e| {
        BackendError::security(super::NAME, format!("public key of {ring_ref}: {e}"))
    })?;
    let fits = match kind {
        KeyKind::Ec(curve) => curve == algorithm,
        KeyKind::Rsa(bits) => {
            entry.signature_len = Some(bits.div_ceil(8));
            matches!(
                algorithm,
                Algorithm::Ps256 | Algorithm::Ps384 | Algorithm::Ps512
            )
        }
    };
    if !fits {
        return Err(BackendError::security(
            super::NAME,
            format!("public key of {ring_ref} does not fit {algorithm}"),
        ));
    }
    entry.verifier = Some(Arc::new(jwk.verifier(algorithm)?));
    entry.public_jwk = Some(jwk.published(algorithm)?);
    Ok(())
}

/// Creates a KMS key for version `version` of the ring, tagged with what it is.
async fn create_key(
    client: &aws_sdk_kms::Client,
    ring_ref: &KeyRef,
    version: u32,
    algorithm: Algorithm,
    rsa_bits: RsaBits,
) -> Result<String, BackendError> {
    let (spec, usage) = ring::spec_for(algorithm, rsa_bits)?;
    let tag = |key: &str, value: String| {
        Tag::builder()
            .tag_key(key)
            .tag_value(value)
            .build()
            .map_err(|e| BackendError::invalid_input(format!("KMS tag: {e}")))
    };
    let answer = client
        .create_key()
        .key_spec(KeySpec::from(spec))
        .key_usage(KeyUsageType::from(usage))
        .description(format!("token-service {ring_ref} version {version}"))
        .tags(tag(ring::RING_TAG, ring_ref.to_string())?)
        .tags(tag(ring::VERSION_TAG, version.to_string())?)
        .tags(tag(ring::ALGORITHM_TAG, algorithm.as_str().to_owned())?)
        .send()
        .await
        .map_err(|e| classify(&ring_ref.to_string(), e))?;
    answer
        .key_metadata()
        .and_then(|m| m.arn().map(str::to_owned))
        .ok_or_else(|| BackendError::unavailable(super::NAME, "CreateKey answered no key ARN"))
}

/// Creates `alias` → `key`. `Ok(false)` if the alias already exists.
async fn create_alias(
    client: &aws_sdk_kms::Client,
    ring_ref: &KeyRef,
    alias: &str,
    key: &str,
) -> Result<bool, BackendError> {
    match client
        .create_alias()
        .alias_name(alias)
        .target_key_id(key)
        .send()
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some("AlreadyExistsException") => Ok(false),
        Err(e) => Err(classify(&ring_ref.to_string(), e)),
    }
}

/// Undoes a key this call created but could not attach (another process won a race):
/// deletion is scheduled after KMS's minimum 7-day wait. Best effort: a failure is logged.
async fn abandon(client: &aws_sdk_kms::Client, key: &str) {
    if let Err(e) = client
        .schedule_key_deletion()
        .key_id(key)
        .pending_window_in_days(7)
        .send()
        .await
    {
        tracing::warn!(key, error = %classify("ScheduleKeyDeletion", e), "could not schedule deletion of an unused KMS key");
    }
}

/// GenerateKey: a new KMS key as version 1, its version alias, then the ring alias.
pub(crate) async fn create_ring(
    client: &aws_sdk_kms::Client,
    ring_ref: &KeyRef,
    alias: &str,
    algorithm: Algorithm,
    rsa_bits: RsaBits,
) -> Result<(), BackendError> {
    let exists = || BackendError::Rejected(Rejection::KeyExists(ring_ref.to_string()));
    let aliases = list_aliases(client).await?;
    if aliases
        .iter()
        .any(|(name, _)| name == alias || ring::version_of(alias, name).is_some())
    {
        return Err(exists());
    }
    let key = create_key(client, ring_ref, 1, algorithm, rsa_bits).await?;
    if !create_alias(client, ring_ref, &ring::version_alias(alias, 1), &key).await? {
        abandon(client, &key).await;
        return Err(exists());
    }
    if !create_alias(client, ring_ref, alias, &key).await? {
        let _ = client
            .delete_alias()
            .alias_name(ring::version_alias(alias, 1))
            .send()
            .await;
        abandon(client, &key).await;
        return Err(exists());
    }
    tracing::info!(key = %ring_ref, %algorithm, alias, "KMS key ring created");
    Ok(())
}

/// RotateKey: registers the current key if it has no version alias yet, creates the next
/// version's key and alias, then moves the ring alias to it. The previous key stays
/// Enabled: it verifies and decrypts (DEPRECATED) until its retention ends.
pub(crate) async fn rotate_ring(
    client: &aws_sdk_kms::Client,
    ring_ref: &KeyRef,
    alias: &str,
    ring: &Ring,
    rsa_bits: RsaBits,
) -> Result<(), BackendError> {
    let raced = || {
        BackendError::Rejected(Rejection::Remote(format!(
            "another rotation of {ring_ref} ran at the same time; this one changed nothing"
        )))
    };
    let newest = ring
        .versions
        .iter()
        .map(|v| v.record.version)
        .max()
        .unwrap_or(0);
    if ring.current_unregistered
        && let Some(current) = ring.versions.last()
        && !create_alias(
            client,
            ring_ref,
            &ring::version_alias(alias, current.record.version),
            &current.arn,
        )
        .await?
    {
        return Err(raced());
    }
    let next = newest + 1;
    let key = create_key(client, ring_ref, next, ring.algorithm, rsa_bits).await?;
    if !create_alias(client, ring_ref, &ring::version_alias(alias, next), &key).await? {
        abandon(client, &key).await;
        return Err(raced());
    }
    client
        .update_alias()
        .alias_name(alias)
        .target_key_id(&key)
        .send()
        .await
        .map_err(|e| classify(&ring_ref.to_string(), e))?;
    tracing::info!(key = %ring_ref, version = next, alias, "KMS key ring rotated");
    Ok(())
}
