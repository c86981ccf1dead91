//! Targeted cache-control fields (RFC 9213): `CDN-Cache-Control` and this cache's own
//! `tiered-cache-cache-control` replace `Cache-Control` and `Expires` for this cache, while
//! both reach the client unchanged for the caches after it.

mod common;

use common::origin::{cached, get, send};
use tower_tiered_cache::CacheConfig;
use wiremock::matchers::{header, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const HIT: &str = "tiered-cache; hit; detail=memory";

/// An origin serving `route` with `headers`, expected to be asked `calls` times.
async fn origin(route: &str, headers: &[(&str, &str)], calls: u64) -> MockServer {
    let server = MockServer::start().await;
    let mut response = ResponseTemplate::new(200).set_body_string("body");
    for (name, value) in headers {
        response = response.append_header(*name, *value);
    }
    Mock::given(path(route))
        .respond_with(response)
        .expect(calls)
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn cdn_cache_control_freshness_wins_and_both_fields_reach_the_client() {
    let headers = [
        ("cache-control", "max-age=0, private"),
        ("cdn-cache-control", "max-age=3600"),
    ];
    let server = origin("/t", &headers, 1).await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/t", &[])).await;
    let hit = send(&service, get("/t", &[])).await;
    assert_eq!(hit.cache_status(), HIT);
    assert_eq!(hit.header("cache-control"), "max-age=0, private");
    assert_eq!(hit.header("cdn-cache-control"), "max-age=3600");
    assert!(
        hit.headers
            .keys()
            .all(|name| !name.as_str().starts_with("x-tiered-cache")),
        "internal fields stay internal: {:?}",
        hit.headers
    );
}

#[tokio::test]
async fn cdn_cache_control_no_store_keeps_a_fresh_response_out() {
    let headers = [
        ("cache-control", "max-age=3600"),
        ("cdn-cache-control", "no-store"),
    ];
    let server = origin("/t", &headers, 2).await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/t", &[])).await;
    send(&service, get("/t", &[])).await;
}

/// RFC 9213 §2.1: a field that is not a valid Dictionary (or types a directive wrongly) is
/// ignored as a whole; the next field on the list applies, or `Cache-Control`.
#[tokio::test]
async fn an_invalid_targeted_field_is_ignored_for_the_next_one_or_cache_control() {
    let next = [
        ("cache-control", "no-store"),
        ("tiered-cache-cache-control", "max-age=\"3600\""),
        ("cdn-cache-control", "max-age=3600"),
    ];
    let server = origin("/t", &next, 1).await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/t", &[])).await;
    assert_eq!(send(&service, get("/t", &[])).await.cache_status(), HIT);

    let fallback = [
        ("cache-control", "no-store"),
        ("cdn-cache-control", "max-age=3600, &&&"),
    ];
    let server = origin("/t", &fallback, 2).await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/t", &[])).await;
    send(&service, get("/t", &[])).await;
}

#[tokio::test]
async fn this_caches_own_field_wins_over_cdn_cache_control() {
    let headers = [
        ("cdn-cache-control", "no-store"),
        ("tiered-cache-cache-control", "max-age=3600"),
    ];
    let server = origin("/t", &headers, 1).await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/t", &[])).await;
    assert_eq!(send(&service, get("/t", &[])).await.cache_status(), HIT);
}

#[tokio::test]
async fn fields_off_the_configured_list_change_nothing() {
    let headers = [
        ("cache-control", "max-age=3600"),
        ("cdn-cache-control", "no-store"),
    ];
    let server = origin("/t", &headers, 1).await;
    let config = CacheConfig::builder()
        .targeted_fields(["edge-cache-control"])
        .build()
        .unwrap();
    let service = cached(config, &server);
    send(&service, get("/t", &[])).await;
    let hit = send(&service, get("/t", &[])).await;
    assert_eq!(hit.cache_status(), HIT);
    assert_eq!(hit.header("cdn-cache-control"), "no-store");
}

/// The directives a response was stored under keep applying when it is reused: here
/// `no-cache` in `CDN-Cache-Control` (which `Cache-Control` does not have) makes every reuse
/// a revalidation.
#[tokio::test]
async fn a_stored_response_is_reused_under_its_targeted_directives() {
    let server = MockServer::start().await;
    Mock::given(header("if-none-match", "\"v1\""))
        .respond_with(ResponseTemplate::new(304))
        .expect(1)
        .mount(&server)
        .await;
    let response = ResponseTemplate::new(200)
        .insert_header("cache-control", "max-age=3600")
        .insert_header("cdn-cache-control", "max-age=3600, no-cache")
        .insert_header("etag", "\"v1\"")
        .set_body_string("body");
    Mock::given(path("/t"))
        .respond_with(response)
        .expect(1)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/t", &[])).await;
    let revalidated = send(&service, get("/t", &[])).await;
    assert_eq!(revalidated.status, 200);
    assert_eq!(revalidated.body, "body");
    assert_eq!(
        revalidated.cache_status(),
        "tiered-cache; fwd=stale; fwd-status=304; stored"
    );
}
