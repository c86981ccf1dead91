//! Write-behind routes: 202 at once, the representation served from the cache, every write
//! replayed to the target, a full queue refused with 503.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::origin::{origin, request, send, Cached};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::sync::Notify;
use tower::Layer;
use tower_tiered_cache::config::{RouteConfig, WriteBehindConfig, WriteMode};
use tower_tiered_cache::{
    CacheConfig, CacheLayer, CachedEntry, TieredCache, WriteBehind, WriteJob,
};
use wiremock::matchers::{body_string, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn config(write_behind: WriteBehindConfig) -> CacheConfig {
    let route = RouteConfig::new("/docs/*")
        .ttl(Duration::from_secs(60))
        .write(WriteMode::Behind);
    CacheConfig::builder()
        .route(route)
        .write_behind(write_behind)
        .build()
        .unwrap()
}

fn put(uri: &str, body: &'static str) -> Request<Full<Bytes>> {
    let mut put = request("PUT", uri, &[("content-type", "text/markdown")]);
    *put.body_mut() = Full::new(Bytes::from(body));
    put
}

/// A replay target that records what it received and waits for `gate` before answering.
#[derive(Clone, Default)]
struct Recorder {
    received: Arc<Mutex<Vec<(String, String, Bytes)>>>,
    gate: Option<Arc<Notify>>,
    /// Time the target takes per write.
    slowness: Duration,
}

impl Recorder {
    fn service(
        &self,
    ) -> impl tower::Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        let this = self.clone();
        tower::service_fn(move |request: Request<Full<Bytes>>| {
            let this = this.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                this.received.lock().unwrap().push((
                    parts.method.to_string(),
                    parts.uri.path().to_owned(),
                    body,
                ));
                if let Some(gate) = &this.gate {
                    gate.notified().await;
                }
                tokio::time::sleep(this.slowness).await;
                Ok::<_, Infallible>(Response::new(Full::default()))
            }
        })
    }
}

#[tokio::test]
async fn a_write_is_answered_at_once_served_from_the_cache_and_replayed() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/docs/readme"))
        .and(body_string("# hello"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    let layer = CacheLayer::new(config(WriteBehindConfig::default()))
        .write_behind_to(origin(&server))
        .unwrap();
    let service: Cached = layer.layer(origin(&server));

    let accepted = send(&service, put("/docs/readme", "# hello")).await;
    assert_eq!(accepted.status, 202);
    assert_eq!(accepted.cache_status(), "tiered-cache; detail=write-behind");

    let read = send(&service, common::origin::get("/docs/readme", &[])).await;
    assert_eq!(
        (read.status.as_u16(), read.body.as_ref()),
        (200, &b"# hello"[..])
    );
    assert_eq!(read.header("content-type"), "text/markdown");
    assert_eq!(read.cache_status(), "tiered-cache; hit; detail=memory");

    assert_eq!(
        layer.shutdown(Duration::from_secs(10)).await,
        0,
        "the queue drained"
    );
}

#[tokio::test]
async fn a_full_queue_answers_503_and_stores_nothing() {
    let mut write_behind = WriteBehindConfig::default();
    write_behind.capacity = 1;
    write_behind.workers = 1;
    let gate = Arc::new(Notify::new());
    let recorder = Recorder {
        gate: Some(gate.clone()),
        ..Recorder::default()
    };
    let server = MockServer::start().await;
    let layer = CacheLayer::new(config(write_behind))
        .write_behind_to(recorder.service())
        .unwrap();
    let service: Cached = layer.layer(origin(&server));

    assert_eq!(send(&service, put("/docs/a", "a")).await.status, 202);
    let refused = send(&service, put("/docs/b", "b")).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), "1");
    assert_eq!(layer.write_behind().unwrap().stats().refused, 1);
    assert!(
        layer
            .cache()
            .get("http://test.local/docs/b")
            .await
            .is_none(),
        "nothing stored"
    );

    gate.notify_one();
    assert_eq!(layer.shutdown(Duration::from_secs(10)).await, 0);
    let received = recorder.received.lock().unwrap().clone();
    assert_eq!(
        received,
        vec![("PUT".to_owned(), "/docs/a".to_owned(), Bytes::from("a"))]
    );
}

#[tokio::test]
async fn a_slow_target_still_receives_every_write_and_delete_drops_the_representation() {
    let recorder = Recorder {
        slowness: Duration::from_millis(5),
        ..Recorder::default()
    };
    let server = MockServer::start().await;
    let layer = CacheLayer::new(config(WriteBehindConfig::default()))
        .write_behind_to(recorder.service())
        .unwrap();
    let service: Cached = layer.layer(origin(&server));

    for i in 0..50 {
        let uri = format!("/docs/{i}");
        assert_eq!(send(&service, put(&uri, "v")).await.status, 202);
    }
    assert_eq!(
        send(&service, request("DELETE", "/docs/7", &[]))
            .await
            .status,
        202
    );
    assert!(layer
        .cache()
        .get("http://test.local/docs/7")
        .await
        .is_none());
    assert!(layer
        .cache()
        .get("http://test.local/docs/8")
        .await
        .is_some());

    assert_eq!(layer.shutdown(Duration::from_secs(10)).await, 0);
    let received = recorder.received.lock().unwrap();
    assert_eq!(received.len(), 51);
    assert_eq!(
        received
            .iter()
            .filter(|(method, _, _)| method == "DELETE")
            .count(),
        1
    );
}

#[tokio::test]
async fn without_a_replay_target_behind_routes_write_synchronously() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let service = CacheLayer::new(config(WriteBehindConfig::default())).layer(origin(&server));
    let reply = send(&service, put("/docs/x", "x")).await;
    assert_eq!(reply.status, 204, "the origin's own answer");
}

#[tokio::test]
async fn the_library_write_behind_stores_at_once_and_queues_the_write() {
    let cache = TieredCache::new(CacheConfig::default()).unwrap();
    let written = Arc::new(Mutex::new(Vec::new()));
    let sink = written.clone();
    let queue = WriteBehind::start(&WriteBehindConfig::default(), None, move |job: WriteJob| {
        let sink = sink.clone();
        async move {
            sink.lock().unwrap().push((job.key, job.body));
            Ok(())
        }
    })
    .unwrap();

    cache
        .write_behind(
            &queue,
            "user:9",
            CachedEntry::new("Hedy", Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(cache.get("user:9").await.unwrap().body(), "Hedy");
    assert_eq!(queue.shutdown(Duration::from_secs(10)).await, 0);
    assert_eq!(
        *written.lock().unwrap(),
        vec![("user:9".to_owned(), Bytes::from("Hedy"))]
    );
}
