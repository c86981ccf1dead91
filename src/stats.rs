//! Counters kept by the cache and the [`Stats`] snapshot read from them.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::metrics::{label, Label};

/// A snapshot of the cache's counters, from [`TieredCache::stats`](crate::TieredCache::stats).
///
/// Counters are monotonic since the cache was created; `memory_entries` and `memory_bytes` are the
/// memory tier's current size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Fresh entries answered from memory.
    pub memory_hits: u64,
    /// Fresh entries answered from the shared tier, Redis or Memcached (and promoted into memory).
    pub redis_hits: u64,
    /// Lookups that found only an entry past its time to live (kept for stale serving).
    pub stale_hits: u64,
    /// Lookups that found no fresh entry in any tier.
    pub misses: u64,
    /// Loader calls made by [`get_or_set`](crate::TieredCache::get_or_set).
    pub loader_calls: u64,
    /// Loader calls that returned an error.
    pub loader_errors: u64,
    /// Callers that waited for another caller's load of the same key instead of loading.
    pub coalesced_waits: u64,
    /// Entries stored.
    pub stores: u64,
    /// Entries not stored because they were larger than `http.max_entry_size` or already expired.
    pub store_skips: u64,
    /// Fills not stored (or not written to the shared tier) because an invalidation of their
    /// key, a tag, a prefix or everything came after they began: what they loaded may be older
    /// than it (metric `tiered_cache_outdated_total`).
    pub outdated: u64,
    /// Memory entries dropped by the capacity bound or by `l1.max_ttl` (approximate).
    pub memory_evictions: u64,
    /// Memory entries found past their own lifetime and removed on read.
    pub memory_expirations: u64,
    /// Entries in memory now.
    pub memory_entries: u64,
    /// Weighted bytes in memory now (never more than `l1.size`).
    pub memory_bytes: u64,
    /// Shared-tier (Redis or Memcached) operations that failed or timed out; each one degraded to
    /// a miss or a skipped write.
    pub l2_errors: u64,
    /// Shared-tier values that did not decode as entries; each was treated as a miss and deleted.
    pub l2_decode_errors: u64,
    /// Shared-tier operations skipped at once because the circuit breaker was open.
    pub l2_skipped: u64,
    /// Entries kept out of the shared tier because their encoding exceeded its item size limit
    /// (Memcached's `l2.max_item_size`); they were still stored in memory.
    pub l2_too_large: u64,
    /// Whether a circuit breaker of the shared tier is open now (the tier, or on Redis Cluster
    /// one of its primaries, being skipped).
    pub l2_circuit_open: bool,
    /// Invalidations that did not reach the shared tier yet, retried in the background (see
    /// [`Error::InvalidationPending`](crate::Error::InvalidationPending)).
    pub invalidations_pending: u64,
    /// Misses another instance loaded while this one waited on the shared tier's lock
    /// (`l2.lock`).
    pub lock_waits_filled: u64,
    /// HTTP requests that bypassed the cache (route rules, methods, `no-store`, bodies).
    pub bypasses: u64,
    /// Tags left off entries: beyond `tags.max_per_entry`, longer than `tags.max_length`, or
    /// past `tags.max_header_bytes` of a tag header (duplicates are not counted).
    pub tags_dropped: u64,
    /// HTTP responses the cache did not store, for any reason (the policy refused, too large,
    /// a body of another length than declared, cut off or failed, too many variants); the
    /// metric `tiered_cache_not_stored_total` has the reason as a label.
    pub not_stored: u64,
    /// HTTP requests sent straight to the origin, without a lookup or coalescing, because their
    /// key's last response could not be stored (hit-for-pass, `http.pass_ttl`).
    pub passes: u64,
    /// Refreshes started before expiry: refresh-ahead (`http.refresh_ahead`), early refreshes of
    /// `get_or_set` (`early_refresh.beta`), and reloads of soft-purged entries.
    pub early_refreshes: u64,
    /// Background tasks not started because `http.max_background` ran already: a body not read
    /// for the cache after an early `304` (its client got the full response instead) or `412`,
    /// a background revalidation or refresh-ahead skipped. The metric
    /// `tiered_cache_background_skipped_total` has the task as a label.
    pub background_skipped: u64,
}

impl Stats {
    /// Of all lookups, the share answered fresh from memory (0.0 when there were none).
    pub fn memory_hit_ratio(&self) -> f64 {
        ratio(self.memory_hits, self.lookups())
    }

    /// Of all lookups, the share answered fresh from the shared tier, Redis or Memcached (0.0
    /// when there were none).
    pub fn redis_hit_ratio(&self) -> f64 {
        ratio(self.redis_hits, self.lookups())
    }

    fn lookups(&self) -> u64 {
        self.memory_hits + self.redis_hits + self.misses
    }

    /// Fresh hits (both tiers) over all lookups, 0.0 when there were none.
    pub fn hit_ratio(&self) -> f64 {
        ratio(self.memory_hits + self.redis_hits, self.lookups())
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// One monotonic counter of [`Counters`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Counter {
    MemoryHits,
    SharedHits,
    StaleHits,
    Misses,
    LoaderCalls,
    LoaderErrors,
    CoalescedWaits,
    Stores,
    StoreSkips,
    MemoryExpirations,
    L2Errors,
    L2DecodeErrors,
    L2Skipped,
    L2TooLarge,
    LockWaitsFilled,
    Bypasses,
    TagsDropped,
    NotStored,
    Passes,
    Outdated,
    EarlyRefreshes,
    BackgroundSkipped,
}

const COUNTERS: usize = Counter::BackgroundSkipped as usize + 1;

/// `(metric, labels)` of a counter published under a metric (see [`crate::metrics`]).
type Metric = (&'static str, &'static [Label]);

impl Counter {
    /// The metric this counter is published as, if any.
    fn metric(self) -> Option<Metric> {
        const REQUESTS: &str = "tiered_cache_requests_total";
        const L2_ERRORS: &str = "tiered_cache_l2_errors_total";
        Some(match self {
            Self::MemoryHits => (
                REQUESTS,
                const { &[label("tier", "memory"), label("result", "hit")] },
            ),
            Self::SharedHits => (
                REQUESTS,
                const { &[label("tier", "redis"), label("result", "hit")] },
            ),
            Self::StaleHits => (
                REQUESTS,
                const { &[label("tier", "origin"), label("result", "stale")] },
            ),
            Self::Misses => (
                REQUESTS,
                const { &[label("tier", "origin"), label("result", "miss")] },
            ),
            Self::Bypasses => (
                REQUESTS,
                const { &[label("tier", "origin"), label("result", "bypass")] },
            ),
            Self::Passes => (
                REQUESTS,
                const { &[label("tier", "origin"), label("result", "pass")] },
            ),
            Self::LoaderCalls => ("tiered_cache_loader_calls_total", &[]),
            Self::CoalescedWaits => ("tiered_cache_coalesced_total", &[]),
            Self::Stores => ("tiered_cache_stores_total", &[]),
            Self::L2Errors => (L2_ERRORS, const { &[label("kind", "error")] }),
            Self::L2DecodeErrors => (L2_ERRORS, const { &[label("kind", "decode")] }),
            Self::L2Skipped => (L2_ERRORS, const { &[label("kind", "skipped")] }),
            Self::L2TooLarge => (L2_ERRORS, const { &[label("kind", "too_large")] }),
            Self::TagsDropped => ("tiered_cache_tags_dropped_total", &[]),
            Self::Outdated => ("tiered_cache_outdated_total", &[]),
            Self::EarlyRefreshes => ("tiered_cache_early_refreshes_total", &[]),
            // By reason or task, where it is known (`metrics::not_stored`,
            // `metrics::background_skipped`).
            Self::NotStored
            | Self::BackgroundSkipped
            | Self::LoaderErrors
            | Self::StoreSkips
            | Self::MemoryExpirations
            | Self::LockWaitsFilled => return None,
        })
    }
}

/// Lock-free counters shared by every clone of a cache.
#[derive(Debug, Default)]
pub(crate) struct Counters([AtomicU64; COUNTERS]);

impl Counters {
    pub(crate) fn incr(&self, counter: Counter) {
        self.add(counter, 1);
    }

    pub(crate) fn add(&self, counter: Counter, amount: u64) {
        self.0[counter as usize].fetch_add(amount, Ordering::Relaxed);
        if let Some((name, labels)) = counter.metric() {
            crate::metrics::increment(name, labels, amount);
        }
    }

    pub(crate) fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize].load(Ordering::Relaxed)
    }

    /// The counters as a [`Stats`]; the memory tier fills in its own figures.
    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            memory_hits: self.get(Counter::MemoryHits),
            redis_hits: self.get(Counter::SharedHits),
            stale_hits: self.get(Counter::StaleHits),
            misses: self.get(Counter::Misses),
            loader_calls: self.get(Counter::LoaderCalls),
            loader_errors: self.get(Counter::LoaderErrors),
            coalesced_waits: self.get(Counter::CoalescedWaits),
            stores: self.get(Counter::Stores),
            store_skips: self.get(Counter::StoreSkips),
            outdated: self.get(Counter::Outdated),
            memory_expirations: self.get(Counter::MemoryExpirations),
            l2_errors: self.get(Counter::L2Errors),
            l2_decode_errors: self.get(Counter::L2DecodeErrors),
            l2_skipped: self.get(Counter::L2Skipped),
            l2_too_large: self.get(Counter::L2TooLarge),
            lock_waits_filled: self.get(Counter::LockWaitsFilled),
            bypasses: self.get(Counter::Bypasses),
            tags_dropped: self.get(Counter::TagsDropped),
            not_stored: self.get(Counter::NotStored),
            passes: self.get(Counter::Passes),
            early_refreshes: self.get(Counter::EarlyRefreshes),
            background_skipped: self.get(Counter::BackgroundSkipped),
            ..Stats::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_ratio_counts_both_tiers() {
        let stats = Stats {
            memory_hits: 2,
            redis_hits: 1,
            misses: 1,
            ..Stats::default()
        };
        assert_eq!(stats.hit_ratio(), 0.75);
        assert_eq!(stats.memory_hit_ratio(), 0.5);
        assert_eq!(stats.redis_hit_ratio(), 0.25);
        assert_eq!(Stats::default().hit_ratio(), 0.0);
    }
}
