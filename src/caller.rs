//! Who is calling, as far as the transport proved it: the client certificate of an mTLS
//! connection, or nothing. The Token API acts for a client that names its callers
//! (`tokens.clients.<id>.callers`) only on a certificate valid for one of those names, so
//! one service's certificate cannot mint tokens for another's client; the reference Crypto
//! Service lends a namespace's keys the same way (`namespaces.<ns>.callers`).

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, ServerName};

/// The caller of one request.
#[derive(Clone, Default)]
pub struct Caller {
    /// The chain the TLS layer verified against `server.tls.client_ca_file`, end-entity
    /// certificate first; shared with the connection, not copied per request.
    chain: Option<Arc<Vec<CertificateDer<'static>>>>,
}

impl Caller {
    /// A caller the transport did not identify (plaintext, TLS without client
    /// certificates, or an in-process call). It may act only for clients that do not name
    /// their callers.
    pub fn unidentified() -> Self {
        Self::default()
    }

    /// The caller of an mTLS connection: `chain` as the TLS layer verified it, the
    /// end-entity certificate first. `None` or an empty chain is an unidentified caller.
    pub fn from_verified_chain(chain: Option<Arc<Vec<CertificateDer<'static>>>>) -> Self {
        Self {
            chain: chain.filter(|certs| !certs.is_empty()),
        }
    }

    fn certificate(&self) -> Option<&CertificateDer<'static>> {
        self.chain.as_ref().and_then(|certs| certs.first())
    }

    /// Whether the caller's certificate names one of `names` in its subjectAltName: a
    /// SPIFFE ID (`spiffe://...`) as a URI, exactly; a DNS name (wildcard certificates
    /// included) or an IP address as a TLS client matches a server. An unidentified caller,
    /// an unparsable certificate or a name of neither kind matches nothing.
    pub fn is_one_of(&self, names: &[String]) -> bool {
        let Some(der) = self.certificate() else {
            return false;
        };
        let Ok(cert) = webpki::EndEntityCert::try_from(der) else {
            return false;
        };
        names.iter().any(|name| {
            if name.starts_with(SPIFFE_SCHEME) {
                // SPIFFE IDs compare as strings (SPIFFE ID spec §2); the URI SAN is the SVID's
                // identity.
                return is_spiffe_id(name) && cert.valid_uri_names().any(|uri| uri == name);
            }
            ServerName::try_from(name.as_str())
                .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
        })
    }

    /// The DNS names and URIs the certificate presents, for audit lines and error messages
    /// (public data, never used to decide).
    fn presented_names(&self) -> Vec<String> {
        let Some(der) = self.certificate() else {
            return Vec::new();
        };
        match webpki::EndEntityCert::try_from(der) {
            Ok(cert) => cert
                .valid_uri_names()
                .chain(cert.valid_dns_names())
                .take(4)
                .map(crate::backends::types::truncate_for_message)
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.certificate().is_none() {
            return f.write_str("unidentified");
        }
        match self.presented_names().as_slice() {
            [] => f.write_str("certificate-without-names"),
            names => f.write_str(&names.join(",")),
        }
    }
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Caller({self})")
    }
}

const SPIFFE_SCHEME: &str = "spiffe://";

/// A SPIFFE ID as the SPIFFE ID spec (§2) allows it: `spiffe://`, a lowercase trust domain
/// of letters, digits, `.`, `-` and `_`, then a path of non-empty segments of letters,
/// digits, `.`, `-` and `_`, with no query, fragment, port or trailing slash.
fn is_spiffe_id(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(SPIFFE_SCHEME) else {
        return false;
    };
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    let allowed = |c: char, lowercase_only: bool| {
        c.is_ascii_digit()
            || matches!(c, '.' | '-' | '_')
            || (c.is_ascii_alphabetic() && (!lowercase_only || c.is_ascii_lowercase()))
    };
    !domain.is_empty()
        && domain.chars().all(|c| allowed(c, true))
        && path.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment.chars().all(|c| allowed(c, false))
        })
        && !path.is_empty()
}

/// Whether `name` can name a caller: a SPIFFE ID, a DNS name (wildcards are for
/// certificates, not here) or an IP address.
pub fn is_valid_caller_name(name: &str) -> bool {
    if name.starts_with(SPIFFE_SCHEME) {
        return is_spiffe_id(name);
    }
    !name.contains('*') && ServerName::try_from(name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate_for(names: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        cert.der().clone()
    }

    fn caller(names: &[&str]) -> Caller {
        Caller::from_verified_chain(Some(Arc::new(vec![certificate_for(names)])))
    }

    #[test]
    fn a_certificate_matches_the_names_in_its_subject_alt_name_only() {
        let gateway = caller(&["gateway.internal", "10.0.0.7"]);
        assert!(gateway.is_one_of(&["gateway.internal".into()]));
        assert!(gateway.is_one_of(&["GATEWAY.internal".into()]));
        assert!(gateway.is_one_of(&["other".into(), "10.0.0.7".into()]));
        assert!(!gateway.is_one_of(&["billing.internal".into()]));
        assert!(!gateway.is_one_of(&["internal".into()]));
        assert!(!gateway.is_one_of(&["10.0.0.8".into()]));
        assert!(!gateway.is_one_of(&[]));
        assert_eq!(
            gateway.to_string(),
            "gateway.internal",
            "DNS names and URIs are shown"
        );
    }

    #[test]
    fn a_wildcard_certificate_matches_one_label() {
        let wild = caller(&["*.payments.internal"]);
        assert!(wild.is_one_of(&["api.payments.internal".into()]));
        assert!(!wild.is_one_of(&["a.b.payments.internal".into()]));
        assert!(!wild.is_one_of(&["payments.internal".into()]));
    }

    #[test]
    fn without_a_usable_certificate_nothing_matches() {
        let names = ["gateway.internal".to_owned()];
        assert!(!Caller::unidentified().is_one_of(&names));
        assert!(!Caller::from_verified_chain(None).is_one_of(&names));
        assert!(!Caller::from_verified_chain(Some(Arc::new(Vec::new()))).is_one_of(&names));
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        let broken = Caller::from_verified_chain(Some(Arc::new(vec![garbage])));
        assert!(!broken.is_one_of(&names));
        assert_eq!(
            Caller::unidentified().to_string(),
            "unidentified",
            "shown as such in audit lines"
        );
    }

    #[test]
    fn caller_names_are_spiffe_ids_dns_names_or_ip_addresses() {
        for good in [
            "gateway.internal",
            "gateway",
            "10.0.0.7",
            "::1",
            "spiffe://prod.example/ns/auth/sa/gateway",
        ] {
            assert!(is_valid_caller_name(good), "{good}");
        }
        for bad in [
            "",
            "*.internal",
            "has space",
            "https://gateway",
            "a..b",
            "spiffe://",
            "spiffe://prod.example",
            "spiffe://prod.example/",
            "spiffe://Prod.example/gateway",
            "spiffe://prod.example//gateway",
            "spiffe://prod.example/ns/../gateway",
            "spiffe://prod.example/gateway?x=1",
            "spiffe://prod.example:8443/gateway",
        ] {
            assert!(!is_valid_caller_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_spiffe_id_matches_the_uri_san_exactly() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://prod.example/ns/auth/sa/gateway"
                .try_into()
                .unwrap(),
        )];
        let cert = params.self_signed(&key).unwrap().der().clone();
        let svid = Caller::from_verified_chain(Some(Arc::new(vec![cert])));
        assert!(svid.is_one_of(&["spiffe://prod.example/ns/auth/sa/gateway".into()]));
        for other in [
            "spiffe://prod.example/ns/auth/sa/gateway2",
            "spiffe://prod.example/ns/auth/sa",
            "spiffe://other.example/ns/auth/sa/gateway",
            "prod.example",
        ] {
            assert!(!svid.is_one_of(&[other.into()]), "{other}");
        }
        assert_eq!(svid.to_string(), "spiffe://prod.example/ns/auth/sa/gateway");
        // A DNS certificate is not a SPIFFE caller, however its name reads.
        assert!(
            !caller(&["prod.example"])
                .is_one_of(&["spiffe://prod.example/ns/auth/sa/gateway".into()])
        );
    }
}
