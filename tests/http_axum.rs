//! The layer on in-process axum routers: hits, bypass, coalescing of concurrent misses.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use tokio::sync::{Barrier, Notify};
use tower::ServiceExt;
use tower_tiered_cache::{CacheConfig, CacheLayer};

#[derive(Clone, Default)]
struct Origin {
    calls: Arc<AtomicUsize>,
    gate: Arc<Notify>,
}

async fn slow(State(origin): State<Origin>) -> impl IntoResponse {
    origin.calls.fetch_add(1, Ordering::SeqCst);
    origin.gate.notified().await;
    ([(header::CACHE_CONTROL, "max-age=60")], "slow answer")
}

async fn fast(State(origin): State<Origin>) -> impl IntoResponse {
    origin.calls.fetch_add(1, Ordering::SeqCst);
    ([(header::CACHE_CONTROL, "max-age=60")], "fast answer")
}

fn app(origin: &Origin) -> Router {
    Router::new()
        .route("/slow", get(slow))
        .route("/fast", get(fast).post(fast))
        .with_state(origin.clone())
        .layer(CacheLayer::new(CacheConfig::default()))
}

async fn call(app: &Router, method: &str, uri: &str) -> (StatusCode, String, String) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "app.local")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let cache_status = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        cache_status,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn second_get_is_a_memory_hit_and_a_post_goes_to_the_origin_and_invalidates() {
    let origin = Origin::default();
    let app = app(&origin);
    let (_, first, _) = call(&app, "GET", "/fast").await;
    let (status, second, body) = call(&app, "GET", "/fast").await;
    assert_eq!(first, "tiered-cache; fwd=miss; fwd-status=200; stored");
    assert_eq!(
        (status, second.as_str(), body.as_str()),
        (
            StatusCode::OK,
            "tiered-cache; hit; detail=memory",
            "fast answer"
        )
    );
    let (_, post, _) = call(&app, "POST", "/fast").await;
    assert_eq!(post, "tiered-cache; fwd=method; fwd-status=200");
    let (_, after_post, _) = call(&app, "GET", "/fast").await;
    assert_eq!(after_post, "tiered-cache; fwd=miss; fwd-status=200; stored");
    assert_eq!(origin.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_identical_gets_make_one_origin_call() {
    let origin = Origin::default();
    let app = app(&origin);
    let all_joined = Arc::new(Barrier::new(101));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (app, all_joined) = (app.clone(), all_joined.clone());
            tokio::spawn(async move {
                // join! polls the request first: by the barrier, it has joined the load.
                let (reply, _) = tokio::join!(call(&app, "GET", "/slow"), all_joined.wait());
                reply
            })
        })
        .collect();
    all_joined.wait().await;
    origin.gate.notify_one();

    let mut collapsed = 0;
    for task in tasks {
        let (status, cache_status, body) = task.await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "slow answer"));
        collapsed += usize::from(cache_status == "tiered-cache; fwd=miss; collapsed");
    }
    assert_eq!(origin.calls.load(Ordering::SeqCst), 1);
    assert_eq!(collapsed, 99);
}
