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

use std::pin::pin;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fred::clients::{Pool, SubscriberClient};
use fred::error::{Error as RedisError, ErrorKind};
use fred::interfaces::{ClientLike, EventInterface, KeysInterface, PubsubInterface};
use fred::types::config::{Config, Options, ReconnectPolicy};
use fred::types::scan::Scanner;
use fred::types::Expiration;
use futures_util::StreamExt;

use super::codec::Codec;
use super::events::{BackplaneEvent, EventSink, Invalidation};
use super::tier::{Tier, TierError};
use super::CachedEntry;
use crate::config::{CacheConfig, ConfigError};
use crate::Error;

/// Keys asked for per SCAN page, and so deleted per UNLINK, in prefix invalidation.
const SCAN_PAGE: u32 = 1000;
/// Redis rejects expiries that overflow its clock; a century is far enough.
const MAX_PX_MS: u64 = 100 * 365 * 24 * 3600 * 1000;
const RECONNECT_MIN_DELAY_MS: u32 = 50;
const RECONNECT_MAX_DELAY_MS: u32 = 2_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct RedisTier {
    pool: Pool,
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
        url: &str,
        codec: Codec,
        events: EventSink,
    ) -> Result<Self, Error> {
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let redis_config = Config::from_url(url).map_err(|err| {
            ConfigError::invalid("l2.url", format!("invalid Redis URL: {}", err.details()))
        })?;
        let timeout = config.l2.timeout;
        let builder = builder(redis_config, timeout);
        let pool = builder
            .build_pool(config.l2.pool_size)
            .map_err(client_error)?;
        let subscriber = builder.build_subscriber_client().map_err(client_error)?;
        let channel = format!("{}:inv", config.l2.prefix);
        let instance = super::random_id();
        let subscribed = listen(&subscriber, &channel, &instance, events);
        // The connection tasks run until `quit`; failures are retried by the policy.
        drop(pool.connect());
        drop(subscriber.connect());
        Ok(Self {
            pool,
            subscriber,
            subscribed,
            channel,
            instance,
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
        tokio::time::timeout(timeout, connected).await.is_ok()
    }

    /// Tells the other instances about an invalidation.
    pub(crate) async fn publish(&self, event: &Invalidation) -> Result<(), TierError> {
        self.pool
            .next()
            .with_options(&self.options)
            .publish::<(), _, _>(self.channel.as_str(), event.encode(&self.instance))
            .await
            .map_err(tier_error)
    }

    /// The invalidation stamps of `tags` (0 for tags never invalidated), in order.
    pub(crate) async fn tag_stamps(&self, tags: &[&str]) -> Result<Vec<u64>, TierError> {
        let keys: Vec<String> = tags.iter().map(|tag| self.tag_key(tag)).collect();
        let values: Vec<Option<u64>> = self
            .pool
            .with_options(&self.options)
            .mget(keys)
            .await
            .map_err(tier_error)?;
        Ok(values.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Records `stamp` as the invalidation time of each tag, kept for `ttl`.
    pub(crate) async fn stamp_tags(
        &self,
        tags: &[String],
        stamp: u64,
        ttl: Duration,
    ) -> Result<(), TierError> {
        let px_ms = i64::try_from(ttl.as_millis())
            .unwrap_or(i64::MAX)
            .clamp(1, MAX_PX_MS as i64);
        let writer = self.pool.with_options(&self.options);
        let writes = tags.iter().map(|tag| {
            writer.set::<(), _, _>(
                self.tag_key(tag),
                stamp,
                Some(Expiration::PX(px_ms)),
                None,
                false,
            )
        });
        for result in futures_util::future::join_all(writes).await {
            result.map_err(tier_error)?;
        }
        Ok(())
    }

    fn tag_key(&self, tag: &str) -> String {
        format!("{}:tag:{tag}", self.prefix)
    }

    fn entry_key(&self, key: &str) -> String {
        format!("{}:e:{key}", self.prefix)
    }

    async fn delete(&self, redis_key: String) -> Result<u64, TierError> {
        self.pool
            .with_options(&self.options)
            .unlink(redis_key)
            .await
            .map_err(tier_error)
    }
}

impl Tier for RedisTier {
    async fn get(&self, key: &str) -> Result<Option<CachedEntry>, TierError> {
        let redis_key = self.entry_key(key);
        let value: Option<Bytes> = self
            .pool
            .with_options(&self.options)
            .get(redis_key.as_str())
            .await
            .map_err(tier_error)?;
        let Some(bytes) = value else { return Ok(None) };
        match self.codec.decode(&bytes) {
            // Redis expires keys lazily and clocks drift: check the entry's own lifetime too.
            Ok(entry) => Ok(Some(entry)
                .filter(|entry| !entry.remaining_lifetime_at(SystemTime::now()).is_zero())),
            Err(err) => {
                // A bad value would fail every read until it expires; if the delete fails too,
                // the next read retries it.
                let _ = self.delete(redis_key).await;
                Err(TierError::Decode(err))
            }
        }
    }

    async fn set(&self, key: &str, entry: &CachedEntry) -> Result<(), TierError> {
        let lifetime = entry.remaining_lifetime_at(SystemTime::now());
        let px_ms = u64::try_from(lifetime.as_millis())
            .unwrap_or(u64::MAX)
            .min(MAX_PX_MS);
        if px_ms == 0 {
            return Ok(());
        }
        let bytes = Bytes::from(self.codec.encode(entry)?);
        self.pool
            .with_options(&self.options)
            .set::<(), _, _>(
                self.entry_key(key),
                bytes,
                Some(Expiration::PX(px_ms as i64)),
                None,
                false,
            )
            .await
            .map_err(tier_error)
    }

    async fn remove(&self, key: &str) -> Result<(), TierError> {
        self.delete(self.entry_key(key)).await.map(drop)
    }

    /// SCAN (never KEYS) page by page, deleting each page with one UNLINK.
    async fn remove_prefix(&self, prefix: &str) -> Result<u64, TierError> {
        let pattern = format!("{}*", glob_escape(&self.entry_key(prefix)));
        let client = self.pool.next();
        let mut pages = pin!(client.scan(pattern, Some(SCAN_PAGE), None));
        let mut removed = 0;
        while let Some(page) = pages.next().await {
            let mut page = page.map_err(tier_error)?;
            let keys = page.take_results().unwrap_or_default();
            if !keys.is_empty() {
                removed += client
                    .with_options(&self.options)
                    .unlink::<u64, _>(keys)
                    .await
                    .map_err(tier_error)?;
            }
            page.next();
        }
        Ok(removed)
    }
}

/// A fred builder with the cache's connection rules: every command bounded by `timeout` and
/// tried once, background reconnection with exponential backoff (also after a refused start).
pub(crate) fn builder(config: Config, timeout: Duration) -> fred::types::Builder {
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
            events(BackplaneEvent::Reconnected);
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
            Some((sender, event)) if sender != own => events(BackplaneEvent::Remote(event)),
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
    fn glob_metacharacters_are_escaped() {
        assert_eq!(glob_escape("ttc:e:a*b?[c]\\"), "ttc:e:a\\*b\\?\\[c\\]\\\\");
    }
}
