//! Validation (RFC 9111 §4.3): stale entries are revalidated with their validators, a 304
//! refreshes them, and clients' own conditional requests are answered from fresh entries.

mod common;

use common::origin::{cached, get, send, Cached};
use tower_tiered_cache::CacheConfig;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

fn without(name: &'static str) -> impl Fn(&Request) -> bool {
    move |request: &Request| !request.headers.contains_key(name)
}

/// Exact header match (wiremock's `header` splits values on commas, which dates contain).
fn header_is(name: &'static str, value: &'static str) -> impl Fn(&Request) -> bool {
    move |request: &Request| request.headers.get(name).is_some_and(|v| v == value)
}

/// An origin whose first answer is stale on arrival (Age beyond max-age) but has `validator`;
/// validation with `condition` gets a 304 that makes it fresh for a minute.
async fn revalidating_origin(
    validator: (&'static str, &'static str),
    condition: (&'static str, &'static str),
    full_calls: u64,
) -> (MockServer, Cached) {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(header_is(condition.0, condition.1))
        .respond_with(ResponseTemplate::new(304).insert_header("cache-control", "max-age=60"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/r"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=60")
                .insert_header("age", "120")
                .insert_header(validator.0, validator.1)
                .set_body_string("full body"),
        )
        .expect(full_calls)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);
    (server, service)
}

#[tokio::test]
async fn a_stale_entry_with_an_etag_is_revalidated_and_refreshed_by_a_304() {
    let (_server, service) =
        revalidating_origin(("etag", "\"v1\""), ("if-none-match", "\"v1\""), 1).await;

    let first = send(&service, get("/r", &[])).await;
    assert_eq!(
        first.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200; stored"
    );

    let revalidated = send(&service, get("/r", &[])).await;
    assert_eq!(
        revalidated.status, 200,
        "the client gets the full response, not the 304"
    );
    assert_eq!(revalidated.body, "full body");
    assert_eq!(revalidated.header("etag"), "\"v1\"");
    assert_eq!(
        revalidated.cache_status(),
        "tiered-cache; fwd=stale; fwd-status=304; stored"
    );

    let third = send(&service, get("/r", &[])).await;
    assert_eq!(third.cache_status(), "tiered-cache; hit; detail=memory");
    assert_eq!(third.body, "full body");
}

#[tokio::test]
async fn last_modified_is_revalidated_with_if_modified_since() {
    let date = "Tue, 15 Nov 1994 12:45:26 GMT";
    let (_server, service) =
        revalidating_origin(("last-modified", date), ("if-modified-since", date), 1).await;
    send(&service, get("/r", &[])).await;
    let revalidated = send(&service, get("/r", &[])).await;
    assert_eq!(
        revalidated.cache_status(),
        "tiered-cache; fwd=stale; fwd-status=304; stored"
    );
    assert_eq!(
        send(&service, get("/r", &[])).await.cache_status(),
        "tiered-cache; hit; detail=memory"
    );
}

#[tokio::test]
async fn a_304_updates_the_stored_headers() {
    let server = MockServer::start().await;
    Mock::given(header("if-none-match", "\"v1\""))
        .respond_with(
            ResponseTemplate::new(304)
                .insert_header("cache-control", "max-age=60")
                .insert_header("x-version", "new"),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/u"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=0")
                .insert_header("etag", "\"v1\"")
                .insert_header("x-version", "old")
                .set_body_string("body"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/u", &[])).await;
    assert_eq!(
        send(&service, get("/u", &[])).await.header("x-version"),
        "new"
    );
    let hit = send(&service, get("/u", &[])).await;
    assert_eq!(
        (hit.header("x-version"), hit.header("cache-control")),
        ("new", "max-age=60")
    );
}

#[tokio::test]
async fn a_new_full_response_to_a_revalidation_replaces_the_entry() {
    let server = MockServer::start().await;
    Mock::given(header("if-none-match", "\"v1\""))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=60")
                .insert_header("etag", "\"v2\"")
                .set_body_string("version 2"),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/n"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=0")
                .insert_header("etag", "\"v1\"")
                .set_body_string("version 1"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);
    assert_eq!(send(&service, get("/n", &[])).await.body, "version 1");
    let second = send(&service, get("/n", &[])).await;
    assert_eq!(second.body, "version 2");
    assert_eq!(
        second.cache_status(),
        "tiered-cache; fwd=stale; fwd-status=200; stored"
    );
    assert_eq!(send(&service, get("/n", &[])).await.body, "version 2");
}

#[tokio::test]
async fn a_clients_conditional_request_is_answered_304_from_a_fresh_entry() {
    let server = MockServer::start().await;
    Mock::given(path("/c"))
        .and(without("if-none-match"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=60")
                .insert_header("etag", "\"v1\"")
                .set_body_string("body"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);

    // On a miss the origin is asked unconditionally, so the response can be stored.
    let miss = send(&service, get("/c", &[("if-none-match", "\"v1\"")])).await;
    assert_eq!(miss.status, 304);
    assert!(miss.body.is_empty());
    assert_eq!(miss.header("etag"), "\"v1\"");

    let hit = send(&service, get("/c", &[("if-none-match", "W/\"v1\"")])).await;
    assert_eq!(hit.status, 304);
    assert_eq!(hit.cache_status(), "tiered-cache; hit; detail=memory");
    let other = send(&service, get("/c", &[("if-none-match", "\"v0\"")])).await;
    assert_eq!(
        (other.status.as_u16(), other.body.as_ref()),
        (200, &b"body"[..])
    );
}

#[tokio::test]
async fn request_no_cache_and_max_age_zero_force_revalidation() {
    for directive in ["no-cache", "max-age=0"] {
        let server = MockServer::start().await;
        Mock::given(header("if-none-match", "\"v1\""))
            .respond_with(ResponseTemplate::new(304).insert_header("cache-control", "max-age=60"))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/f"))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("cache-control", "max-age=60")
                    .insert_header("etag", "\"v1\"")
                    .set_body_string("body"),
            )
            .expect(1)
            .mount(&server)
            .await;
        let service = cached(CacheConfig::default(), &server);
        send(&service, get("/f", &[])).await;
        let forced = send(&service, get("/f", &[("cache-control", directive)])).await;
        assert_eq!(forced.status, 200, "{directive}");
        assert_eq!(forced.body, "body");
        assert_eq!(
            forced.cache_status(),
            "tiered-cache; fwd=request; fwd-status=304; stored"
        );
    }
}

#[tokio::test]
async fn a_response_with_no_cache_is_revalidated_on_every_use() {
    let server = MockServer::start().await;
    Mock::given(header("if-none-match", "\"v1\""))
        .respond_with(ResponseTemplate::new(304))
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(path("/nc"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "no-cache, max-age=60")
                .insert_header("etag", "\"v1\"")
                .set_body_string("body"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/nc", &[])).await;
    for _ in 0..2 {
        let reply = send(&service, get("/nc", &[])).await;
        assert_eq!(
            (reply.status.as_u16(), reply.body.as_ref()),
            (200, &b"body"[..])
        );
        assert_eq!(
            reply.cache_status(),
            "tiered-cache; fwd=stale; fwd-status=304; stored"
        );
    }
}
