//! Write-behind in memory: order, a full queue, retries, dropped jobs, draining on shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tower_tiered_cache::config::WriteBehindConfig;
use tower_tiered_cache::{EnqueueError, Error, WriteBehind, WriteError, WriteJob, Writer};

/// Far longer than any test needs: shutdown returns as soon as the queue is drained.
const DRAIN: Duration = Duration::from_secs(30);

fn config(capacity: usize, workers: usize) -> WriteBehindConfig {
    let mut config = WriteBehindConfig::default();
    config.capacity = capacity;
    config.workers = workers;
    config.max_attempts = 5;
    config.backoff = Duration::from_millis(1);
    config
}

type Calls = Arc<Mutex<Vec<String>>>;

/// A writer that records every call's key, in call order.
fn recorder() -> (impl Writer, Calls) {
    let calls = Calls::default();
    let record = Arc::clone(&calls);
    let writer = move |job: WriteJob| {
        record.lock().unwrap().push(job.key);
        std::future::ready(Ok(()))
    };
    (writer, calls)
}

#[tokio::test]
async fn one_worker_writes_every_job_in_order() {
    let (writer, calls) = recorder();
    let queue = WriteBehind::start(&config(100, 1), None, writer).unwrap();
    let keys: Vec<String> = (0..50).map(|i| format!("/items/{i}")).collect();
    for key in &keys {
        queue.enqueue(WriteJob::new(key, "body")).await.unwrap();
    }

    assert_eq!(queue.shutdown(DRAIN).await, 0);

    assert_eq!(*calls.lock().unwrap(), keys);
    let stats = queue.stats();
    assert_eq!((stats.written, stats.queued, stats.dropped), (50, 0, 0));
}

/// A writer that records the bodies it finished, in order, and holds the write of `held` until
/// `release` fires.
fn holding_recorder(held: &'static str) -> (impl Writer, Calls, watch::Sender<bool>) {
    let (release, released) = watch::channel(false);
    let calls = Calls::default();
    let record = Arc::clone(&calls);
    let writer = move |job: WriteJob| {
        let mut released = released.clone();
        let record = Arc::clone(&record);
        async move {
            let body = String::from_utf8_lossy(&job.body).into_owned();
            if body == held {
                released.wait_for(|released| *released).await.unwrap();
            }
            record.lock().unwrap().push(body);
            Ok(())
        }
    };
    (writer, calls, release)
}

// Paused time: the clock only moves once every task is idle, so a second worker that could take
// the later write has certainly run before the first write is released.
#[tokio::test(start_paused = true)]
async fn a_later_write_of_a_key_waits_for_the_earlier_one_with_several_workers() {
    let (writer, calls, release) = holding_recorder("first");
    let queue = WriteBehind::start(&config(10, 4), None, writer).unwrap();
    queue
        .enqueue(WriteJob::new("/notes/1", "first"))
        .await
        .unwrap();
    queue
        .enqueue(WriteJob::new("/notes/1", "second"))
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        calls.lock().unwrap().is_empty(),
        "the second write overtook the first: {:?}",
        calls.lock().unwrap()
    );
    release.send(true).unwrap();

    assert_eq!(queue.shutdown(DRAIN).await, 0);
    assert_eq!(*calls.lock().unwrap(), ["first", "second"]);
}

#[tokio::test]
async fn the_writer_gets_the_whole_job() {
    let (sent, mut received) = mpsc::unbounded_channel();
    let queue = WriteBehind::start(&config(10, 1), None, move |job: WriteJob| {
        let sent = sent.clone();
        async move {
            sent.send(job).unwrap();
            Ok(())
        }
    })
    .unwrap();
    let job = WriteJob {
        method: "POST".to_owned(),
        uri: "https://example.com/users?x=1".to_owned(),
        headers: vec![("content-type".to_owned(), b"application/json".to_vec())],
        ..WriteJob::new("users", r#"{"name":"Ada"}"#)
    };

    queue.enqueue(job.clone()).await.unwrap();

    assert_eq!(received.recv().await.unwrap(), job);
    assert_eq!(queue.shutdown(DRAIN).await, 0);
}

#[tokio::test]
async fn a_full_queue_refuses_at_once_and_enqueues_nothing() {
    // The writer holds every job until the gate opens, so nothing leaves the queue meanwhile.
    let (open, gate) = watch::channel(false);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&calls);
    let queue = WriteBehind::start(&config(3, 1), None, move |job: WriteJob| {
        let mut gate = gate.clone();
        let record = Arc::clone(&record);
        async move {
            gate.wait_for(|open| *open).await.unwrap();
            record.lock().unwrap().push(job.key);
            Ok(())
        }
    })
    .unwrap();
    for key in ["a", "b", "c"] {
        queue.enqueue(WriteJob::new(key, "")).await.unwrap();
    }

    // Jobs being written count against the capacity, so this does not depend on timing.
    let refused = queue.enqueue(WriteJob::new("d", "")).await.unwrap_err();
    assert!(
        matches!(refused, EnqueueError::Full { capacity: 3 }),
        "{refused}"
    );
    let stats = queue.stats();
    assert_eq!((stats.queued, stats.refused), (3, 1));

    open.send(true).unwrap();
    assert_eq!(queue.shutdown(DRAIN).await, 0);
    assert_eq!(*calls.lock().unwrap(), ["a", "b", "c"]);
    assert_eq!(queue.stats().written, 3);
}

#[tokio::test]
async fn retryable_errors_are_retried_until_the_write_succeeds() {
    let attempts = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&attempts);
    let queue = WriteBehind::start(&config(10, 1), None, move |_job: WriteJob| {
        let attempt = counted.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if attempt <= 3 {
                Err(WriteError::Retry(format!("503 on attempt {attempt}")))
            } else {
                Ok(())
            }
        }
    })
    .unwrap();

    queue.enqueue(WriteJob::new("flaky", "")).await.unwrap();
    assert_eq!(queue.shutdown(DRAIN).await, 0);

    assert_eq!(attempts.load(Ordering::SeqCst), 4);
    let stats = queue.stats();
    assert_eq!((stats.retried, stats.written, stats.dropped), (3, 1, 0));
}

#[tokio::test]
async fn permanent_errors_and_exhausted_attempts_drop_the_job_and_count_it() {
    let attempts = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let counted = Arc::clone(&attempts);
    let mut config = config(10, 1);
    config.max_attempts = 3;
    let queue = WriteBehind::start(&config, None, move |job: WriteJob| {
        *counted.lock().unwrap().entry(job.key.clone()).or_default() += 1;
        async move {
            match job.key.as_str() {
                "permanent" => Err(WriteError::Permanent("409 Conflict".to_owned())),
                "always-busy" => Err(WriteError::Retry("503".to_owned())),
                _ => Ok(()),
            }
        }
    })
    .unwrap();

    for key in ["permanent", "always-busy", "fine"] {
        queue.enqueue(WriteJob::new(key, "")).await.unwrap();
    }
    assert_eq!(queue.shutdown(DRAIN).await, 0);

    let attempts = attempts.lock().unwrap();
    assert_eq!(attempts["permanent"], 1, "a permanent error is not retried");
    assert_eq!(attempts["always-busy"], 3, "max_attempts in all");
    assert_eq!(attempts["fine"], 1);
    let stats = queue.stats();
    assert_eq!(
        (stats.dropped, stats.retried, stats.written, stats.queued),
        (2, 2, 1, 0)
    );
}

#[tokio::test]
async fn a_panicking_writer_drops_the_job_and_the_worker_carries_on() {
    let calls = Calls::default();
    let record = Arc::clone(&calls);
    let queue = WriteBehind::start(&config(10, 1), None, move |job: WriteJob| {
        assert_ne!(job.key, "bad", "writer bug");
        record.lock().unwrap().push(job.key);
        std::future::ready(Ok(()))
    })
    .unwrap();

    for key in ["bad", "good"] {
        queue.enqueue(WriteJob::new(key, "")).await.unwrap();
    }
    assert_eq!(queue.shutdown(DRAIN).await, 0);

    assert_eq!(*calls.lock().unwrap(), ["good"]);
    let stats = queue.stats();
    assert_eq!((stats.dropped, stats.written), (1, 1));
}

#[tokio::test]
async fn shutdown_drains_every_queued_write_through_a_slow_writer() {
    let (sent, mut received) = mpsc::unbounded_channel();
    let queue = WriteBehind::start(&config(100, 2), None, move |job: WriteJob| {
        let sent = sent.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            sent.send(job.key).unwrap();
            Ok(())
        }
    })
    .unwrap();
    for i in 0..40 {
        queue
            .enqueue(WriteJob::new(format!("/slow/{i}"), ""))
            .await
            .unwrap();
    }

    assert_eq!(queue.shutdown(DRAIN).await, 0);

    let mut keys = Vec::new();
    while let Ok(key) = received.try_recv() {
        keys.push(key);
    }
    keys.sort_by_key(|key| key[6..].parse::<u32>().unwrap());
    let expected: Vec<String> = (0..40).map(|i| format!("/slow/{i}")).collect();
    assert_eq!(keys, expected);
    // Shut down: later writes are refused.
    assert!(queue.enqueue(WriteJob::new("late", "")).await.is_err());
    assert_eq!(
        queue.shutdown(DRAIN).await,
        0,
        "a second call gives the same answer"
    );
}

#[tokio::test]
async fn shutdown_reports_the_jobs_left_when_the_deadline_passes() {
    let queue = WriteBehind::start(&config(10, 1), None, |_job: WriteJob| {
        std::future::pending::<Result<(), WriteError>>()
    })
    .unwrap();
    for i in 0..5 {
        queue
            .enqueue(WriteJob::new(format!("/stuck/{i}"), ""))
            .await
            .unwrap();
    }

    assert_eq!(queue.shutdown(Duration::from_millis(20)).await, 5);
}

#[test]
fn starting_outside_a_runtime_is_an_error() {
    let err =
        WriteBehind::start(&config(10, 1), None, |_job: WriteJob| async { Ok(()) }).unwrap_err();
    assert!(matches!(err, Error::NoRuntime), "{err}");
}

#[tokio::test]
async fn a_durable_queue_without_redis_is_a_config_error() {
    let mut config = config(10, 1);
    config.durable = true;
    let err = WriteBehind::start(&config, None, |_job: WriteJob| async { Ok(()) }).unwrap_err();
    let Error::Config(err) = err else {
        panic!("expected a config error, got {err}")
    };
    assert_eq!(err.key(), Some("write_behind.durable"));
}

#[tokio::test]
async fn zero_workers_is_a_config_error() {
    let err =
        WriteBehind::start(&config(10, 0), None, |_job: WriteJob| async { Ok(()) }).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

#[cfg(not(feature = "redis"))]
#[tokio::test]
async fn a_durable_queue_needs_the_redis_feature() {
    let mut config = config(10, 1);
    config.durable = true;
    let target = tower_tiered_cache::DurableTarget {
        url: "redis://127.0.0.1:6379".to_owned(),
        prefix: "ttc".to_owned(),
        queue: "jobs".to_owned(),
        timeout: Duration::from_millis(50),
    };
    let err =
        WriteBehind::start(&config, Some(target), |_job: WriteJob| async { Ok(()) }).unwrap_err();
    assert!(err.to_string().contains("`redis` feature"), "{err}");
}
