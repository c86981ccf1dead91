//! Malformed headers from origins and clients never panic the layer and never break a response:
//! proptest over `Cache-Control`, `Surrogate-Control`, `Expires`, `Age`, `Date`,
//! `Last-Modified`, `ETag`, `Vary`, tag headers, `Location` and client conditionals, through
//! GET (twice), HEAD, a conditional GET, a range and a PUT.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tower::{Layer, ServiceExt};
use tower_tiered_cache::{CacheConfig, CacheLayer};

const RESPONSE_HEADERS: &[&str] = &[
    "cache-control",
    "surrogate-control",
    "expires",
    "age",
    "date",
    "last-modified",
    "etag",
    "vary",
    "cache-tag",
    "surrogate-key",
    "cache-invalidate",
    "location",
    "content-location",
    "content-length",
];

const REQUEST_HEADERS: &[&str] = &[
    "cache-control",
    "pragma",
    "if-none-match",
    "if-modified-since",
    "range",
    "if-range",
    "authorization",
    "accept-encoding",
];

/// Header values built from fragments that parsers trip on, plus arbitrary bytes that HTTP
/// allows in a field value (visible ASCII, spaces, tabs and obs-text).
fn value() -> impl Strategy<Value = Vec<u8>> {
    let fragment = prop_oneof![
        Just(b"max-age=".to_vec()),
        Just(b"s-maxage=".to_vec()),
        Just(b"no-cache=\"".to_vec()),
        Just(b"private=\"set-cookie, ".to_vec()),
        Just(b"stale-while-revalidate=".to_vec()),
        Just(b"must-understand, no-store".to_vec()),
        Just(b";target".to_vec()),
        Just(b"bytes=".to_vec()),
        Just(b"W/\"".to_vec()),
        Just(b"*".to_vec()),
        Just(b"-1".to_vec()),
        Just(b"99999999999999999999999".to_vec()),
        Just(b"Sun, 06 Nov 1994 08:49:37 GMT".to_vec()),
        Just(b",,,".to_vec()),
        Just(b"\\\"".to_vec()),
        proptest::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..24),
    ];
    proptest::collection::vec(fragment, 0..6).prop_map(|parts| parts.concat())
}

fn headers(names: &'static [&'static str]) -> impl Strategy<Value = Vec<(&'static str, Vec<u8>)>> {
    proptest::collection::vec((proptest::sample::select(names), value()), 0..8)
}

fn apply(builder_headers: &mut http::HeaderMap, headers: &[(&'static str, Vec<u8>)]) {
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            builder_headers.append(HeaderName::from_static(name), value);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn malformed_headers_never_panic_or_break_responses(
        response_headers in headers(RESPONSE_HEADERS),
        request_headers in headers(REQUEST_HEADERS),
        status in prop_oneof![Just(200u16), Just(203), Just(301), Just(404), Just(500), Just(599)],
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let origin_headers = response_headers.clone();
            let origin = tower::service_fn(move |_: Request<Full<Bytes>>| {
                let origin_headers = origin_headers.clone();
                async move {
                    let mut response = Response::new(Full::new(Bytes::from_static(b"0123456789")));
                    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    apply(response.headers_mut(), &origin_headers);
                    Ok::<_, Infallible>(response)
                }
            });
            let config = CacheConfig::builder().purge_token("t").build().unwrap();
            let service = CacheLayer::new(config).layer(origin);
            for method in ["GET", "GET", "HEAD", "GET", "PUT", "GET"] {
                let mut request = Request::builder().method(method).uri("http://h/p").body(Full::default()).unwrap();
                apply(request.headers_mut(), &request_headers);
                let response = service.clone().oneshot(request).await.unwrap();
                prop_assert!(response.headers().contains_key("cache-status"));
                // The body always reads to its end.
                response.into_body().collect().await.unwrap();
            }
            Ok(())
        })?;
    }
}
