//! Requests with credentials (`Authorization`, `Cookie`) shape nothing shared: whatever the
//! origin answers them, no hit-for-pass mark is set and no stored entry is dropped, and their
//! credentials never travel with a background revalidation or refresh-ahead.

mod common;

use std::time::Duration;

use common::origin::{cached, get, send, Cached};
use tower_tiered_cache::CacheConfig;
use wiremock::matchers::{header, header_exists, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const CREDENTIALS: [(&str, &str); 2] = [
    ("cookie", "session=attacker"),
    ("authorization", "Bearer attacker"),
];

fn without(name: &'static str) -> impl Fn(&Request) -> bool {
    move |request: &Request| !request.headers.contains_key(name)
}

fn carries_credentials(request: &Request) -> bool {
    CREDENTIALS
        .iter()
        .any(|(name, _)| request.headers.contains_key(*name))
}

/// A first response that is stale on arrival (Age beyond max-age) but can be revalidated.
fn stale_on_arrival(cache_control: &str) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .insert_header(
            "cache-control",
            format!("max-age=60, {cache_control}").as_str(),
        )
        .insert_header("age", "120")
        .insert_header("etag", "\"v1\"")
        .set_body_string("shared body")
}

/// Revalidations of `"v1"` without credentials get a 304 that makes it fresh for a minute.
async fn revalidates_anonymously(server: &MockServer) {
    Mock::given(header("if-none-match", "\"v1\""))
        .and(without("cookie"))
        .and(without("authorization"))
        .respond_with(ResponseTemplate::new(304).insert_header("cache-control", "max-age=60"))
        .mount(server)
        .await;
}

#[tokio::test]
async fn a_request_with_credentials_marks_no_key_for_hit_for_pass() {
    for (name, value) in CREDENTIALS {
        let server = MockServer::start().await;
        // The origin personalises the page for a logged-in client: not for storing.
        Mock::given(header_exists(name))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("cache-control", "no-store")
                    .set_body_string("personal"),
            )
            .mount(&server)
            .await;
        Mock::given(path("/page"))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("cache-control", "max-age=60")
                    .set_body_string("shared"),
            )
            .mount(&server)
            .await;
        let service = cached(CacheConfig::default(), &server);

        let personal = send(&service, get("/page", &[(name, value)])).await;
        assert_eq!(personal.body, "personal");
        let plain = send(&service, get("/page", &[])).await;
        assert_eq!(
            plain.cache_status(),
            "tiered-cache; fwd=miss; fwd-status=200; stored",
            "{name}: looked up and coalesced as before, not passed"
        );
        assert_eq!(service.cache().stats().passes, 0, "{name}");
    }
}

#[tokio::test]
async fn a_request_with_credentials_does_not_drop_the_entry_it_could_not_refresh() {
    let server = MockServer::start().await;
    // Personal and without explicit freshness: not stored for a request with a cookie.
    Mock::given(header_exists("cookie"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("etag", "\"mine\"")
                .set_body_string("personal"),
        )
        .mount(&server)
        .await;
    revalidates_anonymously(&server).await;
    Mock::given(path("/s"))
        .respond_with(stale_on_arrival("public"))
        .expect(1)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/s", &[])).await;

    let personal = send(&service, get("/s", &[("cookie", "session=attacker")])).await;
    assert_eq!(personal.body, "personal");
    assert_revalidated(&service).await;
}

#[tokio::test]
async fn a_private_304_to_a_request_with_credentials_does_not_drop_the_entry() {
    let server = MockServer::start().await;
    Mock::given(header_exists("authorization"))
        .and(header("if-none-match", "\"v1\""))
        .respond_with(ResponseTemplate::new(304).insert_header("cache-control", "private"))
        .mount(&server)
        .await;
    revalidates_anonymously(&server).await;
    Mock::given(path("/s"))
        .respond_with(stale_on_arrival("public"))
        .expect(1)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/s", &[])).await;

    let authorized = send(&service, get("/s", &[("authorization", "Bearer attacker")])).await;
    assert_eq!(
        (authorized.status.as_u16(), authorized.body.as_ref()),
        (200, &b"shared body"[..]),
        "served once, as the origin now describes it"
    );
    assert_revalidated(&service).await;
}

/// The next plain request finds the stale entry still stored, and revalidates it.
async fn assert_revalidated(service: &Cached) {
    let plain = send(service, get("/s", &[])).await;
    assert_eq!(
        (plain.cache_status(), plain.body.as_ref()),
        (
            "tiered-cache; fwd=stale; fwd-status=304; stored",
            &b"shared body"[..]
        )
    );
}

#[tokio::test]
async fn a_background_revalidation_never_carries_a_clients_credentials() {
    let server = MockServer::start().await;
    revalidates_anonymously(&server).await;
    Mock::given(header("if-none-match", "\"v1\""))
        .respond_with(ResponseTemplate::new(304).insert_header("cache-control", "max-age=60"))
        .mount(&server)
        .await;
    Mock::given(path("/s"))
        .respond_with(stale_on_arrival("stale-while-revalidate=600"))
        .expect(1)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/s", &[])).await;

    let stale = send(&service, get("/s", &[("cookie", "session=attacker")])).await;
    assert_eq!(
        stale.cache_status(),
        "tiered-cache; hit; fwd=stale; detail=memory"
    );
    until(&service, |status| !status.contains("fwd=stale")).await;
    assert_no_credentials_reached(&server).await;
}

#[tokio::test]
async fn a_refresh_ahead_never_carries_a_clients_credentials() {
    let server = MockServer::start().await;
    Mock::given(path("/s"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "public, max-age=100")
                .insert_header("age", "70")
                .set_body_string("v1"),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(path("/s"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "public, max-age=100")
                .set_body_string("v2"),
        )
        .mount(&server)
        .await;
    let config = CacheConfig::builder().refresh_ahead(0.5).build().unwrap();
    let service = cached(config, &server);
    send(&service, get("/s", &[])).await;

    for (name, value) in CREDENTIALS {
        let hit = send(&service, get("/s", &[(name, value)])).await;
        assert_eq!(hit.cache_status(), "tiered-cache; hit; detail=memory");
    }
    while service.cache().stats().stores < 2 {
        send(&service, get("/s", &[])).await;
        tokio::task::yield_now().await;
    }
    assert_no_credentials_reached(&server).await;
}

/// Sends plain GETs until one's `Cache-Status` satisfies `done`.
async fn until(service: &Cached, done: impl Fn(&str) -> bool) {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let reply = send(service, get("/s", &[])).await;
            if done(reply.cache_status()) {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the background revalidation completes");
}

async fn assert_no_credentials_reached(server: &MockServer) {
    let received = server.received_requests().await.unwrap_or_default();
    assert!(
        !received.iter().any(carries_credentials),
        "a background request carried a client's credentials: {received:?}"
    );
}
