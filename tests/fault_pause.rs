//! Redis paused (SIGSTOP) for 5 s under load: commands time out, the circuit opens, no client
//! request fails, and L2 hits resume after SIGCONT. Latencies go to `fault-pause.json` for
//! `scripts/fault-latency.sh`.
#![cfg(feature = "redis")]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::load::{spawn_load, time_to_l2_hits, two_layers, Recorder};
use common::RedisServer;

const TIMEOUT: Duration = Duration::from_millis(50);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_during_load_fails_no_request_and_l2_resumes() {
    let redis = RedisServer::start();
    let (service, reader) = two_layers("pause", &redis.url(), TIMEOUT).await;

    let stop = Arc::new(AtomicBool::new(false));
    let recorder = Arc::new(Recorder::default());
    let workers = spawn_load(&service, 4, stop.clone(), recorder.clone());

    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.pause();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let opened = service.cache().stats();
    redis.resume();
    let resumed = time_to_l2_hits(&service, &reader, Duration::from_secs(8)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }

    let resumed_ms = resumed.map_or(f64::INFINITY, |elapsed| elapsed.as_secs_f64() * 1000.0);
    recorder.report("pause", TIMEOUT, &[("l2_resume_ms", resumed_ms)]);
    assert_eq!(
        recorder.failures.load(Ordering::SeqCst),
        0,
        "{:?}",
        recorder.first_failure.lock().unwrap()
    );
    assert!(opened.l2_skipped > 0, "the circuit opened: {opened:?}");
    assert!(resumed.is_some(), "L2 hits resumed after SIGCONT");
}
