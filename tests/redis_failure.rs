//! Redis refused, killed or stalled: reads degrade to misses and the loader answers.
#![cfg(feature = "redis")]

mod common;

use std::convert::Infallible;
use std::time::Duration;

use common::{cache_on, config, RedisServer};
use tower_tiered_cache::{CachedEntry, Error, TieredCache};

async fn load(cache: &TieredCache, key: &str, body: &'static str) -> CachedEntry {
    cache
        .get_or_set(key, || async {
            Ok::<_, Infallible>(CachedEntry::new(body, Duration::from_secs(60)))
        })
        .await
        .expect("loader never fails here")
}

#[tokio::test]
async fn redis_killed_mid_test_still_gives_correct_answers() {
    let mut redis = RedisServer::start();
    let cache = cache_on(&redis, config("killed")).await;
    assert_eq!(
        load(&cache, "before", "stored before").await.body(),
        "stored before"
    );

    redis.kill();

    // Memory still answers what it has; misses go to the loader; nothing errors.
    assert_eq!(cache.get("before").await.unwrap().body(), "stored before");
    assert_eq!(
        load(&cache, "after", "loaded after").await.body(),
        "loaded after"
    );
    assert_eq!(
        load(&cache, "after", "not called").await.body(),
        "loaded after"
    );
    assert!(cache.get("never-stored").await.is_none());
    let stats = cache.stats();
    assert!(
        stats.l2_errors >= 2,
        "failed reads and writes are counted: {stats:?}"
    );
    assert_eq!(stats.loader_calls, 2);

    // An invalidation that cannot reach Redis says it is pending, after clearing memory.
    let err = cache.invalidate("before").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidationPending {
                operation: "invalidate",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_invalidation_pending());
    assert_eq!(cache.stats().invalidations_pending, 1);
    assert!(cache.get("before").await.is_none());

    // Back on the same port: the cache reconnects by itself, delivers the pending
    // invalidation and uses Redis again.
    redis.restart();
    assert!(cache.wait_for_redis(Duration::from_secs(10)).await);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cache.stats().invalidations_pending > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the invalidation got through"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cache
        .set(
            "later",
            CachedEntry::new("in redis", Duration::from_secs(60)),
        )
        .await;
    let fresh = cache_on(&redis, config("killed")).await;
    assert_eq!(fresh.get("later").await.unwrap().body(), "in redis");
}

#[tokio::test]
async fn redis_refusing_at_start_does_not_stop_the_cache() {
    let mut redis = RedisServer::not_started();
    let cache = TieredCache::new(config("refused").redis_url(redis.url()).build().unwrap())
        .expect("a cache starts without its Redis");

    assert_eq!(load(&cache, "k", "from loader").await.body(), "from loader");
    assert_eq!(cache.get("k").await.unwrap().body(), "from loader");
    assert!(cache.stats().l2_errors >= 1);

    redis.restart();
    assert!(
        cache.wait_for_redis(Duration::from_secs(10)).await,
        "connects once Redis is up"
    );
    cache
        .set(
            "shared",
            CachedEntry::new("via redis", Duration::from_secs(60)),
        )
        .await;
    let other = cache_on(&redis, config("refused")).await;
    assert_eq!(other.get("shared").await.unwrap().body(), "via redis");
}

#[tokio::test]
async fn redis_slower_than_the_timeout_is_a_miss() {
    let redis = RedisServer::start();
    let writer = cache_on(&redis, config("stalled")).await;
    writer
        .set("k", CachedEntry::new("in redis", Duration::from_secs(60)))
        .await;
    let cache = cache_on(
        &redis,
        config("stalled").l2_timeout(Duration::from_millis(50)),
    )
    .await;

    redis.pause();
    let loaded = load(&cache, "k", "from loader").await;
    redis.resume();

    assert_eq!(
        loaded.body(),
        "from loader",
        "the stalled Redis was skipped"
    );
    assert!(cache.stats().l2_errors >= 1);
}
