//! Comparing `htu` with the request URI (RFC 9449 §4.3 step 9): both normalized as RFC 3986
//! §6.2.2 and §6.2.3 describe (case of scheme and host, default port, dot segments,
//! percent-encoding), without query and fragment.

/// Characters RFC 3986 §2.3 calls unreserved: their percent-encoded form means the same.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes percent-encoded unreserved characters and upper-cases the hex of the others.
fn normalize_percent_encoding(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            let hex = &path[i + 1..i + 3];
            let value = u8::from_str_radix(hex, 16).unwrap_or(0);
            if unreserved(value) {
                out.push(char::from(value));
            } else {
                out.push('%');
                out.push_str(&hex.to_ascii_uppercase());
            }
            i += 3;
        } else {
            out.push(char::from(bytes[i]));
            i += 1;
        }
    }
    out
}

/// The normalized form of an absolute http(s) URI without query and fragment; `None` if it
/// is not one.
pub fn normalize(uri: &str) -> Option<String> {
    let mut url = url::Url::parse(uri).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return None;
    }
    url.set_query(None);
    url.set_fragment(None);
    let path = normalize_percent_encoding(url.path());
    url.set_path(&path);
    Some(url.into())
}

/// Whether the proof's `htu` names the request's URI.
pub fn matches(htu: &str, request_uri: &str) -> bool {
    match (normalize(htu), normalize(request_uri)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equivalent_spellings_match_and_others_do_not() {
        let base = "https://server.example.com/token";
        for same in [
            "https://server.example.com/token?x=1",
            "https://server.example.com/token#frag",
            "HTTPS://Server.Example.COM/token",
            "https://server.example.com:443/token",
            "https://server.example.com/a/../token",
            "https://server.example.com/%74oken",
        ] {
            assert!(matches(same, base), "{same}");
        }
        for other in [
            "https://server.example.com/Token",
            "http://server.example.com/token",
            "https://server.example.com:8443/token",
            "https://other.example.com/token",
            "https://server.example.com/token/",
            "/token",
            "not a uri",
            "ftp://server.example.com/token",
        ] {
            assert!(!matches(other, base), "{other}");
        }
        assert_eq!(
            normalize("https://h/a%2fb%7e").as_deref(),
            Some("https://h/a%2Fb~")
        );
    }
}
