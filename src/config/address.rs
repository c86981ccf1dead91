//! Addresses in `l2.url`, as the clients want them.

/// The `host:port` of a `memcache://host:port` URL, as the client wants it (`tcp://host:port`).
pub(crate) fn memcached_address(url: &str) -> Result<String, String> {
    let usage = "use memcache://host:port";
    let parsed =
        url::Url::parse(url).map_err(|err| format!("invalid URL {url:?}: {err}; {usage}"))?;
    if parsed.scheme() != "memcache" {
        return Err(format!("invalid Memcached URL {url:?}: {usage}"));
    }
    let host = match parsed.host() {
        Some(url::Host::Domain(host)) if !host.is_empty() => host.to_owned(),
        Some(url::Host::Ipv4(address)) => address.to_string(),
        // async-memcached opens IPv4 sockets only.
        Some(url::Host::Ipv6(_)) => {
            return Err(format!(
                "invalid Memcached URL {url:?}: IPv6 addresses are not supported by the client; use an IPv4 address or a host name resolving to one"
            ))
        }
        _ => return Err(format!("invalid Memcached URL {url:?}: no host; {usage}")),
    };
    if !parsed.username().is_empty() || parsed.password().is_some() || parsed.path().len() > 1 {
        return Err(format!(
            "invalid Memcached URL {url:?}: no user, password or path; {usage}"
        ));
    }
    Ok(format!("tcp://{host}:{}", parsed.port().unwrap_or(11211)))
}

#[cfg(test)]
mod tests {
    use super::memcached_address;

    #[test]
    fn memcached_urls_become_client_addresses() {
        assert_eq!(
            memcached_address("memcache://127.0.0.1:11311").unwrap(),
            "tcp://127.0.0.1:11311"
        );
        assert_eq!(
            memcached_address("memcache://cache.internal").unwrap(),
            "tcp://cache.internal:11211"
        );
        for bad in [
            "redis://x:1",
            "memcache://",
            "memcache://u:p@h:1",
            "memcache://h:1/db",
            "h:1",
            "memcache://[::1]:11211",
        ] {
            assert!(memcached_address(bad).is_err(), "{bad}");
        }
    }
}
