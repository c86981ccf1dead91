//! PURGE: by URI or by Surrogate-Key, only with the configured bearer token.

mod common;

use common::origin::{cached, get, request, send, Cached};
use tower_tiered_cache::CacheConfig;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn origin(gets: u64) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/p"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=60")
                .insert_header("surrogate-key", "k1 k2"),
        )
        .expect(gets)
        .mount(&server)
        .await;
    Mock::given(method("PURGE"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;
    server
}

/// A layer in front of `server` accepting PURGE with the token `s3cret`.
fn with_token(server: &MockServer) -> Cached {
    let config = CacheConfig::builder()
        .purge_token("s3cret")
        .build()
        .unwrap();
    cached(config, server)
}

#[tokio::test]
async fn without_a_configured_token_purge_is_405_and_not_forwarded() {
    let server = origin(1).await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/p", &[])).await;
    let reply = send(
        &service,
        request("PURGE", "/p", &[("authorization", "Bearer anything")]),
    )
    .await;
    assert_eq!(reply.status, 405);
    assert_eq!(
        send(&service, get("/p", &[])).await.cache_status(),
        "tiered-cache; hit; detail=memory"
    );
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_401() {
    let server = origin(1).await;
    let service = with_token(&server);
    send(&service, get("/p", &[])).await;
    for headers in [
        vec![],
        vec![("authorization", "Bearer nope")],
        vec![("authorization", "s3cret")],
    ] {
        let reply = send(&service, request("PURGE", "/p", &headers)).await;
        assert_eq!(reply.status, 401, "{headers:?}");
        assert_eq!(reply.header("www-authenticate"), "Bearer");
    }
    assert_eq!(
        send(&service, get("/p", &[])).await.cache_status(),
        "tiered-cache; hit; detail=memory"
    );
}

#[tokio::test]
async fn purge_by_uri_with_the_token() {
    let server = origin(2).await;
    let service = with_token(&server);
    send(&service, get("/p", &[])).await;
    let reply = send(
        &service,
        request("PURGE", "/p", &[("authorization", "Bearer s3cret")]),
    )
    .await;
    assert_eq!(
        (reply.status.as_u16(), reply.body.as_ref()),
        (200, &b"purged\n"[..])
    );
    assert_eq!(
        send(&service, get("/p", &[])).await.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200; stored"
    );
}

#[tokio::test]
async fn purge_by_surrogate_key_with_the_token() {
    let server = origin(2).await;
    let service = with_token(&server);
    send(&service, get("/p", &[])).await;
    let reply = send(
        &service,
        request(
            "PURGE",
            "/unrelated",
            &[
                ("authorization", "Bearer s3cret"),
                ("surrogate-key", "k2 other"),
            ],
        ),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        send(&service, get("/p", &[])).await.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200; stored"
    );
}
