//! Concurrent `get_or_set` calls for one missing key share one loader call.
#![cfg(feature = "redis")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{cache_on, config, RedisServer};
use tokio::sync::Barrier;
use tower_tiered_cache::{CacheConfig, CachedEntry, TieredCache};

/// Starts `n` tasks calling `get_or_set` on one key, and releases the loader only once every
/// task has joined the load, so all of them arrive while it is in progress.
async fn concurrent_loads(
    cache: &TieredCache,
    n: usize,
    result: Result<&'static str, &'static str>,
) -> (usize, Vec<Result<CachedEntry, Arc<&'static str>>>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let all_joined = Arc::new(Barrier::new(n + 1));
    let release = Arc::new(tokio::sync::Notify::new());

    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (cache, calls, all_joined, release) = (
                cache.clone(),
                calls.clone(),
                all_joined.clone(),
                release.clone(),
            );
            tokio::spawn(async move {
                let load = cache.get_or_set("hot", || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    release.notified().await;
                    result.map(|body| CachedEntry::new(body, Duration::from_secs(60)))
                });
                // join! polls `load` first: by the time this task reaches the barrier, its
                // get_or_set has become the leader or a follower of the load.
                let (loaded, _) = tokio::join!(load, all_joined.wait());
                loaded
            })
        })
        .collect();

    all_joined.wait().await;
    release.notify_one();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    (calls.load(Ordering::SeqCst), results)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_misses_call_the_loader_once() {
    let cache = TieredCache::new(CacheConfig::default()).unwrap();
    let (calls, results) = concurrent_loads(&cache, 200, Ok("value")).await;

    assert_eq!(calls, 1);
    assert_eq!(results.len(), 200);
    assert!(results
        .iter()
        .all(|r| r.as_ref().unwrap().body() == "value"));
    let stats = cache.stats();
    assert_eq!(stats.loader_calls, 1);
    assert_eq!(stats.coalesced_waits, 199);
    assert_eq!(cache.get("hot").await.unwrap().body(), "value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_holds_with_redis_and_stores_in_both_tiers() {
    let redis = RedisServer::start();
    let cache = cache_on(&redis, config("flight")).await;
    let (calls, results) = concurrent_loads(&cache, 200, Ok("value")).await;

    assert_eq!(calls, 1);
    assert!(results.iter().all(|r| r.is_ok()));
    let other_instance = cache_on(&redis, config("flight")).await;
    assert_eq!(other_instance.get("hot").await.unwrap().body(), "value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_error_reaches_every_waiter_and_nothing_is_stored() {
    let redis = RedisServer::start();
    let cache = cache_on(&redis, config("flight-err")).await;
    let (calls, results) = concurrent_loads(&cache, 50, Err("db down")).await;

    assert_eq!(calls, 1);
    assert!(results
        .iter()
        .all(|r| r.as_ref().unwrap_err().as_ref() == &"db down"));
    assert!(cache.get("hot").await.is_none());
    assert_eq!(cache.stats().loader_errors, 1);
    assert_eq!(cache.stats().stores, 0);

    // The next call loads again.
    let loaded = cache
        .get_or_set("hot", || async {
            Ok::<_, &str>(CachedEntry::new("ok", Duration::from_secs(9)))
        })
        .await
        .unwrap();
    assert_eq!(loaded.body(), "ok");
}

#[tokio::test]
async fn a_hit_does_not_call_the_loader() {
    let cache = TieredCache::new(CacheConfig::default()).unwrap();
    cache
        .set("k", CachedEntry::new("cached", Duration::from_secs(60)))
        .await;
    let found = cache
        .get_or_set("k", || async {
            Err::<CachedEntry, _>("loader must not run")
        })
        .await
        .unwrap();
    assert_eq!(found.body(), "cached");
    assert_eq!(cache.stats().loader_calls, 0);
}
