//! RFC 7512 `pkcs11:` URIs: `pkcs11:token=My%20Token;serial=1234?pin-source=file:/run/pin`.
//!
//! Path attributes select the token (`token`, `serial`, `manufacturer`, `model`) or an object
//! (`object`, `id`, `type`); query attributes name the module (`module-path`) and the PIN
//! (`pin-source`). `pin-value` is refused: a PIN does not belong in a configuration file.

use std::path::PathBuf;

use crate::secret::SecretSource;

/// A parsed `pkcs11:` URI.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token`: the token label.
    pub token: Option<String>,
    /// `serial`: the token serial number.
    pub serial: Option<String>,
    /// `manufacturer`.
    pub manufacturer: Option<String>,
    /// `model`.
    pub model: Option<String>,
    /// `object`: an object label.
    pub object: Option<String>,
    /// `id`: an object id (raw bytes).
    pub id: Option<Vec<u8>>,
    /// `type`: `private`, `public`, `secret-key`, `cert`, `data`.
    pub object_type: Option<String>,
    /// `module-path`.
    pub module_path: Option<PathBuf>,
    /// `pin-source`: `file:/path` or a path; `env:NAME` is accepted as an extension.
    pub pin_source: Option<SecretSource>,
}

/// Why a URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pkcs11 URI: {0}")]
pub struct UriError(pub String);

fn percent_decode(value: &str) -> Result<Vec<u8>, UriError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .ok_or_else(|| UriError(format!("truncated percent-escape in `{value}`")))?;
            let byte = u8::from_str_radix(hex, 16)
                .map_err(|_| UriError(format!("bad percent-escape `%{hex}`")))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn decode_text(name: &str, value: &str) -> Result<String, UriError> {
    String::from_utf8(percent_decode(value)?)
        .map_err(|_| UriError(format!("attribute `{name}` is not UTF-8 after decoding")))
}

fn set<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), UriError> {
    if slot.is_some() {
        return Err(UriError(format!("attribute `{name}` appears twice")));
    }
    *slot = Some(value);
    Ok(())
}

impl std::str::FromStr for Pkcs11Uri {
    type Err = UriError;

    fn from_str(uri: &str) -> Result<Self, UriError> {
        let rest = uri
            .strip_prefix("pkcs11:")
            .ok_or_else(|| UriError("must start with `pkcs11:`".into()))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut parsed = Pkcs11Uri::default();
        for attribute in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attribute
                .split_once('=')
                .ok_or_else(|| UriError(format!("path attribute `{attribute}` has no `=`")))?;
            match name {
                "token" => set(&mut parsed.token, name, decode_text(name, value)?)?,
                "serial" => set(&mut parsed.serial, name, decode_text(name, value)?)?,
                "manufacturer" => set(&mut parsed.manufacturer, name, decode_text(name, value)?)?,
                "model" => set(&mut parsed.model, name, decode_text(name, value)?)?,
                "object" => set(&mut parsed.object, name, decode_text(name, value)?)?,
                "id" => set(&mut parsed.id, name, percent_decode(value)?)?,
                "type" => set(&mut parsed.object_type, name, decode_text(name, value)?)?,
                // RFC 7512 §2.3: unknown path attributes make the URI unusable, not ignorable.
                other => return Err(UriError(format!("unknown path attribute `{other}`"))),
            }
        }
        for attribute in query.split('&').filter(|a| !a.is_empty()) {
            let (name, value) = attribute
                .split_once('=')
                .ok_or_else(|| UriError(format!("query attribute `{attribute}` has no `=`")))?;
            match name {
                "module-path" => set(
                    &mut parsed.module_path,
                    name,
                    PathBuf::from(decode_text(name, value)?),
                )?,
                "pin-source" => {
                    let source = decode_text(name, value)?;
                    let source = if let Some(var) = source.strip_prefix("env:") {
                        SecretSource::Env(var.to_owned())
                    } else {
                        let path = source.strip_prefix("file:").unwrap_or(&source);
                        SecretSource::File(PathBuf::from(path))
                    };
                    set(&mut parsed.pin_source, name, source)?;
                }
                "pin-value" => {
                    return Err(UriError(
                        "`pin-value` puts the PIN in the configuration; use `pin-source=file:...` or `env:NAME`".into(),
                    ));
                }
                // Unknown query attributes may be ignored (RFC 7512 §2.4): vendors add their own.
                _ => {}
            }
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_rfc_examples_and_ours() {
        let uri: Pkcs11Uri = "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial=?pin-source=file:/etc/token"
            .parse()
            .unwrap();
        assert_eq!(uri.token.as_deref(), Some("The Software PKCS#11 Softtoken"));
        assert_eq!(uri.manufacturer.as_deref(), Some("Snake Oil, Inc."));
        assert_eq!(
            uri.id.as_deref(),
            Some(&[0x69, 0x95, 0x3e, 0x5c, 0xf4, 0xbd, 0xec, 0x91][..])
        );
        assert_eq!(uri.serial.as_deref(), Some(""));
        assert_eq!(
            uri.pin_source,
            Some(SecretSource::File("/etc/token".into()))
        );

        let ours: Pkcs11Uri = "pkcs11:token=token-service?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:HSM_PIN&x-vendor=1"
            .parse()
            .unwrap();
        assert_eq!(
            ours.module_path,
            Some("/usr/lib/softhsm/libsofthsm2.so".into())
        );
        assert_eq!(ours.pin_source, Some(SecretSource::Env("HSM_PIN".into())));
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        for bad in [
            "pkcs12:token=a",
            "pkcs11:token=a;token=b",
            "pkcs11:tokn=a",
            "pkcs11:token",
            "pkcs11:token=%zz",
            "pkcs11:token=a%",
            "pkcs11:token=a?pin-value=1234",
        ] {
            assert!(bad.parse::<Pkcs11Uri>().is_err(), "{bad}");
        }
    }
}
