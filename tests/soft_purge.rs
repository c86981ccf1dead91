//! Soft purge (`PURGE` with `Soft-Purge: 1`, `TieredCache::expire` / `expire_tags`): entries are
//! marked stale instead of removed — the next request is answered from the stale entry at once
//! while one background revalidation runs — unless their directives forbid serving stale.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};
use tower_tiered_cache::{CacheConfig, CacheLayer, CacheService, CachedEntry, TieredCache};

type Origin = BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

/// An origin answering `v1`, then `v2`, … with `cache_control`, tagged `tag`; counts its calls.
fn versioned(calls: &Arc<AtomicUsize>, cache_control: &'static str) -> Origin {
    let calls = calls.clone();
    BoxCloneService::new(tower::service_fn(move |_request: Request<Full<Bytes>>| {
        let version = calls.fetch_add(1, Ordering::SeqCst) + 1;
        let response = Response::builder()
            .header("cache-control", cache_control)
            .header("surrogate-key", "articles")
            .header("etag", format!("\"v{version}\""))
            .body(Full::new(Bytes::from(format!("v{version}"))))
            .unwrap();
        async move { Ok::<_, Infallible>(response) }
    }))
}

fn layer(config: tower_tiered_cache::CacheConfigBuilder, origin: Origin) -> CacheService<Origin> {
    CacheLayer::new(config.purge_token("s3cret").build().unwrap()).layer(origin)
}

async fn send(
    service: &CacheService<Origin>,
    request: Request<Full<Bytes>>,
) -> (StatusCode, String, String) {
    let response = service.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let cache_status = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        cache_status,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://soft.example{path}"))
        .body(Full::default())
        .unwrap()
}

fn soft_purge(path: &str, surrogate_key: Option<&str>) -> Request<Full<Bytes>> {
    let mut request = Request::builder()
        .method("PURGE")
        .uri(format!("http://soft.example{path}"))
        .header("authorization", "Bearer s3cret")
        .header("soft-purge", "1");
    if let Some(tags) = surrogate_key {
        request = request.header("surrogate-key", tags);
    }
    request.body(Full::default()).unwrap()
}

/// Waits until the origin has been called `calls` times and its answer is stored.
async fn revalidated(service: &CacheService<Origin>, origin_calls: &AtomicUsize, calls: usize) {
    while origin_calls.load(Ordering::SeqCst) < calls
        || service.cache().stats().stores < calls as u64
    {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_soft_purge_serves_stale_once_then_fresh_with_one_origin_call() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = layer(CacheConfig::builder(), versioned(&calls, "max-age=300"));
    assert_eq!(send(&service, get("/a")).await.2, "v1");
    let (status, _, _) = send(&service, soft_purge("/a", None)).await;
    assert_eq!(status, StatusCode::OK);

    let (_, cache_status, body) = send(&service, get("/a")).await;
    assert_eq!(body, "v1", "answered from the stale entry at once");
    assert_eq!(cache_status, "tiered-cache; hit; fwd=stale; detail=memory");
    revalidated(&service, &calls, 2).await;
    let (_, cache_status, body) = send(&service, get("/a")).await;
    assert_eq!(
        (cache_status.as_str(), body.as_str()),
        ("tiered-cache; hit; detail=memory", "v2")
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one background revalidation"
    );
}

#[tokio::test]
async fn a_soft_purge_by_surrogate_key_marks_every_tagged_entry_stale() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = layer(CacheConfig::builder(), versioned(&calls, "max-age=300"));
    send(&service, get("/tagged")).await;
    let (status, _, _) = send(&service, soft_purge("/", Some("articles"))).await;
    assert_eq!(status, StatusCode::OK);
    let (_, cache_status, body) = send(&service, get("/tagged")).await;
    assert_eq!(
        (cache_status.as_str(), body.as_str()),
        ("tiered-cache; hit; fwd=stale; detail=memory", "v1")
    );
    revalidated(&service, &calls, 2).await;
    assert_eq!(send(&service, get("/tagged")).await.2, "v2");
}

#[tokio::test]
async fn a_soft_purge_of_a_must_revalidate_entry_refetches() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = layer(
        CacheConfig::builder(),
        versioned(&calls, "max-age=300, must-revalidate"),
    );
    send(&service, get("/strict")).await;
    send(&service, soft_purge("/strict", None)).await;
    let (_, cache_status, body) = send(&service, get("/strict")).await;
    assert_eq!(body, "v2", "not served stale");
    assert!(
        cache_status.contains("fwd=stale; fwd-status=200"),
        "{cache_status}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_hard_purge_still_removes() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = layer(CacheConfig::builder(), versioned(&calls, "max-age=300"));
    send(&service, get("/hard")).await;
    let purge = Request::builder()
        .method("PURGE")
        .uri("http://soft.example/hard")
        .header("authorization", "Bearer s3cret")
        .body(Full::default())
        .unwrap();
    send(&service, purge).await;
    let (_, cache_status, body) = send(&service, get("/hard")).await;
    assert_eq!(
        (cache_status.as_str(), body.as_str()),
        ("tiered-cache; fwd=miss; fwd-status=200; stored", "v2")
    );
}

#[tokio::test]
async fn expire_makes_get_or_set_answer_stale_while_one_caller_reloads() {
    let cache = TieredCache::new(CacheConfig::default()).unwrap();
    cache
        .set("k", CachedEntry::new("v1", Duration::from_secs(300)))
        .await;
    cache.expire("k").await.unwrap();
    assert!(cache.get("k").await.is_none(), "not fresh any more");

    let reloads = AtomicUsize::new(0);
    let release = tokio::sync::Notify::new();
    let reloader = cache.get_or_set("k", || async {
        reloads.fetch_add(1, Ordering::SeqCst);
        release.notified().await;
        Ok::<_, Infallible>(CachedEntry::new("v2", Duration::from_secs(300)))
    });
    let others = async {
        tokio::task::yield_now().await;
        // While the reload runs, everyone else gets the stale entry at once.
        for _ in 0..5 {
            let stale = cache
                .get_or_set("k", || async {
                    Ok::<_, Infallible>(CachedEntry::new("never", Duration::from_secs(1)))
                })
                .await
                .unwrap();
            assert_eq!(stale.body(), "v1");
        }
        release.notify_one();
    };
    let (reloaded, ()) = tokio::join!(reloader, others);
    assert_eq!(reloaded.unwrap().body(), "v2");
    assert_eq!(reloads.load(Ordering::SeqCst), 1);
    assert_eq!(cache.get("k").await.unwrap().body(), "v2");
    assert_eq!(cache.stats().early_refreshes, 1);
}

#[tokio::test]
async fn expire_tags_marks_tagged_entries_stale_but_keeps_them() {
    let cache = TieredCache::new(CacheConfig::default()).unwrap();
    let tagged = CachedEntry::new("v1", Duration::from_secs(300)).with_tags(["t"]);
    cache.set("a", tagged).await;
    cache
        .set("b", CachedEntry::new("other", Duration::from_secs(300)))
        .await;
    cache.expire_tags(&["t"]).await.unwrap();
    assert!(cache.get("a").await.is_none());
    let stale = cache.lookup("a").await.expect("kept");
    assert_eq!(stale.entry.body(), "v1");
    assert!(stale.entry.expired_early_at().is_some());
    assert_eq!(cache.get("b").await.unwrap().body(), "other");
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn a_soft_purge_reaches_the_other_instances() {
    use common::RedisServer;

    let redis = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let instance = || {
        layer(
            common::config("soft").redis_url(redis.url()),
            versioned(&calls, "max-age=300"),
        )
    };
    let (a, b) = (instance(), instance());
    for service in [&a, &b] {
        assert!(service.cache().wait_for_redis(Duration::from_secs(5)).await);
    }
    send(&a, get("/shared")).await;
    a.cache().wait_for_writes().await;
    assert_eq!(
        send(&b, get("/shared")).await.1,
        "tiered-cache; hit; detail=redis"
    );

    let mut events = b.cache().invalidation_events();
    send(&a, soft_purge("/shared", None)).await;
    tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("the event reaches b")
        .unwrap();
    let (_, cache_status, body) = send(&b, get("/shared")).await;
    assert_eq!(body, "v1");
    assert_eq!(cache_status, "tiered-cache; hit; fwd=stale; detail=redis");
}
