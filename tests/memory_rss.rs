//! Memory stays bounded in the process, measured as resident set size (/proc/self/status):
//! a 50 MB memory tier under 500 MB of distinct entries, and a 1 GB response streamed through
//! the layer. One test function, so nothing else runs in this process meanwhile.
#![cfg(target_os = "linux")]

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tower::{Layer, ServiceExt};
use tower_tiered_cache::{CacheConfig, CacheLayer, CachedEntry, TieredCache};

const MB: u64 = 1_000_000;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .expect("VmRSS line");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded() {
    writing_ten_times_the_memory_budget_keeps_rss_within_it().await;
    a_one_gigabyte_response_streams_through_with_flat_memory().await;
}

async fn writing_ten_times_the_memory_budget_keeps_rss_within_it() {
    const BUDGET: u64 = 50 * MB;
    let cache = TieredCache::new(CacheConfig::builder().l1_size(BUDGET).build().unwrap()).unwrap();
    let baseline = rss_bytes();
    let mut peak = baseline;
    let body = vec![7u8; 16 * 1024];
    let entries = 500 * MB / body.len() as u64;
    for i in 0..entries {
        cache
            .set(
                &format!("k{i}"),
                CachedEntry::new(body.clone(), Duration::from_secs(600)),
            )
            .await;
        if i.is_multiple_of(500) {
            peak = peak.max(rss_bytes());
        }
    }
    peak = peak.max(rss_bytes());
    assert_rss_within(
        "L1 budget 50 MB, 500 MB written",
        baseline,
        peak,
        baseline + BUDGET + BUDGET / 5,
    );
    assert!(cache.stats().memory_bytes <= BUDGET);
}

async fn a_one_gigabyte_response_streams_through_with_flat_memory() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 1_000_000_000 / CHUNK;
    let origin = tower::service_fn(|_: Request<Full<Bytes>>| async {
        // A fresh allocation per chunk: memory grows unless chunks are dropped as they pass.
        let frames = stream::iter(
            (0..CHUNKS).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'z'; CHUNK])))),
        );
        let response = Response::builder()
            .header("cache-control", "max-age=60")
            .body(StreamBody::new(frames))
            .unwrap();
        Ok::<_, Infallible>(response)
    });
    let config = CacheConfig::builder()
        .max_entry_size(8 * MB)
        .build()
        .unwrap();
    let service = CacheLayer::new(config).layer(origin);
    let baseline = rss_bytes();
    let mut peak = baseline;

    let response = service
        .oneshot(Request::get("http://big/").body(Full::default()).unwrap())
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut received = 0u64;
    let mut frames = 0u64;
    while let Some(frame) = body.frame().await {
        received += frame
            .unwrap()
            .into_data()
            .map_or(0, |data| data.len() as u64);
        frames += 1;
        if frames.is_multiple_of(1000) {
            peak = peak.max(rss_bytes());
        }
    }

    assert_eq!(received, (CHUNKS * CHUNK) as u64);
    // At most `max_entry_size` is buffered before the layer gives up on storing it.
    assert_rss_within("1 GB streamed", baseline, peak, baseline + 8 * MB + 32 * MB);
}

/// Prints the measurement of `what` and checks that the RSS `peak` stayed within `bound`.
fn assert_rss_within(what: &str, baseline: u64, peak: u64, bound: u64) {
    println!(
        "{what}: RSS baseline {} MB, peak {} MB, bound {} MB",
        baseline / MB,
        peak / MB,
        bound / MB
    );
    assert!(
        peak <= bound,
        "RSS peaked at {} MB, above {} MB",
        peak / MB,
        bound / MB
    );
}
