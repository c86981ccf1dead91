//! HEAD from cached GETs, large responses streamed and not stored, requests that bypass.

mod common;

use bytes::Bytes;
use common::origin::{cached, get, request, send};
use http_body::Body as _;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_tiered_cache::CacheConfig;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn cacheable(body: impl Into<Vec<u8>>) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .insert_header("cache-control", "max-age=60")
        .set_body_bytes(body)
}

#[tokio::test]
async fn head_is_answered_from_a_cached_get() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/h"))
        .respond_with(cacheable("0123456789"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("HEAD"))
        .respond_with(cacheable(""))
        .expect(0)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);

    send(&service, get("/h", &[])).await;
    let head = send(&service, request("HEAD", "/h", &[])).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), "10");
    assert_eq!(head.cache_status(), "tiered-cache; hit; detail=memory");
}

#[tokio::test]
async fn a_head_miss_does_not_poison_the_get_entry() {
    let server = MockServer::start().await;
    Mock::given(method("HEAD"))
        .respond_with(cacheable(""))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(cacheable("full"))
        .expect(1)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);

    let head = send(&service, request("HEAD", "/p", &[])).await;
    assert_eq!(
        head.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200"
    );
    let get_reply = send(&service, get("/p", &[])).await;
    assert_eq!(get_reply.body, "full");
    assert_eq!(send(&service, get("/p", &[])).await.body, "full");
}

#[tokio::test]
async fn responses_above_max_entry_size_stream_through_and_are_not_stored() {
    let server = MockServer::start().await;
    let big = vec![b'x'; 100_000];
    Mock::given(path("/big"))
        .respond_with(cacheable(big.clone()))
        .expect(2)
        .mount(&server)
        .await;
    let config = CacheConfig::builder()
        .max_entry_size(10_000)
        .build()
        .unwrap();
    let service = cached(config, &server);

    let first = send(&service, get("/big", &[])).await;
    assert_eq!(first.body.len(), 100_000);
    assert_eq!(
        first.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200"
    );
    let second = send(&service, get("/big", &[])).await;
    assert_eq!(second.body, Bytes::from(big));
    assert_eq!(service.cache().stats().stores, 0);
}

#[tokio::test]
async fn a_large_body_is_not_buffered_when_its_length_is_declared() {
    let server = MockServer::start().await;
    Mock::given(path("/declared"))
        .respond_with(cacheable(vec![b'y'; 50_000]))
        .expect(1)
        .mount(&server)
        .await;
    let config = CacheConfig::builder()
        .max_entry_size(1_000)
        .build()
        .unwrap();
    let service = cached(config, &server);

    let response = service
        .clone()
        .oneshot(get("/declared", &[]))
        .await
        .unwrap();
    // Nothing was read yet: the whole declared length is still to come from the origin.
    assert_eq!(response.body().size_hint().exact(), Some(50_000));
    assert_eq!(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .len(),
        50_000
    );
}

#[tokio::test]
async fn range_requests_are_forwarded_on_a_miss_and_served_from_a_complete_entry() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(cacheable("01234567890"))
        .expect(2)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);

    // A miss: forwarded as it is (the origin may answer 206), never stored.
    let forwarded = send(&service, get("/r", &[("range", "bytes=0-1")])).await;
    assert_eq!(
        forwarded.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200"
    );

    send(&service, get("/r", &[])).await;
    for (range, body, content_range) in [
        ("bytes=0-1", "01", "bytes 0-1/11"),
        ("bytes=1-", "1234567890", "bytes 1-10/11"),
        ("bytes=-1", "0", "bytes 10-10/11"),
    ] {
        let partial = send(&service, get("/r", &[("range", range)])).await;
        assert_eq!(partial.status, 206, "{range}");
        assert_eq!(partial.body, body);
        assert_eq!(partial.header("content-range"), content_range);
        assert_eq!(partial.header("content-length"), body.len().to_string());
        assert_eq!(partial.cache_status(), "tiered-cache; hit; detail=memory");
    }
    let several = send(&service, get("/r", &[("range", "bytes=0-1,3-4")])).await;
    assert_eq!((several.status.as_u16(), several.body.len()), (200, 11));
}

#[tokio::test]
async fn unsafe_methods_go_to_the_origin() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(cacheable("posted"))
        .expect(2)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);
    for _ in 0..2 {
        let post = send(&service, request("POST", "/b", &[])).await;
        assert_eq!(
            post.cache_status(),
            "tiered-cache; fwd=method; fwd-status=200"
        );
    }
}

#[tokio::test]
async fn request_no_store_bypasses() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(cacheable("x"))
        .expect(2)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/ns", &[("cache-control", "no-store")])).await;
    let second = send(&service, get("/ns", &[])).await;
    assert_eq!(
        second.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200; stored"
    );
}
