//! Metrics through the `metrics` facade, scraped in Prometheus format from an app's `/metrics`.
#![cfg(feature = "metrics")]

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, Request};
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower::ServiceExt;
use tower_tiered_cache::config::RouteConfig;
use tower_tiered_cache::{CacheConfig, CacheLayer};

async fn metrics(State(handle): State<PrometheusHandle>) -> Result<String, Infallible> {
    Ok(handle.render())
}

async fn call(app: &Router, uri: &str) -> String {
    let request = Request::get(uri)
        .header("host", "app")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn the_metrics_endpoint_shows_the_cache_counters() {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("one recorder per process");
    let config = CacheConfig::builder()
        .route(RouteConfig::new("/metrics").bypass())
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/page",
            get(|| async { ([(header::CACHE_CONTROL, "max-age=60")], "page") }),
        )
        .route("/metrics", get(metrics))
        .with_state(handle)
        .layer(CacheLayer::new(config));

    for _ in 0..3 {
        assert_eq!(call(&app, "/page").await, "page");
    }
    let scraped = call(&app, "/metrics").await;

    for line in [
        "tiered_cache_requests_total{tier=\"origin\",result=\"miss\"} 1",
        "tiered_cache_requests_total{tier=\"memory\",result=\"hit\"} 2",
        "tiered_cache_stores_total 1",
    ] {
        assert!(scraped.contains(line), "missing {line:?} in:\n{scraped}");
    }
    assert!(
        scraped.contains("tiered_cache_request_duration_seconds"),
        "{scraped}"
    );
}
