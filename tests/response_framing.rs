//! A response whose framing fields disagree with its body is never stored as it came, and never
//! forwarded with a length that would let the rest of the body pass for the next response
//! (RFC 9112 §6.3): `Transfer-Encoding` wins over `Content-Length`, conflicting lengths are a
//! `502`, and a body of another length than declared is not stored, in memory or from Redis.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};
use tower_tiered_cache::{CacheBody, CacheConfig, CacheLayer, CacheService};

type Origin = BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

/// A second response, smuggled inside the first one's body.
const INJECTED: &str =
    "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nCache-Control: max-age=60\r\n\r\npwned!\n";

fn body() -> String {
    format!("hello{INJECTED}")
}

/// An origin answering every request with `headers` around [`body`]; counts its calls.
fn origin(headers: &'static [(&'static str, &'static str)], calls: &Arc<AtomicUsize>) -> Origin {
    let calls = calls.clone();
    BoxCloneService::new(tower::service_fn(move |_request: Request<Full<Bytes>>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let mut response = Response::builder().header("cache-control", "public, max-age=60");
        for (name, value) in headers {
            response = response.header(*name, *value);
        }
        let response = response.body(Full::new(Bytes::from(body()))).unwrap();
        async move { Ok::<_, Infallible>(response) }
    }))
}

struct Reply {
    status: StatusCode,
    content_length: Vec<String>,
    cache_status: String,
    body: Bytes,
}

async fn send(service: &CacheService<Origin>) -> Reply {
    let request = Request::get("http://shop.example/split")
        .body(Full::default())
        .unwrap();
    let response: Response<CacheBody<Full<Bytes>>> =
        service.clone().oneshot(request).await.unwrap();
    let content_length = response
        .headers()
        .get_all("content-length")
        .iter()
        .map(|value| value.to_str().unwrap().to_owned())
        .collect();
    let status = response.status();
    let cache_status = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        content_length,
        cache_status,
        body,
    }
}

/// No `Content-Length`, or one that counts the whole body.
fn framed_by_its_length(reply: &Reply) -> bool {
    reply
        .content_length
        .iter()
        .all(|length| length == &reply.body.len().to_string())
        && reply.content_length.len() <= 1
}

#[tokio::test]
async fn content_length_beside_transfer_encoding_is_dropped_before_storing() {
    for coding in [
        &[("content-length", "5"), ("transfer-encoding", "chunked")][..],
        &[("content-length", "5"), ("transfer-encoding", "identity")],
    ] {
        let calls = Arc::new(AtomicUsize::new(0));
        let service = CacheLayer::new(CacheConfig::default()).layer(origin(coding, &calls));
        let first = send(&service).await;
        assert_eq!(first.body, body(), "{coding:?}: the whole decoded body");
        assert!(
            !first.content_length.contains(&"5".to_owned()),
            "{coding:?}"
        );
        let hit = send(&service).await;
        assert!(hit.cache_status.contains("hit"), "{}", hit.cache_status);
        assert_eq!(hit.body, body());
        assert!(framed_by_its_length(&hit), "{:?}", hit.content_length);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test]
async fn conflicting_content_lengths_are_a_bad_gateway_and_never_stored() {
    let calls = Arc::new(AtomicUsize::new(0));
    let headers = &[("content-length", "5"), ("content-length", "80")];
    let service = CacheLayer::new(CacheConfig::default()).layer(origin(headers, &calls));
    for _ in 0..2 {
        let reply = send(&service).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert!(
            reply.cache_status.contains("detail=invalid-framing"),
            "{}",
            reply.cache_status
        );
        assert!(!reply.body.windows(6).any(|window| window == b"pwned!"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "nothing was stored");
}

#[tokio::test]
async fn a_body_longer_than_its_content_length_is_not_stored_and_not_framed_by_it() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service =
        CacheLayer::new(CacheConfig::default()).layer(origin(&[("content-length", "5")], &calls));
    for _ in 0..2 {
        let reply = send(&service).await;
        assert_eq!(reply.body, body());
        assert!(framed_by_its_length(&reply), "{:?}", reply.content_length);
        assert!(
            !reply.cache_status.contains("stored"),
            "{}",
            reply.cache_status
        );
        assert!(
            !reply.cache_status.contains("hit"),
            "{}",
            reply.cache_status
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn an_entry_from_redis_whose_length_disagrees_with_its_body_is_refused() {
    use std::time::Duration;

    use common::{cache_on, config, RedisServer};
    use tower_tiered_cache::CachedEntry;

    let redis = RedisServer::start();
    let writer = cache_on(&redis, config("framing").l1_size(0)).await;
    let mut headers = http::HeaderMap::new();
    headers.insert("content-length", "5".parse().unwrap());
    let forged = CachedEntry::new(body(), Duration::from_secs(60)).with_headers(headers);
    writer.set("k", forged).await;

    let reader = cache_on(&redis, config("framing")).await;
    assert!(reader.get("k").await.is_none(), "refused, a miss");
    assert_eq!(reader.stats().l2_decode_errors, 1);
}
