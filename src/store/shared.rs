//! The shared tier (L2): one type over whichever [`Backend`] `l2.backend` chose, applying the
//! rules every operation follows once, here: the circuit breaker of the operation's shard (see
//! [`breaker`](super::breaker)), the duration metric, the entry codec (a value that does not
//! decode is deleted and reported), and the outbox of invalidations that did not get through
//! (see [`outbox`](super::outbox)). Backends bound each round trip by `l2.timeout` themselves.
//!
//! Encoding, and refusing an entry too large for the backend, happen before the breaker is
//! asked: neither touches the network, so neither may take the half-open probe.
#![cfg_attr(
    not(any(feature = "redis", feature = "memcached")),
    allow(unused_variables, unused_imports, dead_code, unreachable_code)
)]

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::backend::{Answer, Backend, OnConnect, Place, Shard};
use super::breaker::Breakers;
use super::codec::{Codec, DecodeError, Reading};
use super::events::EventSink;
use super::outbox::{Change, Kept, Outbox, Work};
use super::tags::TagStamps;
use super::tier::TierError;
use super::versions::Versions;
use super::{CachedEntry, Source};
use crate::config::{CacheConfig, ConfigError, L2Backend};
use crate::Error;

/// Waits between attempts of the outbox, doubling from the first to the last; a shard that
/// answers again cuts the wait short.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// An invalidation the shared tier did not take now.
#[derive(Debug)]
pub(crate) enum NotApplied {
    /// Kept in the outbox and retried; this instance ignores the shared entries it covers.
    Pending(TierError),
    /// It cannot be done on this backend (or the full outbox could not keep it): not retried.
    Refused(TierError),
}

pub(crate) struct SharedTier {
    core: Arc<Core>,
}

struct Core {
    backend: Box<dyn Backend>,
    codec: Codec,
    breakers: Arc<Breakers>,
    outbox: Outbox,
    stamp_ttl: Duration,
    /// Learns every generation the shared tier hands out or reports.
    versions: Arc<Versions>,
    /// The tag stamps known here, updated with every stamp this instance writes.
    stamps: Arc<TagStamps>,
    /// Whether the shared generation was read since the start (see `keep_generation_known`).
    generation_known: tokio::sync::watch::Sender<bool>,
    /// This core, for the retry task it starts.
    me: Weak<Core>,
}

impl SharedTier {
    /// Builds the configured backend and starts connecting in the background; never waits.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))] // events: Redis pub/sub only
    pub(crate) fn connect(
        config: &CacheConfig,
        codec: Codec,
        events: EventSink,
        record: (Arc<Versions>, Arc<TagStamps>),
    ) -> Result<Self, Error> {
        let breakers = Arc::new(Breakers::new(
            config.l2.breaker_threshold,
            config.l2.breaker_cooldown,
            config.l2.connect_wait,
        ));
        let on_connect: OnConnect = {
            let breakers = Arc::clone(&breakers);
            Arc::new(move |shard: &Shard| breakers.connected(shard))
        };
        let backend: Box<dyn Backend> = match config.l2.backend {
            #[cfg(feature = "redis")]
            L2Backend::Redis => Box::new(super::redis::RedisBackend::connect(
                config, on_connect, events,
            )?),
            #[cfg(feature = "memcached")]
            L2Backend::Memcached => Box::new(super::memcached::MemcachedBackend::connect(config)?),
            #[allow(unreachable_patterns)]
            backend => {
                return Err(ConfigError::invalid(
                    "l2.backend",
                    format!("this build has no `{}` feature", backend.name()),
                )
                .into())
            }
        };
        Ok(Self::over(backend, breakers, codec, config, record))
    }

    fn over(
        backend: Box<dyn Backend>,
        breakers: Arc<Breakers>,
        codec: Codec,
        config: &CacheConfig,
        (versions, stamps): (Arc<Versions>, Arc<TagStamps>),
    ) -> Self {
        let outbox = Outbox::new(config.l2.outbox_capacity);
        let core = Arc::new_cyclic(|me| Core {
            backend,
            codec,
            breakers,
            outbox,
            stamp_ttl: config.tags.stamp_ttl,
            versions,
            stamps,
            generation_known: tokio::sync::watch::Sender::new(false),
            me: me.clone(),
        });
        Self { core }
    }

    /// Keeps this instance's shared generation known: read from the shared tier once it
    /// answers, and again after every change of `relearn` (a reconnection, after which events
    /// may have been missed), so that the entries this instance fills carry a version no older
    /// than the tag stamps written before (else every instance would take them for outdated).
    /// Retried with backoff while the tier does not answer; ends with the tier or the sender.
    pub(crate) fn keep_generation_known(&self, mut relearn: tokio::sync::watch::Receiver<u64>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let core = Arc::downgrade(&self.core);
        runtime.spawn(async move {
            loop {
                let mut pause = RETRY_FIRST;
                loop {
                    let Some(current) = core.upgrade() else {
                        return;
                    };
                    let read = current.backend.generation();
                    match current.guard(Place::Generation, read).await {
                        Ok(generation) => {
                            current.versions.saw_shared(generation);
                            current.generation_known.send_replace(true);
                            break;
                        }
                        Err(err) => tracing::debug!(error = %err, "shared generation not read yet"),
                    }
                    drop(current);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
                if relearn.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    pub(crate) fn source(&self) -> Source {
        self.core.backend.source()
    }

    /// Until every shard is connected and the shared generation was read, or `timeout`;
    /// connected, every breaker closes.
    pub(crate) async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let connected = self.core.backend.wait_connected(timeout).await;
        if !connected {
            return false;
        }
        self.core.breakers.all_connected();
        let mut known = self.core.generation_known.subscribe();
        tokio::time::timeout_at(deadline, known.wait_for(|known| *known))
            .await
            .is_ok_and(|known| known.is_ok())
    }

    pub(crate) fn circuit_open(&self) -> bool {
        self.core.breakers.any_open()
    }

    /// Invalidations waiting in the outbox.
    pub(crate) fn pending(&self) -> usize {
        self.core.outbox.len()
    }

    /// The entry under `key`, unless a pending invalidation of this instance covers it. A value
    /// that does not decode is deleted and reported as [`TierError::Decode`].
    /// With [`Reading::BrotliAccepted`] a compressed body may come back as it is stored
    /// ([`Codec::decode_for`]).
    pub(crate) async fn get(
        &self,
        key: &str,
        reading: Reading,
    ) -> Result<Option<CachedEntry>, TierError> {
        let core = &self.core;
        let Some(bytes) = core.guard(Place::Entry(key), core.backend.get(key)).await? else {
            return Ok(None);
        };
        // Redis expires keys lazily, Memcached in whole seconds, and clocks drift: the entry's
        // own lifetime counts too.
        match core.decode_live(bytes, reading).await {
            Ok(Some(entry)) if core.outbox.covers(key, &entry) => {
                tracing::debug!(
                    key,
                    "shared entry older than a pending invalidation: a miss"
                );
                Ok(None)
            }
            Ok(entry) => Ok(entry),
            Err(err) => {
                // A bad value would fail every read until it expires; if the delete fails too,
                // the next read retries it.
                let _ = self.remove(key).await;
                Err(TierError::Decode(err))
            }
        }
    }

    /// Stores `entry` for its remaining lifetime (nothing if none is left).
    pub(crate) async fn set(&self, key: &str, entry: &CachedEntry) -> Result<(), TierError> {
        let lifetime = entry.remaining_lifetime_at(SystemTime::now());
        if lifetime.is_zero() {
            return Ok(());
        }
        let core = &self.core;
        let bytes = core.encode(entry).await?;
        core.backend.check_size(key, bytes.len())?;
        core.guard(Place::Entry(key), core.backend.set(key, bytes, lifetime))
            .await
    }

    /// Deletes the entry under `key`, once: for entries found dead, not for invalidations.
    pub(crate) async fn remove(&self, key: &str) -> Result<(), TierError> {
        let core = &self.core;
        core.guard(Place::Entry(key), core.backend.delete(key))
            .await
    }

    /// A new generation from the shared tier's counter (learned here too).
    pub(crate) async fn next_generation(&self) -> Result<u64, TierError> {
        let core = &self.core;
        let generation = core
            .guard(Place::Generation, core.backend.next_generation())
            .await?;
        core.versions.saw_shared(generation);
        Ok(generation)
    }

    /// The invalidation stamps of `tags`, in order (0 for never invalidated): one multi-get per
    /// shard (on Redis Cluster one per hash slot), all together.
    pub(crate) async fn tag_stamps(&self, tags: &[&str]) -> Result<Vec<u64>, TierError> {
        let core = &self.core;
        let groups = core.by_shard(tags);
        let reads = groups.iter().map(|(shard, positions)| {
            let group: Vec<&str> = positions.iter().map(|&position| tags[position]).collect();
            async move {
                let read = core.backend.tag_stamps(&group);
                core.guard_shard(shard, read).await
            }
        });
        let mut stamps = vec![0; tags.len()];
        for ((_, positions), read) in groups
            .iter()
            .zip(futures_util::future::join_all(reads).await)
        {
            for (&position, stamp) in positions.iter().zip(read?) {
                stamps[position] = stamp;
            }
        }
        if let Some(&newest) = stamps.iter().max() {
            core.versions.saw_shared(newest);
        }
        Ok(stamps)
    }

    pub(crate) async fn try_lock(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, TierError> {
        let core = &self.core;
        core.guard(Place::Lock(key), core.backend.try_lock(key, token, ttl))
            .await
    }

    pub(crate) async fn unlock(&self, key: &str, token: &str) -> Result<(), TierError> {
        let core = &self.core;
        core.guard(Place::Lock(key), core.backend.unlock(key, token))
            .await
    }

    /// Brings `change` (this instance's invalidation number `order`) to the shared tier and
    /// tells the other instances; returns the entries removed. What does not get through now
    /// is kept and retried until it does; so is what a caller that goes away leaves half done.
    pub(crate) async fn invalidate(&self, change: Change, order: u64) -> Result<u64, NotApplied> {
        let work = Work { change, order };
        let held = self.core.hold(&work);
        match self.core.apply(&work).await {
            Ok(removed) => {
                held.done();
                Ok(removed)
            }
            Err(err @ TierError::Unsupported { .. }) => {
                held.done();
                Err(NotApplied::Refused(err))
            }
            Err(err) => Err(held.failed(err)),
        }
    }
}

impl Core {
    /// `entry` as stored bytes; a large body is compressed on the blocking pool.
    async fn encode(&self, entry: &CachedEntry) -> Result<Bytes, TierError> {
        if !self.codec.is_slow_to_encode(entry) {
            return Ok(Bytes::from(self.codec.encode(entry)?));
        }
        let (codec, entry) = (self.codec.clone(), entry.clone());
        match tokio::task::spawn_blocking(move || codec.encode(&entry)).await {
            Ok(encoded) => Ok(Bytes::from(encoded?)),
            Err(failed) => Err(TierError::Backend(format!(
                "entry encoder failed: {failed}"
            ))),
        }
    }

    /// The entry in stored bytes, if still alive; a large compressed body is decompressed on
    /// the blocking pool.
    async fn decode_live(
        &self,
        bytes: Bytes,
        reading: Reading,
    ) -> Result<Option<CachedEntry>, DecodeError> {
        if !Codec::is_slow_to_decode(&bytes, reading) {
            return self.codec.decode_live(&bytes, reading);
        }
        let codec = self.codec.clone();
        match tokio::task::spawn_blocking(move || codec.decode_live(&bytes, reading)).await {
            Ok(decoded) => decoded,
            Err(failed) => Err(DecodeError::Decompress(format!("decoder failed: {failed}"))),
        }
    }

    /// Runs `operation` on the shard of `place` through its breaker.
    async fn guard<T>(&self, place: Place<'_>, operation: Answer<'_, T>) -> Result<T, TierError> {
        self.guard_shard(&self.backend.shard(place), operation)
            .await
    }

    async fn guard_shard<T>(
        &self,
        shard: &Shard,
        operation: impl Future<Output = Result<T, TierError>>,
    ) -> Result<T, TierError> {
        let started = std::time::Instant::now();
        let result = self.breakers.of(shard).guard(operation).await;
        if !matches!(result, Err(TierError::CircuitOpen)) {
            crate::metrics::l2_duration(started.elapsed());
        }
        result
    }

    /// The positions of `tags`, grouped by the shard of their stamps.
    fn by_shard(&self, tags: &[&str]) -> Vec<(Shard, Vec<usize>)> {
        let mut groups: Vec<(Shard, Vec<usize>)> = Vec::new();
        for (position, tag) in tags.iter().enumerate() {
            let shard = self.backend.shard(Place::Tag(tag));
            match groups.iter_mut().find(|(known, _)| *known == shard) {
                Some((_, positions)) => positions.push(position),
                None => groups.push((shard, vec![position])),
            }
        }
        groups
    }

    /// `work` in the shared tier, then its event; how many entries it removed. Tags are
    /// stamped with a new generation, which the event carries.
    async fn apply(&self, work: &Work) -> Result<u64, TierError> {
        let mut generation = 0;
        let removed = match &work.change {
            Change::Key { key, delete: true } => {
                self.guard(Place::Entry(key), self.backend.delete(key))
                    .await?;
                1
            }
            Change::Key { delete: false, .. } => 0,
            Change::Prefix(prefix) => self.delete_prefix(prefix).await?,
            Change::Flush => self.delete_prefix("").await?,
            Change::Tags(tags) => {
                generation = self
                    .guard(Place::Generation, self.backend.next_generation())
                    .await?;
                self.versions.saw_shared(generation);
                self.stamp_tags(tags, generation).await?;
                for tag in tags {
                    self.stamps.record(tag, generation);
                }
                0
            }
        };
        let event = work.event(generation);
        self.guard(Place::Events, self.backend.publish(&event))
            .await?;
        Ok(removed)
    }

    /// On every shard, together.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, TierError> {
        let shards = self.backend.shards();
        let deletes = shards.iter().map(|shard| {
            let delete = self.backend.delete_prefix(shard, prefix);
            self.guard_shard(shard, delete)
        });
        futures_util::future::join_all(deletes)
            .await
            .into_iter()
            .sum()
    }

    /// One batched write per shard, together.
    async fn stamp_tags(&self, tags: &[String], generation: u64) -> Result<(), TierError> {
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        let groups = self.by_shard(&tags);
        let writes = groups.iter().map(|(shard, positions)| {
            let group: Vec<&str> = positions.iter().map(|&position| tags[position]).collect();
            async move {
                let write = self.backend.stamp_tags(&group, generation, self.stamp_ttl);
                self.guard_shard(shard, write).await
            }
        });
        futures_util::future::join_all(writes)
            .await
            .into_iter()
            .collect()
    }

    /// Keeps `work` in the outbox while it is tried, so that it stays pending if the attempt
    /// fails or is dropped half way.
    fn hold<'a>(&'a self, work: &'a Work) -> Held<'a> {
        let kept = self.outbox.keep(work.clone());
        Held {
            core: self,
            work,
            kept,
            settled: false,
        }
    }

    /// Starts the retry task unless it runs.
    fn retry_pending(&self) {
        if !self.outbox.start_retrying() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(retry(self.me.clone()))),
            // Invalidations run inside the runtime; a drop outside it leaves the work for the
            // next one, which starts the task.
            Err(_) => self.outbox.stop_retrying(),
        }
    }
}

/// An invalidation being tried, kept in the outbox meanwhile; dropped unsettled (its caller
/// went away), it is left to the retry task.
struct Held<'a> {
    core: &'a Core,
    work: &'a Work,
    kept: Kept,
    settled: bool,
}

impl Held<'_> {
    /// It got through (or can never): no longer pending.
    fn done(mut self) {
        self.settled = true;
        self.core.outbox.done(self.work);
    }

    /// It did not get through: pending, retried in the background.
    fn failed(mut self, err: TierError) -> NotApplied {
        self.settled = true;
        let what = self.work.describe();
        if self.kept == Kept::Dropped {
            tracing::error!(
                invalidation = %what,
                error = %err,
                "l2.outbox_capacity reached: this invalidation was tried once and is not retried; the shared tier may serve what it names until it expires"
            );
            return NotApplied::Refused(err);
        }
        tracing::warn!(
            invalidation = %what,
            error = %err,
            "invalidation pending: the shared tier did not take it; retrying in the background, and this instance ignores the shared entries it covers meanwhile"
        );
        self.core.retry_pending();
        NotApplied::Pending(err)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if !self.settled && self.kept != Kept::Dropped {
            self.core.retry_pending();
        }
    }
}

/// The outbox's retry task: applies everything pending, again and again with backoff (cut short
/// when a shard answers again), until the outbox is empty or the tier is dropped.
async fn retry(core: Weak<Core>) {
    let mut pause = RETRY_FIRST;
    loop {
        let Some(current) = core.upgrade() else {
            return;
        };
        let Some(work) = current.outbox.work() else {
            return;
        };
        let mut failed = false;
        for item in work {
            match current.apply(&item).await {
                Ok(_) => {
                    current.outbox.done(&item);
                    tracing::info!(invalidation = %item.describe(), "pending invalidation applied");
                }
                Err(err) => {
                    failed = true;
                    tracing::debug!(invalidation = %item.describe(), error = %err, "pending invalidation not applied yet");
                }
            }
        }
        if !failed {
            pause = RETRY_FIRST;
            continue;
        }
        let breakers = Arc::clone(&current.breakers);
        drop(current);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = breakers.recovered() => {}
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::store::events::Invalidation;

    /// A backend in memory that fails every operation while `down`, fails deletes while
    /// `refuse_deletes`, holds them until `stalled` turns false, and counts the calls that
    /// reached it.
    #[derive(Default)]
    struct Fake {
        down: AtomicBool,
        refuse_deletes: AtomicBool,
        stalled: Option<tokio::sync::watch::Receiver<bool>>,
        calls: AtomicUsize,
        values: Mutex<HashMap<String, Bytes>>,
        published: Mutex<Vec<Invalidation>>,
    }

    impl Fake {
        fn answer<T: Send + 'static>(&self, value: impl FnOnce() -> T) -> Answer<'_, T> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let result = if self.down.load(Ordering::SeqCst) {
                Err(TierError::Unavailable("down".to_owned()))
            } else {
                Ok(value())
            };
            Box::pin(std::future::ready(result))
        }
    }

    impl Backend for Arc<Fake> {
        fn source(&self) -> Source {
            Source::Redis
        }
        fn check_size(&self, key: &str, len: usize) -> Result<(), TierError> {
            let size = (key.len() + len) as u64;
            if size > 1000 {
                return Err(TierError::TooLarge { size, limit: 1000 });
            }
            Ok(())
        }
        fn wait_connected(
            &self,
            _timeout: Duration,
        ) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
            Box::pin(std::future::ready(true))
        }
        fn get<'a>(&'a self, key: &'a str) -> Answer<'a, Option<Bytes>> {
            self.answer(|| self.values.lock().unwrap().get(key).cloned())
        }
        fn set<'a>(&'a self, key: &'a str, value: Bytes, _ttl: Duration) -> Answer<'a, ()> {
            self.answer(|| {
                self.values.lock().unwrap().insert(key.to_owned(), value);
            })
        }
        fn delete<'a>(&'a self, key: &'a str) -> Answer<'a, ()> {
            if self.refuse_deletes.load(Ordering::SeqCst) {
                return Box::pin(std::future::ready(Err(TierError::Timeout)));
            }
            if let Some(stalled) = &self.stalled {
                let mut stalled = stalled.clone();
                return Box::pin(async move {
                    let _ = stalled.wait_for(|stalled| !*stalled).await;
                    self.values.lock().unwrap().remove(key);
                    Ok(())
                });
            }
            self.answer(|| {
                self.values.lock().unwrap().remove(key);
            })
        }
        fn delete_prefix<'a>(&'a self, _shard: &'a Shard, prefix: &'a str) -> Answer<'a, u64> {
            self.answer(|| {
                let mut values = self.values.lock().unwrap();
                let before = values.len();
                values.retain(|key, _| !key.starts_with(prefix));
                (before - values.len()) as u64
            })
        }
        fn tag_stamps<'a>(&'a self, tags: &'a [&'a str]) -> Answer<'a, Vec<u64>> {
            self.answer(|| vec![0; tags.len()])
        }
        fn stamp_tags<'a>(&'a self, _: &'a [&'a str], _: u64, _: Duration) -> Answer<'a, ()> {
            self.answer(|| ())
        }
        fn next_generation(&self) -> Answer<'_, u64> {
            self.answer(|| 1)
        }
        fn generation(&self) -> Answer<'_, u64> {
            self.answer(|| 0)
        }
        fn try_lock<'a>(&'a self, _: &'a str, _: &'a str, _: Duration) -> Answer<'a, bool> {
            self.answer(|| true)
        }
        fn unlock<'a>(&'a self, _: &'a str, _: &'a str) -> Answer<'a, ()> {
            self.answer(|| ())
        }
        fn publish<'a>(&'a self, event: &'a Invalidation) -> Answer<'a, ()> {
            self.answer(|| self.published.lock().unwrap().push(event.clone()))
        }
    }

    /// A shared tier over `fake`, past its start-up grace, opening after `threshold` failures for
    /// an hour.
    fn tier(fake: &Arc<Fake>, threshold: u32) -> SharedTier {
        let config = CacheConfig::default();
        let breakers = Arc::new(Breakers::new(
            threshold,
            Duration::from_secs(3600),
            Duration::ZERO,
        ));
        SharedTier::over(
            Box::new(Arc::clone(fake)),
            breakers,
            Codec::new(&config),
            &config,
            (
                Arc::new(Versions::new(Duration::from_secs(60), false)),
                Arc::new(TagStamps::new(Duration::from_secs(60))),
            ),
        )
    }

    fn entry(body: &'static str) -> CachedEntry {
        CachedEntry::new(body, Duration::from_secs(60))
    }

    #[tokio::test]
    async fn a_too_large_entry_is_refused_before_the_tier_is_asked() {
        let fake = Arc::new(Fake::default());
        let shared = tier(&fake, 1);
        let large = entry("x").with_headers({
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "x-big",
                http::HeaderValue::from_str(&"y".repeat(2000)).unwrap(),
            );
            headers
        });
        let refused = shared.set("k", &large).await;
        assert!(
            matches!(refused, Err(TierError::TooLarge { .. })),
            "{refused:?}"
        );
        assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
        assert!(!shared.circuit_open());
    }

    #[tokio::test]
    async fn an_invalidation_that_fails_is_kept_and_retried_until_it_succeeds() {
        let fake = Arc::new(Fake::default());
        let shared = tier(&fake, 1);
        shared.set("k", &entry("old")).await.unwrap();

        fake.down.store(true, Ordering::SeqCst);
        let pending = shared
            .invalidate(
                Change::Key {
                    key: "k".to_owned(),
                    delete: true,
                },
                1,
            )
            .await;
        assert!(
            matches!(pending, Err(NotApplied::Pending(_))),
            "{pending:?}"
        );
        assert_eq!(shared.pending(), 1);

        fake.down.store(false, Ordering::SeqCst);
        // The value is still in the backend, hidden by the pending invalidation.
        assert!(fake.values.lock().unwrap().contains_key("k"));
        // The breaker opened on the failure; a new connection closes it and wakes the retry.
        shared.core.breakers.connected(&Shard::default());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while shared.pending() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "retried");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!fake.values.lock().unwrap().contains_key("k"), "deleted");
        assert_eq!(
            *fake.published.lock().unwrap(),
            [Invalidation::Key("k".to_owned())]
        );
    }

    #[tokio::test]
    async fn an_invalidation_whose_caller_goes_away_stays_pending_and_is_retried() {
        let (stall, stalled) = tokio::sync::watch::channel(true);
        let fake = Arc::new(Fake {
            stalled: Some(stalled),
            ..Fake::default()
        });
        let shared = tier(&fake, 100);
        shared.set("k", &entry("old")).await.unwrap();
        let change = Change::Key {
            key: "k".to_owned(),
            delete: true,
        };
        let invalidation = shared.invalidate(change, 1);
        let gone = tokio::time::timeout(Duration::from_millis(10), invalidation).await;
        assert!(gone.is_err(), "the caller went away mid-way");
        assert_eq!(shared.pending(), 1, "kept, not lost");

        stall.send_replace(false);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while shared.pending() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "retried");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!fake.values.lock().unwrap().contains_key("k"));
        assert_eq!(
            *fake.published.lock().unwrap(),
            [Invalidation::Key("k".to_owned())]
        );
    }

    #[tokio::test]
    async fn a_pending_invalidation_hides_the_shared_entries_it_names() {
        let fake = Arc::new(Fake::default());
        let shared = tier(&fake, 100);
        shared.set("k", &entry("old")).await.unwrap();
        fake.refuse_deletes.store(true, Ordering::SeqCst);
        let pending = shared
            .invalidate(
                Change::Key {
                    key: "k".to_owned(),
                    delete: true,
                },
                1,
            )
            .await;
        assert!(
            matches!(pending, Err(NotApplied::Pending(_))),
            "{pending:?}"
        );
        assert!(fake.values.lock().unwrap().contains_key("k"));
        assert_eq!(
            shared.get("k", Reading::Decoded).await.unwrap(),
            None,
            "treated as gone"
        );
        shared.set("k", &entry("new")).await.unwrap();
        assert_eq!(
            shared.get("k", Reading::Decoded).await.unwrap(),
            None,
            "the pending delete will remove a later write too: hidden until it is applied"
        );
    }
}
