//! Bytes under a cache key that are not an entry: a miss, deleted, counted, never a panic.
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{cache_on, config, RedisServer};
use fred::interfaces::KeysInterface;
use tower_tiered_cache::CachedEntry;

async fn assert_treated_as_miss_and_deleted(value: Bytes) {
    let redis = RedisServer::start();
    let client = redis.client().await;
    let cache = cache_on(&redis, config("bad")).await;
    let _: () = client
        .set("bad:e:k", value, None, None, false)
        .await
        .unwrap();

    assert!(cache.get("k").await.is_none());

    let exists: u64 = client.exists("bad:e:k").await.unwrap();
    assert_eq!(exists, 0, "the bad value was deleted");
    let stats = cache.stats();
    assert_eq!((stats.l2_decode_errors, stats.misses), (1, 1));

    // The loader answers, and its entry replaces the garbage.
    let loaded = cache
        .get_or_set("k", || async {
            Ok::<_, std::convert::Infallible>(CachedEntry::new("good", Duration::from_secs(60)))
        })
        .await
        .unwrap();
    assert_eq!(loaded.body(), "good");
    let fresh = cache_on(&redis, config("bad")).await;
    assert_eq!(fresh.get("k").await.unwrap().body(), "good");
}

#[tokio::test]
async fn foreign_text_is_a_miss() {
    assert_treated_as_miss_and_deleted(Bytes::from_static(b"{\"json\": \"from another app\"}"))
        .await;
}

#[tokio::test]
async fn empty_value_is_a_miss() {
    assert_treated_as_miss_and_deleted(Bytes::new()).await;
}

#[tokio::test]
async fn future_format_version_is_a_miss() {
    assert_treated_as_miss_and_deleted(Bytes::from_static(&[200, 0, 0, 0, 0, 0, 1, 2, 3])).await;
}

#[tokio::test]
async fn truncated_entry_is_a_miss() {
    let redis = RedisServer::start();
    let cache = cache_on(&redis, config("trunc")).await;
    cache
        .set(
            "k",
            CachedEntry::new(vec![b'z'; 5000], Duration::from_secs(60)),
        )
        .await;
    let valid: Bytes = redis.client().await.get("trunc:e:k").await.unwrap();
    drop((cache, redis));

    assert_treated_as_miss_and_deleted(valid.slice(..valid.len() - 3)).await;
}

#[tokio::test]
async fn metadata_announcing_a_huge_length_is_a_miss() {
    let mut value = vec![2u8, 0]; // the current format version
    value.extend_from_slice(&u32::MAX.to_le_bytes());
    value.extend_from_slice(&[0xff; 64]);
    assert_treated_as_miss_and_deleted(Bytes::from(value)).await;
}

#[tokio::test]
async fn a_huge_foreign_value_is_a_miss() {
    let mut value = vec![2u8, 0];
    value.resize(20_000_000, 0xab);
    assert_treated_as_miss_and_deleted(Bytes::from(value)).await;
}

#[tokio::test]
async fn an_entry_larger_than_this_instances_limit_is_a_miss() {
    let redis = RedisServer::start();
    let generous = cache_on(&redis, config("big").max_entry_size(20_000_000)).await;
    let noise: Vec<u8> = (0..10_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    generous
        .set("k", CachedEntry::new(noise, Duration::from_secs(60)))
        .await;
    let stored: Bytes = redis.client().await.get("big:e:k").await.unwrap();
    drop((generous, redis));

    assert_treated_as_miss_and_deleted(stored).await;
}
