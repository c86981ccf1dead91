//! Refresh-ahead (`http.refresh_ahead`): a hit on an entry past that fraction of its freshness
//! lifetime is answered from the cache and starts one background revalidation, so a hot key
//! stays a hit across its expiry.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};
use tower_tiered_cache::{CacheConfig, CacheLayer, CacheService};

type Origin = BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

/// An origin whose first answer is already 70 s into its 100 s lifetime (`Age: 70`), and whose
/// later answers are new.
fn aging(calls: &Arc<AtomicUsize>) -> Origin {
    let calls = calls.clone();
    BoxCloneService::new(tower::service_fn(move |_request: Request<Full<Bytes>>| {
        let call = calls.fetch_add(1, Ordering::SeqCst);
        let age = if call == 0 { "70" } else { "0" };
        let response = Response::builder()
            .header("cache-control", "max-age=100")
            .header("age", age)
            .body(Full::new(Bytes::from(format!("v{}", call + 1))))
            .unwrap();
        async move { Ok::<_, Infallible>(response) }
    }))
}

async fn get(service: &CacheService<Origin>) -> (String, String) {
    let request = Request::get("http://ahead.example/hot")
        .body(Full::default())
        .unwrap();
    let response = service.clone().oneshot(request).await.unwrap();
    let status = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_hot_key_past_its_refresh_point_stays_a_hit_with_one_origin_call_per_lifetime() {
    let calls = Arc::new(AtomicUsize::new(0));
    let config = CacheConfig::builder().refresh_ahead(0.5).build().unwrap();
    let service = CacheLayer::new(config).layer(aging(&calls));
    assert_eq!(get(&service).await.1, "v1");
    // Past half its lifetime: answered from memory, refreshed in the background once.
    for _ in 0..20 {
        let (status, body) = get(&service).await;
        assert_eq!(status, "tiered-cache; hit; detail=memory");
        assert!(body == "v1" || body == "v2", "{body}");
        tokio::task::yield_now().await;
    }
    while service.cache().stats().stores < 2 {
        tokio::task::yield_now().await;
    }
    for _ in 0..20 {
        assert_eq!(
            get(&service).await,
            (
                "tiered-cache; hit; detail=memory".to_owned(),
                "v2".to_owned()
            )
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one refresh; the new entry is not due"
    );
    assert_eq!(service.cache().stats().early_refreshes, 1);
}

#[tokio::test]
async fn refresh_ahead_is_off_by_default() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = CacheLayer::new(CacheConfig::default()).layer(aging(&calls));
    for _ in 0..10 {
        get(&service).await;
        tokio::task::yield_now().await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// [`aging`], recording each request's method and `Range`.
fn recording(calls: &Arc<AtomicUsize>, seen: &Arc<Mutex<Vec<String>>>) -> Origin {
    let (calls, seen) = (calls.clone(), seen.clone());
    BoxCloneService::new(tower::service_fn(move |request: Request<Full<Bytes>>| {
        let range = request
            .headers()
            .get("range")
            .map(|range| range.to_str().unwrap());
        let asked = format!("{} {}", request.method(), range.unwrap_or("whole"));
        seen.lock().unwrap().push(asked);
        let call = calls.fetch_add(1, Ordering::SeqCst);
        let age = if call == 0 { "70" } else { "0" };
        let response = Response::builder()
            .header("cache-control", "max-age=100")
            .header("age", age)
            .body(Full::new(Bytes::from(format!("v{}", call + 1))))
            .unwrap();
        async move { Ok::<_, Infallible>(response) }
    }))
}

#[tokio::test]
async fn a_head_or_range_hit_refreshes_the_whole_representation_with_a_get() {
    for (method, range) in [("HEAD", None), ("GET", Some("bytes=0-0"))] {
        let (calls, seen) = (Arc::new(AtomicUsize::new(0)), Arc::default());
        let config = CacheConfig::builder().refresh_ahead(0.5).build().unwrap();
        let service = CacheLayer::new(config).layer(recording(&calls, &seen));
        assert_eq!(get(&service).await.1, "v1");
        let mut request = Request::builder()
            .method(method)
            .uri("http://ahead.example/hot");
        if let Some(range) = range {
            request = request.header("range", range);
        }
        let hit = service
            .clone()
            .oneshot(request.body(Full::default()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            hit.headers()["cache-status"],
            "tiered-cache; hit; detail=memory"
        );
        while service.cache().stats().stores < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            get(&service).await,
            (
                "tiered-cache; hit; detail=memory".to_owned(),
                "v2".to_owned()
            ),
            "{method} {range:?}"
        );
        assert_eq!(*seen.lock().unwrap(), ["GET whole", "GET whole"]);
        assert_eq!(service.cache().stats().passes, 0);
    }
}

#[test]
fn refresh_ahead_is_a_fraction_below_one() {
    let err = CacheConfig::from_toml_str("[http]\nrefresh_ahead = 1.5").unwrap_err();
    assert_eq!(err.key(), Some("http.refresh_ahead"));
    assert!(CacheConfig::from_toml_str("[http]\nrefresh_ahead = \"0.8\"").is_ok());
}
