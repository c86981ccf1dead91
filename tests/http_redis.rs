//! Two layers sharing one Redis: what one instance stores, the other serves from Redis.
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use common::origin::{cached, get, send, Cached};
use common::{config, RedisServer};
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A layer in front of `server` on `redis` (keys under `prefix`), once it is connected.
async fn connected(redis: &RedisServer, prefix: &str, server: &MockServer) -> Cached {
    let service = cached(
        config(prefix).redis_url(redis.url()).build().unwrap(),
        server,
    );
    assert!(service.cache().wait_for_redis(Duration::from_secs(5)).await);
    service
}

#[tokio::test]
async fn a_second_instance_serves_from_redis_without_calling_the_origin() {
    let redis = RedisServer::start();
    let server = MockServer::start().await;
    Mock::given(path("/shared"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=60")
                .insert_header("etag", "\"s1\"")
                .set_body_string("shared body"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let first = connected(&redis, "http", &server).await;
    let second = connected(&redis, "http", &server).await;

    let miss = send(&first, get("/shared", &[])).await;
    assert_eq!(
        miss.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200; stored"
    );
    // The shared tier is written after the response went out.
    first.cache().wait_for_writes().await;

    let from_redis = send(&second, get("/shared", &[])).await;
    assert_eq!(from_redis.cache_status(), "tiered-cache; hit; detail=redis");
    assert_eq!(from_redis.body, "shared body");
    assert_eq!(from_redis.header("etag"), "\"s1\"");
    let promoted = send(&second, get("/shared", &[])).await;
    assert_eq!(promoted.cache_status(), "tiered-cache; hit; detail=memory");
}

#[tokio::test]
async fn vary_variants_are_shared_through_redis() {
    let redis = RedisServer::start();
    let server = MockServer::start().await;
    Mock::given(path("/v"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=60")
                .insert_header("vary", "accept-language")
                .set_body_string("hello"),
        )
        .expect(2)
        .mount(&server)
        .await;
    let first = connected(&redis, "vary", &server).await;
    let second = connected(&redis, "vary", &server).await;

    send(&first, get("/v", &[("accept-language", "en")])).await;
    first.cache().wait_for_writes().await;
    let english = send(&second, get("/v", &[("accept-language", "en")])).await;
    assert_eq!(english.cache_status(), "tiered-cache; hit; detail=redis");
    let french = send(&second, get("/v", &[("accept-language", "fr")])).await;
    assert_eq!(
        french.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200; stored"
    );
}

#[tokio::test]
async fn an_invalidation_on_one_instance_reaches_the_other_within_a_second() {
    let redis = RedisServer::start();
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::method("GET"))
        .and(path("/inv"))
        .respond_with(ResponseTemplate::new(200).insert_header("cache-control", "max-age=60"))
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(wiremock::matchers::method("DELETE"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let first = connected(&redis, "cross", &server).await;
    let second = connected(&redis, "cross", &server).await;
    send(&first, get("/inv", &[])).await;
    first.cache().wait_for_writes().await;
    assert_eq!(
        send(&second, get("/inv", &[])).await.cache_status(),
        "tiered-cache; hit; detail=redis"
    );
    assert_eq!(
        send(&second, get("/inv", &[])).await.cache_status(),
        "tiered-cache; hit; detail=memory"
    );
    let mut events = second.cache().invalidation_events();

    send(&first, common::origin::request("DELETE", "/inv", &[])).await;

    tokio::time::timeout(Duration::from_secs(1), events.recv())
        .await
        .expect("the second instance hears of it within 1 s")
        .unwrap();
    assert_eq!(
        send(&second, get("/inv", &[])).await.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200; stored"
    );
}

#[tokio::test]
async fn a_layer_starts_while_redis_refuses_and_uses_it_once_it_is_up() {
    let mut redis = RedisServer::not_started();
    let server = MockServer::start().await;
    Mock::given(path("/late"))
        .respond_with(ResponseTemplate::new(200).insert_header("cache-control", "max-age=60"))
        .expect(2)
        .mount(&server)
        .await;
    let first = cached(
        config("late").redis_url(redis.url()).build().unwrap(),
        &server,
    );
    let before = send(&first, get("/late", &[])).await;
    assert_eq!(
        before.status, 200,
        "served by the origin while Redis refuses"
    );

    // Its shared-tier write (in the background) has failed before Redis comes up.
    first.cache().wait_for_writes().await;
    redis.restart();
    assert!(first.cache().wait_for_redis(Duration::from_secs(10)).await);
    let second = connected(&redis, "late", &server).await;
    // The first answer never reached Redis; the next miss does.
    send(&second, get("/late", &[])).await;
    second.cache().wait_for_writes().await;
    let third = connected(&redis, "late", &server).await;
    assert_eq!(
        send(&third, get("/late", &[])).await.cache_status(),
        "tiered-cache; hit; detail=redis"
    );
}
