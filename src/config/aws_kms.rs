//! `[backends.aws_kms]`: the AWS KMS backend's settings.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::backends::KeyRef;
use crate::backends::aws_kms::AwsKmsOptions;
use crate::backends::aws_kms::ring::Location;
use crate::backends::software::material::RsaBits;
use crate::resilience::ResilienceConfig;

/// Where signatures of KMS keys are verified.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KmsVerifyMode {
    /// Locally, with the public key fetched once (no call per verification; the default).
    #[default]
    Local,
    /// With KMS Verify.
    Kms,
}

/// `[backends.aws_kms]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsKmsConfig {
    /// AWS region; unset, the SDK's chain decides (`AWS_REGION`, profile...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint of a KMS-compatible server or a VPC endpoint; unset, AWS's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// The KMS key of the signing key (env `KMS_KEY_ID`): key id, key ARN, `alias/NAME` or
    /// alias ARN. Unset, the backend manages `alias/<alias_prefix>/<namespace>/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Other keys mapped to KMS keys: `"namespace/name" = "alias/..."`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, String>,
    /// Prefix of the aliases the backend creates.
    #[serde(default = "default_alias_prefix")]
    pub alias_prefix: String,
    /// How long key metadata and public keys are cached; a key disabled in KMS is refused
    /// within this time.
    #[serde(default = "default_metadata_ttl", with = "humantime_serde")]
    pub metadata_ttl: Duration,
    /// How long a rotated-out version still verifies and decrypts.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// Modulus size of RSA keys the backend creates.
    #[serde(default = "default_rsa_bits")]
    pub rsa_bits: RsaBits,
    /// `local` (default) or `kms`.
    #[serde(default)]
    pub verify: KmsVerifyMode,
    /// Limit on establishing a connection.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Limit on each call.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Policies around the backend.
    #[serde(default)]
    pub resilience: ResilienceConfig,
}

fn default_alias_prefix() -> String {
    crate::backends::aws_kms::DEFAULT_ALIAS_PREFIX.into()
}

fn default_metadata_ttl() -> Duration {
    AwsKmsOptions::new().metadata_ttl
}

fn default_retention() -> Duration {
    AwsKmsOptions::new().retention
}

fn default_rsa_bits() -> RsaBits {
    AwsKmsOptions::new().rsa_bits
}

fn default_connect_timeout() -> Duration {
    AwsKmsOptions::new().connect_timeout
}

fn default_request_timeout() -> Duration {
    AwsKmsOptions::new().request_timeout
}

impl AwsKmsConfig {
    /// Checks every setting, naming the one that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.endpoint_url {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && url
                    .parse::<axum::http::Uri>()
                    .is_ok_and(|u| u.host().is_some());
            if !ok {
                return Err(ConfigError::invalid(
                    "backends.aws_kms.endpoint_url",
                    "expected an http:// or https:// URL with a host",
                ));
            }
        }
        if let Some(region) = &self.region
            && (region.is_empty()
                || !region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
        {
            return Err(ConfigError::invalid(
                "backends.aws_kms.region",
                "expected a region name such as us-east-1",
            ));
        }
        if let Some(key_id) = &self.key_id {
            Location::parse(key_id)
                .map_err(|e| ConfigError::invalid("backends.aws_kms.key_id (KMS_KEY_ID)", e))?;
        }
        for (ring, reference) in &self.keys {
            let setting = format!("backends.aws_kms.keys.\"{ring}\"");
            parse_ring(ring).map_err(|e| ConfigError::invalid(setting.clone(), e))?;
            Location::parse(reference).map_err(|e| ConfigError::invalid(setting, e))?;
        }
        let prefix_ok = !self.alias_prefix.is_empty()
            && self.alias_prefix.len() <= 64
            && !self.alias_prefix.starts_with("aws")
            && self
                .alias_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'));
        if !prefix_ok {
            return Err(ConfigError::invalid(
                "backends.aws_kms.alias_prefix",
                "expected 1-64 characters of [A-Za-z0-9/_-], not starting with aws",
            ));
        }
        for (setting, value) in [
            ("backends.aws_kms.metadata_ttl", self.metadata_ttl),
            ("backends.aws_kms.connect_timeout", self.connect_timeout),
            ("backends.aws_kms.request_timeout", self.request_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::invalid(
                    setting,
                    "expected a duration above zero, e.g. \"5s\"",
                ));
            }
        }
        Ok(())
    }

    /// The backend's options; `signing` is the ring `key_id` maps (the Token Service's
    /// signing key), `None` where there is none (the reference Crypto Service).
    pub fn options(&self, signing: Option<&KeyRef>) -> Result<AwsKmsOptions, ConfigError> {
        let mut keys = Vec::new();
        for (ring, reference) in &self.keys {
            let ring = parse_ring(ring).map_err(|e| {
                ConfigError::invalid(format!("backends.aws_kms.keys.\"{ring}\""), e)
            })?;
            keys.push((ring, reference.clone()));
        }
        if let Some(key_id) = &self.key_id {
            let Some(signing) = signing else {
                return Err(ConfigError::invalid(
                    "backends.aws_kms.key_id",
                    "names the Token Service's signing key; here map keys in [backends.aws_kms.keys]",
                ));
            };
            keys.retain(|(ring, _)| ring != signing);
            keys.push((signing.clone(), key_id.clone()));
        }
        Ok(AwsKmsOptions {
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            alias_prefix: self.alias_prefix.clone(),
            keys,
            metadata_ttl: self.metadata_ttl,
            retention: self.retention,
            rsa_bits: self.rsa_bits,
            kms_verify: self.verify == KmsVerifyMode::Kms,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
        })
    }
}

fn parse_ring(ring: &str) -> Result<KeyRef, String> {
    let (namespace, name) = ring
        .split_once('/')
        .ok_or_else(|| "expected a key as \"namespace/name\"".to_owned())?;
    KeyRef::new(namespace, name).map_err(|e| e.to_string())
}
