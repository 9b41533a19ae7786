//! `[backends.pkcs11]`: the module, the token (by label, serial or RFC 7512 URI), the PIN
//! source and the backend's own settings, resolved into one [`ResolvedPkcs11`].

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, default_refresh_interval, default_retention, default_rsa_bits};
use crate::backends::software::material::RsaBits;
use crate::resilience::ResilienceConfig;

/// Where verification with a PKCS#11 key happens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    /// Locally, with the public key read once from the token (fast; the default).
    #[default]
    Local,
    /// On the token.
    Token,
}

/// `[backends.pkcs11]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (or `module-path` in `uri`); env `PKCS11_MODULE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<PathBuf>,
    /// The token's label; env `PKCS11_TOKEN_LABEL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_label: Option<String>,
    /// The token's serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_serial: Option<String>,
    /// An RFC 7512 URI selecting the token (`token`, `serial`), and optionally
    /// `module-path` and `pin-source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Where the user PIN comes from: `{ file = "..." }` or `{ env = "NAME" }`;
    /// env `PKCS11_PIN_FILE` sets a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<crate::secret::SecretSource>,
    /// Sessions (worker threads), capped by the token's own limit.
    #[serde(default = "default_sessions")]
    pub max_sessions: usize,
    /// Where signatures with the token's keys are verified.
    #[serde(default)]
    pub verify: VerifyMode,
    /// Check every signature the token makes against the version's public key before
    /// using it (a signature that does not verify is a security error, never a token).
    #[serde(default = "super::yes")]
    pub verify_signatures: bool,
    /// How long a rotated-out version still verifies and decrypts.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// Modulus size of new RSA keys.
    #[serde(default = "default_rsa_bits")]
    pub rsa_bits: RsaBits,
    /// How often a cached ring is re-read from the token.
    #[serde(default = "default_refresh_interval", with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Policies around the backend.
    #[serde(default)]
    pub resilience: ResilienceConfig,
}

fn default_sessions() -> usize {
    4
}

/// The PKCS#11 settings that must be combined from several places, resolved.
#[derive(Clone, Debug)]
pub struct ResolvedPkcs11 {
    /// The module.
    pub module: PathBuf,
    /// The token.
    pub token: crate::backends::pkcs11::token::TokenSelector,
    /// The PIN source.
    pub pin: crate::secret::SecretSource,
}

impl Pkcs11Config {
    /// Combines `module`/`token_*`/`pin` with the URI; each missing or ambiguous piece is an
    /// error naming the setting.
    pub fn resolve(&self) -> Result<ResolvedPkcs11, ConfigError> {
        use crate::backends::pkcs11::token::TokenSelector;
        use crate::backends::pkcs11::uri::Pkcs11Uri;
        let uri: Pkcs11Uri = match &self.uri {
            Some(text) => text
                .parse()
                .map_err(|e: crate::backends::pkcs11::uri::UriError| {
                    ConfigError::invalid("backends.pkcs11.uri", e.to_string())
                })?,
            None => Pkcs11Uri::default(),
        };
        // Attributes this backend cannot honour are refused, not ignored: a URI that names
        // one object, or a manufacturer, means something this configuration would not do.
        if uri.object.is_some() || uri.id.is_some() || uri.object_type.is_some() {
            return Err(ConfigError::invalid(
                "backends.pkcs11.uri",
                "object=, id= and type= select a single object; this backend keeps key rings by logical name (labels ts/<namespace>/<name>/<version>), so give only token= or serial=",
            ));
        }
        if uri.manufacturer.is_some() || uri.model.is_some() {
            return Err(ConfigError::invalid(
                "backends.pkcs11.uri",
                "manufacturer= and model= are not used to select the token; give token= or serial=",
            ));
        }
        let module = self.module.clone().or(uri.module_path).ok_or_else(|| {
            ConfigError::invalid(
                "backends.pkcs11.module",
                "expected the path of the PKCS#11 module (or module-path in backends.pkcs11.uri)",
            )
        })?;
        let mut selectors = Vec::new();
        if let Some(l) = &self.token_label {
            selectors.push(TokenSelector::Label(l.clone()));
        }
        if let Some(s) = &self.token_serial {
            selectors.push(TokenSelector::Serial(s.clone()));
        }
        if let Some(l) = uri.token {
            selectors.push(TokenSelector::Label(l));
        }
        if let Some(s) = uri.serial {
            selectors.push(TokenSelector::Serial(s));
        }
        let token = match selectors.len() {
            1 => selectors.remove(0),
            0 => {
                return Err(ConfigError::invalid(
                    "backends.pkcs11.token_label",
                    "expected the token's label (or token_serial, or token= / serial= in uri); a slot id alone is not accepted because slot ids change",
                ));
            }
            _ => {
                return Err(ConfigError::invalid(
                    "backends.pkcs11.token_label",
                    "expected exactly one of token_label, token_serial, or token= / serial= in uri",
                ));
            }
        };
        let pin = self.pin.clone().or(uri.pin_source).ok_or_else(|| {
            ConfigError::invalid(
                "backends.pkcs11.pin",
                "expected { file = \"/path\" } or { env = \"NAME\" } (or pin-source in uri)",
            )
        })?;
        if self.max_sessions == 0 {
            return Err(ConfigError::invalid(
                "backends.pkcs11.max_sessions",
                "expected at least 1",
            ));
        }
        Ok(ResolvedPkcs11 { module, token, pin })
    }
}
