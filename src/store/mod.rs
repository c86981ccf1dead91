//! Storage: the tiers, the entry and its codec, coalescing, and [`TieredCache`] over them.

// Without a shared-tier feature the shared tier cannot be built: its parts are unused. Shard
// names and places are read by Redis Cluster routing only.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
mod backend;
#[cfg_attr(not(any(feature = "redis", feature = "memcached")), allow(dead_code))]
mod breaker;
pub(crate) mod coalesce;
#[cfg_attr(not(any(feature = "redis", feature = "memcached")), allow(dead_code))]
pub(crate) mod codec;
mod entry;
mod events;
#[cfg(feature = "memcached")]
mod memcached;
mod memory;
#[cfg_attr(not(any(feature = "redis", feature = "memcached")), allow(dead_code))]
mod outbox;
#[cfg(feature = "redis")]
pub(crate) mod redis;
mod shared;
mod tags;
mod tier;
mod tiered;

pub use codec::{DecodeError, EncodeError};
pub use entry::CachedEntry;
pub use events::Invalidation;
use shared::SharedTier;
pub use tier::TierError;
pub(crate) use tiered::LoadLock;
pub use tiered::{Lookup, Purged, Source, TieredCache};

/// 64 random bits as hex, for identifiers that must differ between processes and restarts.
pub(crate) fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{:016x}", hasher.finish())
}

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
