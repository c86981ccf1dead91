//! What a shared-tier store (Redis, Memcached) provides: raw bytes under keys, tag stamps, a
//! lock, an event channel. The rules every operation follows (circuit breaker, metrics, the entry
//! codec, pending invalidations) are applied once, by [`SharedTier`](super::shared::SharedTier),
//! which holds its backend as `dyn Backend`: Redis, Memcached, or a test double.
//!
//! Each backend bounds every round trip by `l2.timeout` itself (Redis through the client's
//! command timeout, Memcached around connect-and-operate), so a prefix scan of many pages is
//! bounded per page rather than cut short as a whole; the shared tier adds no second timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::events::Invalidation;
use super::tier::TierError;
use super::Source;

/// A backend's answer: a boxed future, so that backends can be used as `dyn Backend`.
pub(crate) type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T, TierError>> + Send + 'a>>;

/// The part of the shared tier that fails on its own: the one server, or one primary of a Redis
/// Cluster (named `host:port`). Each has its own circuit breaker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Shard(Option<Arc<str>>);

impl Shard {
    pub(crate) fn named(name: &str) -> Self {
        Self(Some(Arc::from(name)))
    }

    /// `host:port` of a cluster primary; `None` for the one server.
    pub(crate) fn name(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// What an operation is about, which decides the shard it goes to (on Redis Cluster entries,
/// tag stamps, locks and the event channel hash to different slots).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Place<'a> {
    Entry(&'a str),
    Tag(&'a str),
    Lock(&'a str),
    Events,
    /// The counter that orders invalidations between instances.
    Generation,
}

/// Told of every (re)connection of a shard: it answers again.
pub(crate) type OnConnect = Arc<dyn Fn(&Shard) + Send + Sync>;

/// A shared-tier store. Implementations deal in bytes, keys and their own errors only, each
/// operation bounded by `l2.timeout` per round trip.
pub(crate) trait Backend: Send + Sync {
    /// Where entries found here come from.
    fn source(&self) -> Source;

    /// The shard `place` lives on.
    fn shard(&self, place: Place<'_>) -> Shard {
        let _ = place;
        Shard::default()
    }

    /// Every shard, for operations that touch them all (prefix invalidation, flush).
    fn shards(&self) -> Vec<Shard> {
        vec![Shard::default()]
    }

    /// Refuses a value of `len` bytes under `key` that the store would not take.
    fn check_size(&self, key: &str, len: usize) -> Result<(), TierError> {
        let _ = (key, len);
        Ok(())
    }

    /// Until every shard is connected (and events are received), or `timeout`.
    fn wait_connected(&self, timeout: Duration) -> Pin<Box<dyn Future<Output = bool> + Send + '_>>;

    /// The bytes of the entry under `key`.
    fn get<'a>(&'a self, key: &'a str) -> Answer<'a, Option<Bytes>>;

    /// Stores `value` as the entry under `key`, expiring after `ttl`.
    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> Answer<'a, ()>;

    /// Deletes the entry under `key`.
    fn delete<'a>(&'a self, key: &'a str) -> Answer<'a, ()>;

    /// Deletes every entry on `shard` whose key starts with `prefix`; how many.
    fn delete_prefix<'a>(&'a self, shard: &'a Shard, prefix: &'a str) -> Answer<'a, u64>;

    /// The invalidation stamps of `tags` (of one shard), in order; 0 for never invalidated.
    fn tag_stamps<'a>(&'a self, tags: &'a [&'a str]) -> Answer<'a, Vec<u64>>;

    /// Hands out the next invalidation generation (one counter for every instance).
    fn next_generation(&self) -> Answer<'_, u64>;

    /// The last generation handed out; 0 before the first.
    fn generation(&self) -> Answer<'_, u64>;

    /// Records `stamp` for every tag of `tags` (of one shard) whose stamp is older, kept for
    /// `ttl`: a stamp never goes back.
    fn stamp_tags<'a>(&'a self, tags: &'a [&'a str], stamp: u64, ttl: Duration) -> Answer<'a, ()>;

    /// Takes the lock of `key` for `ttl` with `token`; false if someone holds it.
    fn try_lock<'a>(&'a self, key: &'a str, token: &'a str, ttl: Duration) -> Answer<'a, bool>;

    /// Releases the lock of `key` if `token` still holds it.
    fn unlock<'a>(&'a self, key: &'a str, token: &'a str) -> Answer<'a, ()>;

    /// Tells the other instances; a backend without a channel does nothing.
    fn publish<'a>(&'a self, event: &'a Invalidation) -> Answer<'a, ()>;
}
