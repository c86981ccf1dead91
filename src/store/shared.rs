//! The shared tier (L2): Redis or Memcached, chosen by `l2.backend`, behind one type.
//!
//! With neither feature compiled in the enum has no variants, so it cannot be built (the
//! configuration rejects an L2 first) and every method is trivially unreachable.
#![cfg_attr(
    not(any(feature = "redis", feature = "memcached")),
    allow(unused_variables, unused_imports)
)]

use std::time::Duration;

#[cfg(feature = "memcached")]
use super::memcached::MemcachedTier;
#[cfg(feature = "redis")]
use super::redis::RedisTier;

use super::codec::Codec;
use super::events::{EventSink, Invalidation};
use super::tier::{Tier, TierError};
use super::{CachedEntry, Source};
use crate::config::{CacheConfig, ConfigError, L2Backend};
use crate::Error;

pub(crate) enum SharedTier {
    #[cfg(feature = "redis")]
    Redis(RedisTier),
    #[cfg(feature = "memcached")]
    Memcached(MemcachedTier),
}

/// Runs the same expression on whichever tier this is.
macro_rules! on_tier {
    ($self:ident, $tier:ident => $body:expr) => {
        match *$self {
            #[cfg(feature = "redis")]
            SharedTier::Redis(ref $tier) => $body,
            #[cfg(feature = "memcached")]
            SharedTier::Memcached(ref $tier) => $body,
        }
    };
}

impl SharedTier {
    /// Builds the configured backend and starts connecting in the background; never waits.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))] // events: Redis pub/sub only
    pub(crate) fn connect(
        config: &CacheConfig,
        codec: Codec,
        events: EventSink,
    ) -> Result<Self, Error> {
        match config.l2.backend {
            #[cfg(feature = "redis")]
            L2Backend::Redis => Ok(Self::Redis(RedisTier::connect(config, codec, events)?)),
            #[cfg(feature = "memcached")]
            L2Backend::Memcached => Ok(Self::Memcached(MemcachedTier::connect(config, codec)?)),
            #[allow(unreachable_patterns)]
            backend => Err(ConfigError::invalid(
                "l2.backend",
                format!("this build has no `{}` feature", backend.name()),
            )
            .into()),
        }
    }

    pub(crate) fn source(&self) -> Source {
        on_tier!(self, tier => tier.source())
    }

    pub(crate) async fn wait_connected(&self, timeout: Duration) -> bool {
        on_tier!(self, tier => tier.wait_connected(timeout).await)
    }

    pub(crate) fn circuit_open(&self) -> bool {
        on_tier!(self, tier => tier.circuit_open())
    }

    /// Tells the other instances (Redis pub/sub); Memcached has no channel, so nothing is sent.
    pub(crate) async fn publish(&self, event: &Invalidation) -> Result<(), TierError> {
        on_tier!(self, tier => tier.publish(event).await)
    }

    /// The invalidation stamps of `tags`, in order (0 for never invalidated), in one guarded
    /// operation of one round trip: a multi-get (on Redis Cluster one per hash slot, together).
    pub(crate) async fn tag_stamps(&self, tags: &[&str]) -> Result<Vec<u64>, TierError> {
        on_tier!(self, tier => tier.tag_stamps(tags).await)
    }

    /// Records `stamp` for every tag, kept for `ttl`, in one guarded operation of batched writes.
    pub(crate) async fn stamp_tags(
        &self,
        tags: &[String],
        stamp: u64,
        ttl: Duration,
    ) -> Result<(), TierError> {
        on_tier!(self, tier => tier.stamp_tags(tags, stamp, ttl).await)
    }

    pub(crate) async fn try_lock(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, TierError> {
        on_tier!(self, tier => tier.try_lock(key, token, ttl).await)
    }

    pub(crate) async fn unlock(&self, key: &str, token: &str) -> Result<(), TierError> {
        on_tier!(self, tier => tier.unlock(key, token).await)
    }
}

impl Tier for SharedTier {
    async fn get(&self, key: &str) -> Result<Option<CachedEntry>, TierError> {
        on_tier!(self, tier => tier.get(key).await)
    }

    async fn set(&self, key: &str, entry: &CachedEntry) -> Result<(), TierError> {
        on_tier!(self, tier => tier.set(key, entry).await)
    }

    async fn remove(&self, key: &str) -> Result<(), TierError> {
        on_tier!(self, tier => tier.remove(key).await)
    }

    async fn remove_prefix(&self, prefix: &str) -> Result<u64, TierError> {
        on_tier!(self, tier => tier.remove_prefix(prefix).await)
    }
}
