//! An axum app behind the cache layer.
//!
//! ```sh
//! cargo run --example demo                                   # memory only, port 3000
//! REDIS_URL=redis://127.0.0.1:6379 PORT=8080 cargo run --example demo
//! curl -i localhost:3000/slow/1    # 200 ms, Cache-Status: tiered-cache; fwd=miss; ...; stored
//! curl -i localhost:3000/slow/1    # at once, Cache-Status: tiered-cache; hit; detail=memory
//! curl localhost:3000/cache/stats  # counters as JSON
//! curl localhost:3000/metrics      # Prometheus metrics
//! ```
//!
//! It is served like the `cache_proxy` example (`examples/support/serve.rs`): HTTP/1.1 and h2c,
//! a 10 s header-read timeout, a 60 s idle timeout, HTTP/2 pings every 20 s, and an accept loop
//! that backs off on errors.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower_tiered_cache::config::RouteConfig;
use tower_tiered_cache::{CacheConfig, CacheLayer, TieredCache};

#[path = "support/serve.rs"]
mod serve;

/// A handler that takes 200 ms, as a database query might; cacheable for a minute.
async fn slow(Path(id): Path<u32>) -> impl IntoResponse {
    tokio::time::sleep(Duration::from_millis(200)).await;
    (
        [(header::CACHE_CONTROL, "public, max-age=60")],
        Json(serde_json::json!({ "id": id, "name": format!("item {id}") })),
    )
}

async fn stats(State(app): State<AppState>) -> impl IntoResponse {
    Json(app.cache.stats())
}

async fn prometheus(State(app): State<AppState>) -> impl IntoResponse {
    app.metrics.render()
}

#[derive(Clone)]
struct AppState {
    cache: TieredCache,
    metrics: PrometheusHandle,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let mut config = CacheConfig::from_env()?;
    config.route.push(RouteConfig::new("/cache/**").bypass());
    config.route.push(RouteConfig::new("/metrics").bypass());
    let layer = CacheLayer::try_new(config.clone())?;

    let app = Router::new()
        .route("/slow/{id}", get(slow))
        .route("/cache/stats", get(stats))
        .route("/metrics", get(prometheus))
        .with_state(AppState {
            cache: layer.cache().clone(),
            metrics,
        })
        .layer(layer.clone());

    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".to_owned());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    let tier = config
        .l2
        .url
        .as_deref()
        .map_or("memory only".to_owned(), |url| {
            format!("memory + Redis at {url}")
        });
    println!(
        "demo on http://{} ({tier}); try /slow/1 twice, then /cache/stats and /metrics",
        listener.local_addr()?
    );
    // Up to `l2.connect_wait`: logs whether Redis is up; the demo serves either way.
    layer.wait_for_l2_at_start().await;
    let services = || app.clone();
    serve::serve_workers(
        listener,
        1,
        services,
        serve::Timeouts::default(),
        shutdown_signal(),
    )
    .await?;
    // In-flight requests have finished; give queued writes (if any) time to reach the origin.
    layer.shutdown(Duration::from_secs(30)).await;
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        return;
    }
    let _ = tokio::signal::ctrl_c().await;
}
