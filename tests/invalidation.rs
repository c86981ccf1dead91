//! Invalidation by key and by prefix, in both tiers.
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use common::{cache_on, config, RedisServer};
use fred::interfaces::KeysInterface;
use fred::types::Expiration;
use tower_tiered_cache::{CachedEntry, Purged};

fn entry() -> CachedEntry {
    CachedEntry::new("v", Duration::from_secs(300))
}

#[tokio::test]
async fn invalidate_removes_a_key_from_both_tiers() {
    let redis = RedisServer::start();
    let cache = cache_on(&redis, config("inv")).await;
    cache.set("a", entry()).await;
    cache.set("b", entry()).await;

    cache.invalidate("a").await.unwrap();

    assert!(cache.get("a").await.is_none());
    assert!(cache.get("b").await.is_some());
    let exists: u64 = redis
        .client()
        .await
        .exists(vec!["inv:e:a", "inv:e:b"])
        .await
        .unwrap();
    assert_eq!(exists, 1);
}

#[tokio::test]
async fn prefix_invalidation_removes_ten_thousand_keys_and_nothing_else() {
    let redis = RedisServer::start();
    let client = redis.client().await;
    let cache = cache_on(&redis, config("pfx")).await;

    // 10k entries written directly (one pipeline per 1000) plus a few through the cache.
    let encoded_entry = {
        cache.set("template", entry()).await;
        let bytes: bytes::Bytes = client.get("pfx:e:template").await.unwrap();
        bytes
    };
    for chunk in 0..10 {
        let pipeline = client.pipeline();
        for i in 0..1000 {
            let _: () = pipeline
                .set(
                    format!("pfx:e:user:{}", chunk * 1000 + i),
                    encoded_entry.clone(),
                    Some(Expiration::EX(300)),
                    None,
                    false,
                )
                .await
                .unwrap();
        }
        let _: Vec<()> = pipeline.all().await.unwrap();
    }
    for key in [
        "user:1",
        "user:2",
        "user*literal",
        "order:1",
        "users-not-a-prefix-match",
    ] {
        cache.set(key, entry()).await;
    }
    // Another cache's keys with the same logical names must survive.
    let other = cache_on(&redis, config("other")).await;
    other.set("user:1", entry()).await;

    let purged = cache.invalidate_prefix("user:").await.unwrap();

    assert_eq!(purged, purged_with(2, 10_000));
    assert!(cache.get("user:1").await.is_none());
    assert!(cache.get("user:9999").await.is_none());
    for survivor in [
        "user*literal",
        "order:1",
        "users-not-a-prefix-match",
        "template",
    ] {
        assert!(cache.get(survivor).await.is_some(), "{survivor} survives");
    }
    assert!(other.get("user:1").await.is_some());
    let survivors = vec![
        "pfx:e:template",
        "pfx:e:user*literal",
        "pfx:e:order:1",
        "pfx:e:users-not-a-prefix-match",
        "other:e:user:1",
    ];
    let present: u64 = client.exists(survivors).await.unwrap();
    assert_eq!(present, 5);
    let user_keys: Vec<String> = (0..10_000).map(|i| format!("pfx:e:user:{i}")).collect();
    let present: u64 = client.exists(user_keys).await.unwrap();
    assert_eq!(present, 0);
}

#[tokio::test]
async fn glob_characters_in_a_prefix_match_literally() {
    let redis = RedisServer::start();
    let cache = cache_on(&redis, config("glob")).await;
    cache.set("a*1", entry()).await;
    cache.set("ab", entry()).await;

    let purged = cache.invalidate_prefix("a*").await.unwrap();

    assert_eq!(purged, purged_with(1, 1));
    assert!(cache.get("ab").await.is_some());
}

fn purged_with(memory: u64, redis: u64) -> Purged {
    let mut purged = Purged::default();
    purged.memory = memory;
    purged.redis = redis;
    purged
}

#[tokio::test]
async fn write_through_writes_the_source_first_then_both_tiers_and_other_instances_follow() {
    let redis = RedisServer::start();
    let first = cache_on(&redis, config("wt")).await;
    let second = cache_on(&redis, config("wt")).await;
    first
        .set("user:1", CachedEntry::new("old", Duration::from_secs(300)))
        .await;
    assert_eq!(second.get("user:1").await.unwrap().body(), "old");
    let mut events = second.invalidation_events();

    let failed = first
        .write_through(
            "user:1",
            CachedEntry::new("rejected", Duration::from_secs(300)),
            |_| async { Err::<(), _>("constraint violation") },
        )
        .await;
    assert_eq!(failed, Err("constraint violation"));
    assert_eq!(
        first.get("user:1").await.unwrap().body(),
        "old",
        "nothing cached on error"
    );

    let source = std::sync::Mutex::new(None);
    let source_ref = &source;
    first
        .write_through(
            "user:1",
            CachedEntry::new("new", Duration::from_secs(300)),
            |entry| async move {
                *source_ref.lock().unwrap() = Some(entry.body().clone());
                Ok::<_, std::convert::Infallible>(())
            },
        )
        .await
        .unwrap();
    assert_eq!(source.lock().unwrap().as_deref(), Some(&b"new"[..]));
    assert_eq!(first.get("user:1").await.unwrap().body(), "new");

    tokio::time::timeout(Duration::from_secs(1), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        second.get("user:1").await.unwrap().body(),
        "new",
        "read again from Redis"
    );
}
