//! Heavily tagged entries: an origin (or caller) naming tens of thousands of tags gets an entry
//! with `tags.max_per_entry` of them, whose stamps are read in one round trip, so a hit costs a
//! bounded amount and cannot time out the shared tier for everyone else.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_tiered_cache::config::TagsConfig;
use tower_tiered_cache::{CacheConfig, CacheLayer};

/// Values in each of `Cache-Tag` and `Surrogate-Key` of `/heavy`.
const TAGS: usize = 20_000;
/// Field lines they come in. (Not one per value: `http`'s debug assertions make removing a
/// field of n lines O(n²) in test builds, minutes for 20,000.)
const LINES: usize = 100;

/// `/heavy` carries `TAGS` `Cache-Tag` values (`ct-0`, …) and as many `Surrogate-Key` values
/// (`sk-0`, …) on `LINES` lines each; every other path none. Everything is fresh for five
/// minutes.
fn origin() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(|request: Request<Full<Bytes>>| async move {
        let mut response = Response::builder().header("cache-control", "max-age=300");
        if request.uri().path() == "/heavy" {
            let per_line = TAGS / LINES;
            for line in 0..LINES {
                let values = |prefix: &str, separator: &str| {
                    let first = line * per_line;
                    (first..first + per_line)
                        .map(|i| format!("{prefix}-{i}"))
                        .collect::<Vec<_>>()
                        .join(separator)
                };
                response = response
                    .header("cache-tag", values("ct", ", "))
                    .header("surrogate-key", values("sk", " "));
            }
        }
        Ok(response.body(Full::new(Bytes::from("body"))).unwrap())
    })
}

/// Sends `method path` (with `headers`) through `layer` over [`origin`]; the status and
/// `Cache-Status`.
async fn send(
    layer: &CacheLayer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://test.local{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = layer
        .layer(origin())
        .oneshot(request.body(Full::default()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let cache_status = response
        .headers()
        .get("cache-status")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    response.into_body().collect().await.unwrap();
    (status, cache_status)
}

async fn get(layer: &CacheLayer, path: &str) -> String {
    send(layer, "GET", path, &[]).await.1
}

const STORED: &str = "tiered-cache; fwd=miss; fwd-status=200; stored";
const MEMORY_HIT: &str = "tiered-cache; hit; detail=memory";

#[tokio::test]
async fn an_entry_with_thousands_of_tags_keeps_only_the_configured_number() {
    let layer = CacheLayer::new(CacheConfig::default());
    let max = TagsConfig::default().max_per_entry as usize;

    assert_eq!(get(&layer, "/heavy").await, STORED);

    let cache = layer.cache();
    assert_eq!(cache.stats().tags_dropped, (2 * TAGS - max) as u64);
    // The first tags in order are kept: every one of them from Cache-Tag.
    let dropped = [
        format!("ct-{max}"),
        "sk-0".to_owned(),
        format!("sk-{}", TAGS - 1),
    ];
    cache.invalidate_tags(&dropped).await.unwrap();
    assert_eq!(
        get(&layer, "/heavy").await,
        MEMORY_HIT,
        "dropped tags do not reach it"
    );
    cache
        .invalidate_tags(&[format!("ct-{}", max - 1)])
        .await
        .unwrap();
    assert_eq!(
        get(&layer, "/heavy").await,
        STORED,
        "the last kept tag does"
    );
}

#[cfg(feature = "redis")]
mod on_redis {
    use super::*;

    use common::{cache_on, config, RedisServer};
    use tower_tiered_cache::{CachedEntry, Source};

    #[tokio::test]
    async fn a_heavily_tagged_entry_costs_a_memory_hit_no_round_trip_and_a_shared_hit_one() {
        let redis = RedisServer::start();
        let cache = cache_on(&redis, config("heavy")).await;
        let tags: Vec<String> = (0..2 * TAGS).map(|i| format!("t{i}")).collect();
        cache
            .set(
                "k",
                CachedEntry::new("v", Duration::from_secs(300)).with_tags(tags),
            )
            .await;

        // Memory entries are judged by this instance's own record of invalidations (which
        // events from other instances update): nothing is asked of Redis.
        let before = redis.command_calls();
        assert_eq!(cache.lookup("k").await.unwrap().source, Source::Memory);
        let after = redis.command_calls();
        assert_eq!(
            after.since(&before, "mget") + after.since(&before, "get"),
            0
        );

        // Another instance reads the entry and its stamps: one GET, one MGET.
        let reader = cache_on(&redis, config("heavy")).await;
        let before = redis.command_calls();
        assert_eq!(reader.lookup("k").await.unwrap().source, Source::Redis);
        let after = redis.command_calls();
        assert_eq!(after.since(&before, "get"), 1);
        assert_eq!(after.since(&before, "mget"), 1);
        assert_eq!(cache.stats().l2_errors + reader.stats().l2_errors, 0);
    }

    #[tokio::test]
    async fn a_heavily_tagged_entry_does_not_open_the_circuit_for_other_keys() {
        let redis = RedisServer::start();
        let config = config("heavy-http")
            .redis_url(redis.url())
            .purge_token("s3cret")
            .build()
            .unwrap();
        let threshold = config.l2.breaker_threshold;
        let layer = CacheLayer::new(config);
        assert!(layer.cache().wait_for_redis(Duration::from_secs(5)).await);

        assert_eq!(get(&layer, "/heavy").await, STORED);
        // Hits whose tag stamps took longer than `l2.timeout` to read would each count a failure.
        for _ in 0..2 * threshold {
            assert_eq!(send(&layer, "GET", "/heavy", &[]).await.0, StatusCode::OK);
        }

        assert_eq!(get(&layer, "/other").await, STORED);
        let purge = send(
            &layer,
            "PURGE",
            "/other",
            &[("authorization", "Bearer s3cret")],
        )
        .await;
        assert_eq!(purge.0, StatusCode::OK, "the purge reached Redis");
        assert_eq!(get(&layer, "/other").await, STORED);
        let stats = layer.cache().stats();
        assert!(!stats.l2_circuit_open);
        assert_eq!((stats.l2_errors, stats.l2_skipped), (0, 0));
    }

    #[tokio::test]
    async fn invalidating_thousands_of_tags_writes_their_stamps_in_batches() {
        let redis = RedisServer::start();
        let writer = cache_on(&redis, config("many-stamps")).await;
        writer
            .set(
                "k",
                CachedEntry::new("v", Duration::from_secs(60)).with_tags(["t4999"]),
            )
            .await;
        let tags: Vec<String> = (0..5_000).map(|i| format!("t{i}")).collect();

        let before = redis.command_calls();
        writer.invalidate_tags(&tags).await.unwrap();
        let after = redis.command_calls();

        // One script per batch of 1024 stamp keys, not one command per tag.
        assert_eq!(after.since(&before, "eval"), 5);
        let reader = cache_on(&redis, config("many-stamps")).await;
        assert!(
            reader.get("k").await.is_none(),
            "the last tag was stamped too"
        );
    }
}
