//! The durable queue: a Redis Stream read through a consumer group, at least once.
//!
//! Layout: `{prefix}:wb:{queue}` holds the entries not yet acknowledged, each with the fields
//! `meta` (key, method, URI and headers, encoded by `store/codec.rs`) and `body` (the raw body);
//! `{prefix}:wb:{queue}:dead` records what was given up, with `reason` and the original `id`,
//! trimmed to about `dead_max` entries as each one is added.
//! Appending (with the capacity check) and acknowledging (XACK + XDEL) are each one Lua script on
//! the stream's key, so they are atomic and fine on Redis Cluster.
//!
//! One reader task per instance reads the group as the consumer named after its own connection
//! (`CLIENT SETNAME`), no more entries than the workers have room for, and hands each to the
//! worker its key hashes to, which replays a key's entries in stream order. About once a second it sweeps the group: entries of consumers that are gone are
//! claimed and replayed (see the module docs of `write_behind` for how "gone" is decided), and
//! entries of its own that it lost track of are replayed too.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::clients::Client;

use crate::store::codec::{decode_job_meta, encode_job_meta, JobMeta};
use fred::error::Error as RedisError;
use fred::interfaces::{ClientLike, StreamsInterface};
use fred::types::config::{Config, Options};
use fred::types::streams::XReadResponse;
use fred::types::{ClusterHash, CustomCommand, FromValue, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::worker::{self, Delivery, Lanes, Outcome, Retry, Settle};
use super::{Counters, EnqueueError, WriteJob, Writer};
use crate::config::{ConfigError, WriteBehindConfig};
use crate::Error;

const GROUP: &str = "write-behind";
/// Longest XREADGROUP BLOCK: how long shutdown may wait for the reader, and at most how long a
/// live consumer goes without touching the group.
const READ_BLOCK: Duration = Duration::from_millis(500);
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// A consumer that has not touched the group for this long (three missed reads) is suspected,
/// and confirmed gone when no connection carries its name.
const SUSPECT_IDLE_MS: u64 = 1_500;
/// A consumer silent for this long is taken to be gone even if a connection carries its name (a
/// hung process) or when `CLIENT LIST` is not allowed.
const LEASE_MS: u64 = 30_000;
/// Own entries pending this long that no worker holds were lost on the way (a read whose answer
/// never arrived) and are replayed.
const LOST_IDLE_MS: u64 = 5_000;
const CLAIM_PAGE: u64 = 100;
/// Entries read ahead of the workers, shared out among them.
const READ_AHEAD: usize = 16;
const ERROR_PAUSE: Duration = Duration::from_millis(500);
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Reading the own pending list after this ID returns nothing, and still counts as activity.
const MAX_ID: &str = "18446744073709551615-18446744073709551615";

/// Appends unless the stream already holds ARGV[1] entries; returns the new length, or -1.
const ENQUEUE: &str = "\
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return -1 end
redis.call('XADD', KEYS[1], '*', 'meta', ARGV[2], 'body', ARGV[3])
return redis.call('XLEN', KEYS[1])";

/// Acknowledges and deletes entry ARGV[2] of group ARGV[1]; returns the stream's length.
const ACK: &str = "\
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return redis.call('XLEN', KEYS[1])";

/// Appends the fields ARGV[2..] to the dead stream, trimming it to about ARGV[1] entries;
/// returns how many entries the trim removed.
const BURY: &str = "\
local before = redis.call('XLEN', KEYS[1])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 2))
return before + 1 - redis.call('XLEN', KEYS[1])";

/// Deletes consumer ARGV[2] of group ARGV[1] if it holds no entries (deleting one that holds
/// entries would orphan them).
const DELETE_CONSUMER: &str = "\
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])";

type Entry = (String, HashMap<String, Bytes>);

/// What the [`WriteBehind`](super::WriteBehind) handle holds; dropping it closes the queue.
pub(super) struct DurableHandle {
    queue: Arc<DurableQueue>,
    close: watch::Sender<bool>,
}

pub(super) struct DurableQueue {
    /// Everything but the blocking reads.
    commands: Client,
    /// Blocking reads only, so they never hold up acknowledgements; its connection carries the
    /// consumer name, which is how other instances tell that this one is alive.
    reader: Client,
    consumer: String,
    stream: String,
    dead: String,
    dead_max: usize,
    capacity: usize,
    options: Options,
    read_options: Options,
    /// Entries handed to the workers and not settled yet.
    in_flight: Mutex<HashSet<String>>,
    counters: Arc<Counters>,
    warned_at: Mutex<Option<Instant>>,
}

struct Consumer {
    name: String,
    pending: u64,
    idle_ms: u64,
}

pub(super) fn start(
    config: &WriteBehindConfig,
    target: &super::DurableTarget,
    writer: Arc<dyn Writer>,
    counters: Arc<Counters>,
    retry: Retry,
) -> Result<(DurableHandle, Vec<JoinHandle<()>>), Error> {
    let redis_config = Config::from_url(&target.url).map_err(|err| {
        ConfigError::invalid("l2.url", format!("invalid Redis URL: {}", err.details()))
    })?;
    let commands = build_client(redis_config.clone(), target.timeout, false)?;
    let reader = build_client(redis_config, target.timeout, true)?;
    // The connection tasks run until `quit`; failures are retried by the reconnect policy.
    drop(commands.connect());
    drop(reader.connect());
    let stream = format!("{}:wb:{}", target.prefix, target.queue);
    let queue = Arc::new(DurableQueue {
        consumer: reader.id().to_owned(),
        dead: format!("{stream}:dead"),
        dead_max: config.dead_max,
        stream,
        commands,
        reader,
        capacity: config.capacity,
        // Not fail-fast: a command sent while (re)connecting waits for the connection, bounded
        // by the timeout, so an enqueue right after start is not refused.
        options: Options {
            timeout: Some(target.timeout),
            fail_fast: false,
            max_attempts: Some(1),
            ..Options::default()
        },
        read_options: Options {
            timeout: Some(READ_BLOCK + target.timeout),
            fail_fast: false,
            max_attempts: Some(1),
            ..Options::default()
        },
        in_flight: Mutex::new(HashSet::new()),
        counters: Arc::clone(&counters),
        warned_at: Mutex::new(None),
    });
    let (close, closed) = watch::channel(false);
    // About 16 entries read ahead in all, at least one per worker.
    let lane_capacity = READ_AHEAD.div_ceil(config.workers.max(1));
    let (deliveries, mut tasks) = worker::spawn(
        config.workers,
        lane_capacity,
        Arc::clone(&queue),
        writer,
        counters,
        retry,
    );
    tasks.push(tokio::spawn(read(Arc::clone(&queue), deliveries, closed)));
    Ok((DurableHandle { queue, close }, tasks))
}

fn build_client(config: Config, timeout: Duration, named: bool) -> Result<Client, Error> {
    let mut builder = crate::store::redis::builder(config, timeout);
    builder.with_connection_config(|connection| connection.auto_client_setname = named);
    builder
        .build()
        .map_err(|err| crate::store::redis::client_error(err).into())
}

impl DurableHandle {
    pub(super) async fn enqueue(&self, job: WriteJob) -> Result<(), EnqueueError> {
        if *self.close.borrow() {
            return Err(EnqueueError::Closed);
        }
        self.queue.append(&job).await
    }

    pub(super) fn close(&self) {
        self.close.send_replace(true);
    }

    /// Entries left in the stream, or, when Redis does not answer, those this instance holds.
    pub(super) async fn left(&self) -> usize {
        let queue = &self.queue;
        match queue
            .commands
            .with_options(&queue.options)
            .xlen::<u64, _>(queue.stream.as_str())
            .await
        {
            Ok(length) => usize::try_from(length).unwrap_or(usize::MAX),
            Err(_) => lock(&queue.in_flight).len(),
        }
    }

    pub(super) async fn disconnect(&self) {
        // The reader's QUIT waits behind its last blocking read (up to READ_BLOCK): not worth
        // holding up the shutdown for.
        let reader = self.queue.reader.clone();
        tokio::spawn(async move { reader.quit().await });
        if let Err(err) = self.queue.commands.quit().await {
            tracing::debug!(error = %err, "write-behind: closing the Redis connection");
        }
    }
}

/// The reader task: reads new entries while the workers have room, sweeps the group now and
/// then, and drains the stream once the queue is closed.
async fn read(
    queue: Arc<DurableQueue>,
    deliveries: Lanes<String>,
    mut close: watch::Receiver<bool>,
) {
    let mut group_ready = false;
    let mut next_sweep = Instant::now();
    // The first sweep suspects every other consumer, so a restart after a crash replays the
    // crashed instance's entries at once instead of after a silence of SUSPECT_IDLE_MS.
    let mut suspect_after_ms = 0;
    while !*close.borrow() && close.has_changed().is_ok() {
        if !group_ready {
            match queue.create_group().await {
                Ok(()) => group_ready = true,
                Err(err) => {
                    queue.warn("create the consumer group", &err);
                    if pause(&mut close).await {
                        break;
                    }
                    continue;
                }
            }
        }
        if Instant::now() >= next_sweep {
            match queue.sweep(&deliveries, suspect_after_ms).await {
                Ok(true) => suspect_after_ms = SUSPECT_IDLE_MS,
                Ok(false) => return,
                Err(err) => {
                    group_ready = !missing_group(&err);
                    queue.warn("sweep the consumer group", &err);
                }
            }
            next_sweep = Instant::now() + SWEEP_EVERY;
        }
        let Some(room) = queue.room(&deliveries).await else {
            return;
        };
        let read = tokio::select! {
            biased;
            () = closing(&mut close) => break,
            read = queue.read_new(&queue.reader, &queue.read_options, room, Some(READ_BLOCK)) => read,
        };
        match read {
            Ok(entries) => {
                if !queue.dispatch(entries, &deliveries).await {
                    return;
                }
            }
            Err(err) => {
                group_ready = !missing_group(&err);
                queue.warn("read", &err);
                if pause(&mut close).await {
                    break;
                }
            }
        }
    }
    queue.drain(&deliveries).await;
}

/// Resolves once the queue is closed (or its handle dropped).
async fn closing(close: &mut watch::Receiver<bool>) {
    let _ = close.wait_for(|closed| *closed).await;
}

/// Waits a moment after an error; true if the queue was closed meanwhile.
async fn pause(close: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = closing(close) => true,
        () = tokio::time::sleep(ERROR_PAUSE) => false,
    }
}

fn missing_group(err: &RedisError) -> bool {
    let details = err.details();
    details.contains("NOGROUP") || details.contains("no such key")
}

impl DurableQueue {
    async fn append(&self, job: &WriteJob) -> Result<(), EnqueueError> {
        let (meta, body) = match encode(job) {
            Ok(fields) => fields,
            Err(reason) => {
                tracing::error!(key = %job.key, %reason, "write-behind job cannot be queued");
                return Err(EnqueueError::Unavailable { reason });
            }
        };
        let capacity = i64::try_from(self.capacity).unwrap_or(i64::MAX);
        let appended = self
            .eval::<i64>(ENQUEUE, vec![capacity.into(), meta.into(), body.into()])
            .await;
        match appended {
            Ok(length) if length >= 0 => {
                self.counters.queued.store(length as u64, Ordering::Relaxed);
                Ok(())
            }
            Ok(_) => {
                self.counters
                    .queued
                    .store(self.capacity as u64, Ordering::Relaxed);
                Err(EnqueueError::Full {
                    capacity: self.capacity,
                })
            }
            Err(err) => {
                self.warn("enqueue", &err);
                Err(EnqueueError::Unavailable {
                    reason: err.to_string(),
                })
            }
        }
    }

    /// Runs a script on the stream's key.
    async fn eval<R: FromValue>(
        &self,
        script: &'static str,
        args: Vec<Value>,
    ) -> Result<R, RedisError> {
        self.eval_on(&self.stream, script, args).await
    }

    /// Runs a script on one key (the only one it touches, as Redis Cluster requires).
    async fn eval_on<R: FromValue>(
        &self,
        key: &str,
        script: &'static str,
        args: Vec<Value>,
    ) -> Result<R, RedisError> {
        let mut all = Vec::with_capacity(args.len() + 3);
        all.push(Value::from(script));
        all.push(Value::from(1_i64));
        all.push(Value::from(key));
        all.extend(args);
        // The key, at offset 2, decides the cluster node.
        let command = CustomCommand::new_static("EVAL", ClusterHash::Offset(2), false);
        self.commands
            .with_options(&self.options)
            .custom(command, all)
            .await
    }

    async fn create_group(&self) -> Result<(), RedisError> {
        // From ID 0: entries appended before the group existed are delivered too.
        match self
            .commands
            .with_options(&self.options)
            .xgroup_create::<Value, _, _, _>(self.stream.as_str(), GROUP, "0", true)
            .await
        {
            Err(err) if !err.details().contains("BUSYGROUP") => Err(err),
            _ => Ok(()),
        }
    }

    async fn read_new(
        &self,
        client: &Client,
        options: &Options,
        count: u64,
        block: Option<Duration>,
    ) -> Result<Vec<Entry>, RedisError> {
        let block_ms = block.map(|block| block.as_millis() as u64);
        let response: Value = client
            .with_options(options)
            .xreadgroup(
                GROUP,
                self.consumer.as_str(),
                Some(count),
                block_ms,
                false,
                self.stream.as_str(),
                ">",
            )
            .await?;
        // Nothing to read is a nil, which fred's map conversion refuses.
        if response.is_null() {
            return Ok(Vec::new());
        }
        let response: XReadResponse<String, String, String, Bytes> =
            response.into_xread_response()?;
        Ok(response.into_values().flatten().collect())
    }

    /// Claims up to a page of `owner`'s entries idle for `min_idle_ms`, skipping those a worker
    /// of this instance holds.
    async fn claim(&self, owner: &str, min_idle_ms: u64) -> Result<Vec<Entry>, RedisError> {
        let rows: Vec<Vec<Value>> = self
            .commands
            .with_options(&self.options)
            .xpending(
                self.stream.as_str(),
                GROUP,
                (min_idle_ms, "-", "+", CLAIM_PAGE, owner),
            )
            .await?;
        let ids: Vec<String> = {
            let in_flight = lock(&self.in_flight);
            rows.iter()
                .filter_map(|row| row.first().and_then(Value::as_string))
                .filter(|id| !in_flight.contains(id))
                .collect()
        };
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // XCLAIM checks the idle time again, so of two instances claiming at once only the
        // first gets the entries (with a threshold: a start-up sweep may claim twice, which
        // costs a duplicate write, never a lost one).
        self.commands
            .with_options(&self.options)
            .xclaim_values(
                self.stream.as_str(),
                GROUP,
                self.consumer.as_str(),
                min_idle_ms,
                ids,
                None,
                None,
                None,
                false,
                false,
            )
            .await
    }

    /// Replays entries of consumers that are gone (looking at those silent for
    /// `suspect_after_ms`), and own entries no worker holds. False when the workers are gone.
    async fn sweep(
        &self,
        deliveries: &Lanes<String>,
        suspect_after_ms: u64,
    ) -> Result<bool, RedisError> {
        let mut connected: Option<Option<HashSet<String>>> = None;
        for consumer in self.consumers().await? {
            if consumer.name == self.consumer || consumer.idle_ms < suspect_after_ms {
                continue;
            }
            if consumer.idle_ms < LEASE_MS {
                let names = match &connected {
                    Some(names) => names,
                    None => connected.insert(self.connected_names().await),
                };
                // Still connected, or unknown: wait for the lease.
                if names
                    .as_ref()
                    .is_none_or(|names| names.contains(&consumer.name))
                {
                    continue;
                }
            }
            if consumer.pending > 0 {
                let entries = self.claim(&consumer.name, suspect_after_ms).await?;
                if !entries.is_empty() {
                    tracing::warn!(
                        stream = %self.stream,
                        consumer = %consumer.name,
                        entries = entries.len(),
                        "write-behind: replaying writes delivered to a consumer that is gone"
                    );
                }
                if !self.dispatch(entries, deliveries).await {
                    return Ok(false);
                }
            }
            let args = vec![GROUP.into(), consumer.name.as_str().into()];
            self.eval::<Value>(DELETE_CONSUMER, args).await?;
        }
        let lost = self.claim(&self.consumer, LOST_IDLE_MS).await?;
        if !lost.is_empty() {
            tracing::warn!(
                stream = %self.stream,
                entries = lost.len(),
                "write-behind: replaying writes whose delivery was lost"
            );
        }
        Ok(self.dispatch(lost, deliveries).await)
    }

    async fn consumers(&self) -> Result<Vec<Consumer>, RedisError> {
        let rows: Vec<HashMap<String, Value>> = self
            .commands
            .with_options(&self.options)
            .xinfo_consumers(self.stream.as_str(), GROUP)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                Some(Consumer {
                    name: row.get("name")?.as_string()?,
                    pending: row.get("pending")?.as_u64()?,
                    idle_ms: row.get("idle")?.as_u64()?,
                })
            })
            .collect())
    }

    /// Names of the connections to the stream's node; `None` when `CLIENT LIST` fails (an ACL
    /// may forbid it).
    async fn connected_names(&self) -> Option<HashSet<String>> {
        let slot = fred::util::redis_keyslot(self.stream.as_bytes());
        let command = CustomCommand::new_static("CLIENT", ClusterHash::Custom(slot), false);
        match self
            .commands
            .with_options(&self.options)
            .custom::<String, _>(command, vec!["LIST"])
            .await
        {
            Ok(list) => Some(
                list.split_whitespace()
                    .filter_map(|field| field.strip_prefix("name="))
                    .filter(|name| !name.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            Err(err) => {
                self.warn("CLIENT LIST (gone consumers wait for the 30 s lease)", &err);
                None
            }
        }
    }

    /// Hands decoded entries to the workers; buries the ones that do not decode. False when the
    /// workers are gone.
    async fn dispatch(&self, entries: Vec<Entry>, deliveries: &Lanes<String>) -> bool {
        for (id, fields) in entries {
            match decode(&fields) {
                Ok(job) => {
                    let Some(slot) = self.reserve(deliveries, &job.key).await else {
                        return false;
                    };
                    lock(&self.in_flight).insert(id.clone());
                    slot.send(Delivery { job, ticket: id });
                }
                Err(reason) => {
                    Counters::add(&self.counters.dropped);
                    tracing::error!(stream = %self.stream, %id, %reason, "write-behind: malformed stream entry moved to the dead stream");
                    let mut fields: Vec<(String, Bytes)> = fields.into_iter().collect();
                    fields.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                    if let Err(err) = self.bury_and_ack(&id, fields, &reason).await {
                        self.warn("bury a malformed entry", &err);
                    }
                }
            }
        }
        true
    }

    /// Waits for room in the channel of the worker that replays `key`, telling Redis this
    /// consumer is alive meanwhile. `None` when the workers are gone.
    async fn reserve<'a>(
        &self,
        deliveries: &'a Lanes<String>,
        key: &str,
    ) -> Option<mpsc::Permit<'a, Delivery<String>>> {
        self.alive_while(deliveries.for_key(key).reserve())
            .await
            .ok()
    }

    /// How many entries the workers can take now, after waiting for room in at least one
    /// worker's channel.
    async fn room(&self, deliveries: &Lanes<String>) -> Option<u64> {
        if !self.alive_while(deliveries.any_room()).await {
            return None;
        }
        Some(deliveries.room() as u64)
    }

    /// Awaits `wait`, touching the group every `READ_BLOCK` meanwhile, so a busy instance is not
    /// taken for a dead one.
    async fn alive_while<F: Future>(&self, wait: F) -> F::Output {
        tokio::pin!(wait);
        loop {
            tokio::select! {
                done = &mut wait => return done,
                () = tokio::time::sleep(READ_BLOCK) => self.heartbeat().await,
            }
        }
    }

    /// A read that returns nothing but refreshes this consumer's activity in the group, so a
    /// busy instance is not taken for a dead one.
    async fn heartbeat(&self) {
        let touched = self
            .commands
            .with_options(&self.options)
            .xreadgroup::<Value, _, _, _, _>(
                GROUP,
                self.consumer.as_str(),
                Some(1),
                None,
                false,
                self.stream.as_str(),
                MAX_ID,
            )
            .await;
        if let Err(err) = touched {
            tracing::debug!(error = %err, "write-behind: heartbeat failed");
        }
    }

    /// After close: replays what is left for this instance (new entries and own lost ones), then
    /// returns, which closes the workers' channel.
    async fn drain(&self, deliveries: &Lanes<String>) {
        loop {
            let Some(room) = self.room(deliveries).await else {
                return;
            };
            let found = async {
                let lost = self.claim(&self.consumer, 0).await?;
                let new = self
                    .read_new(&self.commands, &self.options, room, None)
                    .await?;
                Ok::<_, RedisError>((lost, new))
            }
            .await;
            match found {
                Ok((lost, new)) if lost.is_empty() && new.is_empty() => return,
                Ok((lost, new)) => {
                    if !self.dispatch(lost, deliveries).await
                        || !self.dispatch(new, deliveries).await
                    {
                        return;
                    }
                }
                Err(err) if missing_group(&err) => return,
                Err(err) => {
                    self.warn("drain", &err);
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            }
        }
    }

    async fn ack(&self, id: &str) -> Result<(), RedisError> {
        let length: i64 = self.eval(ACK, vec![GROUP.into(), id.into()]).await?;
        self.counters
            .queued
            .store(length.max(0) as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Records a given-up entry in the dead stream, then acknowledges it; if recording fails,
    /// the entry stays pending and is replayed later.
    async fn bury_and_ack(
        &self,
        id: &str,
        fields: Vec<(String, Bytes)>,
        reason: &str,
    ) -> Result<(), RedisError> {
        let dead_max = i64::try_from(self.dead_max).unwrap_or(i64::MAX);
        let mut args: Vec<Value> = Vec::with_capacity(2 * fields.len() + 5);
        args.extend([
            dead_max.into(),
            "reason".into(),
            reason.into(),
            "id".into(),
            id.into(),
        ]);
        for (name, value) in fields {
            args.extend([name.into(), value.into()]);
        }
        let trimmed: i64 = self.eval_on(&self.dead, BURY, args).await?;
        self.count_trimmed(trimmed);
        self.ack(id).await
    }

    fn count_trimmed(&self, trimmed: i64) {
        let Ok(trimmed) = u64::try_from(trimmed) else {
            return;
        };
        if trimmed > 0 {
            self.counters
                .dead_trimmed
                .fetch_add(trimmed, Ordering::Relaxed);
            crate::metrics::write_behind_dead_trimmed(trimmed);
            tracing::debug!(stream = %self.dead, trimmed, "write-behind: dead stream trimmed");
        }
    }

    /// Logs a failed command: a warning every 10 s at most, the rest at debug.
    fn warn(&self, operation: &str, err: &RedisError) {
        let mut warned_at = lock(&self.warned_at);
        if warned_at.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            *warned_at = Some(Instant::now());
            tracing::warn!(stream = %self.stream, operation, error = %err, "write-behind: Redis command failed");
        } else {
            tracing::debug!(stream = %self.stream, operation, error = %err, "write-behind: Redis command failed");
        }
    }
}

impl Settle for DurableQueue {
    type Ticket = String;

    async fn settle(&self, id: String, job: WriteJob, outcome: Outcome) {
        let settled = match outcome {
            Outcome::Written => self.ack(&id).await,
            Outcome::Dropped(reason) => {
                let fields = match encode(&job) {
                    Ok((meta, body)) => {
                        vec![("meta".to_owned(), meta), ("body".to_owned(), body)]
                    }
                    Err(_) => Vec::new(),
                };
                self.bury_and_ack(&id, fields, &reason).await
            }
        };
        if let Err(err) = settled {
            // Still pending: replayed once found lost, so written at least once.
            self.warn("acknowledge", &err);
        }
        lock(&self.in_flight).remove(&id);
    }
}

impl Drop for DurableQueue {
    fn drop(&mut self) {
        // Close the connections; without a runtime they end with it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (commands, reader) = (self.commands.clone(), self.reader.clone());
            runtime.spawn(async move {
                let _ = futures_util::join!(commands.quit(), reader.quit());
            });
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The `meta` and `body` fields of a job.
fn encode(job: &WriteJob) -> Result<(Bytes, Bytes), String> {
    let meta = JobMeta {
        key: job.key.clone(),
        method: job.method.clone(),
        uri: job.uri.clone(),
        headers: job.headers.clone(),
    };
    let field = encode_job_meta(&meta).map_err(|err| err.to_string())?;
    Ok((Bytes::from(field), job.body.clone()))
}

fn decode(fields: &HashMap<String, Bytes>) -> Result<WriteJob, String> {
    let meta = fields.get("meta").ok_or("no `meta` field")?;
    let body = fields.get("body").ok_or("no `body` field")?;
    let meta = decode_job_meta(meta).map_err(|err| format!("`meta`: {err}"))?;
    Ok(WriteJob {
        key: meta.key,
        method: meta.method,
        uri: meta.uri,
        headers: meta.headers,
        body: body.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec::JOB_FORMAT;

    fn fields(meta: &[u8], body: &[u8]) -> HashMap<String, Bytes> {
        HashMap::from([
            ("meta".to_owned(), Bytes::copy_from_slice(meta)),
            ("body".to_owned(), Bytes::copy_from_slice(body)),
        ])
    }

    #[test]
    fn a_job_round_trips_through_its_stream_fields() {
        let job = WriteJob {
            method: "POST".to_owned(),
            headers: vec![("x-bytes".to_owned(), vec![0, 255, 10])],
            ..WriteJob::new("/users/1", "body")
        };
        let (meta, body) = encode(&job).unwrap();
        assert_eq!(decode(&fields(&meta, &body)).unwrap(), job);
    }

    #[test]
    fn malformed_fields_are_errors_not_panics() {
        let (meta, _) = encode(&WriteJob::new("/a", "")).unwrap();
        assert!(decode(&HashMap::new()).is_err());
        assert!(decode(&fields(b"", b"")).is_err());
        assert!(decode(&fields(&[JOB_FORMAT + 1], b"")).is_err());
        assert!(decode(&fields(&meta[..meta.len() - 1], b"")).is_err());
        // A length prefix claiming far more than the limit is refused before any allocation.
        assert!(decode(&fields(
            &[JOB_FORMAT, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
            b""
        ))
        .is_err());
        let mut trailing = meta.to_vec();
        trailing.push(0);
        assert!(decode(&fields(&trailing, b"")).is_err());
    }
}
