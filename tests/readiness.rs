//! The cache is always ready: behind a `ConcurrencyLimit` whose slots are all held, hits from
//! memory and from Redis are still answered, and a request waiting for another's fill holds no
//! slot of the origin.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::sync::Notify;
use tower::limit::ConcurrencyLimit;
use tower::{Layer, ServiceExt};
use tower_tiered_cache::{CacheBody, CacheConfig, CacheLayer, CacheService};

/// Only against a deadlock (a hit waiting for an origin slot would wait forever): the tests
/// assert what is answered, never how fast.
const DEADLOCK_GUARD: Duration = Duration::from_secs(10);

/// `/slow` answers once the test opens `gate`, after telling it (through `started`) that it
/// holds its slot; every other path answers at once. Every answer is cacheable.
#[derive(Clone, Default)]
struct Gates {
    started: Arc<Notify>,
    gate: Arc<Notify>,
}

type Origin = ConcurrencyLimit<
    tower::util::BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>,
>;

fn limited_origin(gates: &Gates, slots: usize) -> Origin {
    let gates = gates.clone();
    let origin = tower::service_fn(move |request: Request<Full<Bytes>>| {
        let gates = gates.clone();
        async move {
            let path = request.uri().path().to_owned();
            if path == "/slow" {
                gates.started.notify_one();
                gates.gate.notified().await;
            }
            let response = Response::builder()
                .header("cache-control", "max-age=60")
                .body(Full::new(Bytes::from(format!("body of {path}"))))
                .expect("valid response");
            Ok::<_, Infallible>(response)
        }
    });
    ConcurrencyLimit::new(tower::util::BoxCloneSyncService::new(origin), slots)
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://ready.example{path}"))
        .body(Full::default())
        .expect("valid request")
}

/// The `Cache-Status` and body of `response`, read whole.
async fn read(response: Response<CacheBody<Full<Bytes>>>) -> (String, Bytes) {
    let status = response.headers()["cache-status"]
        .to_str()
        .expect("ascii cache-status")
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body reads")
        .to_bytes();
    (status, body)
}

/// `request` through a clone of `service`, ready and called as a server would.
async fn send(service: &CacheService<Origin>, request: Request<Full<Bytes>>) -> (String, Bytes) {
    let response = guarded(service.clone().oneshot(request)).await;
    read(response.expect("service answers")).await
}

async fn guarded<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(DEADLOCK_GUARD, future)
        .await
        .expect("answered without waiting for an origin slot")
}

/// A request for `/slow` in flight at the origin, holding a slot until `gates.gate` opens.
async fn hold_a_slot(
    service: &CacheService<Origin>,
    gates: &Gates,
) -> tokio::task::JoinHandle<(String, Bytes)> {
    let service = service.clone();
    let held = tokio::spawn(async move { send(&service, get("/slow")).await });
    guarded(gates.started.notified()).await;
    held
}

#[tokio::test]
async fn a_memory_hit_is_answered_while_every_origin_slot_is_held() {
    let gates = Gates::default();
    let service = CacheLayer::new(CacheConfig::default()).layer(limited_origin(&gates, 1));
    let (stored, _) = send(&service, get("/fast")).await;
    assert_eq!(stored, "tiered-cache; fwd=miss; fwd-status=200; stored");

    let held = hold_a_slot(&service, &gates).await;
    let (hit, body) = send(&service, get("/fast")).await;
    assert_eq!(hit, "tiered-cache; hit; detail=memory");
    assert_eq!(body, "body of /fast");

    gates.gate.notify_one();
    let (slow, _) = guarded(held).await.expect("slow request completes");
    assert_eq!(slow, "tiered-cache; fwd=miss; fwd-status=200; stored");
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn a_redis_hit_is_answered_while_every_origin_slot_is_held() {
    let redis = common::RedisServer::start();
    let config = common::config("ready")
        .l1_size(0)
        .redis_url(redis.url())
        .build()
        .expect("valid config");
    let gates = Gates::default();
    let service = CacheLayer::new(config).layer(limited_origin(&gates, 1));
    assert!(service.cache().wait_for_redis(Duration::from_secs(5)).await);
    send(&service, get("/fast")).await;
    // The shared tier is written after the response went out.
    service.cache().wait_for_writes().await;

    let held = hold_a_slot(&service, &gates).await;
    let (hit, body) = send(&service, get("/fast")).await;
    assert_eq!(hit, "tiered-cache; hit; detail=redis");
    assert_eq!(body, "body of /fast");

    gates.gate.notify_one();
    guarded(held).await.expect("slow request completes");
}

#[tokio::test]
async fn a_request_waiting_for_a_fill_holds_no_origin_slot() {
    let gates = Gates::default();
    let service = CacheLayer::new(CacheConfig::default()).layer(limited_origin(&gates, 2));
    let leader = hold_a_slot(&service, &gates).await;

    // One poll takes the waiter into the fill of `/slow` (the memory tier answers its lookup at
    // once). Had it taken the second slot on the way, the miss below would wait for it.
    let waiter = service.clone().oneshot(get("/slow"));
    tokio::pin!(waiter);
    assert!(futures_util::poll!(waiter.as_mut()).is_pending());
    let (miss, body) = send(&service, get("/other")).await;
    assert_eq!(miss, "tiered-cache; fwd=miss; fwd-status=200; stored");
    assert_eq!(body, "body of /other");

    gates.gate.notify_one();
    let (led, _) = guarded(leader).await.expect("leader completes");
    assert_eq!(led, "tiered-cache; fwd=miss; fwd-status=200; stored");
    let (shared, body) = read(guarded(waiter).await.expect("waiter answers")).await;
    assert_eq!(shared, "tiered-cache; fwd=miss; collapsed");
    assert_eq!(body, "body of /slow");
}
