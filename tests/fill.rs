//! One fill path: a miss streams to its client as the origin sends it and is stored once it
//! has passed whole; requests waiting for it get the whole entry, never a truncated one; a fill
//! that fails, outgrows `http.max_entry_size` or loses its client stores nothing and lets the
//! next request fill; background revalidations run one per key; the library's `get_or_set`
//! checks tags on its fast path and never leaves the shared lock held.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::sync::mpsc;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};
use tower_tiered_cache::{
    CacheBody, CacheConfig, CacheLayer, CacheService, CachedEntry, TieredCache,
};

type Chunks = Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send + Sync>>;
type Body = StreamBody<Chunks>;
type Origin = BoxCloneService<Request<Full<Bytes>>, Response<Body>, Infallible>;

/// The sending end of one response body the test controls.
type Feed = mpsc::UnboundedSender<Result<Bytes, std::io::Error>>;

/// An origin whose every response body is fed by the test, chunk by chunk: each call hands
/// its body's sender to `feeds`.
fn fed_origin(
    calls: &Arc<AtomicUsize>,
    headers: &'static [(&'static str, &'static str)],
) -> (Origin, mpsc::UnboundedReceiver<Feed>) {
    let (feeds, bodies) = mpsc::unbounded_channel::<Feed>();
    let calls = calls.clone();
    let origin = tower::service_fn(move |_request: Request<Full<Bytes>>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let (feed, chunks) = mpsc::unbounded_channel();
        let _ = feeds.send(feed);
        let stream = futures_util::stream::unfold(chunks, |mut chunks| async move {
            let chunk: Result<Bytes, std::io::Error> = chunks.recv().await?;
            Some((chunk.map(Frame::data), chunks))
        });
        let mut response = Response::builder().header("cache-control", "public, max-age=60");
        for (name, value) in headers {
            response = response.header(*name, *value);
        }
        let body: Chunks = Box::pin(stream);
        let response = response.body(StreamBody::new(body)).unwrap();
        async move { Ok::<_, Infallible>(response) }
    });
    (BoxCloneService::new(origin), bodies)
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://fill.example{path}"))
        .body(Full::default())
        .unwrap()
}

async fn read_all(response: Response<CacheBody<Body>>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

fn status(response: &Response<CacheBody<Body>>) -> String {
    response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_miss_streams_its_first_bytes_before_the_origin_finishes_and_is_stored_whole() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (origin, mut feeds) = fed_origin(&calls, &[]);
    let service = CacheLayer::new(CacheConfig::default()).layer(origin);
    let first_part = Bytes::from(vec![b'a'; 64 * 1024]);
    let rest = Bytes::from(vec![b'b'; 5 * 1024 * 1024 - 64 * 1024]);

    let response = service.clone().oneshot(get("/big")).await.unwrap();
    let feed = feeds.recv().await.unwrap();
    feed.send(Ok(first_part.clone())).unwrap();
    let mut body = response.into_body();
    let mut received = Vec::new();
    while received.len() < first_part.len() {
        let frame = body.frame().await.unwrap().unwrap();
        received.extend_from_slice(&frame.into_data().unwrap());
    }
    assert_eq!(
        received.len(),
        first_part.len(),
        "the first 64 KiB arrived while the origin waits"
    );

    feed.send(Ok(rest.clone())).unwrap();
    drop(feed);
    let tail = body.collect().await.unwrap().to_bytes();
    assert_eq!(received.len() + tail.len(), 5 * 1024 * 1024);

    let hit = service.clone().oneshot(get("/big")).await.unwrap();
    assert_eq!(status(&hit), "tiered-cache; hit; detail=memory");
    let whole = read_all(hit).await;
    assert_eq!(whole.len(), 5 * 1024 * 1024);
    assert_eq!(&whole[..first_part.len()], &first_part[..]);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_over_max_entry_size_streams_whole_and_is_not_stored() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (origin, mut feeds) = fed_origin(&calls, &[]);
    let config = CacheConfig::builder()
        .max_entry_size(100_000)
        .build()
        .unwrap();
    let service = CacheLayer::new(config).layer(origin);
    for round in 0..2 {
        let response = service.clone().oneshot(get("/huge")).await.unwrap();
        let feed = feeds.recv().await.unwrap();
        for _ in 0..4 {
            feed.send(Ok(Bytes::from(vec![b'x'; 50_000]))).unwrap();
        }
        drop(feed);
        assert_eq!(read_all(response).await.len(), 200_000, "round {round}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "not stored");
}

#[tokio::test]
async fn requests_waiting_for_a_streaming_fill_get_the_whole_entry() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (origin, mut feeds) = fed_origin(&calls, &[]);
    let service = CacheLayer::new(CacheConfig::default()).layer(origin);
    let leader = service.clone().oneshot(get("/shared")).await.unwrap();
    let feed = feeds.recv().await.unwrap();
    feed.send(Ok(Bytes::from_static(b"first half, "))).unwrap();
    let waiters: Vec<_> = (0..5)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/shared"))))
        .collect();
    // Let the waiters join the fill before it ends.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    feed.send(Ok(Bytes::from_static(b"second half"))).unwrap();
    drop(feed);
    assert_eq!(read_all(leader).await, "first half, second half");
    for waiter in waiters {
        let response = waiter.await.unwrap().unwrap();
        assert!(status(&response).contains("hit") || status(&response).contains("collapsed"));
        assert_eq!(read_all(response).await, "first half, second half");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_client_that_goes_away_mid_body_stores_nothing_and_the_next_request_fills() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (origin, mut feeds) = fed_origin(&calls, &[]);
    let service = CacheLayer::new(CacheConfig::default()).layer(origin);
    let response = service.clone().oneshot(get("/gone")).await.unwrap();
    let feed = feeds.recv().await.unwrap();
    feed.send(Ok(Bytes::from_static(b"partial"))).unwrap();
    let mut body = response.into_body();
    let _first = body.frame().await;
    drop(body);

    let next = service.clone().oneshot(get("/gone")).await.unwrap();
    assert!(status(&next).contains("fwd=miss"), "{}", status(&next));
    let feed = feeds.recv().await.unwrap();
    feed.send(Ok(Bytes::from_static(b"complete"))).unwrap();
    drop(feed);
    assert_eq!(read_all(next).await, "complete");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_that_fails_is_not_stored() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (origin, mut feeds) = fed_origin(&calls, &[]);
    let service = CacheLayer::new(CacheConfig::default()).layer(origin);
    let response = service.clone().oneshot(get("/broken")).await.unwrap();
    let feed = feeds.recv().await.unwrap();
    feed.send(Ok(Bytes::from_static(b"half"))).unwrap();
    feed.send(Err(std::io::Error::other("origin reset")))
        .unwrap();
    assert!(response.into_body().collect().await.is_err());
    let next = service.clone().oneshot(get("/broken")).await.unwrap();
    assert!(status(&next).contains("fwd=miss"), "{}", status(&next));
}

/// An origin that answers the first request stale-while-revalidate-able, then hangs.
fn hanging_after_first(
    calls: &Arc<AtomicUsize>,
) -> BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible> {
    let calls = calls.clone();
    BoxCloneService::new(tower::service_fn(move |_request: Request<Full<Bytes>>| {
        let call = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if call > 0 {
                std::future::pending::<()>().await;
            }
            let response = Response::builder()
                .header("cache-control", "max-age=1, stale-while-revalidate=3600")
                .header(
                    "date",
                    httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(10)),
                )
                .body(Full::new(Bytes::from_static(b"stale soon")))
                .unwrap();
            Ok::<_, Infallible>(response)
        }
    }))
}

#[tokio::test]
async fn one_background_revalidation_per_key_runs_however_long_the_origin_hangs() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service: CacheService<_> =
        CacheLayer::new(CacheConfig::default()).layer(hanging_after_first(&calls));
    let first = service.clone().oneshot(get("/swr")).await.unwrap();
    first.into_body().collect().await.unwrap();
    let runtime = tokio::runtime::Handle::current().metrics();
    let tasks_before = runtime.num_alive_tasks();
    for _ in 0..50 {
        let stale = service.clone().oneshot(get("/swr")).await.unwrap();
        assert_eq!(
            stale.headers()["cache-status"],
            "tiered-cache; hit; fwd=stale; detail=memory"
        );
        tokio::task::yield_now().await;
    }
    while calls.load(Ordering::SeqCst) < 2 {
        tokio::task::yield_now().await;
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one revalidation in flight, not 50"
    );
    // Checked before anything is spawned: no task per stale hit waits behind the hung one.
    let spawned = runtime.num_alive_tasks().saturating_sub(tasks_before);
    assert!(spawned <= 1, "{spawned} background tasks for one key");
}

#[tokio::test]
async fn get_or_set_does_not_answer_from_memory_after_a_tag_invalidation() {
    let cache = TieredCache::new(CacheConfig::default()).unwrap();
    let loads = AtomicUsize::new(0);
    let load = || async {
        loads.fetch_add(1, Ordering::SeqCst);
        Ok::<_, Infallible>(CachedEntry::new("v", Duration::from_secs(60)).with_tags(["t"]))
    };
    cache.get_or_set("k", load).await.unwrap();
    cache.invalidate_tags(&["t"]).await.unwrap();
    cache.get_or_set("k", load).await.unwrap();
    assert_eq!(
        loads.load(Ordering::SeqCst),
        2,
        "the invalidated entry was not returned"
    );
}

#[cfg(feature = "redis")]
mod shared_lock {
    use common::{cache_on, config, RedisServer};
    use fred::interfaces::KeysInterface;

    use super::*;

    fn locking(prefix: &str) -> common::CacheConfigBuilder {
        // A long wait: a leaked lock would hold the second instance for a minute.
        config(prefix).l2_lock(Duration::from_secs(60), Duration::from_secs(60))
    }

    async fn lock_held(redis: &RedisServer, key: &str) -> bool {
        let held: u64 = redis.client().await.exists(key).await.unwrap();
        held == 1
    }

    #[tokio::test]
    async fn a_loader_error_releases_the_shared_lock() {
        let redis = RedisServer::start();
        let cache = cache_on(&redis, locking("err")).await;
        let failed = cache
            .get_or_set("k", || async { Err::<CachedEntry, _>("database down") })
            .await;
        assert!(failed.is_err());
        assert!(
            !lock_held(&redis, "err:lock:k").await,
            "released on the error path"
        );
    }

    #[tokio::test]
    async fn a_cancelled_load_releases_the_shared_lock_and_another_instance_loads_at_once() {
        let redis = RedisServer::start();
        let first = cache_on(&redis, locking("cancel")).await;
        let second = cache_on(&redis, locking("cancel")).await;
        let started = Arc::new(tokio::sync::Notify::new());
        let load = tokio::spawn({
            let (first, started) = (first.clone(), started.clone());
            async move {
                first
                    .get_or_set("k", || async move {
                        started.notify_one();
                        std::future::pending::<Result<CachedEntry, Infallible>>().await
                    })
                    .await
            }
        });
        started.notified().await;
        assert!(
            lock_held(&redis, "cancel:lock:k").await,
            "the loader holds the lock"
        );
        load.abort();
        let _ = load.await;
        // Released in the background; the second instance then loads without waiting it out.
        let loaded = tokio::time::timeout(
            Duration::from_secs(20),
            second.get_or_set("k", || async {
                Ok::<_, Infallible>(CachedEntry::new("second", Duration::from_secs(60)))
            }),
        )
        .await
        .expect("not held for l2.lock_wait")
        .unwrap();
        assert_eq!(loaded.body(), "second");
    }

    #[tokio::test]
    async fn a_http_fill_whose_client_goes_away_releases_the_shared_lock() {
        let redis = RedisServer::start();
        let calls = Arc::new(AtomicUsize::new(0));
        let (origin, mut feeds) = fed_origin(&calls, &[]);
        let config = locking("http").redis_url(redis.url()).build().unwrap();
        let service = CacheLayer::new(config).layer(origin);
        assert!(service.cache().wait_for_redis(Duration::from_secs(5)).await);
        let response = service.clone().oneshot(get("/k")).await.unwrap();
        let _feed = feeds.recv().await.unwrap();
        let key = "http:lock:http://fill.example/k";
        assert!(lock_held(&redis, key).await);
        drop(response);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while lock_held(&redis, key).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the lock was never released"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
