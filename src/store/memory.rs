//! L1: an in-process mini-moka cache weighed in bytes, with per-entry expiry checked on read.
//!
//! mini-moka has a cache-wide time to live (set to `l1.max_ttl`) but no per-entry expiry and no
//! eviction listener, so each entry's own lifetime is checked when it is read, and evictions are
//! derived from the entries the cache admitted, removed on request, and still holds.

use std::future::{ready, Future};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use mini_moka::sync::{Cache, ConcurrentCacheExt};

use super::tier::{Tier, TierError};
use super::CachedEntry;
use crate::config::L1Config;

/// The memory tier; `size = 0` makes every operation a no-op.
pub(crate) struct MemoryTier {
    cache: Option<Cache<String, CachedEntry>>,
    capacity: u64,
    /// Weight inserted since mini-moka last applied its pending writes (and so its evictions).
    unsynced: AtomicU64,
    /// Keys inserted that were not present before.
    admitted: AtomicU64,
    /// Keys removed by `delete`, `delete_prefix` or expiry on read.
    removed: AtomicU64,
    /// Of `removed`, those found past their own lifetime on read.
    expired: AtomicU64,
}

/// What the memory tier reports for [`Stats`](crate::Stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MemoryUsage {
    pub(crate) entries: u64,
    pub(crate) bytes: u64,
    pub(crate) evictions: u64,
    pub(crate) expirations: u64,
}

impl MemoryTier {
    pub(crate) fn new(config: &L1Config) -> Self {
        let cache = (config.size > 0).then(|| {
            Cache::builder()
                .max_capacity(config.size)
                .weigher(|key: &String, entry: &CachedEntry| weigh(key, entry))
                .time_to_live(config.max_ttl)
                .build()
        });
        Self {
            cache,
            capacity: config.size,
            unsynced: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            removed: AtomicU64::new(0),
            expired: AtomicU64::new(0),
        }
    }

    /// Whether this tier holds anything (`l1.size` above zero).
    pub(crate) fn is_on(&self) -> bool {
        self.cache.is_some()
    }

    /// The entry under `key` if it has not outlived its own lifetime (fresh or stale).
    fn read(&self, key: &str) -> Option<CachedEntry> {
        self.read_at(&key.to_owned(), SystemTime::now())
    }

    /// [`read`](Self::read) at `now`, for a caller that owns the key (the map wants `&String`).
    #[allow(clippy::ptr_arg)]
    pub(crate) fn read_at(&self, key: &String, now: SystemTime) -> Option<CachedEntry> {
        let cache = self.cache.as_ref()?;
        let entry = cache.get(key)?;
        if entry.remaining_lifetime_at(now).is_zero() {
            cache.invalidate(key);
            self.removed.fetch_add(1, Ordering::Relaxed);
            self.expired.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(entry)
    }

    pub(crate) fn write(&self, key: &str, entry: &CachedEntry) {
        let Some(cache) = &self.cache else { return };
        let weight = weigh(key, entry);
        if u64::from(weight) > self.capacity {
            // mini-moka would hold it until its next maintenance, then evict it.
            return;
        }
        let key = key.to_owned();
        if !cache.contains_key(&key) {
            self.admitted.fetch_add(1, Ordering::Relaxed);
        }
        cache.insert(key, entry.clone());
        // mini-moka evicts when it applies its write log, which can hold hundreds of pending
        // inserts; applying it once 1/16 of the budget is pending bounds the overshoot.
        let unsynced = self
            .unsynced
            .fetch_add(u64::from(weight), Ordering::Relaxed);
        if unsynced + u64::from(weight) > self.capacity / 16 {
            self.unsynced.store(0, Ordering::Relaxed);
            cache.sync();
            crate::metrics::memory_bytes(cache.weighted_size());
        }
    }

    pub(crate) fn delete(&self, key: &str) -> bool {
        let Some(cache) = &self.cache else {
            return false;
        };
        let key = key.to_owned();
        let present = cache.contains_key(&key);
        if present {
            cache.invalidate(&key);
            self.removed.fetch_add(1, Ordering::Relaxed);
        }
        present
    }

    pub(crate) fn delete_prefix(&self, prefix: &str) -> u64 {
        let Some(cache) = &self.cache else { return 0 };
        let keys: Vec<String> = cache
            .iter()
            .filter(|item| item.key().starts_with(prefix))
            .map(|item| item.key().clone())
            .collect();
        keys.iter().filter(|key| self.delete(key)).count() as u64
    }

    /// Drops every entry.
    pub(crate) fn clear(&self) {
        if let Some(cache) = &self.cache {
            let entries = cache.entry_count();
            cache.invalidate_all();
            self.removed.fetch_add(entries, Ordering::Relaxed);
        }
    }

    /// Current size, with pending internal work applied first so the figures are exact.
    pub(crate) fn usage(&self) -> MemoryUsage {
        let Some(cache) = &self.cache else {
            return MemoryUsage::default();
        };
        cache.sync();
        let entries = cache.entry_count();
        let admitted = self.admitted.load(Ordering::Relaxed);
        let removed = self.removed.load(Ordering::Relaxed);
        MemoryUsage {
            entries,
            bytes: cache.weighted_size(),
            evictions: admitted.saturating_sub(removed).saturating_sub(entries),
            expirations: self.expired.load(Ordering::Relaxed),
        }
    }
}

fn weigh(key: &str, entry: &CachedEntry) -> u32 {
    u32::try_from(entry.weight() + key.len() as u64).unwrap_or(u32::MAX)
}

/// Every operation completes at once; the futures are ready when created.
impl Tier for MemoryTier {
    fn get(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<CachedEntry>, TierError>> + Send {
        ready(Ok(self.read(key)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn tier(size: u64) -> MemoryTier {
        MemoryTier::new(&L1Config {
            size,
            max_ttl: Duration::from_secs(60),
        })
    }

    #[test]
    fn expired_entries_are_removed_on_read() {
        let tier = tier(1 << 20);
        let gone = CachedEntry::new("x", Duration::from_secs(1))
            .with_stored_at(SystemTime::now() - Duration::from_secs(2));
        tier.write("k", &gone);
        assert!(tier.read("k").is_none());
        assert_eq!(tier.usage().expirations, 1);
        assert_eq!(tier.usage().entries, 0);
    }

    #[test]
    fn stale_entries_within_their_stale_ttl_are_kept() {
        let tier = tier(1 << 20);
        let stale = CachedEntry::new("x", Duration::from_secs(1))
            .with_stale_ttl(Duration::from_secs(60))
            .with_stored_at(SystemTime::now() - Duration::from_secs(2));
        tier.write("k", &stale);
        assert!(tier.read("k").is_some());
    }

    #[test]
    fn zero_size_disables_the_tier() {
        let tier = tier(0);
        tier.write("k", &CachedEntry::new("x", Duration::from_secs(10)));
        assert!(tier.read("k").is_none());
        assert_eq!(tier.usage(), MemoryUsage::default());
    }

    #[test]
    fn prefix_removal_leaves_other_keys() {
        let tier = tier(1 << 20);
        for key in ["user:1", "user:2", "order:1"] {
            tier.write(key, &CachedEntry::new("x", Duration::from_secs(10)));
        }
        assert_eq!(tier.delete_prefix("user:"), 2);
        assert!(tier.read("order:1").is_some());
        assert!(tier.read("user:1").is_none());
    }
}
