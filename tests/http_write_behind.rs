//! Write-behind routes: 202 at once, the representation served from the cache, every write
//! replayed to the target, a full queue refused with 503; writes without the credentials a route
//! demands refused with 401; a write the origin refuses retracted from every tier and instance,
//! without touching a newer write.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::origin::{origin, request, send, Cached};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use tower::Layer;
use tower_tiered_cache::config::{RouteConfig, WriteAuth, WriteBehindConfig, WriteMode};
use tower_tiered_cache::{
    CacheConfig, CacheLayer, CachedEntry, TieredCache, WriteBehind, WriteJob,
};
use wiremock::matchers::{body_string, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A write-behind route open to anyone's writes (the origin checks them on replay), serving
/// them as Markdown.
fn open_route() -> RouteConfig {
    RouteConfig::new("/docs/*")
        .ttl(Duration::from_secs(60))
        .write(WriteMode::Behind)
        .write_auth(WriteAuth::Origin)
        .content_type("text/markdown")
}

fn config(write_behind: WriteBehindConfig) -> CacheConfig {
    let route = open_route();
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

/// A replay target that records what it received, takes a permit of `gate` (when set) before
/// answering, and refuses (403) writes without `authorization: <require_authorization>`.
#[derive(Clone, Default)]
struct Recorder {
    received: Arc<Mutex<Vec<(String, String, Bytes)>>>,
    /// The headers of each request received, in the same order.
    headers: Arc<Mutex<Vec<HeaderMap>>>,
    gate: Option<Arc<Semaphore>>,
    require_authorization: Option<&'static str>,
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
                this.headers.lock().unwrap().push(parts.headers.clone());
                if let Some(gate) = &this.gate {
                    gate.acquire().await.unwrap().forget();
                }
                tokio::time::sleep(this.slowness).await;
                let authorized = this.require_authorization.is_none_or(|expected| {
                    parts
                        .headers
                        .get("authorization")
                        .is_some_and(|value| value == expected)
                });
                let mut response = Response::new(Full::default());
                if !authorized {
                    *response.status_mut() = StatusCode::FORBIDDEN;
                }
                Ok::<_, Infallible>(response)
            }
        })
    }
}

/// A recorder that holds every write until the returned gate gets permits, and refuses writes
/// that do not carry `Authorization: Bearer editor`.
fn editor_only() -> (Recorder, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let recorder = Recorder {
        gate: Some(gate.clone()),
        require_authorization: Some("Bearer editor"),
        ..Recorder::default()
    };
    (recorder, gate)
}

/// A `PUT` of an HTML page with a script, with `headers`.
fn put_html(uri: &str, body: &'static str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut headers = headers.to_vec();
    headers.push(("content-type", "text/html"));
    let mut put = request("PUT", uri, &headers);
    *put.body_mut() = Full::new(Bytes::from(body));
    put
}

const SCRIPT: &str = "<script>steal(document.cookie)</script>";

#[test]
fn a_write_behind_route_without_a_lifetime_is_a_configuration_error() {
    let toml = "[[route]]\npath = \"/docs/*\"\nwrite = \"behind\"\nwrite_auth = \"origin\"\n";
    let err = CacheConfig::from_toml_str(toml).unwrap_err();
    assert_eq!(err.key(), Some("route[0].ttl"), "{err}");
    let with_default = format!("[http]\ndefault_ttl = \"30s\"\n{toml}");
    assert!(CacheConfig::from_toml_str(&with_default).is_ok());
}

#[test]
fn a_write_behind_route_without_credentials_is_a_configuration_error_unless_left_to_the_origin() {
    let toml = "[[route]]\npath = \"/docs/*\"\nttl = \"60s\"\nwrite = \"behind\"\n";
    let err = CacheConfig::from_toml_str(toml).unwrap_err();
    assert_eq!(err.key(), Some("route[0].write_token"), "{err}");
    for guard in [
        "write_token = \"t0ken\"",
        "write_requires = [\"authorization\"]",
        "write_auth = \"origin\"",
    ] {
        let guarded = format!("{toml}{guard}\n");
        assert!(CacheConfig::from_toml_str(&guarded).is_ok(), "{guard}");
    }
}

#[tokio::test]
async fn a_stored_write_is_served_with_the_route_content_type_not_the_writers() {
    let server = MockServer::start().await;
    let untyped = RouteConfig::new("/raw/*")
        .ttl(Duration::from_secs(60))
        .write(WriteMode::Behind)
        .write_auth(WriteAuth::Origin);
    let config = CacheConfig::builder()
        .route(open_route())
        .route(untyped)
        .build()
        .unwrap();
    let layer = CacheLayer::new(config)
        .write_behind_to(Recorder::default().service())
        .unwrap();
    let service: Cached = layer.layer(origin(&server));

    for (uri, served_as) in [
        ("/docs/page", "text/markdown"),
        ("/raw/page", "application/octet-stream"),
    ] {
        let accepted = send(&service, put_html(uri, SCRIPT, &[])).await;
        assert_eq!(accepted.status, 202);
        let read = send(&service, common::origin::get(uri, &[])).await;
        assert_eq!(read.body, SCRIPT);
        assert_eq!(read.header("content-type"), served_as, "{uri}");
    }
    assert_eq!(layer.shutdown(Duration::from_secs(10)).await, 0);
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
    let gate = Arc::new(Semaphore::new(0));
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

    gate.add_permits(1);
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

/// A route demanding a token, from the environment as a deployment would configure it.
fn token_config() -> CacheConfig {
    let toml = r#"
        [[route]]
        path = "/notes/*"
        ttl = "60s"
        write = "behind"
        write_token = "${NOTES_WRITE_TOKEN:-}"
    "#;
    CacheConfig::from_toml_str_with_vars(toml, |name| {
        (name == "NOTES_WRITE_TOKEN").then(|| "s3cret".to_owned())
    })
    .unwrap()
}

#[tokio::test]
async fn an_anonymous_write_is_refused_on_a_route_that_demands_a_token() {
    let recorder = Recorder::default();
    let server = MockServer::start().await;
    let layer = CacheLayer::new(token_config())
        .write_behind_to(recorder.service())
        .unwrap();
    let service: Cached = layer.layer(origin(&server));

    for credentials in [
        &[][..],
        &[("authorization", "Bearer guess")],
        &[("authorization", "s3cret")],
    ] {
        let refused = send(&service, put_html("/notes/1", SCRIPT, credentials)).await;
        assert_eq!(refused.status, 401, "{credentials:?}");
        assert_eq!(refused.header("www-authenticate"), "Bearer");
    }
    assert!(
        layer
            .cache()
            .get("http://test.local/notes/1")
            .await
            .is_none(),
        "nothing stored"
    );
    assert_eq!(layer.shutdown(Duration::from_secs(10)).await, 0);
    assert_eq!(layer.write_behind().unwrap().stats().written, 0);
    assert!(
        recorder.received.lock().unwrap().is_empty(),
        "nothing queued"
    );
}

#[tokio::test]
async fn a_write_with_the_route_token_is_accepted() {
    let recorder = Recorder::default();
    let server = MockServer::start().await;
    let layer = CacheLayer::new(token_config())
        .write_behind_to(recorder.service())
        .unwrap();
    let service: Cached = layer.layer(origin(&server));

    let accepted = send(
        &service,
        put_html(
            "/notes/1",
            "<p>minutes</p>",
            &[("authorization", "Bearer s3cret")],
        ),
    )
    .await;
    assert_eq!(accepted.status, 202);
    let read = send(&service, common::origin::get("/notes/1", &[])).await;
    assert_eq!(read.body, "<p>minutes</p>");
    assert_eq!(read.cache_status(), "tiered-cache; hit; detail=memory");

    assert_eq!(layer.shutdown(Duration::from_secs(10)).await, 0);
    let headers = recorder.headers.lock().unwrap();
    assert_eq!(
        headers[0]["authorization"], "Bearer s3cret",
        "the replay carries the client's credentials"
    );
}

#[tokio::test]
async fn a_write_without_the_headers_the_route_requires_is_refused() {
    let toml = r#"
        [[route]]
        path = "/notes/*"
        ttl = "60s"
        write = "behind"
        write_requires = ["authorization"]
    "#;
    let (recorder, gate) = editor_only();
    let server = MockServer::start().await;
    let layer = CacheLayer::new(CacheConfig::from_toml_str(toml).unwrap())
        .write_behind_to(recorder.service())
        .unwrap();
    let service: Cached = layer.layer(origin(&server));

    let refused = send(&service, put_html("/notes/1", SCRIPT, &[])).await;
    assert_eq!(refused.status, 401);
    let editor = [("authorization", "Bearer editor")];
    let accepted = send(&service, put_html("/notes/1", "<p>ok</p>", &editor)).await;
    assert_eq!(accepted.status, 202);

    gate.add_permits(1);
    assert_eq!(layer.shutdown(Duration::from_secs(10)).await, 0);
    assert_eq!(
        recorder.received.lock().unwrap().len(),
        1,
        "only the write with credentials"
    );
}

#[tokio::test]
async fn a_retraction_does_not_remove_a_newer_write() {
    let mut write_behind = WriteBehindConfig::default();
    write_behind.workers = 1;
    let (recorder, gate) = editor_only();
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("the origin's page"))
        .mount(&server)
        .await;
    let layer = CacheLayer::new(config(write_behind))
        .write_behind_to(recorder.service())
        .unwrap();
    let service: Cached = layer.layer(origin(&server));
    let editor = [("authorization", "Bearer editor")];

    // Held at the gate: the anonymous write, then the editor's newer one of the same page, and
    // an anonymous write of another page that nobody overwrites.
    for (uri, body, credentials) in [
        ("/docs/page", SCRIPT, &[][..]),
        ("/docs/page", "<p>the editor's page</p>", &editor[..]),
        ("/docs/other", SCRIPT, &[][..]),
    ] {
        assert_eq!(
            send(&service, put_html(uri, body, credentials))
                .await
                .status,
            202
        );
    }
    gate.add_permits(3);
    assert_eq!(layer.shutdown(Duration::from_secs(10)).await, 0);
    let stats = layer.write_behind().unwrap().stats();
    assert_eq!((stats.written, stats.dropped), (1, 2));

    let page = send(&service, common::origin::get("/docs/page", &[])).await;
    assert_eq!(
        page.body, "<p>the editor's page</p>",
        "the newer write stays"
    );
    assert_eq!(page.cache_status(), "tiered-cache; hit; detail=memory");
    let other = send(&service, common::origin::get("/docs/other", &[])).await;
    assert_eq!(other.body, "the origin's page", "the refused write is gone");
}

#[cfg(feature = "redis")]
mod shared_redis {
    use tower_tiered_cache::Invalidation;

    use super::*;

    /// Waits for the invalidation of `key` to reach an instance (bounded, so a missing event
    /// fails the test instead of hanging it).
    async fn invalidated(events: &mut tokio::sync::broadcast::Receiver<Invalidation>, key: &str) {
        let wait = async {
            loop {
                if let Invalidation::Key(invalidated) = events.recv().await.unwrap() {
                    if invalidated == key {
                        return;
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("the invalidation reaches the other instance");
    }

    /// Two instances on one Redis; the first takes a write whose replay the origin refuses.
    async fn refused_write_is_retracted_from_every_tier(durable: bool) {
        let redis = common::RedisServer::start();
        let route = open_route();
        let mut write_behind = WriteBehindConfig::default();
        write_behind.durable = durable;
        let config = common::config("retract")
            .redis_url(redis.url())
            .route(route)
            .write_behind(write_behind)
            .build()
            .unwrap();
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_string("the origin's page"))
            .mount(&server)
            .await;
        let (recorder, gate) = editor_only();
        let first_layer = CacheLayer::new(config.clone())
            .write_behind_to(recorder.service())
            .unwrap();
        let second_layer = CacheLayer::new(config);
        for layer in [&first_layer, &second_layer] {
            assert!(layer.cache().wait_for_redis(Duration::from_secs(5)).await);
        }
        let (first, second): (Cached, Cached) = (
            first_layer.layer(origin(&server)),
            second_layer.layer(origin(&server)),
        );
        let key = "http://test.local/docs/page";
        let mut second_events = second_layer.cache().invalidation_events();

        let accepted = send(&first, put_html("/docs/page", SCRIPT, &[])).await;
        assert_eq!(accepted.status, 202);
        // Accepting the write dropped older copies everywhere; now both instances serve it.
        invalidated(&mut second_events, key).await;
        for (service, detail) in [(&first, "memory"), (&second, "redis"), (&second, "memory")] {
            let read = send(service, common::origin::get("/docs/page", &[])).await;
            assert_eq!(read.body, SCRIPT);
            assert_eq!(
                read.cache_status(),
                format!("tiered-cache; hit; detail={detail}")
            );
        }

        gate.add_permits(1);
        assert_eq!(first_layer.shutdown(Duration::from_secs(10)).await, 0);
        assert_eq!(first_layer.write_behind().unwrap().stats().dropped, 1);
        invalidated(&mut second_events, key).await;
        for service in [&first, &second] {
            let read = send(service, common::origin::get("/docs/page", &[])).await;
            assert_eq!(read.body, "the origin's page", "retracted from every tier");
        }
    }

    #[tokio::test]
    async fn a_durable_queue_whose_redis_is_down_answers_503_queue_unavailable() {
        let mut redis = common::RedisServer::start();
        let mut write_behind = WriteBehindConfig::default();
        write_behind.durable = true;
        let config = common::config("unavailable")
            .redis_url(redis.url())
            .route(open_route())
            .write_behind(write_behind)
            .build()
            .unwrap();
        let server = MockServer::start().await;
        let layer = CacheLayer::new(config)
            .write_behind_to(Recorder::default().service())
            .unwrap();
        assert!(layer.cache().wait_for_redis(Duration::from_secs(5)).await);
        let service: Cached = layer.layer(origin(&server));

        redis.kill();
        let refused = send(&service, put("/docs/readme", "# Hello")).await;

        assert_eq!(refused.status, 503);
        let text = String::from_utf8_lossy(&refused.body);
        assert!(text.contains("unavailable"), "{text}");
        assert!(!text.contains("full"), "{text}");
        assert_eq!(refused.header("retry-after"), "1");
    }

    #[tokio::test]
    async fn a_write_the_origin_refuses_is_retracted_from_every_tier() {
        refused_write_is_retracted_from_every_tier(false).await;
    }

    #[tokio::test]
    async fn a_write_the_origin_refuses_is_retracted_from_every_tier_with_a_durable_queue() {
        refused_write_is_retracted_from_every_tier(true).await;
    }
}
