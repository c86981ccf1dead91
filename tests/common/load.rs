//! A load driver for the fault tests: requests of mixed hits and misses through a layer in front
//! of an in-process origin, with latencies recorded for `scripts/fault-latency.sh`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use tower::{Layer, ServiceExt};
use tower_tiered_cache::{CacheBody, CacheConfig, CacheLayer, CacheService};

/// How long the in-process origin takes per request.
pub const ORIGIN_LATENCY: Duration = Duration::from_millis(5);

pub type Layered = CacheService<SlowOrigin>;

/// An origin answering every path with a cacheable body naming the path, after a delay. A
/// named type rather than a boxed service: rustc cannot prove `Send` for async fns awaiting a
/// service whose type holds a trait object (rust-lang/rust#110338).
#[derive(Clone, Copy)]
pub struct SlowOrigin;

impl tower::Service<Request<Full<Bytes>>> for SlowOrigin {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        Box::pin(async move {
            tokio::time::sleep(ORIGIN_LATENCY).await;
            let body = Bytes::from(format!("body of {}", request.uri().path()));
            let response = Response::builder()
                .header("cache-control", "max-age=300")
                .body(Full::new(body))
                .expect("valid response");
            Ok(response)
        })
    }
}

pub fn layered(config: CacheConfig) -> Layered {
    CacheLayer::new(config).layer(SlowOrigin)
}

/// Two layers on the Redis at `redis_url` (keys under `prefix`, commands bounded by `timeout`),
/// both connected: one to put under load, one to see when L2 hits resume.
pub async fn two_layers(prefix: &str, redis_url: &str, timeout: Duration) -> (Layered, Layered) {
    let settings = || {
        super::config(prefix)
            .l2_timeout(timeout)
            .redis_url(redis_url)
            .build()
            .unwrap()
    };
    let (service, reader) = (layered(settings()), layered(settings()));
    assert!(service.cache().wait_for_redis(Duration::from_secs(5)).await);
    assert!(reader.cache().wait_for_redis(Duration::from_secs(5)).await);
    (service, reader)
}

/// One GET; `Ok` with the `Cache-Status` when it returned 200 with the right body.
pub async fn get(service: &Layered, path: &str) -> Result<String, String> {
    let request = Request::get(format!("http://load.test{path}"))
        .body(Full::default())
        .expect("valid request");
    let response = service
        .clone()
        .oneshot(request)
        .await
        .map_err(|err| err.to_string())?;
    check(path, response).await
}

async fn check(path: &str, response: Response<CacheBody<Full<Bytes>>>) -> Result<String, String> {
    let status = response.status();
    let cache_status = response
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body: Bytes = collect(response.into_body()).await?;
    if status != 200 || body != format!("body of {path}") {
        return Err(format!("status {status}, body {body:?}"));
    }
    Ok(cache_status)
}

async fn collect(body: CacheBody<Full<Bytes>>) -> Result<Bytes, String> {
    body.collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|err| err.to_string())
}

/// Latencies and failures of a load run.
#[derive(Default)]
pub struct Recorder {
    latencies_us: Mutex<Vec<u64>>,
    pub failures: AtomicU64,
    pub first_failure: Mutex<Option<String>>,
}

impl Recorder {
    pub fn requests(&self) -> usize {
        self.latencies_us.lock().unwrap().len()
    }

    fn percentile(&self, fraction: f64) -> f64 {
        let mut latencies = self.latencies_us.lock().unwrap().clone();
        latencies.sort_unstable();
        let index = ((latencies.len() as f64 - 1.0) * fraction).round() as usize;
        latencies.get(index).copied().unwrap_or(0) as f64 / 1000.0
    }

    /// Writes the summary where `scripts/fault-latency.sh` reads it, and prints it.
    pub fn report(&self, scenario: &str, timeout: Duration, extra: &[(&str, f64)]) {
        let mut fields = vec![
            format!("\"scenario\": \"{scenario}\""),
            format!("\"requests\": {}", self.requests()),
            format!("\"failures\": {}", self.failures.load(Ordering::SeqCst)),
            format!("\"p50_ms\": {:.3}", self.percentile(0.50)),
            format!("\"p99_ms\": {:.3}", self.percentile(0.99)),
            format!("\"max_ms\": {:.3}", self.percentile(1.0)),
            format!("\"timeout_ms\": {}", timeout.as_millis()),
            format!("\"origin_ms\": {}", ORIGIN_LATENCY.as_millis()),
        ];
        fields.extend(
            extra
                .iter()
                .map(|(name, value)| format!("\"{name}\": {value:.3}")),
        );
        let json = format!("{{{}}}", fields.join(", "));
        println!("{json}");
        let path =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fault-{scenario}.json"));
        std::fs::write(&path, json + "\n").expect("report written");
    }
}

/// Runs `workers` loops of GETs until `stop` is set: every third request a new path (a miss),
/// the others one of 100 hot paths (hits once loaded).
pub fn spawn_load(
    service: &Layered,
    workers: usize,
    stop: Arc<AtomicBool>,
    recorder: Arc<Recorder>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|worker| {
            let (service, stop, recorder) = (service.clone(), stop.clone(), recorder.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let path = if n.is_multiple_of(3) {
                        format!("/cold/{worker}/{n}")
                    } else {
                        format!("/hot/{}", n % 100)
                    };
                    let started = Instant::now();
                    let outcome = get(&service, &path).await;
                    let elapsed = started.elapsed().as_micros() as u64;
                    recorder.latencies_us.lock().unwrap().push(elapsed);
                    if let Err(err) = outcome {
                        recorder.failures.fetch_add(1, Ordering::SeqCst);
                        recorder.first_failure.lock().unwrap().get_or_insert(err);
                    }
                    // Shapes the load (about 2,000 requests per second per worker at most).
                    tokio::time::sleep(Duration::from_micros(500)).await;
                }
            })
        })
        .collect()
}

/// How long until Redis serves again: stores a new path through `writer` and reads it through
/// `reader` (another instance) until the reader answers from Redis. Polls every 20 ms: there is
/// no event for "the circuit closed on both instances".
pub async fn time_to_l2_hits(
    writer: &Layered,
    reader: &Layered,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut attempt = 0;
    while started.elapsed() < limit {
        attempt += 1;
        let path = format!("/probe/{attempt}");
        if get(writer, &path).await.is_ok()
            && get(reader, &path)
                .await
                .is_ok_and(|status| status.contains("detail=redis"))
        {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
