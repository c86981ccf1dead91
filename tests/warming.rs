//! Warming: keys through a loader, and `[warm]` paths through the layer, at start and on an
//! interval; failures are counted, never fatal.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::origin::{cached, get, send};
use http::{Request, Response};
use http_body_util::Full;
use tower::Layer;
use tower_tiered_cache::config::WarmConfig;
use tower_tiered_cache::{
    spawn_warming, warm_paths, CacheConfig, CacheLayer, CachedEntry, TieredCache,
};
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn keys_are_loaded_once_and_failures_counted() {
    let cache = TieredCache::new(CacheConfig::default()).unwrap();
    let calls = AtomicUsize::new(0);
    let loader = |key: String| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if key == "broken" {
                Err("no such row")
            } else {
                Ok(CachedEntry::new(
                    format!("value of {key}"),
                    Duration::from_secs(60),
                ))
            }
        }
    };
    let keys = || ["a", "b", "broken"].map(String::from);

    let report = cache.warm(keys(), 2, loader).await;
    assert_eq!(
        (report.attempted, report.succeeded, report.failed),
        (3, 2, 1)
    );
    assert_eq!(cache.get("a").await.unwrap().body(), "value of a");

    let again = cache.warm(keys(), 2, loader).await;
    assert_eq!((again.succeeded, again.failed), (2, 1));
    assert_eq!(
        cache.stats().loader_calls,
        4,
        "only the broken key was loaded again"
    );
}

#[tokio::test]
async fn configured_paths_are_fetched_through_the_layer_and_stored() {
    let server = MockServer::start().await;
    for route in ["/a", "/b"] {
        Mock::given(path(route))
            .respond_with(ResponseTemplate::new(200).insert_header("cache-control", "max-age=60"))
            .expect(1)
            .mount(&server)
            .await;
    }
    Mock::given(path("/down"))
        .respond_with(ResponseTemplate::new(503))
        .expect(1)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);
    let mut warm = WarmConfig::default();
    warm.paths = vec![
        "/a".into(),
        "http://test.local/b".into(),
        "/down".into(),
        "not a uri".into(),
    ];
    warm.host = "test.local".into();

    let report = warm_paths(&service, &warm).await;

    assert_eq!(
        (report.attempted, report.succeeded, report.failed),
        (4, 2, 2)
    );
    for route in ["/a", "/b"] {
        assert_eq!(
            send(&service, get(route, &[])).await.cache_status(),
            "tiered-cache; hit; detail=memory"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn warming_repeats_every_interval() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let origin = tower::service_fn(move |_: Request<Full<Bytes>>| {
        counted.fetch_add(1, Ordering::SeqCst);
        // Not storable, so each round reaches the origin.
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("x")))) }
    });
    let service = CacheLayer::new(CacheConfig::default()).layer(origin);
    let mut warm = WarmConfig::default();
    warm.paths = vec!["/one".into(), "/two".into()];
    warm.interval = Duration::from_secs(300);

    let task = spawn_warming(service, warm);
    // Paused time advances only when every task waits: after each round, the warmer sleeps.
    let rounds_seen = |n: usize| {
        let calls = calls.clone();
        async move {
            while calls.load(Ordering::SeqCst) < n {
                tokio::task::yield_now().await;
            }
        }
    };
    rounds_seen(2).await;
    tokio::time::advance(Duration::from_secs(300)).await;
    rounds_seen(4).await;
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    task.abort();
}
