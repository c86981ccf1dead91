//! Reads across the tiers: memory hits, Redis hits with promotion, expiry in both tiers.
#![cfg(feature = "redis")]

mod common;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::{cache_on, config, RedisServer};
use fred::interfaces::KeysInterface;
use tower_tiered_cache::{CacheConfig, CachedEntry, Source, TieredCache};

fn entry(body: &'static str, ttl: Duration) -> CachedEntry {
    CachedEntry::new(body, ttl)
}

#[tokio::test]
async fn second_read_is_a_memory_hit() {
    let cache = TieredCache::new(CacheConfig::default()).unwrap();
    cache.set("k", entry("v", Duration::from_secs(60))).await;

    let found = cache.lookup("k").await.expect("cached");
    assert_eq!(found.entry.body(), "v");
    assert_eq!(found.source, Source::Memory);
    let stats = cache.stats();
    assert_eq!(
        (stats.memory_hits, stats.redis_hits, stats.misses),
        (1, 0, 0)
    );
}

#[tokio::test]
async fn fresh_instance_reads_redis_then_promotes_to_memory() {
    let redis = RedisServer::start();
    let writer = cache_on(&redis, config("promote")).await;
    writer
        .set("user:1", entry("Ada", Duration::from_secs(60)))
        .await;

    // A new instance (a restart, or another replica) starts with an empty memory tier.
    let reader = cache_on(&redis, config("promote")).await;
    let first = reader.lookup("user:1").await.expect("found in redis");
    assert_eq!(
        (first.entry.body().as_ref(), first.source),
        (&b"Ada"[..], Source::Redis)
    );
    let second = reader.lookup("user:1").await.expect("promoted");
    assert_eq!(second.source, Source::Memory);

    let stats = reader.stats();
    assert_eq!(
        (stats.redis_hits, stats.memory_hits, stats.misses),
        (1, 1, 0)
    );
    assert_eq!(stats.memory_entries, 1);
}

#[tokio::test]
async fn promotion_keeps_the_remaining_ttl() {
    let redis = RedisServer::start();
    let writer = cache_on(&redis, config("remaining")).await;
    let stored_at = SystemTime::now() - Duration::from_secs(50);
    let entry = entry("old", Duration::from_secs(60)).with_stored_at(stored_at);
    writer.set("k", entry.clone()).await;

    let ttl_ms: i64 = redis.client().await.pttl("remaining:e:k").await.unwrap();
    assert!(
        (1..=10_000).contains(&ttl_ms),
        "redis PX is the remaining 10 s, got {ttl_ms} ms"
    );

    let reader = cache_on(&redis, config("remaining")).await;
    let promoted = reader.get("k").await.expect("fresh for 10 s more");
    assert_eq!(promoted.stored_at(), entry.stored_at());
    assert_eq!(promoted.ttl(), Duration::from_secs(60));
}

#[tokio::test]
async fn entries_expire_in_both_tiers() {
    let redis = RedisServer::start();
    let cache = cache_on(&redis, config("expiry")).await;
    cache
        .set("short", entry("v", Duration::from_millis(300)))
        .await;
    assert!(cache.get("short").await.is_some());

    tokio::time::sleep(Duration::from_millis(400)).await;

    assert!(
        cache.get("short").await.is_none(),
        "memory tier honours the entry's TTL"
    );
    let exists: u64 = redis.client().await.exists("expiry:e:short").await.unwrap();
    assert_eq!(exists, 0, "redis expired the key with PX");
    let fresh = cache_on(&redis, config("expiry")).await;
    assert!(fresh.get("short").await.is_none());
}

#[tokio::test]
async fn memory_tier_is_capped_by_max_ttl() {
    let redis = RedisServer::start();
    let cache = cache_on(
        &redis,
        config("maxttl").l1_max_ttl(Duration::from_millis(200)),
    )
    .await;
    cache.set("k", entry("v", Duration::from_secs(60))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Gone from memory, so the read goes to Redis, where the entry lives for its own TTL.
    let found = cache.lookup("k").await.expect("still in redis");
    assert_eq!(found.source, Source::Redis);
}

#[tokio::test]
async fn stale_entries_are_returned_by_lookup_but_not_get() {
    let cache = TieredCache::new(CacheConfig::default()).unwrap();
    let stale = entry("stale", Duration::from_secs(1))
        .with_stale_ttl(Duration::from_secs(60))
        .with_stored_at(SystemTime::now() - Duration::from_secs(5));
    cache.set("k", stale).await;

    assert!(cache.get("k").await.is_none());
    let found = cache.lookup("k").await.expect("kept for its stale window");
    assert!(!found.is_fresh());
    assert_eq!(found.entry.body(), &Bytes::from_static(b"stale"));
    assert_eq!(cache.stats().stale_hits, 2);
}

#[tokio::test]
async fn http_metadata_survives_the_redis_round_trip() {
    let redis = RedisServer::start();
    let writer = cache_on(&redis, config("meta")).await;
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.append("set-cookie", "a=1".parse().unwrap());
    headers.append("set-cookie", "b=2".parse().unwrap());
    let original = CachedEntry::new(vec![b'x'; 50_000], Duration::from_secs(60))
        .with_status(http::StatusCode::CREATED)
        .with_headers(headers)
        .with_tags(["users"]);
    writer.set("k", original.clone()).await;

    let reader = cache_on(&redis, config("meta")).await;
    assert_eq!(reader.get("k").await, Some(original));
    let stored: Bytes = redis.client().await.get("meta:e:k").await.unwrap();
    assert!(stored.len() < 5_000, "the 50 kB body was stored compressed");
}

#[tokio::test]
async fn a_large_compressed_entry_round_trips_through_the_blocking_pool() {
    let redis = RedisServer::start();
    let writer = cache_on(&redis, config("large")).await;
    // Hex of a counter: compresses to well over the 128 KiB past which brotli runs on the
    // blocking pool, both when the entry is written and when it is read back.
    let body: String = (0..200_000u32)
        .map(|i| format!("{:08x}", i.wrapping_mul(2_654_435_761)))
        .collect();
    writer
        .set(
            "large",
            CachedEntry::new(body.clone(), Duration::from_secs(60)),
        )
        .await;
    writer.wait_for_writes().await;

    let reader = cache_on(&redis, config("large")).await;
    let found = reader.lookup("large").await.expect("in Redis");
    assert_eq!(found.source, Source::Redis);
    assert_eq!(found.entry.body(), body.as_bytes());
}
