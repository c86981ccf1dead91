//! With the memory tier off (`l1.size = 0`), a client that accepts `br` gets a body stored
//! brotli-compressed in the shared tier as it is stored: no decompression on the hit path.
#![cfg(feature = "redis")]

mod common;

use std::convert::Infallible;
use std::io::Read;

use bytes::Bytes;
use common::{config, RedisServer};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};
use tower_tiered_cache::{CacheConfigBuilder, CacheLayer, CacheService};

type Origin = BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

/// JSON-like text that brotli shrinks well.
fn document() -> String {
    (0..400)
        .map(|i| format!("{{\"id\":{i},\"name\":\"user {i}\",\"active\":true}},"))
        .collect()
}

fn origin(cache_control: &'static str) -> Origin {
    BoxCloneService::new(tower::service_fn(move |_request: Request<Full<Bytes>>| {
        let response = Response::builder()
            .header("cache-control", cache_control)
            .header("content-type", "application/json")
            .header("etag", "\"v1\"")
            .body(Full::new(Bytes::from(document())))
            .unwrap();
        async move { Ok::<_, Infallible>(response) }
    }))
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |value| value.to_str().unwrap())
    }
}

async fn send(service: &CacheService<Origin>, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::get("http://br.example/doc");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = service
        .clone()
        .oneshot(request.body(Full::default()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// A layer on `redis`; its first request stores the document there.
async fn stored(
    redis: &RedisServer,
    builder: CacheConfigBuilder,
    origin: Origin,
) -> CacheService<Origin> {
    let service = CacheLayer::new(builder.redis_url(redis.url()).build().unwrap()).layer(origin);
    assert!(
        service
            .cache()
            .wait_for_redis(std::time::Duration::from_secs(5))
            .await
    );
    let first = send(&service, &[]).await;
    assert!(
        first.header("cache-status").ends_with("stored"),
        "{}",
        first.header("cache-status")
    );
    service.cache().wait_for_writes().await;
    service
}

fn unbrotli(body: &[u8]) -> String {
    let mut decoded = String::new();
    brotli::Decompressor::new(body, 4096)
        .read_to_string(&mut decoded)
        .unwrap();
    decoded
}

#[tokio::test]
async fn a_client_that_accepts_br_gets_the_stored_bytes_with_their_own_fields() {
    let redis = RedisServer::start();
    let service = stored(&redis, config("br").l1_size(0), origin("max-age=60")).await;

    let br = send(&service, &[("accept-encoding", "gzip, deflate, br")]).await;
    assert_eq!(br.status, StatusCode::OK);
    assert_eq!(br.header("cache-status"), "tiered-cache; hit; detail=redis");
    assert_eq!(br.header("content-encoding"), "br");
    assert!(
        br.header("vary").eq_ignore_ascii_case("accept-encoding"),
        "{}",
        br.header("vary")
    );
    assert_eq!(
        br.header("etag"),
        "W/\"v1\"",
        "other bytes: a weak validator"
    );
    assert_eq!(br.header("content-length"), br.body.len().to_string());
    assert!(br.body.len() < document().len() / 3, "compressed");
    assert_eq!(unbrotli(&br.body), document());

    // Its weak validator is answered with a 304.
    let revalidated = send(
        &service,
        &[("accept-encoding", "br"), ("if-none-match", "W/\"v1\"")],
    )
    .await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn other_clients_ranges_and_no_transform_get_the_decoded_body() {
    let redis = RedisServer::start();
    let service = stored(&redis, config("plain").l1_size(0), origin("max-age=60")).await;

    for headers in [
        vec![],
        vec![("accept-encoding", "gzip")],
        vec![("accept-encoding", "br;q=0, *")],
    ] {
        let plain = send(&service, &headers).await;
        assert_eq!(
            plain.header("cache-status"),
            "tiered-cache; hit; detail=redis"
        );
        assert_eq!(plain.header("content-encoding"), "", "{headers:?}");
        assert_eq!(plain.header("etag"), "\"v1\"");
        assert_eq!(plain.body, document().as_bytes());
    }
    let range = send(
        &service,
        &[("accept-encoding", "br"), ("range", "bytes=0-9")],
    )
    .await;
    assert_eq!(range.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(range.header("content-encoding"), "");
    assert_eq!(range.body, document().as_bytes()[..10]);

    let redis_nt = RedisServer::start();
    let untouched = stored(
        &redis_nt,
        config("nt").l1_size(0),
        origin("max-age=60, no-transform"),
    )
    .await;
    let reply = send(&untouched, &[("accept-encoding", "br")]).await;
    assert_eq!(
        reply.header("cache-status"),
        "tiered-cache; hit; detail=redis"
    );
    assert_eq!(reply.header("content-encoding"), "", "no-transform");
    assert_eq!(reply.body, document().as_bytes());
}

#[tokio::test]
async fn with_the_memory_tier_on_a_shared_hit_is_decoded_once_and_promoted() {
    let redis = RedisServer::start();
    let writer = stored(&redis, config("promoted"), origin("max-age=60")).await;
    drop(writer);
    let reader = CacheLayer::new(config("promoted").redis_url(redis.url()).build().unwrap())
        .layer(origin("max-age=60"));
    assert!(
        reader
            .cache()
            .wait_for_redis(std::time::Duration::from_secs(5))
            .await
    );
    let first = send(&reader, &[("accept-encoding", "br")]).await;
    assert_eq!(
        first.header("cache-status"),
        "tiered-cache; hit; detail=redis"
    );
    assert_eq!(first.header("content-encoding"), "");
    assert_eq!(first.body, document().as_bytes());
    let second = send(&reader, &[]).await;
    assert_eq!(
        second.header("cache-status"),
        "tiered-cache; hit; detail=memory"
    );
    assert_eq!(second.body, document().as_bytes());
}

#[tokio::test]
async fn a_stale_entry_is_validated_as_stored_never_as_its_brotli_bytes() {
    let redis = RedisServer::start();
    // Fresh for no time, kept for validation: every request revalidates with the origin.
    let service = stored(&redis, config("stale").l1_size(0), origin("max-age=0")).await;
    let br = send(&service, &[("accept-encoding", "br")]).await;
    assert_eq!(
        br.header("content-encoding"),
        "",
        "{}",
        br.header("cache-status")
    );
    assert_eq!(br.body, document().as_bytes());
    service.cache().wait_for_writes().await;
    let plain = send(&service, &[]).await;
    assert_eq!(
        plain.body,
        document().as_bytes(),
        "what was stored again is the entry"
    );
    assert_eq!(plain.header("content-encoding"), "");
}
