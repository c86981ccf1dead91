//! Write-behind: writes accepted at once and replayed to their destination in the background.
//!
//! [`WriteBehind::start`] starts `workers` tasks that take [`WriteJob`]s from a bounded queue (each
//! job going to the worker its key hashes to) and hand each one to a [`Writer`] (for the HTTP layer: the wrapped service), retrying with
//! exponential backoff. [`enqueue`](WriteBehind::enqueue) never waits for room: a full queue
//! refuses the job with [`EnqueueError::Full`], and the caller answers `503` with `Retry-After`.
//!
//! ```
//! use std::time::Duration;
//! use tower_tiered_cache::config::WriteBehindConfig;
//! use tower_tiered_cache::{WriteBehind, WriteError, WriteJob};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let queue = WriteBehind::start(&WriteBehindConfig::default(), None, |job: WriteJob| async move {
//!     // Replay the write: an HTTP request, a database update...
//!     println!("{} {} ({} bytes)", job.method, job.uri, job.body.len());
//!     Ok::<(), WriteError>(())
//! })?;
//!
//! queue.enqueue(WriteJob::new("/users/42", "Ada Lovelace")).await?;
//!
//! // On the way out: stop taking writes and replay what is queued.
//! assert_eq!(queue.shutdown(Duration::from_secs(10)).await, 0);
//! assert_eq!(queue.stats().written, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! - Each job is handed to the writer until it returns `Ok`, returns [`WriteError::Permanent`], or
//!   has failed `max_attempts` times with [`WriteError::Retry`] (waiting `backoff`, doubling, at
//!   most 30 s, between attempts). A dropped job is counted in [`WriteBehindStats::dropped`],
//!   logged with `tracing::error!` and handed to [`Writer::given_up`]; a writer that panics
//!   drops its job the same way.
//! - `capacity` bounds the jobs accepted and not yet written or dropped, including those being
//!   written at the moment.
//! - Jobs of one key reach the writer one at a time, in the order they were enqueued: each key
//!   hashes to one worker, which replays its jobs in turn, so a later write of a key never
//!   overtakes an earlier one still being written or retried. Jobs of different keys may finish
//!   out of order (with one worker, every job is in order). Durable mode keeps this order within
//!   one instance; with several instances on one queue, two writes of a key may be read by
//!   different instances and replayed at once, and replays of a crashed instance's jobs come in
//!   between.
//! - **Memory mode** (`durable = false`) keeps the queue in the process: jobs still queued when
//!   the process crashes, or when [`shutdown`](WriteBehind::shutdown) gives up at its deadline,
//!   are lost.
//! - **Durable mode** (`durable = true`, [`DurableTarget`] given; Redis 6.2 or later) keeps the
//!   queue in the Redis Stream `{prefix}:wb:{queue}`, read through the consumer group
//!   `write-behind`: delivery is at least once. An entry is acknowledged and deleted only after
//!   the writer returned `Ok`, or after it was given up and copied, with the reason, to
//!   `{prefix}:wb:{queue}:dead` (entries that do not decode go there too). That stream keeps
//!   about `dead_max` entries (`XADD MAXLEN ~`): older ones are trimmed and counted in
//!   [`WriteBehindStats::dead_trimmed`]. Entries delivered to a process that died are replayed by the other instances or by
//!   the next start (see below), so a crash loses nothing but may replay a write twice. When
//!   Redis cannot take the job, `enqueue` refuses it with [`EnqueueError::Unavailable`].
//! - Dropping every handle without `shutdown` closes the queue and lets the workers finish it in
//!   the background, for as long as the runtime runs.
//!
//! # Recovering from a crash (durable mode)
//!
//! Each start reads the group as a new consumer, named after its reader connection, which
//! carries that name (`CLIENT SETNAME`). A live instance touches the group at least every half
//! second, even while all its workers are busy. Every second, each instance looks at the other
//! consumers: one that has been silent for 1.5 s is *suspected*, and taken to be gone when no
//! connection carries its name any more (`CLIENT LIST`), which is the case as soon as its
//! process has died. A silent consumer whose connection lingers (a hung process), or any silent
//! consumer when `CLIENT LIST` is not allowed, is taken to be gone after 30 s. A gone consumer's
//! entries are claimed (`XCLAIM`) and replayed, then the empty consumer is deleted. At start the
//! first look suspects every other consumer at once, so a restarted instance replays what its
//! crashed predecessor held right away. An instance also replays entries of its own that no
//! worker holds after 5 s (a read whose answer was lost). Replaying a consumer that was only
//! slow, not gone, costs a duplicate write, never a lost one.

mod memory;
mod worker;

#[cfg(feature = "redis")]
mod durable;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::config::{ConfigError, WriteBehindConfig};
use crate::store::{CachedEntry, TieredCache};
use crate::Error;

use memory::MemoryQueue;
use worker::Retry;

/// One write to replay: enough to rebuild an HTTP request, or a key and a value for library use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteJob {
    /// What the write is about, e.g. the cache key of the target URI; shown in logs.
    pub key: String,
    /// The request method, e.g. `PUT`.
    pub method: String,
    /// The request target.
    pub uri: String,
    /// Request headers, in order; values are bytes because HTTP allows non-UTF-8 ones.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The request body.
    #[serde(with = "body_bytes")]
    pub body: Bytes,
}

impl WriteJob {
    /// A `PUT` of `body` to `key` (the key is also the URI), without headers.
    pub fn new(key: impl Into<String>, body: impl Into<Bytes>) -> Self {
        let key = key.into();
        Self {
            uri: key.clone(),
            key,
            method: "PUT".to_owned(),
            headers: Vec::new(),
            body: body.into(),
        }
    }
}

/// Why a write did not go through.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Worth another attempt after a backoff (timeouts, `503`, connection refused...).
    #[error("retryable: {0}")]
    Retry(String),
    /// Will never succeed (`400`, `409`...): the job is dropped at once.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// What replays a job.
///
/// Returning [`WriteError::Retry`] retries with backoff up to `max_attempts`;
/// [`WriteError::Permanent`] drops the job at once. Closures `Fn(WriteJob) -> impl Future` are
/// writers (annotate the argument: `|job: WriteJob| async move { ... }`).
pub trait Writer: Send + Sync + 'static {
    /// Replays one job.
    fn write(
        &self,
        job: WriteJob,
    ) -> Pin<Box<dyn Future<Output = Result<(), WriteError>> + Send + '_>>;

    /// Called once a job is given up (a permanent error, out of attempts, or a panicking
    /// writer), before it leaves the queue, so that what was served for the write can be taken
    /// back; in durable mode a crash in between calls it again for the replayed job. Does
    /// nothing by default. The HTTP layer's writer drops the representation it stored for the
    /// write, in every tier and instance, unless a newer write replaced it.
    fn given_up<'a>(&'a self, job: &'a WriteJob) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        let _ = job;
        Box::pin(std::future::ready(()))
    }
}

impl<F, Fut> Writer for F
where
    F: Fn(WriteJob) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), WriteError>> + Send + 'static,
{
    fn write(
        &self,
        job: WriteJob,
    ) -> Pin<Box<dyn Future<Output = Result<(), WriteError>> + Send + '_>> {
        Box::pin(self(job))
    }
}

/// Why the queue refused a job. Nothing was enqueued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError {
    /// The queue holds `capacity` jobs not yet written or dropped: retry later.
    #[error("write-behind queue is full ({capacity} writes)")]
    Full {
        /// The queue's capacity.
        capacity: usize,
    },
    /// The queue was shut down.
    #[error("write-behind queue is shut down")]
    Closed,
    /// Durable mode: the Redis Stream could not take the job (Redis down, slower than the
    /// timeout, or refusing the command); the queue itself may have room.
    #[error("write-behind queue is unavailable: {reason}")]
    Unavailable {
        /// What Redis answered, or that it did not.
        reason: String,
    },
}

/// Where a durable queue lives.
#[derive(Clone)]
pub struct DurableTarget {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prefix of the stream keys, as `l2.prefix`.
    pub prefix: String,
    /// Name of the queue: the stream is `{prefix}:wb:{queue}`.
    pub queue: String,
    /// Bound on each Redis command.
    pub timeout: Duration,
}

impl fmt::Debug for DurableTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password.
        let url = match (self.url.find("://"), self.url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &self.url[..scheme + 3], &self.url[at..])
            }
            _ => self.url.clone(),
        };
        f.debug_struct("DurableTarget")
            .field("url", &url)
            .field("prefix", &self.prefix)
            .field("queue", &self.queue)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A snapshot of a [`WriteBehind`]'s counters; all but `queued` count since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WriteBehindStats {
    /// Jobs accepted and not yet written or dropped. Durable mode: the stream's length as last
    /// seen by this instance (other instances share the stream).
    pub queued: u64,
    /// Jobs the writer accepted.
    pub written: u64,
    /// Attempts that failed with [`WriteError::Retry`] and were tried again.
    pub retried: u64,
    /// Jobs given up: a permanent error, out of attempts, a panicking writer, or (durable mode)
    /// a stream entry that did not decode. Each one is logged.
    pub dropped: u64,
    /// Jobs refused by [`WriteBehind::enqueue`].
    pub refused: u64,
    /// Durable mode: entries of the dead stream trimmed by this instance to keep it near
    /// `write_behind.dead_max` (each was counted in `dropped` and logged when given up).
    pub dead_trimmed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    /// Durable mode: the stream's length as last seen.
    #[cfg(feature = "redis")]
    queued: AtomicU64,
    written: AtomicU64,
    retried: AtomicU64,
    dropped: AtomicU64,
    refused: AtomicU64,
    #[cfg(feature = "redis")]
    dead_trimmed: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A bounded queue of writes replayed in the background. Cloning is cheap: clones share the
/// queue and its workers.
#[derive(Clone)]
pub struct WriteBehind {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    counters: Arc<Counters>,
    capacity: usize,
    tasks: Mutex<Tasks>,
}

enum Backend {
    Memory(MemoryQueue),
    #[cfg(feature = "redis")]
    Durable(durable::DurableHandle),
}

enum Tasks {
    Running(Vec<JoinHandle<()>>),
    /// Shut down; how many jobs were left.
    Stopped(usize),
}

impl WriteBehind {
    /// Starts `config.workers` worker tasks; needs a Tokio runtime ([`Error::NoRuntime`]
    /// otherwise).
    ///
    /// Memory mode: a bounded in-process queue of `config.capacity` jobs. Durable mode
    /// (`config.durable`): the Redis Stream `{prefix}:wb:{queue}` of `redis`, which must be
    /// given; the connection is made in the background, so this never waits for Redis.
    pub fn start(
        config: &WriteBehindConfig,
        redis: Option<DurableTarget>,
        writer: impl Writer,
    ) -> Result<Self, Error> {
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        config.validate()?;
        let writer: Arc<dyn Writer> = Arc::new(writer);
        let counters = Arc::new(Counters::default());
        let retry = Retry {
            max_attempts: config.max_attempts,
            backoff: config.backoff,
        };
        let (backend, tasks) = if config.durable {
            let target = redis.ok_or_else(|| {
                ConfigError::invalid(
                    "write_behind.durable",
                    "a durable queue lives in Redis: set l2.url",
                )
            })?;
            start_durable(config, target, writer, Arc::clone(&counters), retry)?
        } else {
            let (lanes, tasks) = worker::spawn(
                config.workers,
                config.capacity,
                Arc::new(memory::ReleaseSlot),
                writer,
                Arc::clone(&counters),
                retry,
            );
            (
                Backend::Memory(MemoryQueue::new(config.capacity, lanes)),
                tasks,
            )
        };
        Ok(Self {
            inner: Arc::new(Inner {
                backend,
                counters,
                capacity: config.capacity,
                tasks: Mutex::new(Tasks::Running(tasks)),
            }),
        })
    }

    /// Enqueues `job`, or refuses it at once (never waits for room). Durable mode: one round trip
    /// to Redis that appends the job unless the stream already holds `capacity` unacknowledged
    /// entries.
    pub async fn enqueue(&self, job: WriteJob) -> Result<(), EnqueueError> {
        let accepted = match &self.inner.backend {
            Backend::Memory(queue) => queue.enqueue(job),
            #[cfg(feature = "redis")]
            Backend::Durable(handle) => handle.enqueue(job).await,
        };
        match accepted {
            Ok(()) => crate::metrics::write_behind_queue(self.stats().queued),
            Err(_) => Counters::add(&self.inner.counters.refused),
        }
        accepted
    }

    /// Stops taking jobs (later [`enqueue`](Self::enqueue) calls are refused), waits until every
    /// queued job was written or dropped, at most `deadline`, and stops the workers. Returns how
    /// many jobs were still queued when the deadline passed: 0 means fully drained. A second call
    /// waits for the first and returns its answer.
    ///
    /// Memory mode: jobs left at the deadline are lost. Durable mode: they stay in the stream
    /// for the next start (or another instance); draining reads the stream until it has nothing
    /// more to deliver to this instance.
    pub async fn shutdown(&self, deadline: Duration) -> usize {
        let mut tasks = self.inner.tasks.lock().await;
        let mut handles = match &mut *tasks {
            Tasks::Stopped(left) => return *left,
            Tasks::Running(handles) => std::mem::take(handles),
        };
        self.inner.backend.close();
        let drained =
            tokio::time::timeout(deadline, futures_util::future::join_all(handles.iter_mut()))
                .await
                .is_ok();
        let left = if drained {
            0
        } else {
            let left = self.inner.backend.left().await;
            for handle in &handles {
                handle.abort();
            }
            tracing::warn!(
                left,
                "write-behind shutdown deadline passed before the queue was drained"
            );
            left
        };
        self.inner.backend.disconnect().await;
        *tasks = Tasks::Stopped(left);
        left
    }

    /// The queue's counters.
    pub fn stats(&self) -> WriteBehindStats {
        let counters = &self.inner.counters;
        let queued = match &self.inner.backend {
            Backend::Memory(queue) => queue.queued() as u64,
            #[cfg(feature = "redis")]
            Backend::Durable(_) => counters.queued.load(Ordering::Relaxed),
        };
        WriteBehindStats {
            queued,
            written: counters.written.load(Ordering::Relaxed),
            retried: counters.retried.load(Ordering::Relaxed),
            dropped: counters.dropped.load(Ordering::Relaxed),
            refused: counters.refused.load(Ordering::Relaxed),
            #[cfg(feature = "redis")]
            dead_trimmed: counters.dead_trimmed.load(Ordering::Relaxed),
            #[cfg(not(feature = "redis"))]
            dead_trimmed: 0,
        }
    }
}

impl fmt::Debug for WriteBehind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match &self.inner.backend {
            Backend::Memory(_) => "memory",
            #[cfg(feature = "redis")]
            Backend::Durable(_) => "durable",
        };
        f.debug_struct("WriteBehind")
            .field("mode", &mode)
            .field("capacity", &self.inner.capacity)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Backend {
    fn close(&self) {
        match self {
            Backend::Memory(queue) => queue.close(),
            #[cfg(feature = "redis")]
            Backend::Durable(handle) => handle.close(),
        }
    }

    /// Jobs not yet written or dropped, counted when the shutdown deadline passed.
    async fn left(&self) -> usize {
        match self {
            Backend::Memory(queue) => queue.queued(),
            #[cfg(feature = "redis")]
            Backend::Durable(handle) => handle.left().await,
        }
    }

    async fn disconnect(&self) {
        match self {
            Backend::Memory(_) => {}
            #[cfg(feature = "redis")]
            Backend::Durable(handle) => handle.disconnect().await,
        }
    }
}

#[cfg(feature = "redis")]
fn start_durable(
    config: &WriteBehindConfig,
    target: DurableTarget,
    writer: Arc<dyn Writer>,
    counters: Arc<Counters>,
    retry: Retry,
) -> Result<(Backend, Vec<JoinHandle<()>>), Error> {
    let (handle, tasks) = durable::start(config, &target, writer, counters, retry)?;
    Ok((Backend::Durable(handle), tasks))
}

#[cfg(not(feature = "redis"))]
fn start_durable(
    _config: &WriteBehindConfig,
    _target: DurableTarget,
    _writer: Arc<dyn Writer>,
    _counters: Arc<Counters>,
    _retry: Retry,
) -> Result<(Backend, Vec<JoinHandle<()>>), Error> {
    Err(ConfigError::invalid(
        "write_behind.durable",
        "a durable queue needs the `redis` feature, which this build does not have",
    )
    .into())
}

impl TieredCache {
    /// Write-behind: queues the write of `entry` for `queue`'s writer (which persists it in the
    /// background, with retries), then stores it in both tiers so readers see it at once; other
    /// instances drop their copies. A queue that cannot take the write (full, shut down, or its
    /// Redis unavailable) refuses at once and nothing is stored.
    pub async fn write_behind(
        &self,
        queue: &WriteBehind,
        key: &str,
        entry: CachedEntry,
    ) -> Result<(), EnqueueError> {
        queue
            .enqueue(WriteJob::new(key, entry.body().clone()))
            .await?;
        self.store_written(key, &entry).await;
        Ok(())
    }
}

/// Serde for the body: bytes (one blob in binary formats) rather than a sequence of numbers.
mod body_bytes {
    use std::fmt;

    use bytes::Bytes;
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(body: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(body)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Bytes, D::Error> {
        deserializer.deserialize_bytes(BodyVisitor)
    }

    struct BodyVisitor;

    impl<'de> Visitor<'de> for BodyVisitor {
        type Value = Bytes;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(bytes))
        }

        fn visit_byte_buf<E: Error>(self, bytes: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(bytes))
        }

        fn visit_str<E: Error>(self, text: &str) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(text.as_bytes()))
        }

        // Self-describing formats such as JSON write bytes as an array of numbers.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
            let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(byte) = seq.next_element::<u8>()? {
                bytes.push(byte);
            }
            Ok(Bytes::from(bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_hides_the_password() {
        let target = DurableTarget {
            url: "redis://user:secret@localhost:6379".to_owned(),
            prefix: "ttc".to_owned(),
            queue: "q".to_owned(),
            timeout: Duration::from_millis(50),
        };
        let debug = format!("{target:?}");
        assert!(!debug.contains("secret"), "{debug}");
        assert!(debug.contains("redis://***@localhost:6379"), "{debug}");
    }
}
