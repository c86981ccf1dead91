//! Preconditions (RFC 9110 §13): a client's `If-Match`, `If-Unmodified-Since`, `If-None-Match`,
//! `If-Modified-Since` and `If-Range` are answered by the cache from the stored or fetched
//! response, in the order of §13.2.2 and only for a 2xx; they never reach the origin on a fill,
//! so no client's conditions shape what the next client gets.

mod common;

use common::origin::{cached, get, send};
use tower_tiered_cache::CacheConfig;
use wiremock::matchers::{header_exists, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const LAST_MODIFIED: &str = "Tue, 15 Nov 1994 12:45:26 GMT";
const EARLIER: &str = "Mon, 14 Nov 1994 12:45:26 GMT";
const LATER: &str = "Wed, 16 Nov 1994 12:45:26 GMT";

/// The preconditions a client may send.
const PRECONDITIONS: [&str; 5] = [
    "if-match",
    "if-unmodified-since",
    "if-none-match",
    "if-modified-since",
    "if-range",
];

/// A fresh, storable 200 with both validators.
fn resource() -> ResponseTemplate {
    ResponseTemplate::new(200)
        .insert_header("cache-control", "max-age=60")
        .insert_header("etag", "\"v1\"")
        .insert_header("last-modified", LAST_MODIFIED)
        .set_body_string("0123456789")
}

/// An origin serving [`resource`] at `/r`, once.
async fn origin() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/r"))
        .respond_with(resource())
        .expect(1)
        .mount(&server)
        .await;
    server
}

fn carries_a_precondition(request: &Request) -> bool {
    PRECONDITIONS
        .iter()
        .any(|name| request.headers.contains_key(*name))
}

#[tokio::test]
async fn a_failing_if_match_is_a_412_for_that_client_and_never_reaches_the_origin() {
    let server = MockServer::start().await;
    // A naive origin: it answers any If-Match with a 412 it allows everyone to store.
    Mock::given(header_exists("if-match"))
        .respond_with(
            ResponseTemplate::new(412).insert_header("cache-control", "public, max-age=300"),
        )
        .mount(&server)
        .await;
    Mock::given(path("/r"))
        .respond_with(resource())
        .expect(1)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);

    let failed = send(&service, get("/r", &[("if-match", "\"other\"")])).await;
    assert_eq!(failed.status, 412);
    assert!(failed.body.is_empty());

    let plain = send(&service, get("/r", &[])).await;
    assert_eq!(
        (plain.status.as_u16(), plain.body.as_ref()),
        (200, &b"0123456789"[..])
    );
    let received = server.received_requests().await.unwrap_or_default();
    assert!(
        !received.iter().any(carries_a_precondition),
        "the fill asked the origin unconditionally"
    );
}

#[tokio::test]
async fn a_412_from_the_origin_is_never_stored() {
    let server = MockServer::start().await;
    Mock::given(path("/r"))
        .respond_with(
            ResponseTemplate::new(412).insert_header("cache-control", "public, max-age=300"),
        )
        .expect(2)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);
    for _ in 0..2 {
        assert_eq!(send(&service, get("/r", &[])).await.status, 412);
    }
}

#[tokio::test]
async fn if_none_match_star_on_a_stored_404_is_the_404() {
    let server = MockServer::start().await;
    Mock::given(path("/gone"))
        .respond_with(
            ResponseTemplate::new(404)
                .insert_header("cache-control", "max-age=60")
                .insert_header("etag", "\"missing\"")
                .set_body_string("not here"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let service = cached(CacheConfig::default(), &server);
    for round in ["miss", "hit"] {
        let reply = send(&service, get("/gone", &[("if-none-match", "*")])).await;
        assert_eq!(
            (reply.status.as_u16(), reply.body.as_ref()),
            (404, &b"not here"[..]),
            "{round}: preconditions apply to 2xx responses only"
        );
    }
}

#[tokio::test]
async fn if_match_and_if_unmodified_since_are_answered_from_the_stored_response() {
    let server = origin().await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/r", &[])).await;

    for (headers, expected) in [
        (&[("if-match", "\"v1\"")][..], 200),
        (&[("if-match", "\"v0\", \"v1\"")], 200),
        (&[("if-match", "*")], 200),
        (&[("if-match", "\"v2\"")], 412),
        (&[("if-match", "W/\"v1\"")], 412),
        (&[("if-unmodified-since", LAST_MODIFIED)], 200),
        (&[("if-unmodified-since", LATER)], 200),
        (&[("if-unmodified-since", EARLIER)], 412),
        // If-Unmodified-Since counts only without If-Match.
        (
            &[("if-match", "\"v1\""), ("if-unmodified-since", EARLIER)],
            200,
        ),
        // If-Match is evaluated before If-None-Match.
        (&[("if-match", "\"v2\""), ("if-none-match", "\"v1\"")], 412),
        (&[("if-match", "\"v1\""), ("if-none-match", "\"v1\"")], 304),
        // If-None-Match wins over If-Modified-Since.
        (
            &[("if-none-match", "\"v0\""), ("if-modified-since", LATER)],
            200,
        ),
        (&[("if-modified-since", LATER)], 304),
        (&[("if-none-match", "*")], 304),
    ] {
        let reply = send(&service, get("/r", headers)).await;
        assert_eq!(reply.status, expected, "{headers:?}");
        assert_eq!(reply.cache_status(), "tiered-cache; hit; detail=memory");
    }
}

#[tokio::test]
async fn a_precondition_on_a_miss_is_evaluated_against_the_fetched_response() {
    let server = origin().await;
    let service = cached(CacheConfig::default(), &server);
    let failed = send(&service, get("/r", &[("if-unmodified-since", EARLIER)])).await;
    assert_eq!(failed.status, 412);
    let plain = send(&service, get("/r", &[])).await;
    assert_eq!(
        (plain.status.as_u16(), plain.body.as_ref()),
        (200, &b"0123456789"[..]),
        "the response was stored for everyone"
    );
}

#[tokio::test]
async fn if_range_answers_the_range_when_it_holds_and_the_whole_body_when_not() {
    let server = origin().await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/r", &[])).await;

    for (if_range, expected) in [
        ("\"v1\"", (206, "01")),
        (LAST_MODIFIED, (206, "01")),
        ("\"v0\"", (200, "0123456789")),
        // A weak tag never matches for If-Range.
        ("W/\"v1\"", (200, "0123456789")),
        (LATER, (200, "0123456789")),
    ] {
        let headers = [("range", "bytes=0-1"), ("if-range", if_range)];
        let reply = send(&service, get("/r", &headers)).await;
        assert_eq!(
            (reply.status.as_u16(), reply.body.as_ref()),
            (expected.0, expected.1.as_bytes()),
            "If-Range: {if_range}"
        );
    }
}
