//! Redis killed (SIGKILL) during 20 s of mixed hits and misses: no client request fails, and
//! once Redis is back on its port, L2 hits resume. Latencies go to `fault-kill.json` for
//! `scripts/fault-latency.sh`, which checks p99 ≤ l2.timeout + origin latency.
#![cfg(feature = "redis")]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::load::{spawn_load, time_to_l2_hits, two_layers, Recorder};
use common::RedisServer;

const TIMEOUT: Duration = Duration::from_millis(50);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_during_load_fails_no_request_and_l2_resumes() {
    let mut redis = RedisServer::start();
    let (service, reader) = two_layers("kill", &redis.url(), TIMEOUT).await;

    let stop = Arc::new(AtomicBool::new(false));
    let recorder = Arc::new(Recorder::default());
    let workers = spawn_load(&service, 4, stop.clone(), recorder.clone());

    tokio::time::sleep(Duration::from_secs(5)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let skipped_while_down = service.cache().stats().l2_skipped;
    redis.restart();
    let resumed = time_to_l2_hits(&service, &reader, Duration::from_secs(8)).await;
    tokio::time::sleep(
        Duration::from_secs(20)
            .saturating_sub(Duration::from_secs(12) + resumed.unwrap_or_default()),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }

    let resumed_ms = resumed.map_or(f64::INFINITY, |elapsed| elapsed.as_secs_f64() * 1000.0);
    recorder.report("kill", TIMEOUT, &[("l2_resume_ms", resumed_ms)]);
    assert_eq!(
        recorder.failures.load(Ordering::SeqCst),
        0,
        "{:?}",
        recorder.first_failure.lock().unwrap()
    );
    assert!(
        recorder.requests() > 1000,
        "the load ran: {} requests",
        recorder.requests()
    );
    assert!(
        skipped_while_down > 0,
        "the circuit opened and Redis was skipped"
    );
    assert!(resumed.is_some(), "L2 hits resumed after Redis came back");
}
