//! Shared-cache storage and freshness (RFC 9111 §3, §4.2), seen through status, body, headers
//! and origin call counts.

mod common;

use std::time::{Duration, SystemTime};

use common::origin::{cached, get, send};
use tower_tiered_cache::CacheConfig;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn origin_with(route: &str, response: ResponseTemplate, calls: u64) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(route))
        .respond_with(response)
        .expect(calls)
        .mount(&server)
        .await;
    server
}

fn ok(cache_control: &str) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .insert_header("cache-control", cache_control)
        .set_body_string("body")
}

#[tokio::test]
async fn max_age_response_is_served_from_memory_the_second_time() {
    let server = origin_with("/a", ok("max-age=60"), 1).await;
    let service = cached(CacheConfig::default(), &server);

    let first = send(&service, get("/a", &[])).await;
    let second = send(&service, get("/a", &[])).await;

    assert_eq!(first.status, 200);
    assert_eq!(
        first.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200; stored"
    );
    assert_eq!(second.status, 200);
    assert_eq!(second.body, "body");
    assert_eq!(second.cache_status(), "tiered-cache; hit; detail=memory");
    assert_eq!(second.header("cache-control"), "max-age=60");
}

#[tokio::test]
async fn responses_that_must_not_be_shared_are_fetched_every_time() {
    for (cache_control, extra) in [
        ("no-store, max-age=60", None),
        ("private, max-age=60", None),
        ("max-age=60", Some(("set-cookie", "session=alice"))),
        ("max-age=0", None),
    ] {
        let mut response = ok(cache_control);
        if let Some((name, value)) = extra {
            response = response.insert_header(name, value);
        }
        let server = origin_with("/p", response, 2).await;
        let service = cached(CacheConfig::default(), &server);
        let first = send(&service, get("/p", &[])).await;
        let second = send(&service, get("/p", &[])).await;
        assert_eq!(
            first.cache_status(),
            "tiered-cache; fwd=miss; fwd-status=200",
            "{cache_control}"
        );
        // The first refusal marks the key (hit-for-pass, `http.pass_ttl`): the second request
        // goes straight to the origin, which is still asked every time.
        assert_eq!(
            second.cache_status(),
            "tiered-cache; fwd=bypass; fwd-status=200",
            "{cache_control}"
        );
        if let Some((name, value)) = extra {
            assert_eq!(
                second.header(name),
                value,
                "the client still gets the origin's header"
            );
        }
    }
}

#[tokio::test]
async fn s_maxage_wins_over_max_age_for_a_shared_cache() {
    let server = origin_with("/s", ok("max-age=60, s-maxage=0"), 2).await;
    let service = cached(CacheConfig::default(), &server);
    let first = send(&service, get("/s", &[])).await;
    let second = send(&service, get("/s", &[])).await;
    assert_eq!(
        first.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200"
    );
    // `s-maxage=0` without validators is never stored, so the key is passed from now on.
    assert_eq!(
        second.cache_status(),
        "tiered-cache; fwd=bypass; fwd-status=200"
    );
}

#[tokio::test]
async fn expires_in_the_future_makes_a_response_fresh() {
    let expires = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
    let date = httpdate::fmt_http_date(SystemTime::now());
    let response = ResponseTemplate::new(200)
        .insert_header("expires", expires.as_str())
        .insert_header("date", date.as_str())
        .set_body_string("body");
    let server = origin_with("/e", response, 1).await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/e", &[])).await;
    assert_eq!(
        send(&service, get("/e", &[])).await.cache_status(),
        "tiered-cache; hit; detail=memory"
    );
}

#[tokio::test]
async fn invalid_expires_means_already_expired() {
    let response = ResponseTemplate::new(200)
        .insert_header("expires", "0")
        .set_body_string("body");
    let server = origin_with("/e0", response, 2).await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/e0", &[])).await;
    send(&service, get("/e0", &[])).await;
}

#[tokio::test]
async fn age_counts_the_origin_age_plus_residence() {
    let response = ok("max-age=3600").insert_header("age", "100");
    let server = origin_with("/age", response, 1).await;
    let service = cached(CacheConfig::default(), &server);
    let first = send(&service, get("/age", &[])).await;
    let second = send(&service, get("/age", &[])).await;
    let first_age: u64 = first.header("age").parse().unwrap();
    let second_age: u64 = second.header("age").parse().unwrap();
    assert!((100..=102).contains(&first_age), "{first_age}");
    assert!(second_age >= first_age && second_age <= 102, "{second_age}");
}

#[tokio::test]
async fn responses_older_than_their_max_age_are_stale_on_arrival() {
    let response = ok("max-age=60").insert_header("age", "120");
    let server = origin_with("/old", response, 2).await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/old", &[])).await;
    send(&service, get("/old", &[])).await;
}

#[tokio::test]
async fn authorized_requests_are_not_shared_unless_the_origin_allows() {
    let server = origin_with("/private", ok("max-age=60"), 2).await;
    let service = cached(CacheConfig::default(), &server);
    let alice = send(
        &service,
        get("/private", &[("authorization", "Bearer alice")]),
    )
    .await;
    assert_eq!(
        alice.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200"
    );
    // Nothing was stored, so an anonymous request goes to the origin too.
    send(&service, get("/private", &[])).await;

    let server = origin_with("/public", ok("public, max-age=60"), 1).await;
    let service = cached(CacheConfig::default(), &server);
    send(
        &service,
        get("/public", &[("authorization", "Bearer alice")]),
    )
    .await;
    let bob = send(&service, get("/public", &[("authorization", "Bearer bob")])).await;
    assert_eq!(bob.cache_status(), "tiered-cache; hit; detail=memory");
}

#[tokio::test]
async fn an_authorized_request_is_not_answered_from_an_anonymous_entry() {
    let server = origin_with("/doc", ok("max-age=60"), 2).await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/doc", &[])).await;
    let authorized = send(&service, get("/doc", &[("authorization", "Bearer x")])).await;
    assert_eq!(
        authorized.cache_status(),
        "tiered-cache; fwd=miss; fwd-status=200"
    );
}

#[tokio::test]
async fn heuristic_freshness_applies_to_cacheable_statuses_with_last_modified() {
    let now = SystemTime::now();
    let response = ResponseTemplate::new(404)
        .insert_header("date", httpdate::fmt_http_date(now).as_str())
        .insert_header(
            "last-modified",
            httpdate::fmt_http_date(now - Duration::from_secs(36_000)).as_str(),
        )
        .set_body_string("gone");
    let server = origin_with("/h", response, 1).await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/h", &[])).await;
    let second = send(&service, get("/h", &[])).await;
    assert_eq!(
        (second.status.as_u16(), second.body.as_ref()),
        (404, &b"gone"[..])
    );
    assert_eq!(second.cache_status(), "tiered-cache; hit; detail=memory");
}

#[tokio::test]
async fn server_errors_without_explicit_freshness_are_not_stored() {
    let server = origin_with("/err", ResponseTemplate::new(500), 2).await;
    let service = cached(CacheConfig::default(), &server);
    send(&service, get("/err", &[])).await;
    send(&service, get("/err", &[])).await;
}

#[tokio::test]
async fn only_if_cached_without_an_entry_is_504_without_an_origin_call() {
    let server = origin_with("/oic", ok("max-age=60"), 0).await;
    let service = cached(CacheConfig::default(), &server);
    let reply = send(
        &service,
        get("/oic", &[("cache-control", "only-if-cached")]),
    )
    .await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.cache_status(), "tiered-cache; detail=only-if-cached");
}

#[tokio::test]
async fn the_status_name_is_configurable() {
    let server = origin_with("/n", ok("max-age=60"), 1).await;
    let config = CacheConfig::builder()
        .status_name("edge-1")
        .build()
        .unwrap();
    let service = cached(config, &server);
    send(&service, get("/n", &[])).await;
    assert_eq!(
        send(&service, get("/n", &[])).await.cache_status(),
        "edge-1; hit; detail=memory"
    );
}

/// RFC 9111 §5.1: an `Age` that is not delta-seconds is ignored (the response is as fresh as
/// its own directives say), and a list counts by its first member, over all field lines.
#[tokio::test]
async fn an_unreadable_age_is_ignored_and_a_listed_one_counts_by_its_first_member() {
    let server = MockServer::start().await;
    let fresh: [&[&str]; 5] = [
        &["abc"],
        &["-7200"],
        &["7200.0"],
        &["0, 7200"],
        &["0", "7200"],
    ];
    let stale: [&[&str]; 3] = [&["7200, 0"], &["7200", "0"], &["7200;foo=bar"]];
    for (index, ages) in fresh.iter().chain(stale.iter()).enumerate() {
        let mut response = ok("max-age=3600");
        for age in *ages {
            response = response.append_header("age", *age);
        }
        Mock::given(path(format!("/age-{index}")))
            .respond_with(response)
            .mount(&server)
            .await;
    }
    let service = cached(CacheConfig::default(), &server);
    for (index, ages) in fresh.iter().chain(stale.iter()).enumerate() {
        let route = format!("/age-{index}");
        send(&service, get(&route, &[])).await;
        let second = send(&service, get(&route, &[])).await;
        let expected = if index < fresh.len() {
            "tiered-cache; hit; detail=memory"
        } else {
            "tiered-cache; fwd=miss; fwd-status=200; stored"
        };
        assert_eq!(second.cache_status(), expected, "Age {ages:?}");
    }
}

/// RFC 9110 §5.6.7: recipients accept the obsolete date formats, and caches read day, month
/// and zone names in any case; other zones and malformed dates stay invalid (already expired).
#[tokio::test]
async fn expires_in_asctime_or_another_case_makes_a_response_fresh() {
    let date = "Thu, 18 Aug 2050 01:01:18 GMT";
    let fresh = [
        "Mon Aug 18 02:01:18 2050",
        "THU, 18 Aug 2050 02:01:18 GMT",
        "Thu, 18 AUG 2050 02:01:18 GMT",
        "Thu, 18 Aug 2050 02:01:18 gMT",
    ];
    let invalid = [
        "Thu, 18 Aug 2050 02:01:18 UTC",
        "Thu 18 Aug 2050 02:01:18 GMT",
    ];
    let server = MockServer::start().await;
    for (index, expires) in fresh.iter().chain(invalid.iter()).enumerate() {
        let response = ResponseTemplate::new(200)
            .insert_header("expires", *expires)
            .insert_header("date", date)
            .insert_header("etag", "\"e\"")
            .set_body_string("body");
        Mock::given(path(format!("/expires-{index}")))
            .respond_with(response)
            .mount(&server)
            .await;
    }
    let service = cached(CacheConfig::default(), &server);
    for (index, expires) in fresh.iter().chain(invalid.iter()).enumerate() {
        let route = format!("/expires-{index}");
        send(&service, get(&route, &[])).await;
        let second = send(&service, get(&route, &[])).await;
        let from_cache = second.cache_status() == "tiered-cache; hit; detail=memory";
        assert_eq!(from_cache, index < fresh.len(), "Expires {expires:?}");
    }
}
