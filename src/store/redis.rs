//! L2: Redis through a fred connection pool.
//!
//! Every command carries `l2.timeout` and fails fast while disconnected, so a dead or stalled
//! Redis costs at most one timeout per operation. The pool reconnects in the background with
//! exponential backoff, including when Redis refused the first connection.
//!
//! Layout: `{prefix}:e:{key}` holds the encoded entry, with `PX` set to the entry's remaining
//! lifetime (fresh plus stale window).

use std::pin::pin;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fred::clients::Pool;
use fred::error::{Error as RedisError, ErrorKind};
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::config::{Config, Options, ReconnectPolicy};
use fred::types::scan::Scanner;
use fred::types::Expiration;
use futures_util::StreamExt;

use super::codec::Codec;
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
    prefix: String,
    codec: Codec,
    options: Options,
}

impl RedisTier {
    /// Builds the pool and starts connecting in the background; never waits for Redis.
    pub(crate) fn connect(config: &CacheConfig, url: &str, codec: Codec) -> Result<Self, Error> {
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let redis_config = Config::from_url(url).map_err(|err| {
            ConfigError::invalid("l2.url", format!("invalid Redis URL: {}", err.details()))
        })?;
        let timeout = config.l2.timeout;
        let mut builder = fred::types::Builder::from_config(redis_config);
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
        let pool = builder.build_pool(config.l2.pool_size).map_err(|err| {
            ConfigError::invalid(
                "l2.url",
                format!("cannot build a Redis client: {}", err.details()),
            )
        })?;
        // The connection task runs until `quit`; failures are retried by the policy.
        drop(pool.connect());
        Ok(Self {
            pool,
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

    /// Waits until every pooled connection is up, or `timeout` passes.
    pub(crate) async fn wait_connected(&self, timeout: Duration) -> bool {
        let connected = async {
            while !self.pool.clients().iter().all(ClientLike::is_connected) {
                // Resolves with the outcome of the next connection attempt.
                let _ = self.pool.wait_for_connect().await;
            }
        };
        tokio::time::timeout(timeout, connected).await.is_ok()
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

impl Drop for RedisTier {
    fn drop(&mut self) {
        // Stop the reconnecting connection task; without a runtime it ends with the runtime.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pool = self.pool.clone();
            runtime.spawn(async move {
                let _ = pool.quit().await;
            });
        }
    }
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
