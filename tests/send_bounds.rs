//! Compile-time guarantee: tasks awaiting the service are `Send`, also when the wrapped
//! service's error is a trait object (`BoxError`), so they can be spawned.
//!
//! Known limit (rustc, rust-lang/rust#110338): when the wrapped service's *type* has a trait
//! object as a type parameter (`BoxCloneSyncService<_, _, BoxError>`), an async block that
//! awaits it cannot be proven `Send`; box the whole `CacheService` instead, or wrap the boxed
//! service in a named type.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{BoxError, Layer, ServiceExt};
use tower_tiered_cache::{CacheConfig, CacheLayer};

#[tokio::test]
async fn requests_through_a_layer_over_a_fallible_service_can_be_spawned() {
    let origin = tower::service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, BoxError>(Response::new(Full::new(Bytes::from("x"))))
    });
    let service = CacheLayer::new(CacheConfig::default()).layer(origin);
    let request = Request::get("http://x/")
        .body(Full::<Bytes>::default())
        .unwrap();
    let body = tokio::spawn(async move {
        let response = service.oneshot(request).await?;
        Ok::<_, BoxError>(response.into_body().collect().await?.to_bytes())
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(body, "x");
}
