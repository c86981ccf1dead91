//! Warming: filling the cache before (and while) clients ask.
//!
//! [`TieredCache::warm`](crate::TieredCache::warm) loads keys through a loader;
//! [`warm_paths`] and [`spawn_warming`] send the `[warm]` paths as GET requests through any
//! service that has the cache layer (a [`CacheService`](crate::CacheService), or an axum
//! `Router` with the layer), so each answer is stored as a client's would be.

use std::future::Future;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use http::header::HOST;
use http::{HeaderValue, Request, Response};
use serde::Serialize;
use tower::{Service, ServiceExt};

use crate::config::WarmConfig;
use crate::store::{CachedEntry, TieredCache};

/// What a warming round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WarmReport {
    /// Keys or paths attempted.
    pub attempted: u64,
    /// Loaded or answered with a success or redirect status.
    pub succeeded: u64,
    /// Loader errors, error statuses, service errors and invalid paths.
    pub failed: u64,
}

/// Counts outcomes: `true` for a success.
impl FromIterator<bool> for WarmReport {
    fn from_iter<I: IntoIterator<Item = bool>>(outcomes: I) -> Self {
        let mut report = Self::default();
        for ok in outcomes {
            report.attempted += 1;
            if ok {
                report.succeeded += 1;
            } else {
                report.failed += 1;
            }
        }
        report
    }
}

/// Sends a GET for each of `config.paths` through `service`, `config.concurrency` at a time.
/// Failures are counted and logged, never returned.
///
/// ```
/// # use std::convert::Infallible;
/// # use bytes::Bytes;
/// # use http::{Request, Response};
/// # use http_body_util::Full;
/// # use tower::{service_fn, Layer};
/// use tower_tiered_cache::config::WarmConfig;
/// use tower_tiered_cache::{warm_paths, CacheConfig, CacheLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # let origin = service_fn(|_: Request<Full<Bytes>>| async {
/// #     Ok::<_, Infallible>(Response::builder().header("cache-control", "max-age=60").body(Full::new(Bytes::from("hi"))).unwrap())
/// # });
/// let layer = CacheLayer::new(CacheConfig::default());
/// let service = layer.layer(origin);
/// let mut warm = WarmConfig::default();
/// warm.paths = vec!["/".into(), "http://shop.example/home".into()];
/// let report = warm_paths(&service, &warm).await;
/// assert_eq!(report.succeeded, 2);
/// assert_eq!(layer.cache().stats().stores, 2);
/// # }
/// ```
pub async fn warm_paths<S, ReqBody, ResBody>(service: &S, config: &WarmConfig) -> WarmReport
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    S::Error: std::fmt::Display,
    ReqBody: Default,
{
    // Collected first: a lazy iterator over borrowed paths would make the future non-`Send`
    // for `spawn_warming` (rustc #64552).
    let mut requests = Vec::with_capacity(config.paths.len());
    for path in &config.paths {
        let request = warm_request::<ReqBody>(path, &config.host);
        requests.push(warm_one(service.clone(), path.clone(), request));
    }
    run(requests, config.concurrency).await
}

impl TieredCache {
    /// Warming: loads each of `keys` that has no fresh entry, `concurrency` at a time, through
    /// [`get_or_set`](Self::get_or_set). Failures are counted and logged, never fatal.
    pub async fn warm<I, F, Fut, E>(&self, keys: I, concurrency: usize, loader: F) -> WarmReport
    where
        I: IntoIterator<Item = String>,
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<CachedEntry, E>>,
        E: std::fmt::Display + Send + Sync + 'static,
    {
        let attempts = keys.into_iter().map(|key| {
            let load = loader(key.clone());
            async move {
                match self.get_or_set(&key, || load).await {
                    Ok(_) => true,
                    Err(err) => {
                        tracing::warn!(key, error = %err, "warming: loader failed");
                        false
                    }
                }
            }
        });
        run(attempts, concurrency).await
    }
}

/// Runs warming `attempts` (each says whether it succeeded), `concurrency` at a time, and logs
/// the outcome.
pub(crate) async fn run<F>(attempts: impl IntoIterator<Item = F>, concurrency: usize) -> WarmReport
where
    F: std::future::Future<Output = bool>,
{
    let report: WarmReport = stream::iter(attempts)
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<bool>>()
        .await
        .into_iter()
        .collect();
    tracing::info!(
        attempted = report.attempted,
        succeeded = report.succeeded,
        failed = report.failed,
        "cache warmed"
    );
    report
}

async fn warm_one<S, ReqBody, ResBody>(
    service: S,
    path: String,
    request: Option<Request<ReqBody>>,
) -> bool
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: std::fmt::Display,
{
    let Some(request) = request else {
        tracing::warn!(path, "warming: not a valid path or URL");
        return false;
    };
    match service.oneshot(request).await {
        Ok(response)
            if !response.status().is_client_error() && !response.status().is_server_error() =>
        {
            true
        }
        Ok(response) => {
            tracing::warn!(path, status = %response.status(), "warming: error status");
            false
        }
        Err(err) => {
            tracing::warn!(path, error = %err, "warming: request failed");
            false
        }
    }
}

/// Warms at once, then every `config.interval` (once only when it is zero), in a background task.
/// Abort the returned handle to stop.
pub fn spawn_warming<S, ReqBody, ResBody>(
    service: S,
    config: WarmConfig,
) -> tokio::task::JoinHandle<()>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: std::fmt::Display,
    ReqBody: Default + Send + 'static,
    ResBody: Send + 'static,
{
    tokio::spawn(async move {
        loop {
            warm_paths(&service, &config).await;
            if config.interval == Duration::ZERO {
                return;
            }
            tokio::time::sleep(config.interval).await;
        }
    })
}

/// A GET for an absolute URL, or for a path on `host`.
fn warm_request<B: Default>(path: &str, host: &str) -> Option<Request<B>> {
    let uri: http::Uri = path.parse().ok()?;
    let mut request = Request::get(uri).body(B::default()).ok()?;
    if request.uri().authority().is_none() {
        request
            .headers_mut()
            .insert(HOST, HeaderValue::from_str(host).ok()?);
    }
    Some(request)
}
