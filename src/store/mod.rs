//! Storage: the tiers, the entry and its codec, coalescing, and [`TieredCache`] over them.

// Without a shared-tier feature the shared tier cannot be built: its parts are unused. Shard
// names and places are read by Redis Cluster routing only.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
mod backend;
mod background;
#[cfg_attr(not(any(feature = "redis", feature = "memcached")), allow(dead_code))]
mod breaker;
pub(crate) mod coalesce;
#[cfg_attr(not(any(feature = "redis", feature = "memcached")), allow(dead_code))]
pub(crate) mod codec;
mod early;
mod entry;
mod events;
mod fill;
#[cfg(feature = "memcached")]
mod memcached;
mod memory;
#[cfg_attr(not(any(feature = "redis", feature = "memcached")), allow(dead_code))]
mod outbox;
#[cfg(feature = "redis")]
pub(crate) mod redis;
mod shared;
mod tags;
#[cfg_attr(not(any(feature = "redis", feature = "memcached")), allow(dead_code))]
mod tier;
mod tiered;
mod typed;
mod versions;
mod writes;

pub(crate) use background::Background;
pub use entry::CachedEntry;
pub use events::Invalidation;
pub(crate) use fill::{Fill, FillOptions, FillPermit};
use shared::SharedTier;
#[cfg(feature = "tonic")] // what gRPC stores is judged by it; HTTP by `store_in_memory_now`
pub(crate) use tiered::Kept;
pub use tiered::{Lookup, Purged, Source, TieredCache};
pub use typed::{ValueError, ValueOptions};
pub(crate) use versions::Ticket;

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
