//! What a Redis URL says of the way to the server.

/// The host of `url` when it is a plaintext `redis://` URL to a host other than loopback:
/// the store's contents (refresh-token hashes, revocations) could be read and changed on
/// the way.
pub fn plaintext_remote_host(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        // `redis` is not a special scheme to the URL standard, so an IPv4 address arrives
        // as a name.
        Some(url::Host::Domain(name)) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        None => true,
    };
    (parsed.scheme() == "redis" && !loopback)
        .then(|| parsed.host_str().unwrap_or_default().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_in_any_spelling_is_not_another_host() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://127.0.0.2:6379/0",
            "redis://localhost:6379",
            "redis://[::1]:6379",
            "redis://:password@127.0.0.1:6379",
        ] {
            assert_eq!(plaintext_remote_host(url), None, "{url}");
        }
    }

    #[test]
    fn another_host_in_clear_is_flagged_and_tls_is_not() {
        for (url, host) in [
            ("redis://10.0.0.5:6379", "10.0.0.5"),
            ("redis://cache.internal:6379", "cache.internal"),
            ("redis://[2001:db8::1]:6379", "[2001:db8::1]"),
            (
                "redis://127.0.0.1.example.com:6379",
                "127.0.0.1.example.com",
            ),
        ] {
            assert_eq!(plaintext_remote_host(url).as_deref(), Some(host), "{url}");
        }
        assert_eq!(plaintext_remote_host("rediss://10.0.0.5:6379"), None);
    }
}
