//! `Vary` (RFC 9111 §4.1): one entry per variant; `Vary: *` never stored.

mod common;

use common::origin::{cached, get, send};
use tower_tiered_cache::CacheConfig;
use wiremock::matchers::{header, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn encoded(encoding: &str) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .insert_header("cache-control", "max-age=60")
        .insert_header("vary", "Accept-Encoding")
        .insert_header("content-encoding", encoding)
        .set_body_string(format!("body in {encoding}"))
}

#[tokio::test]
async fn clients_with_different_accept_encoding_get_their_own_entries() {
    let server = MockServer::start().await;
    for encoding in ["gzip", "br"] {
        Mock::given(path("/v"))
            .and(header("accept-encoding", encoding))
            .respond_with(encoded(encoding))
            .expect(1)
            .mount(&server)
            .await;
    }
    let service = cached(CacheConfig::default(), &server);

    let gzip = send(&service, get("/v", &[("accept-encoding", "gzip")])).await;
    let brotli = send(&service, get("/v", &[("accept-encoding", "br")])).await;
    assert_eq!(gzip.body, "body in gzip");
    assert_eq!(brotli.body, "body in br");
    assert_eq!(
        brotli.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200; stored"
    );

    for _ in 0..2 {
        let gzip = send(&service, get("/v", &[("accept-encoding", "gzip")])).await;
        let brotli = send(&service, get("/v", &[("accept-encoding", "br")])).await;
        assert_eq!(
            (gzip.body.as_ref(), gzip.cache_status()),
            (&b"body in gzip"[..], "tiered-cache; hit; detail=memory")
        );
        assert_eq!(brotli.body, "body in br");
        assert_eq!(brotli.header("content-encoding"), "br");
    }
}

#[tokio::test]
async fn a_request_without_the_varied_header_is_its_own_variant() {
    let server = MockServer::start().await;
    Mock::given(path("/v"))
        .respond_with(encoded("identity"))
        .expect(2)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/v", &[("accept-encoding", "gzip")])).await;
    let without = send(&service, get("/v", &[])).await;
    assert_eq!(
        without.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200; stored"
    );
    assert_eq!(
        send(&service, get("/v", &[])).await.cache_status(),
        "tiered-cache; hit; detail=memory"
    );
}

#[tokio::test]
async fn vary_star_is_never_stored() {
    let server = MockServer::start().await;
    Mock::given(path("/star"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=60")
                .insert_header("vary", "*"),
        )
        .expect(2)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/star", &[])).await;
    let second = send(&service, get("/star", &[])).await;
    // Not stored, and the key is passed from now on (hit-for-pass); the origin answers both.
    assert_eq!(
        second.cache_status(),
        "tiered-cache; fwd=bypass; fwd-status=200"
    );
}

#[tokio::test]
async fn an_origin_cannot_forge_the_internal_variants_marker() {
    let server = MockServer::start().await;
    Mock::given(path("/forged"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=60")
                .insert_header("x-tiered-cache-variants", "0 authorization")
                .set_body_string("plain"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/forged", &[])).await;
    let hit = send(&service, get("/forged", &[])).await;
    assert_eq!(hit.body, "plain");
    assert_eq!(hit.header("x-tiered-cache-variants"), "");
}

#[tokio::test]
async fn language_lists_that_mean_the_same_share_a_variant() {
    let server = MockServer::start().await;
    Mock::given(path("/lang"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=60")
                .insert_header("vary", "Accept-Language")
                .insert_header("content-language", "en-US")
                .set_body_string("hello"),
        )
        .expect(2)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);
    send(
        &service,
        get("/lang", &[("accept-language", "en-US, de;q=0.5")]),
    )
    .await;

    let same = send(
        &service,
        get("/lang", &[("accept-language", "EN-us,DE; q=0.5")]),
    )
    .await;
    assert_eq!(
        (same.body.as_ref(), same.cache_status()),
        (&b"hello"[..], "tiered-cache; hit; detail=memory")
    );
    let reordered = send(
        &service,
        get("/lang", &[("accept-language", "de;q=0.5, en-US")]),
    )
    .await;
    assert_eq!(reordered.cache_status(), "tiered-cache; hit; detail=memory");
    // Among equal weights the order is the client's preference: a different request.
    let other = send(&service, get("/lang", &[("accept-language", "de, en-US")])).await;
    assert_eq!(
        other.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200; stored"
    );
}
