//! The memory tier is bounded by bytes, not by entry count.

use std::time::Duration;

use tower_tiered_cache::{CacheConfig, CachedEntry, TieredCache};

#[tokio::test]
async fn weighted_size_never_exceeds_capacity_while_inserting_ten_times_it() {
    const CAPACITY: u64 = 1024 * 1024;
    let config = CacheConfig::builder().l1_size(CAPACITY).build().unwrap();
    let cache = TieredCache::new(config).unwrap();
    let body = vec![b'x'; 10 * 1024];

    let mut inserted = 0;
    let mut key = 0;
    while inserted < 10 * CAPACITY {
        cache
            .set(
                &format!("k{key}"),
                CachedEntry::new(body.clone(), Duration::from_secs(60)),
            )
            .await;
        inserted += body.len() as u64;
        key += 1;
        if key % 10 == 0 {
            let stats = cache.stats();
            assert!(
                stats.memory_bytes <= CAPACITY,
                "{} > {CAPACITY}",
                stats.memory_bytes
            );
        }
    }

    let stats = cache.stats();
    assert!(stats.memory_bytes <= CAPACITY);
    assert!(
        stats.memory_bytes > CAPACITY / 2,
        "the budget is used: {}",
        stats.memory_bytes
    );
    assert!(
        stats.memory_entries <= 100,
        "10 KiB entries in 1 MiB: {}",
        stats.memory_entries
    );
    assert!(
        stats.memory_evictions >= key - stats.memory_entries - 10,
        "{stats:?}"
    );
}

#[tokio::test]
async fn an_entry_larger_than_the_memory_budget_is_not_kept_in_memory() {
    let config = CacheConfig::builder().l1_size(64 * 1024).build().unwrap();
    let cache = TieredCache::new(config).unwrap();
    cache
        .set(
            "big",
            CachedEntry::new(vec![0u8; 128 * 1024], Duration::from_secs(60)),
        )
        .await;
    assert!(cache.get("big").await.is_none());
    assert!(cache.stats().memory_bytes <= 64 * 1024);
}

#[tokio::test]
async fn zero_size_disables_memory_and_reads_miss() {
    let config = CacheConfig::builder().l1_size(0).build().unwrap();
    let cache = TieredCache::new(config).unwrap();
    cache
        .set("k", CachedEntry::new("v", Duration::from_secs(60)))
        .await;
    assert!(cache.get("k").await.is_none());
    assert_eq!(cache.stats().memory_entries, 0);
}
