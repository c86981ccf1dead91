//! HEAD from cached GETs, byte ranges (from complete and from stored partial responses), large
//! responses streamed and not stored, requests that bypass.

mod common;

use bytes::Bytes;
use common::origin::{cached, get, request, send, Cached};
use http_body::Body as _;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_tiered_cache::CacheConfig;
use wiremock::matchers::{header, method, path};
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
async fn ranges_are_served_from_a_complete_entry() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(cacheable("01234567890"))
        .expect(1)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);

    // An origin may ignore Range and answer 200: that complete response is stored.
    let forwarded = send(&service, get("/r", &[("range", "bytes=0-1")])).await;
    assert_eq!((forwarded.status.as_u16(), forwarded.body.len()), (200, 11));
    assert_eq!(
        forwarded.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200; stored"
    );

    let hits = [
        ("bytes=0-1", "01", "bytes 0-1/11"),
        ("bytes=1-", "1234567890", "bytes 1-10/11"),
        ("bytes=-1", "0", "bytes 10-10/11"),
    ];
    assert_range_hits(&service, "/r", &hits).await;
    let several = send(&service, get("/r", &[("range", "bytes=0-1,3-4")])).await;
    assert_eq!((several.status.as_u16(), several.body.len()), (200, 11));
    let whole = send(&service, get("/r", &[])).await;
    assert_eq!(whole.cache_status(), "tiered-cache; hit; detail=memory");
}

/// Each `(range, body, content range)` of `path` is a memory hit with that 206.
async fn assert_range_hits(service: &Cached, path: &str, hits: &[(&str, &str, &str)]) {
    for (range, body, content_range) in hits {
        let hit = send(service, get(path, &[("range", range)])).await;
        assert_eq!(hit.status, 206, "{range}");
        assert_eq!(hit.body, *body, "{range}");
        assert_eq!(hit.header("content-range"), *content_range);
        assert_eq!(hit.header("content-length"), body.len().to_string());
        assert_eq!(hit.cache_status(), "tiered-cache; hit; detail=memory");
    }
}

/// The origin's answer to `bytes=4-` of the 10-byte representation `0123456789`.
fn last_six() -> ResponseTemplate {
    ResponseTemplate::new(206)
        .insert_header("cache-control", "max-age=60")
        .insert_header("content-range", "bytes 4-9/10")
        .set_body_string("456789")
}

#[tokio::test]
async fn a_partial_answer_is_stored_and_serves_ranges_inside_it() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(header("range", "bytes=4-"))
        .respond_with(last_six())
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(header("range", "bytes=0-1"))
        .respond_with(
            ResponseTemplate::new(206)
                .insert_header("cache-control", "max-age=60")
                .insert_header("content-range", "bytes 0-1/10")
                .set_body_string("01"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);

    let first = send(&service, get("/p", &[("range", "bytes=4-")])).await;
    assert_eq!(
        (first.status.as_u16(), first.body.as_ref()),
        (206, &b"456789"[..])
    );
    assert_eq!(
        first.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=206; stored"
    );
    let hits = [
        ("bytes=4-", "456789", "bytes 4-9/10"),
        ("bytes=-5", "56789", "bytes 5-9/10"),
        ("bytes=5-6", "56", "bytes 5-6/10"),
    ];
    assert_range_hits(&service, "/p", &hits).await;
    // Bytes the stored part does not hold: asked of the origin (which replaces the part).
    let outside = send(&service, get("/p", &[("range", "bytes=0-1")])).await;
    assert_eq!(
        (outside.status.as_u16(), outside.body.as_ref()),
        (206, &b"01"[..])
    );
    assert_eq!(
        outside.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=206; stored"
    );
}

#[tokio::test]
async fn a_stored_part_never_answers_a_request_for_the_whole() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(header("range", "bytes=4-"))
        .respond_with(last_six())
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(cacheable("0123456789"))
        .with_priority(10)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("HEAD"))
        .respond_with(cacheable(""))
        .expect(1)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);

    send(&service, get("/p", &[("range", "bytes=4-")])).await;
    let head = send(&service, request("HEAD", "/p", &[])).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200"
    );
    let stats = service.cache().stats();
    assert_eq!(
        (stats.memory_hits, stats.misses),
        (0, 2),
        "the part is no hit for HEAD"
    );

    // The whole: from the origin, stored in place of the part; ranges then come from it.
    let whole = send(&service, get("/p", &[])).await;
    assert_eq!(
        (whole.status.as_u16(), whole.body.as_ref()),
        (200, &b"0123456789"[..])
    );
    assert_eq!(
        whole.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200; stored"
    );
    let range = send(&service, get("/p", &[("range", "bytes=0-1")])).await;
    assert_eq!(
        (range.status.as_u16(), range.body.as_ref()),
        (206, &b"01"[..])
    );
    assert_eq!(range.cache_status(), "tiered-cache; hit; detail=memory");
    let again = send(&service, get("/p", &[])).await;
    assert_eq!(again.cache_status(), "tiered-cache; hit; detail=memory");
}

#[tokio::test]
async fn a_partial_answer_holding_every_byte_is_stored_as_the_whole() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(206)
                .insert_header("cache-control", "max-age=60")
                .insert_header("content-range", "bytes 0-9/10")
                .set_body_string("0123456789"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);

    // What media players ask first.
    let first = send(&service, get("/all", &[("range", "bytes=0-")])).await;
    assert_eq!(first.status, 206);
    assert_eq!(first.header("content-range"), "bytes 0-9/10");
    assert_eq!(
        first.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=206; stored"
    );

    let whole = send(&service, get("/all", &[])).await;
    assert_eq!(
        (whole.status.as_u16(), whole.body.as_ref()),
        (200, &b"0123456789"[..])
    );
    assert_eq!(whole.header("content-range"), "");
    assert_eq!(whole.cache_status(), "tiered-cache; hit; detail=memory");
    let range = send(&service, get("/all", &[("range", "bytes=8-")])).await;
    assert_eq!(
        (range.status.as_u16(), range.body.as_ref()),
        (206, &b"89"[..])
    );
    assert_eq!(range.header("content-range"), "bytes 8-9/10");
}

#[tokio::test]
async fn partial_answers_that_do_not_add_up_are_not_stored() {
    let server = MockServer::start().await;
    for (path_name, content_range, body) in [
        ("/unknown-length", "bytes 4-9/*", "456789"),
        ("/short-body", "bytes 4-9/10", "4567"),
        ("/past-the-end", "bytes 4-10/10", "4567890"),
    ] {
        Mock::given(path(path_name))
            .respond_with(
                ResponseTemplate::new(206)
                    .insert_header("cache-control", "max-age=60")
                    .insert_header("content-range", content_range)
                    .set_body_string(body),
            )
            .expect(2)
            .mount(&server)
            .await;
    }
    let service = cached(CacheConfig::default(), &server);
    for path_name in ["/unknown-length", "/short-body", "/past-the-end"] {
        for _ in 0..2 {
            let reply = send(&service, get(path_name, &[("range", "bytes=4-")])).await;
            assert_eq!(reply.status, 206, "{path_name}");
            assert!(
                !reply.cache_status().contains("stored"),
                "{path_name}: {}",
                reply.cache_status()
            );
        }
    }
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
