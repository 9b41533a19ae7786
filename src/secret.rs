//! Secrets in configuration (HSM PINs, client keys): read from a file or an environment
//! variable, held in zeroizing memory, and never shown by `Debug`, `Display` or serialization.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize, Serializer};
use zeroize::Zeroizing;

/// Largest secret file read.
const MAX_SECRET_FILE: u64 = 4096;

/// A secret value. Its `Debug` is `<redacted>`; it cannot be serialized in clear.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a value.
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The value, for handing to the library that needs it. Do not log or store it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where a secret comes from. Configuration names the source, never the value.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SecretSource {
    /// A file holding the secret (trailing newline stripped); must not be group- or
    /// world-readable.
    File(PathBuf),
    /// An environment variable holding the secret.
    Env(String),
}

impl Serialize for SecretSource {
    /// Shows where the secret comes from (a path or a variable name are not secrets).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            SecretSource::File(path) => map.serialize_entry("file", path)?,
            SecretSource::Env(name) => map.serialize_entry("env", name)?,
        }
        map.end()
    }
}

/// Why a secret could not be read. Never contains the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read secret file {path}: {reason}")]
    File {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The environment variable is not set or not UTF-8.
    #[error("environment variable {0} is not set")]
    Env(String),
    /// The secret is empty.
    #[error("secret from {0} is empty")]
    Empty(String),
}

impl SecretSource {
    /// Reads the secret now.
    pub fn load(&self) -> Result<Secret, SecretError> {
        let (value, from) = match self {
            SecretSource::File(path) => {
                use std::os::unix::fs::PermissionsExt;
                let shown = path.display().to_string();
                let fail = |reason: String| SecretError::File {
                    path: shown.clone(),
                    reason,
                };
                let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
                if meta.permissions().mode() & 0o077 != 0 {
                    return Err(fail(format!(
                        "mode {:o} lets group or others read it; expected 0600",
                        meta.permissions().mode() & 0o777
                    )));
                }
                if meta.len() > MAX_SECRET_FILE {
                    return Err(fail(format!("larger than {MAX_SECRET_FILE} bytes")));
                }
                let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| fail(e.to_string()))?);
                let text = std::str::from_utf8(&bytes).map_err(|_| fail("not UTF-8".into()))?;
                (
                    Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_owned()),
                    shown,
                )
            }
            SecretSource::Env(name) => {
                let value = std::env::var(name).map_err(|_| SecretError::Env(name.clone()))?;
                (Zeroizing::new(value), format!("${name}"))
            }
        };
        if value.is_empty() {
            return Err(SecretError::Empty(from));
        }
        Ok(Secret(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn file_secrets_are_read_trimmed_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, "12345678\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let secret = SecretSource::File(path.clone()).load().unwrap();
        assert_eq!(secret.expose(), "12345678");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = SecretSource::File(path).load().unwrap_err().to_string();
        assert!(
            error.contains("expected 0600") && !error.contains("12345678"),
            "{error}"
        );
    }

    #[test]
    fn missing_and_empty_sources_are_errors() {
        assert!(matches!(
            SecretSource::Env("TOKEN_SERVICE_TEST_UNSET_VARIABLE".into()).load(),
            Err(SecretError::Env(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, "\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            SecretSource::File(path).load(),
            Err(SecretError::Empty(_))
        ));
    }
}
