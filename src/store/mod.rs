//! Storage: the tiers, the entry and its codec, coalescing, and [`TieredCache`] over them.

// Only the shared tiers encode entries.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
mod breaker;
pub(crate) mod coalesce;
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) mod codec;
mod entry;
mod events;
mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;
mod tags;
mod tier;
mod tiered;

pub use codec::{DecodeError, EncodeError};
pub use entry::CachedEntry;
pub use events::Invalidation;
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

#[cfg(feature = "redis")]
use redis::RedisTier as SharedTier;
#[cfg(not(feature = "redis"))]
use without_redis::NoSharedTier as SharedTier;

#[cfg(not(feature = "redis"))]
mod without_redis {
    //! Stands in for the Redis tier in builds without the `redis` feature; never constructed
    //! (configuration validation rejects `l2.url` first).

    use std::time::Duration;

    use super::codec::Codec;
    use super::events::{EventSink, Invalidation};
    use super::tier::{Tier, TierError};
    use super::CachedEntry;
    use crate::config::{CacheConfig, ConfigError};
    use crate::Error;

    pub(crate) enum NoSharedTier {}

    impl NoSharedTier {
        pub(crate) fn connect(_: &CacheConfig, _: Codec, _: EventSink) -> Result<Self, Error> {
            Err(ConfigError::invalid("l2.url", "this build has no `redis` feature").into())
        }

        pub(crate) async fn wait_connected(&self, _: Duration) -> bool {
            match *self {}
        }

        pub(crate) fn circuit_open(&self) -> bool {
            match *self {}
        }

        pub(crate) async fn publish(&self, _: &Invalidation) -> Result<(), TierError> {
            match *self {}
        }

        pub(crate) async fn tag_stamps(&self, _: &[&str]) -> Result<Vec<u64>, TierError> {
            match *self {}
        }

        pub(crate) async fn try_lock(
            &self,
            _: &str,
            _: &str,
            _: Duration,
        ) -> Result<bool, TierError> {
            match *self {}
        }

        pub(crate) async fn unlock(&self, _: &str, _: &str) -> Result<(), TierError> {
            match *self {}
        }

        pub(crate) async fn stamp_tags(
            &self,
            _: &[String],
            _: u64,
            _: Duration,
        ) -> Result<(), TierError> {
            match *self {}
        }
    }

    impl Tier for NoSharedTier {
        async fn get(&self, _: &str) -> Result<Option<CachedEntry>, TierError> {
            match *self {}
        }
        async fn set(&self, _: &str, _: &CachedEntry) -> Result<(), TierError> {
            match *self {}
        }
        async fn remove(&self, _: &str) -> Result<(), TierError> {
            match *self {}
        }
        async fn remove_prefix(&self, _: &str) -> Result<u64, TierError> {
            match *self {}
        }
    }
}
