//! Mutating requests: invalidation (RFC 9111 §4.4), write-through, tags and `Cache-Invalidate`,
//! `http.origin_timeout`.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use common::origin::{cached, get, request, send};
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, ServiceExt};
use tower_tiered_cache::config::{RouteConfig, WriteMode};
use tower_tiered_cache::{CacheConfig, CacheLayer};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn mock(
    server: &MockServer,
    verb: &str,
    route: &str,
    response: ResponseTemplate,
    calls: u64,
) {
    Mock::given(method(verb))
        .and(path(route))
        .respond_with(response)
        .expect(calls)
        .mount(server)
        .await;
}

fn cacheable(body: &str) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .insert_header("cache-control", "max-age=60")
        .set_body_string(body)
}

#[tokio::test]
async fn a_successful_put_invalidates_the_target_and_its_location() {
    let server = MockServer::start().await;
    mock(&server, "GET", "/items/1", cacheable("item"), 2).await;
    mock(&server, "GET", "/items", cacheable("list"), 2).await;
    mock(&server, "GET", "/other", cacheable("other"), 1).await;
    mock(
        &server,
        "PUT",
        "/items/1",
        ResponseTemplate::new(200)
            .insert_header("location", "/items")
            .insert_header("content-location", "http://elsewhere.example/other"),
        1,
    )
    .await;
    let service = cached(CacheConfig::default(), &server);
    for uri in ["/items/1", "/items", "/other"] {
        send(&service, get(uri, &[])).await;
    }

    let put = send(&service, request("PUT", "/items/1", &[])).await;
    assert_eq!(
        put.cache_status(),
        "tiered-cache; fwd=method; fwd-status=200"
    );

    assert_eq!(
        send(&service, get("/items/1", &[])).await.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200; stored"
    );
    assert_eq!(
        send(&service, get("/items", &[])).await.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200; stored"
    );
    // Another origin's URI is not ours to invalidate.
    assert_eq!(
        send(&service, get("/other", &[])).await.cache_status(),
        "tiered-cache; hit; detail=memory"
    );
}

#[tokio::test]
async fn a_content_location_invalidates_the_uri_it_names_however_it_is_encoded() {
    let server = MockServer::start().await;
    mock(&server, "GET", "/a~b", cacheable("tilde"), 2).await;
    let moved = ResponseTemplate::new(200).insert_header("content-location", "/a%7eb");
    mock(&server, "PUT", "/items/1", moved, 1).await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/a~b", &[])).await;

    assert_eq!(
        send(&service, request("PUT", "/items/1", &[])).await.status,
        200
    );

    assert_eq!(
        send(&service, get("/a~b", &[])).await.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200; stored",
        "/a%7eb and /a~b are one URI"
    );
}

#[tokio::test]
async fn a_failed_write_invalidates_nothing() {
    let server = MockServer::start().await;
    mock(&server, "GET", "/x", cacheable("x"), 1).await;
    mock(&server, "DELETE", "/x", ResponseTemplate::new(500), 1).await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/x", &[])).await;
    assert_eq!(
        send(&service, request("DELETE", "/x", &[])).await.status,
        500
    );
    assert_eq!(
        send(&service, get("/x", &[])).await.cache_status(),
        "tiered-cache; hit; detail=memory"
    );
}

#[tokio::test]
async fn a_put_answered_with_its_own_content_location_is_written_through() {
    let server = MockServer::start().await;
    mock(&server, "GET", "/doc", cacheable("old"), 1).await;
    mock(
        &server,
        "PUT",
        "/doc",
        ResponseTemplate::new(200)
            .insert_header("content-location", "/doc")
            .insert_header("cache-control", "max-age=60")
            .set_body_string("new"),
        1,
    )
    .await;
    let service = cached(CacheConfig::default(), &server);
    assert_eq!(send(&service, get("/doc", &[])).await.body, "old");

    let put = send(&service, request("PUT", "/doc", &[])).await;
    assert_eq!(
        (put.body.as_ref(), put.cache_status()),
        (
            &b"new"[..],
            "tiered-cache; fwd=method; fwd-status=200; stored"
        )
    );

    let after = send(&service, get("/doc", &[])).await;
    assert_eq!(
        (after.body.as_ref(), after.cache_status()),
        (&b"new"[..], "tiered-cache; hit; detail=memory")
    );
}

#[tokio::test]
async fn a_write_through_route_stores_the_response_for_the_next_get() {
    let server = MockServer::start().await;
    mock(&server, "GET", "/api/users/7", cacheable("never asked"), 0).await;
    mock(
        &server,
        "POST",
        "/api/users/7",
        ResponseTemplate::new(201).set_body_string("{\"id\":7}"),
        1,
    )
    .await;
    let route = RouteConfig::new("/api/users/*")
        .ttl(std::time::Duration::from_secs(30))
        .write(WriteMode::Through);
    let service = cached(
        CacheConfig::builder().route(route).build().unwrap(),
        &server,
    );

    let created = send(&service, request("POST", "/api/users/7", &[])).await;
    assert_eq!(created.status, 201);

    let read = send(&service, get("/api/users/7", &[])).await;
    assert_eq!(
        (read.status.as_u16(), read.body.as_ref()),
        (200, &b"{\"id\":7}"[..])
    );
    assert_eq!(read.cache_status(), "tiered-cache; hit; detail=memory");
}

#[tokio::test]
async fn cache_invalidate_drops_every_entry_with_those_tags_and_tag_headers_are_stripped() {
    let server = MockServer::start().await;
    for (route, tags) in [("/a", "users, list"), ("/b", "users"), ("/c", "orders")] {
        mock(
            &server,
            "GET",
            route,
            cacheable(route).insert_header("cache-tag", tags),
            2 - u64::from(route == "/c"),
        )
        .await;
    }
    mock(
        &server,
        "GET",
        "/d",
        cacheable("d").insert_header("surrogate-key", "list  misc"),
        2,
    )
    .await;
    mock(
        &server,
        "POST",
        "/users",
        ResponseTemplate::new(204).insert_header("cache-invalidate", "users, list"),
        1,
    )
    .await;
    let service = cached(CacheConfig::default(), &server);
    for route in ["/a", "/b", "/c", "/d"] {
        let first = send(&service, get(route, &[])).await;
        assert_eq!(
            first.header("cache-tag"),
            "",
            "tag headers are not shown to clients"
        );
        assert_eq!(first.header("surrogate-key"), "");
    }

    let post = send(&service, request("POST", "/users", &[])).await;
    assert_eq!(post.header("cache-invalidate"), "");

    for (route, expected) in [
        ("/a", "fwd=miss"),
        ("/b", "fwd=miss"),
        ("/c", "hit"),
        ("/d", "fwd=miss"),
    ] {
        let reply = send(&service, get(route, &[])).await;
        assert!(
            reply.cache_status().contains(expected),
            "{route}: {}",
            reply.cache_status()
        );
    }
}

#[tokio::test]
async fn route_tags_are_given_to_stored_entries() {
    let server = MockServer::start().await;
    mock(&server, "GET", "/catalog/1", cacheable("c1"), 2).await;
    mock(
        &server,
        "PATCH",
        "/catalog",
        ResponseTemplate::new(200).insert_header("cache-invalidate", "catalog"),
        1,
    )
    .await;
    let route = RouteConfig::new("/catalog/**").tags(["catalog"]);
    let service = cached(
        CacheConfig::builder().route(route).build().unwrap(),
        &server,
    );
    send(&service, get("/catalog/1", &[])).await;
    send(&service, request("PATCH", "/catalog", &[])).await;
    assert_eq!(
        send(&service, get("/catalog/1", &[])).await.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200; stored"
    );
}

#[tokio::test]
async fn clients_cannot_invalidate_with_request_headers() {
    let server = MockServer::start().await;
    mock(
        &server,
        "GET",
        "/safe",
        cacheable("s").insert_header("cache-tag", "t"),
        1,
    )
    .await;
    mock(&server, "POST", "/anything", ResponseTemplate::new(200), 1).await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/safe", &[])).await;
    send(
        &service,
        request(
            "POST",
            "/anything",
            &[("cache-invalidate", "t"), ("surrogate-key", "t")],
        ),
    )
    .await;
    send(&service, get("/safe", &[("cache-invalidate", "t")])).await;
    assert_eq!(
        send(&service, get("/safe", &[])).await.cache_status(),
        "tiered-cache; hit; detail=memory"
    );
}

#[tokio::test(start_paused = true)]
async fn a_write_the_origin_does_not_answer_within_the_origin_timeout_gets_504() {
    let config = CacheConfig::builder()
        .origin_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let silent = tower::service_fn(|_: Request<Full<Bytes>>| {
        std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>()
    });
    let service = CacheLayer::new(config).layer(silent);
    let put = Request::put("http://h/items/1")
        .body(Full::<Bytes>::default())
        .unwrap();

    // Paused time runs ahead to the next timer: the origin timeout, or else this deadlock guard.
    let answered = tokio::time::timeout(Duration::from_secs(3600), service.oneshot(put)).await;
    let response = answered
        .expect("answered once the origin timeout passed")
        .expect("the cache answers");
    assert_eq!(response.status(), 504);
    assert_eq!(
        response.headers()["cache-status"],
        "tiered-cache; fwd=method"
    );
}
