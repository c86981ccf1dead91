//! `[[route]]` rules: TTL override, bypass, extra key headers.

mod common;

use std::time::Duration;

use common::origin::{cached, get, send};
use tower_tiered_cache::config::RouteConfig;
use tower_tiered_cache::CacheConfig;
use wiremock::matchers::{header, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn a_route_ttl_caches_responses_without_cache_headers() {
    let server = MockServer::start().await;
    Mock::given(path("/api/users/1"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ada"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/other"))
        .respond_with(ResponseTemplate::new(200))
        .expect(2)
        .mount(&server)
        .await;
    let config = CacheConfig::builder()
        .route(RouteConfig::new("/api/users/*").ttl(Duration::from_secs(30)))
        .build()
        .unwrap();
    let service = cached(config, &server);

    send(&service, get("/api/users/1", &[])).await;
    let hit = send(&service, get("/api/users/1", &[])).await;
    assert_eq!(
        (hit.body.as_ref(), hit.cache_status()),
        (&b"ada"[..], "tiered-cache; hit; detail=memory")
    );
    send(&service, get("/other", &[])).await;
    send(&service, get("/other", &[])).await;
}

#[tokio::test]
async fn a_route_ttl_never_stores_what_the_origin_forbids() {
    let server = MockServer::start().await;
    Mock::given(path("/api/me"))
        .respond_with(ResponseTemplate::new(200).insert_header("cache-control", "private"))
        .expect(2)
        .mount(&server)
        .await;
    let config = CacheConfig::builder()
        .route(RouteConfig::new("/api/*").ttl(Duration::from_secs(30)))
        .build()
        .unwrap();
    let service = cached(config, &server);
    send(&service, get("/api/me", &[])).await;
    send(&service, get("/api/me", &[])).await;
}

#[tokio::test]
async fn a_bypass_route_is_never_cached() {
    let server = MockServer::start().await;
    Mock::given(path("/admin/panel"))
        .respond_with(ResponseTemplate::new(200).insert_header("cache-control", "max-age=60"))
        .expect(2)
        .mount(&server)
        .await;
    let config = CacheConfig::builder()
        .route(RouteConfig::new("/admin/**").bypass())
        .build()
        .unwrap();
    let service = cached(config, &server);
    for _ in 0..2 {
        assert_eq!(
            send(&service, get("/admin/panel", &[]))
                .await
                .cache_status(),
            "tiered-cache; fwd=bypass"
        );
    }
}

#[tokio::test]
async fn key_headers_give_each_value_its_own_entry() {
    let server = MockServer::start().await;
    for tenant in ["a", "b"] {
        Mock::given(path("/t"))
            .and(header("x-tenant", tenant))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("cache-control", "max-age=60")
                    .set_body_string(format!("tenant {tenant}")),
            )
            .expect(1)
            .mount(&server)
            .await;
    }
    let config = CacheConfig::builder()
        .route(RouteConfig::new("/t").key_headers(["X-Tenant"]))
        .build()
        .unwrap();
    let service = cached(config, &server);
    for _ in 0..2 {
        assert_eq!(
            send(&service, get("/t", &[("x-tenant", "a")])).await.body,
            "tenant a"
        );
        assert_eq!(
            send(&service, get("/t", &[("x-tenant", "b")])).await.body,
            "tenant b"
        );
    }
}
