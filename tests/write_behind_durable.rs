//! Durable write-behind on a Redis Stream: acknowledged writes, crash recovery, a full stream,
//! the dead stream, Redis down.
#![cfg(feature = "redis")]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use common::RedisServer;
use fred::clients::Client;
use fred::interfaces::{ClientLike, StreamsInterface};
use fred::types::{ClusterHash, CustomCommand, Value};
use tokio::sync::{mpsc, watch};
use tower_tiered_cache::config::WriteBehindConfig;
use tower_tiered_cache::{DurableTarget, EnqueueError, WriteBehind, WriteError, WriteJob, Writer};

/// Far longer than any test needs: waits end as soon as their condition holds.
const PATIENCE: Duration = Duration::from_secs(30);

fn config(capacity: usize, workers: usize) -> WriteBehindConfig {
    let mut config = WriteBehindConfig::default();
    config.capacity = capacity;
    config.workers = workers;
    config.durable = true;
    config.max_attempts = 3;
    config.backoff = Duration::from_millis(1);
    config
}

fn target(redis: &RedisServer, prefix: &str) -> DurableTarget {
    DurableTarget {
        url: redis.url(),
        prefix: prefix.to_owned(),
        queue: "jobs".to_owned(),
        timeout: Duration::from_secs(2),
    }
}

/// A writer that sends each job's key to the returned receiver.
fn reporter() -> (impl Writer, mpsc::UnboundedReceiver<String>) {
    let (sent, received) = mpsc::unbounded_channel();
    let writer = move |job: WriteJob| {
        let _ = sent.send(job.key);
        std::future::ready(Ok(()))
    };
    (writer, received)
}

/// Receives until `count` distinct keys arrived (duplicates are allowed: at least once).
async fn distinct_keys(
    received: &mut mpsc::UnboundedReceiver<String>,
    count: usize,
) -> HashSet<String> {
    let mut keys = HashSet::new();
    tokio::time::timeout(PATIENCE, async {
        while keys.len() < count {
            keys.insert(received.recv().await.expect("the writer lives on"));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {count} writes arrived", keys.len()));
    keys
}

async fn length(client: &Client, key: &str) -> u64 {
    client.xlen(key).await.unwrap()
}

#[tokio::test]
async fn written_jobs_are_acknowledged_and_deleted_from_the_stream() {
    let redis = RedisServer::start();
    let (sent, mut received) = mpsc::unbounded_channel();
    let queue = WriteBehind::start(
        &config(100, 2),
        Some(target(&redis, "acked")),
        move |job: WriteJob| {
            let _ = sent.send(job);
            std::future::ready(Ok(()))
        },
    )
    .unwrap();
    let jobs: Vec<WriteJob> = (0..20)
        .map(|i| WriteJob {
            method: "PATCH".to_owned(),
            headers: vec![("content-type".to_owned(), b"application/json".to_vec())],
            ..WriteJob::new(format!("/items/{i}"), format!("{{\"n\":{i}}}"))
        })
        .collect();
    for job in &jobs {
        queue.enqueue(job.clone()).await.unwrap();
    }

    let mut arrived = Vec::new();
    while arrived.len() < jobs.len() {
        arrived.push(received.recv().await.unwrap());
    }
    assert_eq!(queue.shutdown(PATIENCE).await, 0);

    arrived.sort_by_key(|job| job.key[7..].parse::<u32>().unwrap());
    assert_eq!(arrived, jobs, "jobs arrive whole");
    let client = redis.client().await;
    assert_eq!(
        length(&client, "acked:wb:jobs").await,
        0,
        "acknowledged entries are deleted"
    );
    let pending: Vec<Value> = client
        .xpending("acked:wb:jobs", "write-behind", ())
        .await
        .unwrap();
    assert_eq!(
        pending.first().and_then(Value::as_u64),
        Some(0),
        "{pending:?}"
    );
    assert_eq!(length(&client, "acked:wb:jobs:dead").await, 0);
    let stats = queue.stats();
    assert_eq!((stats.written, stats.queued, stats.dropped), (20, 0, 0));
}

/// The worker side dies (its runtime is dropped, nothing drains) with 1,000 writes queued, some
/// of them already delivered to it; the next start replays every one.
#[test]
fn a_crash_with_1000_queued_writes_loses_none_of_them() {
    crash_and_restart("crash", 1_000, 4);
}

/// The same with one write, delivered to the crashed instance.
#[test]
fn a_crash_with_one_delivered_write_replays_it() {
    crash_and_restart("crash-one", 1, 1);
}

fn crash_and_restart(prefix: &str, writes: usize, workers: usize) {
    let redis = RedisServer::start();
    let config = config(2_000, workers);
    let stream = format!("{prefix}:wb:jobs");

    let crashed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    crashed.block_on(async {
        // An origin that never answers: whatever the workers take stays unacknowledged.
        let (entered, mut writes_started) = mpsc::unbounded_channel();
        let queue = WriteBehind::start(
            &config,
            Some(target(&redis, prefix)),
            move |_job: WriteJob| {
                let _ = entered.send(());
                std::future::pending()
            },
        )
        .unwrap();
        for i in 0..writes {
            queue
                .enqueue(WriteJob::new(format!("/crash/{i}"), "body"))
                .await
                .unwrap();
        }
        for _ in 0..workers {
            writes_started.recv().await.unwrap();
        }
        // A crash runs no destructor and no shutdown.
        std::mem::forget(queue);
    });
    crashed.shutdown_background();

    let restarted = tokio::runtime::Runtime::new().unwrap();
    restarted.block_on(async {
        let client = redis.client().await;
        assert_eq!(length(&client, &stream).await, writes as u64);
        let consumers: Vec<HashMap<String, Value>> = client
            .xinfo_consumers(stream.as_str(), "write-behind")
            .await
            .unwrap();
        let held: u64 = consumers
            .iter()
            .filter_map(|consumer| consumer.get("pending").and_then(Value::as_u64))
            .sum();
        assert!(
            held >= workers as u64,
            "the crashed instance held writes: {consumers:?}"
        );

        let (writer, mut received) = reporter();
        let queue = WriteBehind::start(&config, Some(target(&redis, prefix)), writer).unwrap();
        let keys = distinct_keys(&mut received, writes).await;
        assert!((0..writes).all(|i| keys.contains(&format!("/crash/{i}"))));

        assert_eq!(queue.shutdown(PATIENCE).await, 0);
        assert_eq!(length(&client, &stream).await, 0);
        let consumers: Vec<HashMap<String, Value>> = client
            .xinfo_consumers(stream.as_str(), "write-behind")
            .await
            .unwrap();
        assert!(
            consumers.len() <= 1,
            "the crashed consumer was removed: {consumers:?}"
        );
    });
}

#[tokio::test]
async fn a_full_stream_refuses_at_once_and_enqueues_nothing() {
    let redis = RedisServer::start();
    let (open, gate) = watch::channel(false);
    let (sent, mut received) = mpsc::unbounded_channel();
    let queue = WriteBehind::start(
        &config(5, 1),
        Some(target(&redis, "full")),
        move |job: WriteJob| {
            let mut gate = gate.clone();
            let sent = sent.clone();
            async move {
                gate.wait_for(|open| *open).await.unwrap();
                let _ = sent.send(job.key);
                Ok(())
            }
        },
    )
    .unwrap();
    for i in 0..5 {
        queue
            .enqueue(WriteJob::new(format!("/full/{i}"), ""))
            .await
            .unwrap();
    }

    // Entries count until acknowledged, whether or not a worker has them.
    let refused = queue
        .enqueue(WriteJob::new("/full/5", ""))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, EnqueueError::Full { capacity: 5 }),
        "{refused}"
    );
    let client = redis.client().await;
    assert_eq!(length(&client, "full:wb:jobs").await, 5);
    assert_eq!(queue.stats().refused, 1);

    open.send(true).unwrap();
    assert_eq!(distinct_keys(&mut received, 5).await.len(), 5);
    assert_eq!(queue.shutdown(PATIENCE).await, 0);
    assert_eq!(length(&client, "full:wb:jobs").await, 0);
    assert!(!already_received(&mut received, "/full/5"));
}

fn already_received(received: &mut mpsc::UnboundedReceiver<String>, key: &str) -> bool {
    std::iter::from_fn(|| received.try_recv().ok()).any(|seen| seen == key)
}

#[tokio::test]
async fn dropped_jobs_and_malformed_entries_go_to_the_dead_stream() {
    let redis = RedisServer::start();
    let client = redis.client().await;
    // Bytes that are not a job, written before the queue starts (so it reads them first).
    let _: Value = client
        .xadd(
            "dead:wb:jobs",
            false,
            None::<()>,
            "*",
            vec![
                ("meta", Bytes::from_static(b"\x01garbage")),
                ("body", Bytes::new()),
            ],
        )
        .await
        .unwrap();
    let (sent, mut received) = mpsc::unbounded_channel();
    let queue = WriteBehind::start(
        &config(10, 1),
        Some(target(&redis, "dead")),
        move |job: WriteJob| {
            let _ = sent.send(job.key.clone());
            std::future::ready(match job.key.as_str() {
                "rejected" => Err(WriteError::Permanent("422 Unprocessable".to_owned())),
                "busy" => Err(WriteError::Retry("503".to_owned())),
                _ => Ok(()),
            })
        },
    )
    .unwrap();
    for key in ["rejected", "busy", "fine"] {
        queue.enqueue(WriteJob::new(key, "payload")).await.unwrap();
    }

    // One worker settles in stream order, so once "fine" arrives the others are settled.
    while received.recv().await.unwrap() != "fine" {}
    assert_eq!(queue.shutdown(PATIENCE).await, 0);

    assert_eq!(length(&client, "dead:wb:jobs").await, 0);
    let dead: Vec<(String, HashMap<String, Bytes>)> = client
        .xrange_values("dead:wb:jobs:dead", "-", "+", None)
        .await
        .unwrap();
    let reasons: Vec<String> = dead
        .iter()
        .map(|(_, fields)| String::from_utf8_lossy(&fields["reason"]).into_owned())
        .collect();
    assert_eq!(dead.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("invalid entry metadata"), "{reasons:?}");
    assert!(reasons[1].contains("422"), "{reasons:?}");
    assert!(reasons[2].contains("3 attempts"), "{reasons:?}");
    assert!(dead
        .iter()
        .all(|(_, fields)| fields.contains_key("meta") && fields.contains_key("id")));
    assert_eq!(
        &dead[1].1["body"][..],
        b"payload",
        "the job can be replayed by hand"
    );
    let stats = queue.stats();
    assert_eq!((stats.dropped, stats.written, stats.retried), (3, 1, 2));
}

#[tokio::test]
async fn a_later_write_of_a_key_waits_for_the_earlier_one_with_several_workers() {
    let redis = RedisServer::start();
    let (started, mut starts) = mpsc::unbounded_channel();
    let (release, released) = watch::channel(false);
    let (finished, mut finishes) = mpsc::unbounded_channel();
    let queue = WriteBehind::start(
        &config(10, 4),
        Some(target(&redis, "order")),
        move |job: WriteJob| {
            let (started, finished) = (started.clone(), finished.clone());
            let mut released = released.clone();
            async move {
                let body = String::from_utf8_lossy(&job.body).into_owned();
                let _ = started.send(body.clone());
                if body == "first" {
                    released.wait_for(|released| *released).await.unwrap();
                }
                let _ = finished.send(body);
                Ok(())
            }
        },
    )
    .unwrap();
    queue
        .enqueue(WriteJob::new("/notes/1", "first"))
        .await
        .unwrap();
    queue
        .enqueue(WriteJob::new("/notes/1", "second"))
        .await
        .unwrap();

    assert_eq!(starts.recv().await.unwrap(), "first");
    // While the first write is held, the second must not start: a worker that took it would do
    // so within milliseconds, long before this wait ends.
    let overtaking = tokio::time::timeout(Duration::from_millis(500), starts.recv()).await;
    assert!(overtaking.is_err(), "started meanwhile: {overtaking:?}");
    release.send(true).unwrap();

    let order = [
        finishes.recv().await.unwrap(),
        finishes.recv().await.unwrap(),
    ];
    assert_eq!(order, ["first", "second"]);
    assert_eq!(queue.shutdown(PATIENCE).await, 0);
}

#[tokio::test]
async fn the_dead_stream_is_trimmed_to_dead_max_and_the_trimmed_entries_are_counted() {
    let redis = RedisServer::start();
    let client = redis.client().await;
    // Small stream nodes, so that `MAXLEN ~` trims at a handful of entries rather than 100.
    let _: Value = client
        .custom(
            CustomCommand::new_static("CONFIG", ClusterHash::Random, false),
            vec!["SET", "stream-node-max-entries", "2"],
        )
        .await
        .unwrap();
    let mut config = config(100, 1);
    config.dead_max = 4;
    let (sent, mut received) = mpsc::unbounded_channel();
    let queue = WriteBehind::start(
        &config,
        Some(target(&redis, "capped")),
        move |job: WriteJob| {
            let _ = sent.send(job.key.clone());
            std::future::ready(match job.key.as_str() {
                "fine" => Ok(()),
                _ => Err(WriteError::Permanent("422 Unprocessable".to_owned())),
            })
        },
    )
    .unwrap();
    for i in 0..20 {
        queue
            .enqueue(WriteJob::new(format!("/rejected/{i}"), "payload"))
            .await
            .unwrap();
    }
    queue.enqueue(WriteJob::new("fine", "")).await.unwrap();

    // One worker settles in stream order, so once "fine" arrives the others are settled.
    while received.recv().await.unwrap() != "fine" {}
    assert_eq!(queue.shutdown(PATIENCE).await, 0);

    let kept = length(&client, "capped:wb:jobs:dead").await;
    assert!((4..=6).contains(&kept), "{kept} entries kept");
    let stats = queue.stats();
    assert_eq!(stats.dropped, 20);
    assert_eq!(
        stats.dead_trimmed,
        20 - kept,
        "every entry is kept or counted"
    );
}

#[tokio::test]
async fn enqueue_is_refused_as_unavailable_not_full_while_redis_is_unreachable() {
    let redis = RedisServer::not_started();
    let mut target = target(&redis, "down");
    target.timeout = Duration::from_millis(100);
    let (writer, _received) = reporter();
    let queue = WriteBehind::start(&config(10, 1), Some(target), writer).unwrap();

    let refused = queue.enqueue(WriteJob::new("/lost?", "")).await;

    let refused = refused.unwrap_err();
    assert!(
        matches!(refused, EnqueueError::Unavailable { .. }),
        "a Redis failure, not a full queue: {refused}"
    );
    assert!(refused.to_string().contains("unavailable"), "{refused}");
    assert_eq!(queue.stats().refused, 1);
    queue.shutdown(Duration::from_millis(200)).await;
}
