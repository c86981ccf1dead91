//! Typed values (`get_value`, `set_value`, `get_or_set_value`): through both tiers and the entry
//! codec, a miss when the bytes are not a value of the type asked for, and single-flight, tags and
//! invalidation shared with the byte API.
#![cfg(feature = "redis")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{cache_on, config, RedisServer};
use fred::interfaces::KeysInterface;
use serde::{Deserialize, Serialize};
use tokio::sync::{Barrier, Notify};
use tower_tiered_cache::{CacheConfig, CachedEntry, TieredCache, ValueError, ValueOptions};

const MINUTE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    bio: String,
    scores: Vec<u32>,
    nickname: Option<String>,
}

fn profile(id: u64) -> Profile {
    Profile {
        id,
        name: format!("user {id}"),
        // Compressible and above `compression.min_size` (4 KiB), so the shared tier holds it
        // compressed.
        bio: "likes long walks and short keys. ".repeat(200),
        scores: vec![3, 1, 4, 1, 5],
        nickname: None,
    }
}

/// Counts loader calls.
#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    fn load<V>(&self, value: V) -> impl std::future::Future<Output = Result<V, &'static str>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(value))
    }

    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_typed_value_round_trips_through_memory_and_redis() {
    let redis = RedisServer::start();
    let writer = cache_on(&redis, config("typed")).await;
    writer
        .set_value("profile:1", &profile(1), MINUTE)
        .await
        .unwrap();
    assert_eq!(
        writer.get_value::<Profile>("profile:1").await,
        Some(profile(1))
    );
    assert_eq!(writer.stats().memory_hits, 1);

    let stored: Bytes = redis.client().await.get("typed:e:profile:1").await.unwrap();
    assert!(
        stored.len() < profile(1).bio.len() / 4,
        "brotli above the threshold: {} bytes stored",
        stored.len()
    );

    // Another instance (memory empty) reads it from Redis.
    let reader = cache_on(&redis, config("typed")).await;
    assert_eq!(
        reader.get_value::<Profile>("profile:1").await,
        Some(profile(1))
    );
    assert_eq!(reader.stats().redis_hits, 1);

    // get_or_set_value stores for the other instance too, which then does not load.
    let calls = Calls::default();
    let loaded = writer
        .get_or_set_value("profile:2", MINUTE, || calls.load(profile(2)))
        .await
        .unwrap();
    assert_eq!(loaded, profile(2));
    let read = reader
        .get_or_set_value("profile:2", MINUTE, || calls.load(profile(99)))
        .await
        .unwrap();
    assert_eq!(read, profile(2));
    assert_eq!(calls.count(), 1);
}

/// One type under the same name in two deploys: the second added a field.
mod before {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct User {
        pub name: String,
    }
}

mod after {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct User {
        pub name: String,
        pub email: String,
    }
}

fn new_user() -> after::User {
    after::User {
        name: "Ada".into(),
        email: "ada@example.com".into(),
    }
}

#[tokio::test]
async fn a_value_of_another_type_is_a_miss_that_calls_the_loader() {
    let redis = RedisServer::start();
    let old_deploy = cache_on(&redis, config("deploy")).await;
    let new_deploy = cache_on(&redis, config("deploy")).await;
    let old_user = before::User { name: "Ada".into() };
    old_deploy
        .set_value("user:1", &old_user, MINUTE)
        .await
        .unwrap();

    assert_eq!(new_deploy.get_value::<after::User>("user:1").await, None);
    let calls = Calls::default();
    let user = new_deploy
        .get_or_set_value("user:1", MINUTE, || calls.load(new_user()))
        .await
        .unwrap();
    assert_eq!((user, calls.count()), (new_user(), 1));

    // The loader's value replaced the old one in Redis too.
    let fresh = cache_on(&redis, config("deploy")).await;
    assert_eq!(
        fresh.get_value::<after::User>("user:1").await,
        Some(new_user())
    );
    assert_eq!(fresh.get_value::<before::User>("user:1").await, None);
    let again = new_deploy
        .get_or_set_value("user:1", MINUTE, || calls.load(new_user()))
        .await
        .unwrap();
    assert_eq!((again, calls.count()), (new_user(), 1));

    // A primitive asked for as another primitive is a miss as well, not a reinterpretation.
    new_deploy.set_value("n", &7_u32, MINUTE).await.unwrap();
    assert_eq!(new_deploy.get_value::<u64>("n").await, None);
    assert_eq!(new_deploy.get_value::<u32>("n").await, Some(7));
}

#[tokio::test]
async fn bytes_that_do_not_decode_are_a_miss() {
    let cache = TieredCache::new(CacheConfig::default()).unwrap();
    cache.set_value("valid", &profile(1), MINUTE).await.unwrap();
    let valid = cache.get("valid").await.unwrap().body().clone();
    let mut other_format = valid.to_vec();
    other_format[0] = other_format[0].wrapping_add(1);
    let mut trailing = valid.to_vec();
    trailing.push(0);
    let mut bodies = vec![
        Bytes::from_static(b"{\"stored\": \"through the byte API\"}"),
        Bytes::from(other_format),
        Bytes::from(trailing),
    ];
    // Cut off anywhere, the header included.
    bodies.extend((0..valid.len()).map(|len| valid.slice(..len)));

    for (i, body) in bodies.into_iter().enumerate() {
        let key = format!("bad:{i}");
        cache
            .set(&key, CachedEntry::new(body.clone(), MINUTE))
            .await;
        assert_eq!(cache.get_value::<Profile>(&key).await, None, "{key}");

        let calls = Calls::default();
        let loaded = cache
            .get_or_set_value(&key, MINUTE, || calls.load(profile(2)))
            .await
            .unwrap();
        assert_eq!((loaded, calls.count()), (profile(2), 1), "{key}");
        assert_ne!(cache.get(&key).await.unwrap().body(), &body, "{key}");
        assert_eq!(
            cache.get_value::<Profile>(&key).await,
            Some(profile(2)),
            "{key}"
        );
    }
}

/// Starts `n` tasks calling `get_or_set_value` on one key, and releases the loader only once
/// every task has joined the load.
async fn concurrent_typed_loads(
    cache: &TieredCache,
    n: usize,
    result: Result<Profile, &'static str>,
) -> (usize, Vec<Result<Profile, ValueError<&'static str>>>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let all_joined = Arc::new(Barrier::new(n + 1));
    let release = Arc::new(Notify::new());
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (cache, calls, all_joined, release, result) = (
                cache.clone(),
                calls.clone(),
                all_joined.clone(),
                release.clone(),
                result.clone(),
            );
            tokio::spawn(async move {
                let load = cache.get_or_set_value("hot", MINUTE, || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    release.notified().await;
                    result
                });
                // join! polls `load` first: by the time this task reaches the barrier, it leads
                // the load or waits for it.
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
async fn concurrent_typed_callers_share_one_loader_call() {
    let cache = TieredCache::new(CacheConfig::default()).unwrap();
    let (calls, results) = concurrent_typed_loads(&cache, 100, Ok(profile(7))).await;

    assert_eq!(calls, 1);
    assert_eq!(results.len(), 100);
    assert!(results.iter().all(|r| r.as_ref().ok() == Some(&profile(7))));
    let stats = cache.stats();
    assert_eq!((stats.loader_calls, stats.coalesced_waits), (1, 99));
    assert_eq!(cache.get_value::<Profile>("hot").await, Some(profile(7)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_that_find_another_type_share_one_reload() {
    let cache = TieredCache::new(CacheConfig::default()).unwrap();
    cache
        .set_value("hot", &before::User { name: "Ada".into() }, MINUTE)
        .await
        .unwrap();
    let (calls, results) = concurrent_typed_loads(&cache, 50, Ok(profile(8))).await;

    assert_eq!(calls, 1);
    assert!(results.iter().all(|r| r.as_ref().ok() == Some(&profile(8))));
    assert_eq!(cache.get_value::<Profile>("hot").await, Some(profile(8)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_loader_error_reaches_every_waiting_caller_and_nothing_is_stored() {
    let cache = TieredCache::new(CacheConfig::default()).unwrap();
    let (calls, results) = concurrent_typed_loads(&cache, 20, Err("database down")).await;

    assert_eq!(calls, 1);
    for result in results {
        let Err(ValueError::Load { key, source }) = result else {
            panic!("the loader's error");
        };
        assert_eq!((key.as_str(), *source), ("hot", "database down"));
    }
    assert!(cache.get("hot").await.is_none());
}

#[tokio::test]
async fn typed_values_are_invalidated_by_key_prefix_and_tag() {
    let redis = RedisServer::start();
    let cache = cache_on(&redis, config("typed-inv")).await;
    let users = ValueOptions::new(MINUTE).with_tags(["users"]);
    for id in 1..=2 {
        let key = format!("user:{id}");
        cache
            .set_value(&key, &profile(id), users.clone())
            .await
            .unwrap();
        let key = format!("session:{id}");
        cache.set_value(&key, &id, MINUTE).await.unwrap();
    }
    cache
        .set_value("plan", &"pro".to_owned(), MINUTE)
        .await
        .unwrap();
    cache
        .set_value("kept", &"untouched".to_owned(), MINUTE)
        .await
        .unwrap();

    cache.invalidate_tags(&["users"]).await.unwrap();
    cache.invalidate_prefix("session:").await.unwrap();
    cache.invalidate("plan").await.unwrap();

    // This instance and one reading Redis agree.
    let other = cache_on(&redis, config("typed-inv")).await;
    for instance in [&cache, &other] {
        for id in 1..=2 {
            let user = instance.get_value::<Profile>(&format!("user:{id}")).await;
            let session = instance.get_value::<u64>(&format!("session:{id}")).await;
            assert_eq!((user, session), (None, None));
        }
        assert_eq!(instance.get_value::<String>("plan").await, None);
        assert_eq!(
            instance.get_value::<String>("kept").await.as_deref(),
            Some("untouched")
        );
    }
    let calls = Calls::default();
    let reloaded = cache
        .get_or_set_value("user:1", users, || calls.load(profile(10)))
        .await
        .unwrap();
    assert_eq!((reloaded, calls.count()), (profile(10), 1));
}

/// A sequence whose length serde does not know in advance, which bincode cannot write.
#[derive(Debug, PartialEq, Deserialize)]
struct Unsized(Vec<u32>);

impl Serialize for Unsized {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().filter(|_| true))
    }
}

#[tokio::test]
async fn a_type_bincode_cannot_write_or_read_back_is_an_error_naming_the_key() {
    let cache = TieredCache::new(CacheConfig::default()).unwrap();
    let Err(unwritable) = cache.set_value("seq", &Unsized(vec![1]), MINUTE).await else {
        panic!("a sequence without a length cannot be encoded");
    };
    assert!(matches!(unwritable, ValueError::Unsupported { .. }));
    assert!(unwritable.to_string().contains("\"seq\""), "{unwritable}");

    // serde_json::Value needs `deserialize_any`, which bincode lacks: it encodes but never
    // decodes, so caching it would be a miss on every read.
    let calls = Calls::default();
    let unreadable = cache
        .get_or_set_value("json", MINUTE, || calls.load(serde_json::json!({ "a": 1 })))
        .await;
    let Err(error @ ValueError::Unsupported { .. }) = unreadable else {
        panic!("a value that does not read back is an error");
    };
    assert!(error.to_string().contains("\"json\""), "{error}");
    assert_eq!(calls.count(), 1);
    assert!(cache.get("json").await.is_none(), "nothing is stored");
}
