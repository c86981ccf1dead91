//! Two layers on one Redis, around the moments it does not answer: requests sent before the
//! first connection still reach it, and an invalidation made while it is stalled reaches every
//! instance once it answers again.
#![cfg(feature = "redis")]

mod common;

use std::time::{Duration, Instant};

use common::origin::{cached, get, request, send, Cached};
use common::{config, RedisServer};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A layer in front of `server` on `redis`, not waiting for it.
fn layer(redis: &RedisServer, server: &MockServer) -> Cached {
    let config = config("outage")
        .redis_url(redis.url())
        .purge_token("s3cret")
        .build()
        .unwrap();
    cached(config, server)
}

fn page(body: &str) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .insert_header("cache-control", "max-age=300")
        .set_body_string(body)
}

#[tokio::test]
async fn requests_sent_at_once_after_start_reach_redis_and_purge_works() {
    let redis = RedisServer::start();
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(page("page"))
        .mount(&server)
        .await;
    // More than the breaker's threshold (5): had they failed, the circuit would be open.
    let paths: Vec<String> = (0..8).map(|i| format!("/p{i}")).collect();

    let first = layer(&redis, &server);
    let sent = paths.iter().map(|at| send(&first, get(at, &[])));
    for reply in futures_util::future::join_all(sent).await {
        assert_eq!(
            reply.cache_status(),
            "tiered-cache; fwd=miss; fwd-status=200; stored"
        );
    }

    // Written to Redis in the background, after the responses went out.
    first.cache().wait_for_writes().await;
    let second = layer(&redis, &server);
    assert!(second.cache().wait_for_redis(Duration::from_secs(5)).await);
    for at in &paths {
        assert_eq!(
            send(&second, get(at, &[])).await.cache_status(),
            "tiered-cache; hit; detail=redis",
            "{at} reached Redis"
        );
    }
    // Subscribed now: the first subscription did not clear the first instance's memory.
    assert!(first.cache().wait_for_redis(Duration::from_secs(5)).await);
    for at in &paths {
        assert_eq!(
            send(&first, get(at, &[])).await.cache_status(),
            "tiered-cache; hit; detail=memory",
            "{at} still in memory"
        );
    }
    let purge = request("PURGE", "/p0", &[("authorization", "Bearer s3cret")]);
    assert_eq!(send(&first, purge).await.status, 200);
    assert_eq!(first.cache().stats().l2_skipped, 0);
}

#[tokio::test]
async fn an_invalidation_made_while_redis_is_stalled_reaches_every_instance_once_it_answers() {
    let redis = RedisServer::start();
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/doc"))
        .respond_with(page("v1"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/doc"))
        .respond_with(page("v2"))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/doc"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let (a, b) = (layer(&redis, &server), layer(&redis, &server));
    for service in [&a, &b] {
        assert!(service.cache().wait_for_redis(Duration::from_secs(5)).await);
    }
    send(&a, get("/doc", &[])).await;
    // The shared tier is written after the response went out.
    a.cache().wait_for_writes().await;
    assert_eq!(
        send(&b, get("/doc", &[])).await.cache_status(),
        "tiered-cache; hit; detail=redis"
    );

    redis.pause();
    let written = send(&a, request("PUT", "/doc", &[])).await;
    assert_eq!(written.status, 204);
    assert_eq!(a.cache().stats().invalidations_pending, 1);
    redis.resume();

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut stale = Vec::new();
        for (name, service) in [("a", &a), ("b", &b)] {
            let reply = send(service, get("/doc", &[])).await;
            if reply.body == "v1" {
                stale.push(format!("{name}: {}", reply.cache_status()));
            }
        }
        let pending = a.cache().stats().invalidations_pending;
        if stale.is_empty() && pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still served the old version: {stale:?}, {pending} pending"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for service in [&a, &b] {
        assert_eq!(send(service, get("/doc", &[])).await.body, "v2");
    }
}
