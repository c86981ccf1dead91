//! Serving stale (RFC 5861): stale-while-revalidate with one background refresh, and
//! stale-if-error on origin 5xx, connection errors and timeouts.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use common::origin::{cached, get, send, Cached};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};
use tower_tiered_cache::{CacheConfig, CacheLayer};
use wiremock::matchers::{header, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A first response that is stale on arrival (Age beyond max-age) with `cache_control` added.
fn stale_on_arrival(cache_control: &str) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .insert_header(
            "cache-control",
            format!("max-age=60, {cache_control}").as_str(),
        )
        .insert_header("age", "120")
        .insert_header("etag", "\"v1\"")
        .set_body_string("stored body")
}

async fn origin_then(
    first: ResponseTemplate,
    then: ResponseTemplate,
    then_calls: u64,
) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(path("/s"))
        .respond_with(first)
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/s"))
        .respond_with(then)
        .expect(then_calls)
        .mount(&server)
        .await;
    server
}

/// Sends GETs until one is no longer served stale (the background refresh landed).
async fn until_refreshed(service: &Cached) -> String {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let reply = send(service, get("/s", &[])).await;
            if !reply.cache_status().contains("fwd=stale") {
                return reply.cache_status().to_owned();
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the background refresh completes")
}

/// An origin whose `/s` is stale on arrival (with `cache_control` too) and is then revalidated
/// exactly once with a 304.
async fn revalidated_once(cache_control: &str) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(header("if-none-match", "\"v1\""))
        .respond_with(ResponseTemplate::new(304).insert_header("cache-control", "max-age=60"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/s"))
        .respond_with(stale_on_arrival(cache_control))
        .expect(1)
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    let server = revalidated_once("stale-while-revalidate=600").await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/s", &[])).await;

    let stale = send(&service, get("/s", &[])).await;
    assert_eq!(
        (stale.status.as_u16(), stale.body.as_ref()),
        (200, &b"stored body"[..])
    );
    assert_eq!(
        stale.cache_status(),
        "tiered-cache; hit; fwd=stale; detail=memory"
    );

    assert_eq!(
        until_refreshed(&service).await,
        "tiered-cache; hit; detail=memory"
    );
}

#[tokio::test]
async fn a_configured_default_window_applies_to_responses_without_one() {
    let server = revalidated_once("public").await;
    let config = CacheConfig::builder()
        .stale_while_revalidate(Duration::from_secs(600))
        .build()
        .unwrap();
    let service = cached(config, &server);
    send(&service, get("/s", &[])).await;
    assert!(send(&service, get("/s", &[]))
        .await
        .cache_status()
        .contains("fwd=stale"));
    until_refreshed(&service).await;
}

#[tokio::test]
async fn stale_if_error_serves_stale_when_origin_returns_503() {
    let server = origin_then(
        stale_on_arrival("stale-if-error=600"),
        ResponseTemplate::new(503),
        1,
    )
    .await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/s", &[])).await;

    let reply = send(&service, get("/s", &[])).await;
    assert_eq!(
        (reply.status.as_u16(), reply.body.as_ref()),
        (200, &b"stored body"[..])
    );
    assert_eq!(
        reply.cache_status(),
        "tiered-cache; hit; fwd=stale; fwd-status=503; detail=memory"
    );
}

#[tokio::test]
async fn must_revalidate_forbids_stale_on_error() {
    let server = origin_then(
        stale_on_arrival("must-revalidate, stale-if-error=600"),
        ResponseTemplate::new(503),
        1,
    )
    .await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/s", &[])).await;
    let reply = send(&service, get("/s", &[])).await;
    assert_eq!(reply.status, 503);
}

#[tokio::test]
async fn without_stale_if_error_the_5xx_passes_through_and_the_entry_stays() {
    let server = origin_then(stale_on_arrival("public"), ResponseTemplate::new(502), 2).await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/s", &[])).await;
    assert_eq!(send(&service, get("/s", &[])).await.status, 502);
    // A client may still ask for stale-on-error itself.
    let reply = send(
        &service,
        get("/s", &[("cache-control", "stale-if-error=600")]),
    )
    .await;
    assert_eq!(reply.status, 200);
}

/// An origin whose first answer is stored stale and whose later calls fail (`Err`) or hang.
fn failing_origin(
    hang: bool,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    failing_after("max-age=60, stale-if-error=600", "120", hang)
}

/// An origin whose first answer has `cache_control` and `age`, and whose later calls fail
/// (`Err`, as a refused or closed connection) or hang.
fn failing_after(
    cache_control: &'static str,
    age: &'static str,
    hang: bool,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tower::service_fn(move |_request: Request<Full<Bytes>>| {
        let first = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        async move {
            if first {
                let response = Response::builder()
                    .header("cache-control", cache_control)
                    .header("age", age)
                    .body(Full::new(Bytes::from("stored body")))
                    .unwrap();
                return Ok(response);
            }
            if hang {
                std::future::pending::<()>().await;
            }
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "origin down",
            ))
        }
    })
}

async fn body_of(response: Response<tower_tiered_cache::CacheBody<Full<Bytes>>>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn stale_if_error_serves_stale_when_the_origin_is_unreachable() {
    let service = CacheLayer::new(CacheConfig::default()).layer(failing_origin(false));
    let request = || {
        Request::get("http://h/x")
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    service.clone().oneshot(request()).await.unwrap();
    let reply = service
        .clone()
        .oneshot(request())
        .await
        .expect("stale instead of the error");
    assert_eq!(
        reply.headers()["cache-status"],
        "tiered-cache; hit; fwd=stale; detail=memory"
    );
    assert_eq!(body_of(reply).await, "stored body");

    let other = service
        .oneshot(
            Request::get("http://h/never-stored")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert!(
        other.is_err(),
        "nothing stale to serve: the origin's error stands"
    );
}

#[tokio::test(start_paused = true)]
async fn an_origin_timeout_serves_stale_or_answers_504() {
    let config = CacheConfig::builder()
        .origin_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let service = CacheLayer::new(config).layer(failing_origin(true));
    let request = |uri: &str| Request::get(uri).body(Full::<Bytes>::default()).unwrap();
    service
        .clone()
        .oneshot(request("http://h/x"))
        .await
        .unwrap();

    let stale = service
        .clone()
        .oneshot(request("http://h/x"))
        .await
        .unwrap();
    assert_eq!(
        stale.headers()["cache-status"],
        "tiered-cache; hit; fwd=stale; detail=memory"
    );

    let timed_out = service.oneshot(request("http://h/other")).await.unwrap();
    assert_eq!(timed_out.status(), 504);
    assert_eq!(
        timed_out.headers()["cache-status"],
        "tiered-cache; fwd=miss"
    );
}

/// RFC 9111 §4.2.4: a cache that cannot reach the origin may serve stale; by default it does
/// for 10 s past freshness (`http.stale_if_unreachable`), without any `stale-if-error`.
#[tokio::test]
async fn an_unreachable_origin_gets_a_recently_stale_entry_served_by_default() {
    // Stale by 5 s on arrival: inside the 10 s window.
    let service =
        CacheLayer::new(CacheConfig::default()).layer(failing_after("max-age=60", "65", false));
    let request = || {
        Request::get("http://h/x")
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    service.clone().oneshot(request()).await.unwrap();
    let reply = service
        .oneshot(request())
        .await
        .expect("stale instead of the error");
    assert_eq!(
        reply.headers()["cache-status"],
        "tiered-cache; hit; fwd=stale; detail=memory"
    );
    assert_eq!(body_of(reply).await, "stored body");
}

/// The window stops where directives forbid stale, where it is turned off, and at an answer: a
/// 5xx is not a disconnection, only `stale-if-error` serves stale for it.
#[tokio::test]
async fn no_stale_when_directives_forbid_it_it_is_off_or_the_origin_answers_5xx() {
    let request = || {
        Request::get("http://h/x")
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    for forbidding in [
        "max-age=60, must-revalidate",
        "max-age=60, proxy-revalidate",
        "s-maxage=60",
        "max-age=60, no-cache",
    ] {
        let service =
            CacheLayer::new(CacheConfig::default()).layer(failing_after(forbidding, "65", false));
        service.clone().oneshot(request()).await.unwrap();
        assert!(service.oneshot(request()).await.is_err(), "{forbidding}");
    }
    let off = CacheConfig::builder()
        .stale_if_unreachable(Duration::ZERO)
        .build()
        .unwrap();
    let service = CacheLayer::new(off).layer(failing_after("max-age=60", "65", false));
    service.clone().oneshot(request()).await.unwrap();
    assert!(service.oneshot(request()).await.is_err());

    let first = ResponseTemplate::new(200)
        .insert_header("cache-control", "max-age=60")
        .insert_header("age", "65")
        .set_body_string("stored body");
    let server = origin_then(first, ResponseTemplate::new(503), 1).await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/s", &[])).await;
    assert_eq!(send(&service, get("/s", &[])).await.status, 503);
}

#[tokio::test]
async fn infallible_origins_need_no_special_handling() {
    let origin = tower::service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
    });
    let service = CacheLayer::new(CacheConfig::default()).layer(origin);
    let reply = service
        .oneshot(Request::get("http://h/").body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
}
