//! L2: Redis through a fred connection pool.
//!
//! Every command carries `l2.timeout` and fails fast while disconnected, so a dead or stalled
//! Redis costs at most one timeout per operation. The pool reconnects in the background with
//! exponential backoff, including when Redis refused the first connection.
//!
//! Layout: `{prefix}:e:{key}` holds the encoded entry, with `PX` set to the entry's remaining
//! lifetime (fresh plus stale window); `{prefix}:tag:{tag}` holds the tag's last invalidation
//! time; invalidations are published on `{prefix}:inv` and a subscriber connection receives the
//! other instances' (each (re)connection is reported, since events may have been missed).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fred::clients::{Pool, SubscriberClient};
use fred::error::{Error as RedisError, ErrorKind};
use fred::interfaces::LuaInterface;
use fred::interfaces::{ClientLike, EventInterface, KeysInterface, PubsubInterface};
use fred::types::config::{Config, Options, ReconnectPolicy, ServerConfig};
use fred::types::scan::Scanner;
use fred::types::{Expiration, SetOptions};
use fred::util::redis_keyslot;
use futures_util::StreamExt;

use super::breaker::Breaker;
use super::codec::Codec;
use super::events::{EventSink, Invalidation};
use super::tier::{Tier, TierError};
use super::CachedEntry;
use crate::config::{CacheConfig, ConfigError, L2Config};
use crate::Error;

/// Keys asked for per SCAN page, and so deleted per UNLINK, in prefix invalidation.
const SCAN_PAGE: u32 = 1000;
/// Most keys in one multi-key command (MGET, stamp script, UNLINK): Redis serves nobody else
/// while it runs one.
const SLOT_BATCH: usize = 1024;
/// Writes the stamp `ARGV[1]` under every key of `KEYS`, expiring in `ARGV[2]` ms.
const STAMP_SCRIPT: &str =
    "for _, key in ipairs(KEYS) do redis.call('SET', key, ARGV[1], 'PX', ARGV[2]) end return 0";
/// Redis rejects expiries that overflow its clock; a century is far enough.
const MAX_PX_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// `ttl` in whole milliseconds, at most [`MAX_PX_MS`].
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis())
        .unwrap_or(u64::MAX)
        .min(MAX_PX_MS)
}

/// The `PX` expiry for `ttl`: at least a millisecond, at most [`MAX_PX_MS`].
fn px(ttl: Duration) -> Expiration {
    // `millis` is at most a century, well inside i64.
    Expiration::PX(i64::try_from(millis(ttl).max(1)).unwrap_or(i64::MAX))
}
const RECONNECT_MIN_DELAY_MS: u32 = 50;
/// Short, so that Redis coming back is noticed within about half a second.
const RECONNECT_MAX_DELAY_MS: u32 = 500;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct RedisTier {
    pool: Pool,
    /// Redis Cluster: multi-key commands are split by hash slot (see [`slot_batches`]).
    clustered: bool,
    breaker: Arc<Breaker>,
    subscriber: SubscriberClient,
    /// Becomes true once the subscriber listens on the invalidation channel.
    subscribed: tokio::sync::watch::Receiver<bool>,
    channel: String,
    /// Identifies this instance's own events on the channel.
    instance: String,
    prefix: String,
    codec: Codec,
    options: Options,
}

impl RedisTier {
    /// Builds the pool and the subscriber and starts connecting in the background; never waits
    /// for Redis.
    pub(crate) fn connect(
        config: &CacheConfig,
        codec: Codec,
        events: EventSink,
    ) -> Result<Self, Error> {
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let redis_config = redis_config(&config.l2)?;
        let clustered = redis_config.server.is_clustered();
        let timeout = config.l2.timeout;
        let builder = builder(redis_config, timeout);
        let pool = builder
            .build_pool(config.l2.pool_size)
            .map_err(client_error)?;
        let subscriber = builder.build_subscriber_client().map_err(client_error)?;
        let channel = format!("{}:inv", config.l2.prefix);
        let instance = super::random_id();
        let subscribed = listen(&subscriber, &channel, &instance, events);
        let breaker = Arc::new(Breaker::new(
            config.l2.breaker_threshold,
            config.l2.breaker_cooldown,
        ));
        for client in pool.clients() {
            // A new connection is Redis answering again: no need to wait for a probe.
            let breaker = Arc::clone(&breaker);
            drop(client.on_reconnect(move |_server| {
                breaker.succeeded();
                async { Ok(()) }
            }));
        }
        // The connection tasks run until `quit`; failures are retried by the policy.
        drop(pool.connect());
        drop(subscriber.connect());
        Ok(Self {
            pool,
            subscriber,
            subscribed,
            channel,
            instance,
            clustered,
            breaker,
            prefix: config.l2.prefix.clone(),
            codec,
            options: Options {
                timeout: Some(timeout),
                fail_fast: true,
                max_attempts: Some(1),
                ..Options::default()
            },
        })
    }

    /// Waits until every pooled connection is up and the subscriber listens, or `timeout`
    /// passes.
    pub(crate) async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut subscribed = self.subscribed.clone();
        let connected = async {
            while !self.pool.clients().iter().all(ClientLike::is_connected) {
                // Resolves with the outcome of the next connection attempt.
                let _ = self.pool.wait_for_connect().await;
            }
            let _ = subscribed.wait_for(|listening| *listening).await;
        };
        let connected = tokio::time::timeout(timeout, connected).await.is_ok();
        if connected {
            // Connected now: whatever opened the circuit is over.
            self.breaker.succeeded();
        }
        connected
    }

    /// Tells the other instances about an invalidation.
    pub(crate) async fn publish(&self, event: &Invalidation) -> Result<(), TierError> {
        self.breaker
            .guard(async {
                self.pool
                    .next()
                    .with_options(&self.options)
                    .publish::<(), _, _>(self.channel.as_str(), event.encode(&self.instance))
                    .await
                    .map_err(tier_error)
            })
            .await
    }

    /// The invalidation stamps of `tags` (0 for tags never invalidated), in order: one MGET on
    /// one Redis; on a cluster, where a multi-key command must stay within a hash slot, one MGET
    /// per slot, sent together. One breaker-guarded operation either way.
    pub(crate) async fn tag_stamps(&self, tags: &[&str]) -> Result<Vec<u64>, TierError> {
        let keys: Vec<String> = tags.iter().map(|tag| self.tag_key(tag)).collect();
        let batches = slot_batches(&keys, self.clustered);
        self.breaker
            .guard(async {
                let reader = self.pool.with_options(&self.options);
                let reads = batches
                    .iter()
                    .map(|batch| reader.mget::<Vec<Option<u64>>, _>(batch.keys.clone()));
                let reads = futures_util::future::join_all(reads).await;
                let mut stamps = vec![0; keys.len()];
                for (batch, read) in batches.iter().zip(reads) {
                    for (&position, stamp) in batch.positions.iter().zip(read.map_err(tier_error)?)
                    {
                        stamps[position] = stamp.unwrap_or_default();
                    }
                }
                Ok(stamps)
            })
            .await
    }

    /// Takes the lock of `key` for `ttl` with `token` (SET NX PX); false if someone holds it.
    pub(crate) async fn try_lock(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, TierError> {
        self.breaker
            .guard(async {
                let taken: Option<String> = self
                    .pool
                    .with_options(&self.options)
                    .set(
                        self.lock_key(key),
                        token,
                        Some(px(ttl)),
                        Some(SetOptions::NX),
                        false,
                    )
                    .await
                    .map_err(tier_error)?;
                Ok(taken.is_some())
            })
            .await
    }

    /// Releases the lock of `key` if `token` still holds it (it may have expired and been taken).
    pub(crate) async fn unlock(&self, key: &str, token: &str) -> Result<(), TierError> {
        const RELEASE: &str =
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
        self.breaker
            .guard(async {
                self.pool
                    .with_options(&self.options)
                    .eval::<i64, _, _, _>(RELEASE, self.lock_key(key), token)
                    .await
                    .map(drop)
                    .map_err(tier_error)
            })
            .await
    }

    pub(crate) fn source(&self) -> super::Source {
        super::Source::Redis
    }

    pub(crate) fn circuit_open(&self) -> bool {
        self.breaker.is_open()
    }

    fn lock_key(&self, key: &str) -> String {
        format!("{}:lock:{key}", self.prefix)
    }

    /// Records `stamp` as the invalidation time of each tag, kept for `ttl`: one script per
    /// batch of [`slot_batches`] (so one command for a few tags on one Redis), sent together as
    /// one breaker-guarded operation.
    pub(crate) async fn stamp_tags(
        &self,
        tags: &[String],
        stamp: u64,
        ttl: Duration,
    ) -> Result<(), TierError> {
        let keys: Vec<String> = tags.iter().map(|tag| self.tag_key(tag)).collect();
        let batches = slot_batches(&keys, self.clustered);
        let args = vec![stamp.to_string(), millis(ttl).max(1).to_string()];
        self.breaker
            .guard(async {
                let writer = self.pool.with_options(&self.options);
                let writes = batches.into_iter().map(|batch| {
                    writer.eval::<(), _, _, _>(STAMP_SCRIPT, batch.keys, args.clone())
                });
                for result in futures_util::future::join_all(writes).await {
                    result.map_err(tier_error)?;
                }
                Ok(())
            })
            .await
    }

    fn tag_key(&self, tag: &str) -> String {
        format!("{}:tag:{tag}", self.prefix)
    }

    fn entry_key(&self, key: &str) -> String {
        format!("{}:e:{key}", self.prefix)
    }
}

impl Tier for RedisTier {
    async fn get(&self, key: &str) -> Result<Option<CachedEntry>, TierError> {
        self.breaker.guard(self.read(key)).await
    }

    async fn set(&self, key: &str, entry: &CachedEntry) -> Result<(), TierError> {
        let lifetime = entry.remaining_lifetime_at(SystemTime::now());
        if millis(lifetime) == 0 {
            return Ok(());
        }
        let bytes = Bytes::from(self.codec.encode(entry)?);
        self.breaker
            .guard(async {
                self.pool
                    .with_options(&self.options)
                    .set::<(), _, _>(self.entry_key(key), bytes, Some(px(lifetime)), None, false)
                    .await
                    .map_err(tier_error)
            })
            .await
    }

    async fn remove(&self, key: &str) -> Result<(), TierError> {
        self.breaker
            .guard(self.delete(vec![self.entry_key(key)]))
            .await
            .map(drop)
    }

    /// SCAN (never KEYS) page by page, on every primary of a cluster, deleting each page.
    async fn remove_prefix(&self, prefix: &str) -> Result<u64, TierError> {
        let pattern = format!("{}*", glob_escape(&self.entry_key(prefix)));
        self.breaker
            .guard(async {
                let client = self.pool.next();
                let mut pages = if self.clustered {
                    client.scan_cluster(pattern, Some(SCAN_PAGE), None).boxed()
                } else {
                    client.scan(pattern, Some(SCAN_PAGE), None).boxed()
                };
                let mut removed = 0;
                while let Some(page) = pages.next().await {
                    let mut page = page.map_err(tier_error)?;
                    let keys: Vec<String> = page
                        .take_results()
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|key| key.into_string())
                        .collect();
                    removed += self.delete(keys).await?;
                    page.next();
                }
                Ok(removed)
            })
            .await
    }
}

impl RedisTier {
    async fn read(&self, key: &str) -> Result<Option<CachedEntry>, TierError> {
        let redis_key = self.entry_key(key);
        let value: Option<Bytes> = self
            .pool
            .with_options(&self.options)
            .get(redis_key.as_str())
            .await
            .map_err(tier_error)?;
        let Some(bytes) = value else { return Ok(None) };
        // Redis expires keys lazily and clocks drift: the entry's own lifetime counts too.
        match self.codec.decode_live(&bytes) {
            Ok(entry) => Ok(entry),
            Err(err) => {
                // A bad value would fail every read until it expires; if the delete fails too,
                // the next read retries it.
                let _ = self.delete(vec![redis_key]).await;
                Err(TierError::Decode(err))
            }
        }
    }

    /// UNLINK: one command per batch of [`slot_batches`] (one for a page of keys on one Redis,
    /// one per hash slot on a cluster), sent together.
    async fn delete(&self, keys: Vec<String>) -> Result<u64, TierError> {
        let client = self.pool.with_options(&self.options);
        let unlinks = slot_batches(&keys, self.clustered)
            .into_iter()
            .map(|batch| client.unlink::<u64, _>(batch.keys));
        futures_util::future::join_all(unlinks)
            .await
            .into_iter()
            .map(|removed| removed.map_err(tier_error))
            .sum()
    }
}

/// The fred configuration for `[l2]`: one Redis (`url`) or a cluster (`cluster` nodes).
fn redis_config(l2: &L2Config) -> Result<Config, ConfigError> {
    let parse = |key: String, url: &str| {
        Config::from_url(url).map_err(|err| {
            ConfigError::invalid(key, format!("invalid Redis URL: {}", err.details()))
        })
    };
    if let Some(url) = &l2.url {
        return parse("l2.url".to_owned(), url);
    }
    let mut nodes = Vec::with_capacity(l2.cluster.len());
    let mut first = None;
    for (index, url) in l2.cluster.iter().enumerate() {
        let node = parse(format!("l2.cluster[{index}]"), url)?;
        nodes.extend(node.server.hosts());
        first.get_or_insert(node);
    }
    let mut config = first.ok_or_else(|| ConfigError::invalid("l2.url", "no Redis configured"))?;
    config.server = ServerConfig::Clustered {
        hosts: nodes,
        policy: Default::default(),
    };
    Ok(config)
}

/// A fred builder with the cache's connection rules: every command bounded by `timeout` and
/// tried once, background reconnection with exponential backoff (also after a refused start).
pub(crate) fn builder(mut config: Config, timeout: Duration) -> fred::types::Builder {
    // Retry the first connection too (fred gives up after one attempt otherwise); commands
    // still fail fast while disconnected, through their own options.
    config.fail_fast = false;
    let mut builder = fred::types::Builder::from_config(config);
    builder
        .with_performance_config(|performance| performance.default_command_timeout = timeout)
        .with_connection_config(|connection| {
            connection.connection_timeout = CONNECT_TIMEOUT;
            connection.internal_command_timeout = timeout.max(Duration::from_millis(500));
            connection.max_command_attempts = 1;
        })
        .set_policy(ReconnectPolicy::new_exponential(
            0,
            RECONNECT_MIN_DELAY_MS,
            RECONNECT_MAX_DELAY_MS,
            2,
        ));
    builder
}

/// A client that cannot be built: reported as a problem of `l2.url`.
pub(crate) fn client_error(err: RedisError) -> ConfigError {
    ConfigError::invalid(
        "l2.url",
        format!("cannot build a Redis client: {}", err.details()),
    )
}

impl Drop for RedisTier {
    fn drop(&mut self) {
        // Stop the reconnecting connection tasks; without a runtime they end with the runtime.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pool = self.pool.clone();
            let subscriber = self.subscriber.clone();
            runtime.spawn(async move {
                let _ = pool.quit().await;
                let _ = subscriber.quit().await;
            });
        }
    }
}

/// Subscribes on every (re)connection and forwards other instances' events to `events`.
fn listen(
    subscriber: &SubscriberClient,
    channel: &str,
    instance: &str,
    events: EventSink,
) -> tokio::sync::watch::Receiver<bool> {
    let (subscribed, receiver) = tokio::sync::watch::channel(false);
    let disconnected = subscribed.clone();
    drop(subscriber.on_error(move |_| {
        // A connection error ends the subscription until the next reconnection.
        disconnected.send_replace(false);
        async { Ok(()) }
    }));
    let reconnect_events = events.clone();
    let resubscriber = subscriber.clone();
    let subscription = channel.to_owned();
    drop(subscriber.on_reconnect(move |_server| {
        let (subscriber, channel, events) = (
            resubscriber.clone(),
            subscription.clone(),
            reconnect_events.clone(),
        );
        let subscribed = subscribed.clone();
        async move {
            events(Invalidation::Resubscribed);
            match subscriber.subscribe(channel).await {
                Ok(()) => {
                    subscribed.send_replace(true);
                }
                Err(err) => tracing::warn!(error = %err, "cannot subscribe to invalidation events"),
            }
            Ok(())
        }
    }));
    let own = instance.to_owned();
    drop(subscriber.on_message(move |message| {
        let text = message.value.as_str().map(|text| text.into_owned());
        match text.as_deref().and_then(Invalidation::decode) {
            Some((sender, event)) if sender != own => events(event),
            Some(_) => {}
            None => tracing::debug!("ignoring a malformed invalidation event"),
        }
        async { Ok(()) }
    }));
    receiver
}

fn tier_error(err: RedisError) -> TierError {
    match err.kind() {
        ErrorKind::Timeout => TierError::Timeout,
        ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Backpressure => {
            TierError::Unavailable(err.details().to_owned())
        }
        _ => TierError::Backend(err.to_string()),
    }
}

/// Keys for one multi-key command, with their positions in the list they were taken from.
#[derive(Debug)]
struct Batch<'a> {
    positions: Vec<usize>,
    keys: Vec<&'a str>,
}

/// `keys` in batches that one multi-key command can take: at most [`SLOT_BATCH`] keys, and on a
/// cluster (which refuses a command whose keys hash to different slots) keys of one slot.
fn slot_batches(keys: &[String], clustered: bool) -> Vec<Batch<'_>> {
    let mut slots: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (position, key) in keys.iter().enumerate() {
        let slot = if clustered {
            redis_keyslot(key.as_bytes())
        } else {
            0
        };
        slots.entry(slot).or_default().push(position);
    }
    let batch = |positions: &[usize]| Batch {
        positions: positions.to_vec(),
        keys: positions
            .iter()
            .map(|&position| keys[position].as_str())
            .collect(),
    };
    slots
        .values()
        .flat_map(|positions| positions.chunks(SLOT_BATCH).map(batch))
        .collect()
}

/// Escapes Redis glob metacharacters so a prefix matches literally.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for ch in text.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(ch);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_batched_by_slot_only_on_a_cluster() {
        let keys: Vec<String> = ["{a}1", "b", "{a}2", "c"]
            .iter()
            .map(|key| (*key).to_owned())
            .collect();
        let positions = |batches: Vec<Batch<'_>>| -> Vec<Vec<usize>> {
            batches.into_iter().map(|batch| batch.positions).collect()
        };
        assert_eq!(positions(slot_batches(&keys, false)), [vec![0, 1, 2, 3]]);
        let clustered = slot_batches(&keys, true);
        assert_eq!(
            clustered.len(),
            3,
            "{{a}}1 and {{a}}2 share a slot: {clustered:?}"
        );
        let shared = clustered.iter().find(|batch| batch.positions == [0, 2]);
        assert_eq!(
            shared.map(|batch| batch.keys.clone()),
            Some(vec!["{a}1", "{a}2"])
        );
        let many: Vec<String> = (0..SLOT_BATCH + 1).map(|i| i.to_string()).collect();
        let sizes: Vec<usize> = positions(slot_batches(&many, false))
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, [SLOT_BATCH, 1]);
    }

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(glob_escape("ttc:e:a*b?[c]\\"), "ttc:e:a\\*b\\?\\[c\\]\\\\");
    }
}
