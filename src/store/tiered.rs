//! [`TieredCache`]: memory, then Redis, then the loader.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use super::coalesce::Coalescer;
use super::codec::{Codec, Reading};
use super::early::EarlyRefresh;
use super::entry::{unix_ms, Version};
use super::events::{EventSink, Invalidation};
use super::fill::{Fill, FillOptions, FillPermit, SharedLock};
use super::memory::MemoryTier;
use super::outbox::Change;
use super::shared::NotApplied;
use super::tags::{self, Bounded, TagLimits, TagStamps};
use super::tier::{Tier, TierError};
use super::versions::{Currency, Ticket, Versions};
use super::writes::BackgroundWrites;
use super::{CachedEntry, SharedTier};
use crate::config::CacheConfig;
use crate::stats::{Counter, Counters, Stats};
use crate::Error;

/// The tier an entry was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// The in-process memory tier (L1).
    Memory,
    /// The shared tier (L2) on Redis.
    Redis,
    /// The shared tier (L2) on Memcached.
    Memcached,
}

/// An entry found by [`TieredCache::lookup`], fresh or stale, and where it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    /// The entry.
    pub entry: CachedEntry,
    /// The tier that had it.
    pub source: Source,
}

impl Lookup {
    /// Whether the entry is fresh now.
    pub fn is_fresh(&self) -> bool {
        self.entry.is_fresh()
    }
}

/// What [`TieredCache::invalidate_prefix`] removed from each tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Purged {
    /// Entries removed from memory.
    pub memory: u64,
    /// Keys removed from Redis.
    pub redis: u64,
}

/// A multi-level cache: in-process memory (L1), optionally Redis (L2), and a loader on misses.
///
/// Cheap to clone; clones share the tiers, the in-flight loads and the counters. See the
/// [crate documentation](crate) for an example and the guarantees.
#[derive(Clone)]
pub struct TieredCache {
    inner: Arc<Inner>,
}

struct Inner {
    /// `l2.lock`: (lock lifetime, longest wait) when misses are coalesced across instances.
    lock: Option<(Duration, Duration)>,
    memory: Arc<MemoryTier>,
    /// What "current" means: every store path asks it ([`Versions`]).
    versions: Arc<Versions>,
    /// The shared tier's tag stamps known here, for entries read from it.
    stamps: Arc<TagStamps>,
    shared: Option<SharedTier>,
    /// Invalidations received from other instances, after they were applied.
    events: broadcast::Sender<Invalidation>,
    flights: Arc<Coalescer<CachedEntry>>,
    counters: Counters,
    max_entry_size: u64,
    tag_limits: TagLimits,
    l2_warnings: LogThrottle,
    tag_warnings: LogThrottle,
    /// Shared-tier writes running in the background.
    writes: Arc<BackgroundWrites>,
    /// Early refreshes of `get_or_set` (`early_refresh.beta`).
    early: EarlyRefresh,
    /// How long a soft-purged entry is kept to be served stale (`http.keep_stale`).
    soft_keep: Duration,
    /// `l2.connect_wait`.
    connect_wait: Duration,
    /// How far this instance's clock is set ahead of the system's, for tests of instances
    /// whose clocks differ ([`TieredCache::skew_clock`]).
    clock_skew_ms: AtomicU64,
    /// `http.max_background`: the bound on the optional work it starts in the background.
    background: super::Background,
}

impl std::fmt::Debug for TieredCache {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TieredCache")
            .field("shared", &self.inner.shared.is_some())
            .field("stats", &self.stats())
            .finish()
    }
}

impl TieredCache {
    /// Creates the cache. With `l2.url` set, the Redis connection is made in the background: the
    /// cache works (from memory and the loader) until Redis answers, and whenever it does not.
    ///
    /// Errors: an invalid configuration; [`Error::NoRuntime`] when Redis is configured and this is
    /// not called inside a Tokio runtime.
    pub fn new(config: CacheConfig) -> Result<Self, Error> {
        config.validate()?;
        let codec = Codec::new(&config);
        let memory = Arc::new(MemoryTier::new(&config.l1));
        let stamps = Arc::new(TagStamps::new(config.l1.max_ttl));
        // A fill that outlasts the memory tier's longest lifetime or the origin timeout cannot
        // prove itself current (see `Versions`): it is not stored.
        let horizon = config.l1.max_ttl.max(config.http.origin_timeout);
        let versions = Arc::new(Versions::new(horizon, !config.l2.enabled()));
        let (events, _) = broadcast::channel(1024);
        let (relearn, learner) = tokio::sync::watch::channel(0);
        let sink: EventSink = {
            let record = Record {
                memory: memory.clone(),
                versions: versions.clone(),
                stamps: stamps.clone(),
                relearn,
            };
            let events = events.clone();
            Arc::new(move |event| record.apply_remote(&events, event))
        };
        let shared = if config.l2.enabled() {
            let record = (versions.clone(), stamps.clone());
            let shared = SharedTier::connect(&config, codec, sink, record)?;
            shared.keep_generation_known(learner);
            Some(shared)
        } else {
            None
        };
        Ok(Self {
            inner: Arc::new(Inner {
                lock: config
                    .l2
                    .lock
                    .then_some((config.l2.lock_ttl, config.l2.lock_wait)),
                memory,
                versions,
                stamps,
                shared,
                events,
                flights: Arc::new(Coalescer::new()),
                counters: Counters::default(),
                max_entry_size: config.http.max_entry_size,
                tag_limits: TagLimits::new(&config.tags),
                l2_warnings: LogThrottle::new(Duration::from_secs(10)),
                writes: Arc::new(BackgroundWrites::default()),
                early: EarlyRefresh::new(config.early_refresh.beta),
                soft_keep: config.http.keep_stale,
                tag_warnings: LogThrottle::new(Duration::from_secs(10)),
                connect_wait: config.l2.connect_wait,
                clock_skew_ms: AtomicU64::new(0),
                background: super::Background::new(config.http.max_background),
            }),
        })
    }

    /// Waits up to `timeout` for the shared tier (Redis or Memcached). Returns `true` once
    /// connected, `false` on timeout or when no L2 is configured. Optional: the cache works while
    /// disconnected.
    pub async fn wait_for_l2(&self, timeout: Duration) -> bool {
        match &self.inner.shared {
            Some(shared) => shared.wait_connected(timeout).await,
            None => false,
        }
    }

    /// For a server about to accept connections: waits for the shared tier up to
    /// `l2.connect_wait` (2 s by default) and logs whether it is up. Returns `true` once
    /// connected; `false` when it is not up by then (the cache serves without it and keeps
    /// connecting in the background) or when no L2 is configured.
    ///
    /// ```
    /// # use tower_tiered_cache::{CacheConfig, TieredCache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_tiered_cache::Error> {
    /// let cache = TieredCache::new(CacheConfig::default())?;
    /// // Memory only: nothing to wait for.
    /// assert!(!cache.wait_for_l2_at_start().await);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait_for_l2_at_start(&self) -> bool {
        let Some(shared) = &self.inner.shared else {
            return false;
        };
        let wait = self.inner.connect_wait;
        let up = shared.wait_connected(wait).await;
        if up {
            tracing::info!(source = ?shared.source(), "shared tier connected");
        } else {
            tracing::warn!(
                source = ?shared.source(),
                ?wait,
                "shared tier not up within l2.connect_wait; serving without it until it is"
            );
        }
        up
    }

    /// [`wait_for_l2`](Self::wait_for_l2), under the name it had before Memcached.
    pub async fn wait_for_redis(&self, timeout: Duration) -> bool {
        self.wait_for_l2(timeout).await
    }

    /// Sets this instance's clock `ahead` of the system's, as a machine whose clock runs
    /// ahead would have it: `get_or_set` judges freshness by it. For tests that show that no
    /// decision between instances depends on their clocks.
    #[doc(hidden)]
    pub fn skew_clock(&self, ahead: Duration) {
        let ms = u64::try_from(ahead.as_millis()).unwrap_or(u64::MAX);
        self.inner.clock_skew_ms.store(ms, Ordering::Relaxed);
    }

    /// Now, by this instance's clock (see [`skew_clock`](Self::skew_clock)).
    fn now(&self) -> SystemTime {
        let skew = self.inner.clock_skew_ms.load(Ordering::Relaxed);
        SystemTime::now() + Duration::from_millis(skew)
    }

    /// Where entries found in the shared tier come from.
    pub(crate) fn shared_source(&self) -> Source {
        self.inner
            .shared
            .as_ref()
            .map_or(Source::Redis, SharedTier::source)
    }

    /// The fresh entry under `key`, from memory or Redis (a Redis hit is copied into memory with
    /// its remaining lifetime), or `None`.
    pub async fn get(&self, key: &str) -> Option<CachedEntry> {
        self.lookup(key)
            .await
            .filter(Lookup::is_fresh)
            .map(|found| found.entry)
    }

    /// Like [`get`](Self::get), but also returns an entry past its time to live that is still
    /// kept (its stale window), for callers that serve stale data while they refresh it.
    pub async fn lookup(&self, key: &str) -> Option<Lookup> {
        let found = self.find(key).await;
        self.count_lookup(found.as_ref());
        found
    }

    /// Stores `entry` in memory and in Redis, for its remaining lifetime. Entries larger than
    /// `http.max_entry_size` or already past their lifetime are not stored. A Redis failure is
    /// counted and logged, not returned: the entry is then cached in memory only.
    ///
    /// The stored entry keeps its first `tags.max_per_entry` distinct tags (trimmed, blank ones
    /// left out) of at most `tags.max_length` bytes; the others are dropped, counted in
    /// [`Stats::tags_dropped`] and logged with the key, so an invalidation of a dropped tag does
    /// not reach the entry.
    pub async fn set(&self, key: &str, entry: CachedEntry) {
        let ticket = self.ticket();
        self.store(key, &entry, ticket).await;
    }

    /// Cache-aside: the fresh entry under `key`, or the loader's entry, stored in both tiers.
    ///
    /// Concurrent calls for the same key share one loader call. A loader error is returned to
    /// every caller that waited for it, and nothing is stored. If the calling future is dropped
    /// while its loader runs, a waiting caller takes over with its own loader.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_tiered_cache::{CacheConfig, CachedEntry, TieredCache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_tiered_cache::Error> {
    /// let cache = TieredCache::new(CacheConfig::default())?;
    /// let failed = cache
    ///     .get_or_set("flaky", || async { Err::<CachedEntry, _>("database down") })
    ///     .await;
    /// assert_eq!(*failed.unwrap_err(), "database down");
    /// assert!(cache.get("flaky").await.is_none(), "errors are not cached");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_or_set<F, Fut, E>(&self, key: &str, loader: F) -> Result<CachedEntry, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CachedEntry, E>>,
        E: Send + Sync + 'static,
    {
        let now = self.now();
        let owned = key.to_owned();
        if let Some(entry) = self.fresh_in_memory(&owned, now) {
            self.inner.counters.incr(Counter::MemoryHits);
            if !self.inner.early.is_due(&entry, now) {
                return Ok(entry);
            }
            // XFetch: reloaded before it expires, by this caller, unless another is at it.
            return self.reload(key, entry, loader).await;
        }
        if let Some(expired) = self.expired_in_memory(&owned, now) {
            // Soft-purged: the stale entry answers everyone but the one caller reloading it.
            self.inner.counters.incr(Counter::StaleHits);
            return self.reload(key, expired, loader).await;
        }
        // Counted once: the lock path may look again while it waits.
        let counted = AtomicBool::new(false);
        let stored = || async {
            let found = self.find(key).await;
            if !counted.swap(true, Ordering::Relaxed) {
                self.count_lookup(found.as_ref());
            }
            found.filter(Lookup::is_fresh).map(|found| found.entry)
        };
        let options = FillOptions {
            across_instances: true,
            wait: None,
        };
        let permit = match self.fill(&self.inner.flights, key, options, stored).await {
            Fill::Shared(entry) | Fill::Found(entry) => return Ok(entry),
            Fill::Failed(error) => return Err(error),
            // Not without a wait bound; and then loading is right.
            Fill::Alone => None,
            Fill::Lead(permit) => Some(permit),
        };
        self.load(key, permit, loader).await
    }

    /// Reloads `key` for a caller that found `current` (fresh, or expired by a soft purge), if
    /// no other caller here (or, with `l2.lock`, on another instance) reloads it already; else
    /// `current` answers.
    async fn reload<F, Fut, E>(
        &self,
        key: &str,
        current: CachedEntry,
        loader: F,
    ) -> Result<CachedEntry, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CachedEntry, E>>,
        E: Send + Sync + 'static,
    {
        let Some(permit) = self.try_fill::<CachedEntry, E>(&self.inner.flights, key) else {
            return Ok(current);
        };
        let Some(permit) = permit.across_instances(self, key).await else {
            return Ok(current);
        };
        self.inner.counters.incr(Counter::EarlyRefreshes);
        self.load(key, Some(permit), loader).await
    }

    /// Runs `loader` for `key` and stores its entry (with the time the load took, for early
    /// refreshes); `permit` shares the result with the callers waiting for it.
    async fn load<F, Fut, E>(
        &self,
        key: &str,
        permit: Option<FillPermit<CachedEntry, E>>,
        loader: F,
    ) -> Result<CachedEntry, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CachedEntry, E>>,
        E: Send + Sync + 'static,
    {
        self.inner.counters.incr(Counter::LoaderCalls);
        // Taken before the loader reads anything: an invalidation while it runs outdates it.
        let ticket = self.ticket();
        let started = tokio::time::Instant::now();
        let result = match loader().await {
            Ok(entry) => {
                let entry = entry.with_load_time(started.elapsed());
                if self.store(key, &entry, ticket).await == Kept::Outdated {
                    // What it loaded may predate the invalidation: not for the callers waiting
                    // (they load again, one of them leading), only for this one, which asked
                    // before the invalidation.
                    drop(permit);
                    return Ok(entry);
                }
                Ok(entry)
            }
            Err(error) => {
                self.inner.counters.incr(Counter::LoaderErrors);
                Err(Arc::new(error))
            }
        };
        if let Some(lock) = permit.and_then(|permit| permit.finish(result.clone())) {
            lock.release().await;
        }
        result
    }

    /// Expires `key` now without removing it (a soft purge), in every tier and instance: it is
    /// stale from now on and kept `http.keep_stale` longer, so that the next read is answered
    /// from it while one reload runs — `get_or_set` reloads it (the caller that reloads waits
    /// for its loader; the others get the stale entry at once), and the HTTP layer serves it
    /// stale while one background request revalidates it, unless its directives forbid serving
    /// stale. Other instances drop their memory copies and read the expired entry from the
    /// shared tier.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_tiered_cache::{CacheConfig, CachedEntry, TieredCache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_tiered_cache::Error> {
    /// let cache = TieredCache::new(CacheConfig::default())?;
    /// cache.set("k", CachedEntry::new("old", Duration::from_secs(60))).await;
    /// cache.expire("k").await?;
    /// assert!(cache.get("k").await.is_none(), "not fresh any more");
    /// let stale = cache.lookup("k").await.expect("still kept");
    /// assert_eq!(stale.entry.body(), "old");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn expire(&self, key: &str) -> Result<(), Error> {
        // Fills that began before the purge may hold what it expires: marked, they store nothing.
        self.supersede(key).await;
        let ticket = self.ticket();
        let Some(found) = self.find(key).await else {
            return Ok(());
        };
        // An HTTP variant list expired so expires every variant filled under an older
        // generation (`http::entries::resolve`): this one is new, so that is every variant
        // filled before now, on any instance.
        let generation = match &self.inner.shared {
            Some(shared) => shared
                .next_generation()
                .await
                .map_err(|err| self.l2_failed("expire", err))?,
            None => ticket.version().shared,
        };
        let version = Version {
            local: ticket.seq(),
            shared: generation,
        };
        let expired = found
            .entry
            .expired_at(SystemTime::now(), self.inner.soft_keep)
            .with_version(version);
        let admitted = self
            .inner
            .versions
            .admit(ticket, &[(key, expired.tags())], || {
                self.inner.memory.write(key, &expired);
            });
        if admitted.is_none() {
            return Ok(());
        }
        if let Some(shared) = &self.inner.shared {
            let _in_flight = self.inner.writes.start(vec![key.to_owned()]);
            if self.inner.versions.is_current(ticket, key, expired.tags()) {
                shared
                    .set(key, &expired)
                    .await
                    .map_err(|err| self.l2_failed("expire", err))?;
            }
        }
        self.announce(key).await
    }

    /// Expires every entry carrying one of `tags` now without removing it (a soft purge), in
    /// every tier and instance, in O(tags), with the meaning of [`expire`](Self::expire).
    pub async fn expire_tags<T: AsRef<str>>(&self, tags: &[T]) -> Result<(), Error> {
        let soft: Vec<String> = tags
            .iter()
            .map(|tag| tags::soft(tag.as_ref().trim()))
            .collect();
        self.invalidate_tags(&soft).await
    }

    /// How long a soft-purged entry is kept to be served stale (`http.keep_stale`).
    pub(crate) fn soft_keep(&self) -> Duration {
        self.inner.soft_keep
    }

    /// `l2.lock`'s (lock lifetime, longest wait), when a shared tier can hold the locks.
    pub(crate) fn lock_options(&self) -> Option<(Duration, Duration)> {
        self.inner.shared.as_ref().and(self.inner.lock)
    }

    /// Takes `key`'s lock in the shared tier for `ttl` with `token`: whether it was free, or
    /// `None` when the shared tier cannot say (counted and logged).
    pub(crate) async fn try_lock(&self, key: &str, token: &str, ttl: Duration) -> Option<bool> {
        let shared = self.inner.shared.as_ref()?;
        shared
            .try_lock(key, token, ttl)
            .await
            .map_err(|err| self.l2_failed("lock", err))
            .ok()
    }

    /// Releases `key`'s lock if it still holds `token`; a failure is counted and logged (the
    /// lock then expires after `l2.lock_ttl`).
    pub(crate) async fn unlock(&self, key: &str, token: &str) {
        if let Some(shared) = &self.inner.shared {
            if let Err(err) = shared.unlock(key, token).await {
                self.l2_failed("unlock", err);
            }
        }
    }

    /// Write-through: `writer` persists `entry` first (it is the source of truth); then both
    /// tiers hold it, and other instances drop their memory copies of `key`. A writer error is
    /// returned and nothing is cached.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_tiered_cache::{CacheConfig, CachedEntry, TieredCache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = TieredCache::new(CacheConfig::default())?;
    /// let entry = CachedEntry::new("Grace", Duration::from_secs(60));
    /// cache
    ///     .write_through("user:2", entry, |entry| async move {
    ///         // e.g. UPDATE users SET name = $1 WHERE id = 2
    ///         let _ = entry.body();
    ///         Ok::<_, std::io::Error>(())
    ///     })
    ///     .await?;
    /// assert_eq!(cache.get("user:2").await.unwrap().body(), "Grace");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn write_through<F, Fut, E>(
        &self,
        key: &str,
        entry: CachedEntry,
        writer: F,
    ) -> Result<(), E>
    where
        F: FnOnce(CachedEntry) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        writer(entry.clone()).await?;
        self.store_written(key, &entry).await;
        Ok(())
    }

    /// Stores a value just written to the source of truth (or queued for it), and tells the
    /// other instances to drop their copies of `key`. Failures are counted and logged (an event
    /// that does not get through is retried): the write itself stands.
    pub(crate) async fn store_written(&self, key: &str, entry: &CachedEntry) {
        self.supersede(key).await;
        let ticket = self.ticket();
        self.store(key, entry, ticket).await;
        let _ = self.announce(key).await;
    }

    /// Marks `key` as changed by a write or a soft purge, so that no fill begun before stores
    /// over it, and waits for its shared-tier writes in flight (each went out before, or will
    /// not go out).
    async fn supersede(&self, key: &str) -> u64 {
        let order = self.inner.versions.invalidate_key(key);
        self.inner.writes.settled(key).await;
        order
    }

    /// Removes `key` from memory, then from the shared tier, and tells the other instances to
    /// drop it from their memory.
    ///
    /// When the shared tier does not take it now (down, stalled, circuit open), the result is
    /// [`Error::InvalidationPending`]: the invalidation is kept and retried in the background
    /// until it gets through, and until then this instance treats shared entries for `key`
    /// obtained before it as gone. Other instances may serve their copies until then.
    pub async fn invalidate(&self, key: &str) -> Result<(), Error> {
        let order = self.supersede(key).await;
        self.inner.memory.delete(key);
        let change = Change::Key {
            key: key.to_owned(),
            delete: true,
        };
        self.invalidate_shared("invalidate", change, order)
            .await
            .map(drop)
    }

    /// Removes every key starting with `prefix` from memory and from Redis (by `SCAN` and
    /// `UNLINK` in batches, never `KEYS`, so Redis keeps serving meanwhile), and tells the other
    /// instances. Pending when the shared tier does not take it now, as for
    /// [`invalidate`](Self::invalidate); Memcached cannot do it ([`Error::Unsupported`]).
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<Purged, Error> {
        let order = self.inner.versions.invalidate_prefix(prefix);
        self.inner.writes.idle().await;
        let memory = self.inner.memory.delete_prefix(prefix);
        let change = Change::Prefix(prefix.to_owned());
        let redis = self
            .invalidate_shared("invalidate_prefix", change, order)
            .await?;
        Ok(Purged { memory, redis })
    }

    /// Invalidates every entry carrying one of `tags`, in every tier and instance, in O(tags):
    /// each tag gets an invalidation time, and entries obtained before it are treated as gone
    /// (and deleted when next read).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_tiered_cache::{CacheConfig, CachedEntry, TieredCache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_tiered_cache::Error> {
    /// let cache = TieredCache::new(CacheConfig::default())?;
    /// let entry = CachedEntry::new("Ada", Duration::from_secs(60)).with_tags(["users", "user:1"]);
    /// cache.set("user:1", entry).await;
    /// cache.invalidate_tags(&["users"]).await?;
    /// assert!(cache.get("user:1").await.is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn invalidate_tags<T: AsRef<str>>(&self, tags: &[T]) -> Result<(), Error> {
        // Not bounded like an entry's tags: an entry stored under other limits may carry any of
        // them, and a dropped invalidation would serve it stale. The shared tier writes the
        // stamps in batches instead.
        let tags: Vec<String> = tags::distinct(tags.iter().map(AsRef::as_ref))
            .into_iter()
            .map(str::to_owned)
            .collect();
        if tags.is_empty() {
            return Ok(());
        }
        let order = self
            .inner
            .versions
            .invalidate_tags(tags.iter().map(String::as_str));
        self.invalidate_shared("invalidate_tags", Change::Tags(tags), order)
            .await
            .map(drop)
    }

    /// Removes everything this cache stored, in every tier and instance. Pending when the shared
    /// tier does not take it now, as for [`invalidate`](Self::invalidate); Memcached cannot do
    /// it ([`Error::Unsupported`]).
    pub async fn flush(&self) -> Result<Purged, Error> {
        let order = self.inner.versions.invalidate_all();
        self.inner.writes.idle().await;
        self.inner.memory.clear();
        let redis = self
            .invalidate_shared("flush", Change::Flush, order)
            .await?;
        Ok(Purged { memory: 0, redis })
    }

    /// Invalidations made by other instances (through Redis pub/sub), each delivered after it
    /// was applied to this instance's memory tier. A receiver that falls behind skips events.
    pub fn invalidation_events(&self) -> broadcast::Receiver<Invalidation> {
        self.inner.events.subscribe()
    }

    /// `change` (this instance's invalidation number `order`) in the shared tier and on the
    /// other instances; how many shared entries it removed. What does not get through now is
    /// pending.
    async fn invalidate_shared(
        &self,
        operation: &'static str,
        change: Change,
        order: u64,
    ) -> Result<u64, Error> {
        let Some(shared) = &self.inner.shared else {
            return Ok(0);
        };
        shared
            .invalidate(change, order)
            .await
            .map_err(|not_applied| match not_applied {
                NotApplied::Pending(source) => {
                    self.count_l2_error(&source);
                    Error::InvalidationPending {
                        operation,
                        source: source.into(),
                    }
                }
                NotApplied::Refused(source) => self.l2_failed(operation, source),
            })
    }

    /// Tells the other instances that `key` has a new entry (stored by this instance), so they
    /// drop their memory copies; retried until it gets through.
    async fn announce(&self, key: &str) -> Result<(), Error> {
        let change = Change::Key {
            key: key.to_owned(),
            delete: false,
        };
        let order = self.ticket().seq();
        self.invalidate_shared("publish", change, order)
            .await
            .map(drop)
    }

    pub(crate) fn count(&self, counter: Counter) {
        self.inner.counters.incr(counter);
    }

    /// The bound on background tasks (`http.max_background`).
    pub(crate) fn background(&self) -> &super::Background {
        &self.inner.background
    }

    /// A snapshot of the counters and the memory tier's size.
    pub fn stats(&self) -> Stats {
        let memory = self.inner.memory.usage();
        Stats {
            l2_circuit_open: self
                .inner
                .shared
                .as_ref()
                .is_some_and(SharedTier::circuit_open),
            invalidations_pending: self
                .inner
                .shared
                .as_ref()
                .map_or(0, |shared| shared.pending() as u64),
            memory_entries: memory.entries,
            memory_bytes: memory.bytes,
            memory_evictions: memory.evictions,
            memory_expirations: memory.expirations,
            ..self.inner.counters.snapshot()
        }
    }

    /// The ticket of a fill that begins now: take it before the loader (the origin, a
    /// database) is asked, and store what it returns with it ([`Versions`]).
    pub(crate) fn ticket(&self) -> Ticket {
        self.inner.versions.ticket()
    }

    /// Whether nothing that applies to `key` was invalidated since `ticket` (for what is not
    /// an entry but was decided under a ticket, like a hit-for-pass mark).
    pub(crate) fn still_current(&self, ticket: Ticket, key: &str) -> bool {
        self.inner.versions.is_current(ticket, key, &[])
    }

    /// The entry in memory under `key` if it is fresh and current, read without waiting.
    #[allow(clippy::ptr_arg)] // the memory map is keyed by `String`
    pub(crate) fn fresh_in_memory(&self, key: &String, now: SystemTime) -> Option<CachedEntry> {
        let entry = self.inner.memory.read_at(key, now)?;
        let current = self.memory_currency(&entry) == Currency::Current;
        (current && entry.is_fresh_at(now)).then_some(entry)
    }

    /// The entry in memory under `key` if a soft purge (of the key, or of one of its tags)
    /// expired it and it is still kept.
    #[allow(clippy::ptr_arg)] // the memory map is keyed by `String`
    fn expired_in_memory(&self, key: &String, now: SystemTime) -> Option<CachedEntry> {
        let entry = self.inner.memory.read_at(key, now)?;
        let entry = match self.memory_currency(&entry) {
            Currency::Current => entry,
            Currency::Expired(at) => entry.expired_at(at, self.inner.soft_keep),
            Currency::Outdated => return None,
        };
        entry.expired_early_at().is_some().then_some(entry)
    }

    /// What this instance's record says of a memory entry (see [`Versions::of_entry`]).
    fn memory_currency(&self, entry: &CachedEntry) -> Currency {
        self.inner
            .versions
            .of_entry(entry.version().local, entry.tags())
    }

    async fn read_memory(&self, key: &str) -> Option<CachedEntry> {
        // The memory tier cannot fail.
        self.inner.memory.get(key).await.ok().flatten()
    }

    /// Memory first; Redis when memory has nothing fresh. Whatever Redis returns is promoted.
    /// Of two stale entries, the one fresh until later wins. Entries killed by a tag
    /// invalidation are deleted where they were found. Not counted in the stats.
    pub(crate) async fn find(&self, key: &str) -> Option<Lookup> {
        self.find_for(key, Reading::Decoded).await
    }

    /// [`find`](Self::find) for a reader that may take a body as the shared tier stores it:
    /// with [`Reading::BrotliAccepted`] and the memory tier off (`l1.size = 0`, so that every
    /// hit is a shared-tier hit), a compressed body is not decompressed but sent as it is
    /// ([`CachedEntry::is_encoded`]). With the memory tier on, a shared-tier hit is decoded once
    /// and promoted, and later hits are memory hits.
    ///
    /// A promotion is a fill from the shared tier: stored in memory only if nothing
    /// invalidated the key (or one of its tags) since the read began.
    pub(crate) async fn find_for(&self, key: &str, reading: Reading) -> Option<Lookup> {
        let ticket = self.ticket();
        let memory = self.read_memory(key).await;
        let memory = self.unless_invalidated(key, memory, Source::Memory).await;
        if memory.as_ref().is_some_and(CachedEntry::is_fresh) {
            return memory.map(|entry| Lookup {
                entry,
                source: Source::Memory,
            });
        }
        let reading = if self.inner.memory.is_on() {
            Reading::Decoded
        } else {
            reading
        };
        let shared = self.read_shared(key, reading).await;
        let shared = self
            .unless_invalidated(key, shared, self.shared_source())
            .await
            .map(|entry| {
                let version = Version {
                    local: ticket.seq(),
                    shared: entry.version().shared,
                };
                entry.with_version(version)
            });
        if let Some(entry) = shared.as_ref().filter(|entry| !entry.is_encoded()) {
            let subjects = [(key, entry.tags())];
            self.inner.versions.admit(ticket, &subjects, || {
                self.inner.memory.write(key, entry);
            });
        }
        let now = SystemTime::now();
        let fresh_until = |entry: &CachedEntry| entry.stored_at() + entry.ttl();
        let shared_is_better = match (&memory, &shared) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(memory), Some(shared)) => {
                shared.is_fresh_at(now) || fresh_until(shared) > fresh_until(memory)
            }
        };
        if shared_is_better {
            shared.map(|entry| Lookup {
                entry,
                source: self.shared_source(),
            })
        } else {
            memory.map(|entry| Lookup {
                entry,
                source: Source::Memory,
            })
        }
    }

    /// `entry`, unless an invalidation outdated it; then it is deleted from the tier it came
    /// from. A soft purge after it leaves it expired.
    async fn unless_invalidated(
        &self,
        key: &str,
        entry: Option<CachedEntry>,
        source: Source,
    ) -> Option<CachedEntry> {
        let entry = entry?;
        let currency = match source {
            Source::Memory => self.memory_currency(&entry),
            Source::Redis | Source::Memcached => self.shared_currency(&entry).await,
        };
        match currency {
            Currency::Current => return Some(entry),
            Currency::Expired(at) => return Some(entry.expired_at(at, self.inner.soft_keep)),
            Currency::Outdated => {}
        }
        match source {
            Source::Memory => {
                self.inner.memory.delete(key);
            }
            Source::Redis | Source::Memcached => {
                if let Some(shared) = &self.inner.shared {
                    if let Err(err) = shared.remove(key).await {
                        self.l2_failed("remove", err);
                    }
                }
            }
        }
        None
    }

    /// What the shared tier's tag stamps say of an entry read from it: outdated when one of
    /// its tags was invalidated under a newer generation than the one it was filled under,
    /// expired when one was soft-purged so. Stamps this instance does not know are read in one
    /// guarded round trip (see [`SharedTier::tag_stamps`]); if it cannot answer, the entry
    /// counts as current (its memory copy lives at most `l1.max_ttl`).
    async fn shared_currency(&self, entry: &CachedEntry) -> Currency {
        let filled = entry.version().shared;
        let stamps = &self.inner.stamps;
        let mut unknown = Vec::new();
        let mut expired = false;
        for tag in entry.tags() {
            match stamps.get(tag) {
                Some(stamp) if stamp > filled => return Currency::Outdated,
                Some(_) => {}
                None => unknown.push(tag.clone()),
            }
            match stamps.get_soft(tag) {
                Some(stamp) => expired |= stamp > filled,
                None => unknown.push(tags::soft(tag)),
            }
        }
        if !unknown.is_empty() {
            let Some(shared) = &self.inner.shared else {
                return Currency::Current;
            };
            let names: Vec<&str> = unknown.iter().map(String::as_str).collect();
            let read = match shared.tag_stamps(&names).await {
                Ok(read) => read,
                Err(err) => {
                    self.l2_failed("tag_stamps", err);
                    return Currency::Current;
                }
            };
            for (tag, stamp) in unknown.iter().zip(read) {
                stamps.record(tag, stamp);
                if stamp > filled {
                    if !tags::is_soft(tag) {
                        return Currency::Outdated;
                    }
                    expired = true;
                }
            }
        }
        if expired {
            // The shared tier keeps no time for a soft purge: stale from when it is seen here.
            Currency::Expired(SystemTime::now())
        } else {
            Currency::Current
        }
    }

    async fn read_shared(&self, key: &str, reading: Reading) -> Option<CachedEntry> {
        let shared = self.inner.shared.as_ref()?;
        shared.get(key, reading).await.unwrap_or_else(|err| {
            self.l2_failed("get", err);
            None
        })
    }

    pub(crate) fn count_lookup(&self, found: Option<&Lookup>) {
        let counter = match found {
            Some(found) if found.is_fresh() => match found.source {
                Source::Memory => Counter::MemoryHits,
                Source::Redis | Source::Memcached => Counter::SharedHits,
            },
            Some(_) => {
                self.inner.counters.incr(Counter::StaleHits);
                Counter::Misses
            }
            None => Counter::Misses,
        };
        self.inner.counters.incr(counter);
    }

    /// Stores each of `writes` (filled under `ticket`) in memory now, all or none: none when
    /// an invalidation overtook the fill ([`Kept::Outdated`]). Returns them as stored (bounded
    /// tags), without those too large or past their lifetime, for
    /// [`store_shared_later`](Self::store_shared_later).
    pub(crate) fn store_in_memory_now(
        &self,
        writes: Vec<(String, CachedEntry)>,
        ticket: Ticket,
    ) -> Result<Vec<(String, CachedEntry)>, Kept> {
        let prepared: Vec<(String, CachedEntry)> = writes
            .into_iter()
            .filter_map(|(key, entry)| {
                let prepared = self.prepare(&key, &entry, ticket)?;
                Some((key, prepared))
            })
            .collect();
        let subjects: Vec<(&str, &[String])> = prepared
            .iter()
            .map(|(key, entry)| (key.as_str(), entry.tags()))
            .collect();
        let admitted = self.inner.versions.admit(ticket, &subjects, || {
            for (key, entry) in &prepared {
                self.inner.memory.write(key, entry);
            }
        });
        if admitted.is_none() {
            self.inner.counters.incr(Counter::Outdated);
            return Err(Kept::Outdated);
        }
        self.inner
            .counters
            .add(Counter::Stores, prepared.len() as u64);
        Ok(prepared)
    }

    /// Writes `writes` (as [`store_in_memory_now`](Self::store_in_memory_now) returned them) to
    /// the shared tier in the background, each only if it is still current, then releases
    /// `lock`: the way the HTTP layer stores what it just passed to a client, so the shared
    /// tier's round trip (and brotli) never delays a response.
    /// [`wait_for_writes`](Self::wait_for_writes) waits for them.
    pub(crate) fn store_shared_later(
        &self,
        writes: Vec<(String, CachedEntry)>,
        lock: Option<SharedLock>,
        ticket: Ticket,
    ) {
        if self.inner.shared.is_none() || writes.is_empty() {
            return;
        }
        // Past `http.max_background` the shared tier goes without: the entry is in memory
        // here, and another instance fills it from the origin. The lock is released (in the
        // background, by its guard).
        let Some(place) = self.reserve_background("shared_write") else {
            return;
        };
        let cache = self.clone();
        // Registered before the checks: an invalidation of one of the keys waits for this.
        let in_flight = self
            .inner
            .writes
            .start(writes.iter().map(|(key, _)| key.clone()).collect());
        place.spawn(async move {
            for (key, entry) in &writes {
                cache.write_shared(key, entry, ticket).await;
            }
            if let Some(lock) = lock {
                lock.release().await;
            }
            drop(in_flight);
        });
    }

    /// Waits until every shared-tier write started in the background before this call has
    /// finished ([`CacheLayer`](crate::CacheLayer) stores what it passed to a client that way):
    /// for a graceful shutdown, or a test that reads through another instance.
    pub async fn wait_for_writes(&self) {
        self.inner.writes.idle().await;
    }

    /// Stores `entry`, filled under `ticket`, in memory and in the shared tier, for its
    /// remaining lifetime — unless an invalidation overtook the fill.
    pub(crate) async fn store(&self, key: &str, entry: &CachedEntry, ticket: Ticket) -> Kept {
        let Some(prepared) = self.prepare(key, entry, ticket) else {
            return Kept::Unstorable;
        };
        let Ok(mut stored) = self.store_in_memory_now(vec![(key.to_owned(), prepared)], ticket)
        else {
            return Kept::Outdated;
        };
        let Some((_, stored)) = stored.pop() else {
            return Kept::Unstorable;
        };
        if self.inner.shared.is_some() {
            let _in_flight = self.inner.writes.start(vec![key.to_owned()]);
            self.write_shared(key, &stored, ticket).await;
        }
        Kept::Stored
    }

    /// `entry` as it is stored under `key`: its version is `ticket`'s, with at most
    /// `tags.max_per_entry` tags; `None` (counted) when it is too large or past its lifetime.
    fn prepare(&self, key: &str, entry: &CachedEntry, ticket: Ticket) -> Option<CachedEntry> {
        let too_large = entry.body().len() as u64 > self.inner.max_entry_size;
        // A body sent as the shared tier's brotli bytes is a response, not an entry.
        let unstorable = too_large || entry.is_encoded();
        if unstorable || entry.remaining_lifetime_at(SystemTime::now()).is_zero() {
            self.inner.counters.incr(Counter::StoreSkips);
            return None;
        }
        let entry = match self.inner.tag_limits.bound(entry.tags()) {
            None => entry.clone(),
            Some(Bounded { tags, dropped }) => {
                self.tags_dropped(dropped, key, "tags.max_per_entry or tags.max_length");
                entry.clone().with_tags(tags)
            }
        };
        Some(entry.with_version(ticket.version()))
    }

    /// Writes `entry` to the shared tier if it is still current; the caller registered the
    /// write in flight first.
    async fn write_shared(&self, key: &str, entry: &CachedEntry, ticket: Ticket) {
        let Some(shared) = &self.inner.shared else {
            return;
        };
        if !self.inner.versions.is_current(ticket, key, entry.tags()) {
            self.inner.counters.incr(Counter::Outdated);
            return;
        }
        if let Err(err) = shared.set(key, entry).await {
            self.l2_failed("set", err);
        }
    }

    /// Counts `dropped` tags left off an entry by `limit`, and logs it with `source` (the key, or
    /// the header they came in): at most one warning per interval, the rest at debug.
    pub(crate) fn tags_dropped(&self, dropped: u64, source: &str, limit: &'static str) {
        if dropped == 0 {
            return;
        }
        self.inner.counters.add(Counter::TagsDropped, dropped);
        if self.inner.tag_warnings.allow() {
            tracing::warn!(source, dropped, limit, "tags left off an entry");
        } else {
            tracing::debug!(source, dropped, limit, "tags left off an entry");
        }
    }

    fn count_l2_error(&self, source: &TierError) {
        let counter = match source {
            TierError::Decode(_) => Counter::L2DecodeErrors,
            TierError::CircuitOpen => Counter::L2Skipped,
            TierError::TooLarge { .. } => Counter::L2TooLarge,
            _ => Counter::L2Errors,
        };
        self.inner.counters.incr(counter);
    }

    /// Counts and logs an L2 failure (at most one warning per interval; the rest at debug).
    fn l2_failed(&self, operation: &'static str, source: TierError) -> Error {
        self.count_l2_error(&source);
        if matches!(source, TierError::CircuitOpen | TierError::TooLarge { .. }) {
            // The breaker logged when it opened; skipping is what it is for. Oversized entries
            // are expected with a small item limit: counted, not warned about.
        } else if self.inner.l2_warnings.allow() {
            tracing::warn!(operation, error = %source, "shared tier failed; serving without it");
        } else {
            tracing::debug!(operation, error = %source, "shared tier failed");
        }
        match source {
            TierError::Unsupported { backend, .. } => Error::Unsupported { operation, backend },
            source => Error::L2 {
                operation,
                source: source.into(),
            },
        }
    }
}

/// What [`TieredCache::store`] did with an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kept {
    Stored,
    /// Too large, or past its lifetime (counted as a store skip).
    Unstorable,
    /// An invalidation came after its fill began: not stored anywhere.
    Outdated,
}

/// This instance's record of invalidations, as events from other instances update it.
struct Record {
    memory: Arc<MemoryTier>,
    versions: Arc<Versions>,
    stamps: Arc<TagStamps>,
    /// Changed on a reconnection: the shared generation is read again.
    relearn: tokio::sync::watch::Sender<u64>,
}

impl Record {
    /// Applies another instance's invalidation (or a reconnection, after which events may
    /// have been missed) to the record and the memory tier, then passes it on to observers.
    /// Marked before memory is touched, so that no fill in progress here stores over it.
    fn apply_remote(&self, events: &broadcast::Sender<Invalidation>, invalidation: Invalidation) {
        let Self {
            memory,
            versions,
            stamps,
            relearn,
        } = self;
        match &invalidation {
            Invalidation::Key(key) => {
                versions.invalidate_key(key);
                memory.delete(key);
            }
            Invalidation::Prefix(prefix) => {
                versions.invalidate_prefix(prefix);
                memory.delete_prefix(prefix);
            }
            Invalidation::Tags { tags, generation } => {
                versions.invalidate_tags(tags.iter().map(String::as_str));
                versions.saw_shared(*generation);
                for tag in tags {
                    stamps.record(tag, *generation);
                }
            }
            Invalidation::Flush => {
                versions.invalidate_all();
                memory.clear();
            }
            Invalidation::Resubscribed => {
                versions.invalidate_all();
                memory.clear();
                stamps.clear();
                relearn.send_modify(|count| *count += 1);
            }
        }
        // Nobody listening is fine.
        let _ = events.send(invalidation);
    }
}

/// Lets one event through per interval.
struct LogThrottle {
    interval_ms: u64,
    last_ms: AtomicU64,
}

impl LogThrottle {
    fn new(interval: Duration) -> Self {
        Self {
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            last_ms: AtomicU64::new(0),
        }
    }

    fn allow(&self) -> bool {
        let now = unix_ms(SystemTime::now());
        let last = self.last_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= self.interval_ms
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_allows_one_event_per_interval() {
        let throttle = LogThrottle::new(Duration::from_secs(3600));
        assert!(throttle.allow());
        assert!(!throttle.allow());
    }

    #[tokio::test]
    async fn oversized_and_expired_entries_are_not_stored() {
        let config = CacheConfig::builder().max_entry_size(4).build().unwrap();
        let cache = TieredCache::new(config).unwrap();
        cache
            .set("big", CachedEntry::new("12345", Duration::from_secs(60)))
            .await;
        let expired = CachedEntry::new("1", Duration::from_secs(1))
            .with_stored_at(SystemTime::now() - Duration::from_secs(5));
        cache.set("old", expired).await;
        assert!(cache.get("big").await.is_none());
        assert!(cache.get("old").await.is_none());
        assert_eq!(cache.stats().store_skips, 2);
        assert_eq!(cache.stats().stores, 0);
    }
}
