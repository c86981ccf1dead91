//! Tag invalidation and cross-instance invalidation through Redis pub/sub.
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use common::{cache_on, config, RedisServer};
use fred::interfaces::KeysInterface;
use tower_tiered_cache::{CacheConfig, CachedEntry, Invalidation, TieredCache};

fn tagged(body: &'static str, tags: &[&str]) -> CachedEntry {
    CachedEntry::new(body, Duration::from_secs(300)).with_tags(tags.iter().copied())
}

#[tokio::test]
async fn invalidating_a_tag_kills_a_thousand_entries_in_both_tiers() {
    let redis = RedisServer::start();
    let writer = cache_on(&redis, config("tags")).await;
    for i in 0..1000 {
        let tags: &[&str] = if i % 2 == 0 {
            &["even", "all"]
        } else {
            &["odd", "all"]
        };
        writer.set(&format!("item:{i}"), tagged("v", tags)).await;
    }
    writer
        .set("untagged", CachedEntry::new("v", Duration::from_secs(300)))
        .await;

    writer.invalidate_tags(&["even"]).await.unwrap();

    // The writer's memory tier and a fresh instance reading Redis agree.
    let reader = cache_on(&redis, config("tags")).await;
    for cache in [&writer, &reader] {
        for i in 0..1000 {
            let found = cache.get(&format!("item:{i}")).await;
            assert_eq!(found.is_some(), i % 2 == 1, "item:{i}");
        }
        assert!(cache.get("untagged").await.is_some());
    }
    // Dead entries were deleted from Redis when read.
    let even_left: u64 = redis
        .client()
        .await
        .exists(vec!["tags:e:item:0", "tags:e:item:998"])
        .await
        .unwrap();
    assert_eq!(even_left, 0);
    let stamp: Option<u64> = redis.client().await.get("tags:tag:even").await.unwrap();
    assert!(
        stamp.is_some(),
        "the invalidation time is recorded in Redis"
    );
}

#[tokio::test]
async fn entries_stored_after_an_invalidation_live() {
    let cache = TieredCache::new(CacheConfig::default()).unwrap();
    cache.set("a", tagged("old", &["t"])).await;
    cache.invalidate_tags(&["t"]).await.unwrap();
    assert!(cache.get("a").await.is_none());
    // Stamps are in milliseconds; an entry obtained in the same millisecond counts as older.
    tokio::time::sleep(Duration::from_millis(2)).await;
    cache.set("a", tagged("new", &["t"])).await;
    assert_eq!(cache.get("a").await.unwrap().body(), "new");
}

#[tokio::test]
async fn a_load_that_started_before_an_invalidation_is_not_kept() {
    let cache = TieredCache::new(CacheConfig::default()).unwrap();
    let loaded = cache
        .get_or_set("k", || async {
            // The tag is invalidated while the value is being loaded.
            cache.invalidate_tags(&["t"]).await.unwrap();
            Ok::<_, std::convert::Infallible>(tagged("stale by now", &["t"]))
        })
        .await
        .unwrap();
    assert_eq!(
        loaded.body(),
        "stale by now",
        "the caller still gets its value"
    );
    assert!(
        cache.get("k").await.is_none(),
        "but it is dead for everyone after"
    );
}

#[tokio::test]
async fn other_instances_drop_their_memory_copies_within_a_second() {
    let redis = RedisServer::start();
    let first = cache_on(&redis, config("xinst")).await;
    let second = cache_on(&redis, config("xinst")).await;
    first.set("k", tagged("v", &["t"])).await;
    first.set("p:1", tagged("v", &[])).await;
    first.set("tagged", tagged("v", &["group"])).await;
    // The second instance now holds memory copies.
    for key in ["k", "p:1", "tagged"] {
        assert!(second.get(key).await.is_some());
    }
    let mut events = second.invalidation_events();

    first.invalidate("k").await.unwrap();
    first.invalidate_prefix("p:").await.unwrap();
    first.invalidate_tags(&["group"]).await.unwrap();

    let mut received = Vec::new();
    for _ in 0..3 {
        let event = tokio::time::timeout(Duration::from_secs(1), events.recv())
            .await
            .expect("event within 1 s")
            .unwrap();
        received.push(event);
    }
    assert_eq!(received[0], Invalidation::Key("k".into()));
    assert_eq!(received[1], Invalidation::Prefix("p:".into()));
    assert!(
        matches!(&received[2], Invalidation::Tags { tags, .. } if tags == &["group".to_owned()])
    );
    let before = second.stats();
    for key in ["k", "p:1", "tagged"] {
        assert!(second.get(key).await.is_none(), "{key}");
    }
    assert_eq!(
        second.stats().memory_hits,
        before.memory_hits,
        "nothing came from memory"
    );
}

#[tokio::test]
async fn flush_empties_every_tier_and_instance() {
    let redis = RedisServer::start();
    let first = cache_on(&redis, config("flush")).await;
    let second = cache_on(&redis, config("flush")).await;
    for i in 0..50 {
        first.set(&format!("k{i}"), tagged("v", &[])).await;
    }
    assert!(second.get("k1").await.is_some());
    let mut events = second.invalidation_events();

    let purged = first.flush().await.unwrap();

    assert_eq!(purged.redis, 50);
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(1), events.recv())
            .await
            .unwrap()
            .unwrap(),
        Invalidation::Flush
    );
    assert!(second.get("k1").await.is_none());
    assert_eq!(second.stats().memory_entries, 0);
}

#[tokio::test]
async fn a_reconnecting_subscriber_clears_memory() {
    let mut redis = RedisServer::start();
    let cache = cache_on(&redis, config("resub")).await;
    cache.set("k", tagged("v", &[])).await;
    assert_eq!(cache.stats().memory_entries, 1);
    let mut events = cache.invalidation_events();

    redis.kill();
    redis.restart();

    // Events may have been missed while disconnected: memory is cleared on reconnection.
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event, Invalidation::Resubscribed);
    assert!(
        cache.get("k").await.is_none(),
        "redis restarted empty and memory was cleared"
    );
}
