//! Coalescing across instances (`l2.lock`): one instance loads a missing key while the others
//! wait for its entry; a crashed holder's lock expires; waiting is bounded.
#![cfg(feature = "redis")]

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{cache_on, config, RedisServer};
use fred::interfaces::KeysInterface;
use fred::types::{Expiration, SetOptions};
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, ServiceExt};
use tower_tiered_cache::{CacheLayer, CachedEntry, TieredCache};

fn locking(prefix: &str, wait: Duration) -> common::CacheConfigBuilder {
    config(prefix).l2_lock(Duration::from_secs(5), wait)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_layers_with_a_hundred_concurrent_misses_each_call_the_origin_once() {
    let redis = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let origin = tower::service_fn(move |_: Request<Full<Bytes>>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async {
            // A slow origin: the other instances find the lock taken and wait.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let response = Response::builder()
                .header("cache-control", "max-age=60")
                .body(Full::new(Bytes::from("loaded once")))
                .unwrap();
            Ok::<_, Infallible>(response)
        }
    });
    let mut services = Vec::new();
    for _ in 0..3 {
        let config = locking("lk", Duration::from_secs(10))
            .redis_url(redis.url())
            .build()
            .unwrap();
        let layer = CacheLayer::new(config);
        assert!(layer.cache().wait_for_redis(Duration::from_secs(5)).await);
        services.push(layer.layer(origin.clone()));
    }

    let requests = services.iter().flat_map(|service| {
        (0..100).map(move |_| {
            let service = service.clone();
            tokio::spawn(async move {
                let request = Request::get("http://app/hot")
                    .body(Full::<Bytes>::default())
                    .unwrap();
                service.oneshot(request).await.unwrap().status()
            })
        })
    });
    let tasks: Vec<_> = requests.collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert!(
        calls.load(Ordering::SeqCst) <= 1,
        "{} origin calls",
        calls.load(Ordering::SeqCst)
    );
    let filled: u64 = services
        .iter()
        .map(|service| service.cache().stats().lock_waits_filled)
        .sum();
    assert!(filled >= 1, "other instances waited for the holder's entry");
}

#[tokio::test]
async fn a_crashed_holders_lock_expires_and_another_instance_loads() {
    let redis = RedisServer::start();
    let cache = cache_on(&redis, locking("crash", Duration::from_secs(10))).await;
    // An instance took the lock and died: the lock lives out its TTL, nobody releases it.
    let _: Option<String> = redis
        .client()
        .await
        .set(
            "crash:lock:k",
            "dead-token",
            Some(Expiration::PX(300)),
            Some(SetOptions::NX),
            false,
        )
        .await
        .unwrap();

    let loaded = load(&cache, "k").await;

    assert_eq!(loaded.body(), "fresh");
    assert_eq!(cache.stats().loader_calls, 1);
}

#[tokio::test]
async fn waiting_is_bounded_and_then_the_instance_loads_itself() {
    let redis = RedisServer::start();
    let cache = cache_on(&redis, locking("bounded", Duration::from_millis(300))).await;
    let _: Option<String> = redis
        .client()
        .await
        .set(
            "bounded:lock:k",
            "stuck",
            Some(Expiration::PX(60_000)),
            Some(SetOptions::NX),
            false,
        )
        .await
        .unwrap();

    let loaded = tokio::time::timeout(Duration::from_secs(10), load(&cache, "k"))
        .await
        .expect("not blocked for the lock's 60 s lifetime");

    assert_eq!(loaded.body(), "fresh");
}

#[tokio::test]
async fn the_lock_is_released_after_loading() {
    let redis = RedisServer::start();
    let cache = cache_on(&redis, locking("release", Duration::from_secs(10))).await;
    load(&cache, "k").await;
    let held: u64 = redis.client().await.exists("release:lock:k").await.unwrap();
    assert_eq!(held, 0);
}

async fn load(cache: &TieredCache, key: &str) -> CachedEntry {
    cache
        .get_or_set(key, || async {
            Ok::<_, Infallible>(CachedEntry::new("fresh", Duration::from_secs(60)))
        })
        .await
        .unwrap()
}
