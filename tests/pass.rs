//! Hit-for-pass: once a key's response is known not to be storable, its requests go straight to
//! the origin — no lookup, no waiting behind another request — until a storable response comes
//! back and is stored again.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};
use tower_tiered_cache::{CacheConfig, CacheLayer, CacheService};

type Origin = BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

/// An origin that answers `no-store` until `cacheable` is set, holding each answer until the
/// test releases it through `gate`; `in_flight` counts the requests it holds.
struct Controlled {
    cacheable: Arc<AtomicBool>,
    gate: Arc<Semaphore>,
    in_flight: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

impl Controlled {
    fn new() -> Self {
        Self {
            cacheable: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
            in_flight: Arc::default(),
            calls: Arc::default(),
        }
    }

    fn service(&self) -> CacheService<Origin> {
        let (cacheable, gate) = (self.cacheable.clone(), self.gate.clone());
        let (in_flight, calls) = (self.in_flight.clone(), self.calls.clone());
        let origin = tower::service_fn(move |_request: Request<Full<Bytes>>| {
            let (cacheable, gate) = (cacheable.clone(), gate.clone());
            let in_flight = in_flight.clone();
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                in_flight.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.unwrap().forget();
                in_flight.fetch_sub(1, Ordering::SeqCst);
                let directive = if cacheable.load(Ordering::SeqCst) {
                    "max-age=60"
                } else {
                    "no-store"
                };
                let response = Response::builder()
                    .header("cache-control", directive)
                    .body(Full::new(Bytes::from(directive)))
                    .unwrap();
                Ok::<_, Infallible>(response)
            }
        });
        CacheLayer::new(CacheConfig::default()).layer(BoxCloneService::new(origin))
    }
}

fn get() -> Request<Full<Bytes>> {
    Request::get("http://pass.example/api")
        .body(Full::default())
        .unwrap()
}

async fn status_and_body(service: &CacheService<Origin>) -> (String, Bytes) {
    let response = service.clone().oneshot(get()).await.unwrap();
    let status = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn requests_for_an_unstorable_key_stop_waiting_for_each_other() {
    let origin = Controlled::new();
    let service = origin.service();
    origin.gate.add_permits(1);
    let (first, _) = status_and_body(&service).await;
    assert_eq!(first, "tiered-cache; fwd=miss; fwd-status=200");

    // Ten at once: all ten reach the origin together; none waits for another's answer.
    // (Spawned as `oneshot` futures: see the README's note on rust-lang/rust#110338.)
    let requests: Vec<_> = (0..10)
        .map(|_| tokio::spawn(service.clone().oneshot(get())))
        .collect();
    while origin.in_flight.load(Ordering::SeqCst) < 10 {
        tokio::task::yield_now().await;
    }
    origin.gate.add_permits(10);
    for request in requests {
        let response = request.await.unwrap().unwrap();
        let status = response.headers()["cache-status"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(status, "tiered-cache; fwd=bypass; fwd-status=200");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "no-store");
    }
    assert_eq!(service.cache().stats().passes, 10);
}

#[tokio::test]
async fn a_key_that_becomes_storable_is_stored_again() {
    let origin = Controlled::new();
    let service = origin.service();
    origin.gate.add_permits(100);
    status_and_body(&service).await;
    origin.cacheable.store(true, Ordering::SeqCst);
    let (passed, _) = status_and_body(&service).await;
    assert_eq!(passed, "tiered-cache; fwd=bypass; fwd-status=200; stored");
    let (hit, body) = status_and_body(&service).await;
    assert_eq!(
        (hit.as_str(), body.as_ref()),
        ("tiered-cache; hit; detail=memory", &b"max-age=60"[..])
    );
    assert_eq!(origin.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn without_pass_ttl_unstorable_keys_are_looked_up_and_coalesced() {
    let origin = Controlled::new();
    let config = CacheConfig::builder()
        .pass_ttl(Duration::ZERO)
        .build()
        .unwrap();
    let service = CacheLayer::new(config).layer(origin.service().into_inner());
    origin.gate.add_permits(2);
    status_and_body(&service).await;
    let (second, _) = status_and_body(&service).await;
    assert_eq!(second, "tiered-cache; fwd=miss; fwd-status=200");
    assert_eq!(service.cache().stats().passes, 0);
}
