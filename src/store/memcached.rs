//! L2: Memcached through a small pool of async-memcached connections.
//!
//! The same fail-safe rules as the Redis tier: every operation (connecting included) is bounded
//! by `l2.timeout`, failures feed the circuit breaker, and a failure is a miss or a skipped write
//! for the caller. A connection that failed or timed out is dropped (the client closes it when an
//! operation is cut short) and made again by the next operation that needs it.
//!
//! Layout: `{prefix}:e:{sha256(key)}` holds the encoded entry with an expiry of its remaining
//! lifetime (fresh plus stale window, in whole seconds, rounded up); `{prefix}:t:{sha256(tag)}`
//! holds the tag's last invalidation time; `{prefix}:l:{sha256(key)}` is the miss lock. Keys are
//! hashed because Memcached keys are at most 250 bytes without spaces or control characters.
//!
//! What Memcached cannot do: list keys (so no prefix invalidation or flush), publish events (so
//! no cross-instance memory invalidation: memory copies live at most `l1.max_ttl`), streams (so
//! no durable write-behind). Configuration rejects what asks for the last; the first returns
//! [`TierError::Unsupported`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use async_memcached::{AsciiProtocol, Client, Error as McError, ErrorKind, MetaProtocol, Status};
use bytes::Bytes;
use tokio::sync::Mutex;

use super::breaker::Breaker;
use super::codec::Codec;
use super::events::Invalidation;
use super::tier::{Tier, TierError};
use super::{CachedEntry, Source};
use crate::config::{CacheConfig, ConfigError};
use crate::Error;

/// Memcached reads expiries above 30 days as absolute Unix times.
const MAX_RELATIVE_EXPIRY_SECS: u64 = 30 * 24 * 3600;
/// Bytes Memcached adds to every item besides key and value (item header, CAS, suffix).
const ITEM_OVERHEAD: u64 = 64;
/// Pause between connection attempts in `wait_connected`.
const CONNECT_RETRY: Duration = Duration::from_millis(50);

pub(crate) struct MemcachedTier {
    /// `tcp://host:port`.
    address: String,
    /// Each connection serves one operation at a time; `None` until (re)connected.
    connections: Vec<Mutex<Option<Client>>>,
    next: AtomicUsize,
    timeout: Duration,
    breaker: Breaker,
    prefix: String,
    codec: Codec,
    max_item_size: u64,
}

impl MemcachedTier {
    /// Prepares the pool; connections are made by the first operations, never here.
    pub(crate) fn connect(config: &CacheConfig, codec: Codec) -> Result<Self, Error> {
        let url = config
            .l2
            .url
            .as_deref()
            .ok_or_else(|| ConfigError::invalid("l2.url", "set the Memcached URL"))?;
        let address = crate::config::memcached_address(url)
            .map_err(|reason| ConfigError::invalid("l2.url", reason))?;
        Ok(Self {
            address,
            connections: (0..config.l2.pool_size).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            timeout: config.l2.timeout,
            breaker: Breaker::new(config.l2.breaker_threshold, config.l2.breaker_cooldown),
            prefix: config.l2.prefix.clone(),
            codec,
            max_item_size: config.l2.max_item_size,
        })
    }

    pub(crate) fn source(&self) -> Source {
        Source::Memcached
    }

    /// Retries until one connection answers `version`, or `timeout` passes.
    pub(crate) async fn wait_connected(&self, timeout: Duration) -> bool {
        let answered = async {
            while self
                .call(async |client| client.version().await)
                .await
                .is_err()
            {
                tokio::time::sleep(CONNECT_RETRY).await;
            }
        };
        let connected = tokio::time::timeout(timeout, answered).await.is_ok();
        if connected {
            self.breaker.succeeded();
        }
        connected
    }

    pub(crate) fn circuit_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Memcached has no channel: other instances drop their memory copies by `l1.max_ttl`.
    pub(crate) async fn publish(&self, _event: &Invalidation) -> Result<(), TierError> {
        Ok(())
    }

    /// The invalidation stamps of `tags` (0 for tags never invalidated), in order: one multi-get.
    pub(crate) async fn tag_stamps(&self, tags: &[&str]) -> Result<Vec<u64>, TierError> {
        let keys: Vec<String> = tags.iter().map(|tag| self.key("t", tag)).collect();
        let values = self
            .breaker
            .guard(self.call(async |client| {
                match client.get_multi(&keys).await {
                    Ok(values) => Ok(values),
                    // The client reports a multi-get that found nothing as an error; for stamps
                    // it is the common answer (no tag invalidated yet), not a failure.
                    Err(McError::Protocol(Status::NotFound)) => Ok(Vec::new()),
                    Err(err) => Err(err),
                }
            }))
            .await?;
        let stamps: HashMap<&[u8], u64> = values
            .iter()
            .filter_map(|value| {
                let stamp = std::str::from_utf8(value.data.as_deref()?)
                    .ok()?
                    .parse()
                    .ok()?;
                Some((value.key.as_slice(), stamp))
            })
            .collect();
        Ok(keys
            .iter()
            .map(|key| stamps.get(key.as_bytes()).copied().unwrap_or(0))
            .collect())
    }

    /// Records `stamp` as the invalidation time of each tag, kept for `ttl`: one pipelined
    /// multi-set, so many tags still cost one round trip.
    pub(crate) async fn stamp_tags(
        &self,
        tags: &[String],
        stamp: u64,
        ttl: Duration,
    ) -> Result<(), TierError> {
        let stamp = stamp.to_string();
        let writes: Vec<(String, &str)> = tags
            .iter()
            .map(|tag| (self.key("t", tag), stamp.as_str()))
            .collect();
        self.breaker
            .guard(self.call(async |client| {
                let results = client.set_multi(&writes, Some(expiry(ttl)), None).await?;
                results.into_values().collect::<Result<(), McError>>()
            }))
            .await
    }

    /// Takes the lock of `key` for `ttl` (whole seconds, at least one) with `token` (`add`
    /// stores only when the key is absent); false if someone holds it.
    pub(crate) async fn try_lock(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, TierError> {
        let lock_key = self.key("l", key);
        self.breaker
            .guard(self.call(async |client| {
                match client.add(&lock_key, token, Some(expiry(ttl)), None).await {
                    Ok(()) => Ok(true),
                    Err(McError::Protocol(Status::NotStored | Status::Exists)) => Ok(false),
                    Err(err) => Err(err),
                }
            }))
            .await
    }

    /// Releases the lock of `key` if `token` still holds it: read with its CAS, then delete
    /// only if the CAS is unchanged (`md … C<cas>`), so a lock taken meanwhile stays.
    pub(crate) async fn unlock(&self, key: &str, token: &str) -> Result<(), TierError> {
        let lock_key = self.key("l", key);
        self.breaker
            .guard(self.call(async |client| {
                let held = client
                    .meta_get(&lock_key, false, None, Some(&["v", "c"]))
                    .await?;
                let Some(held) = held else { return Ok(()) };
                let (Some(data), Some(cas)) = (held.data, held.cas) else {
                    return Ok(());
                };
                if data != token.as_bytes() {
                    return Ok(());
                }
                let compare = format!("C{cas}");
                match client
                    .meta_delete(&lock_key, false, None, Some(&[compare.as_str()]))
                    .await
                {
                    Ok(_) | Err(McError::Protocol(Status::Exists | Status::NotFound)) => Ok(()),
                    Err(err) => Err(err),
                }
            }))
            .await
    }

    /// `{prefix}:{kind}:{sha256 of name}`: always a valid Memcached key.
    fn key(&self, kind: &str, name: &str) -> String {
        let mut key = format!("{}:{kind}:", self.prefix);
        crate::digest::push_sha256_hex(&mut key, name.as_bytes());
        key
    }

    /// Runs `operation` on the next pooled connection, connecting it first if needed, all
    /// within `l2.timeout`. A connection that failed is dropped, to be made again.
    async fn call<T>(
        &self,
        operation: impl AsyncFnOnce(&mut Client) -> Result<T, McError>,
    ) -> Result<T, TierError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let attempt = async {
            let mut slot = self.connections[index].lock().await;
            let client = match slot.take().filter(|client| !client.is_closed()) {
                Some(client) => slot.insert(client),
                None => slot.insert(
                    Client::new(&self.address)
                        .await
                        .map_err(|err| TierError::Unavailable(err.to_string()))?,
                ),
            };
            let result = operation(client).await;
            if let Err(err) = &result {
                if !matches!(err, McError::Protocol(_)) {
                    *slot = None;
                }
            }
            result.map_err(tier_error)
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or(Err(TierError::Timeout))
    }

    async fn read(&self, key: &str) -> Result<Option<CachedEntry>, TierError> {
        let entry_key = self.key("e", key);
        let value = self
            .call(async |client| client.get(&entry_key).await)
            .await?;
        let Some(data) = value.and_then(|value| value.data) else {
            return Ok(None);
        };
        // Expiry is in whole seconds: the entry's own lifetime counts too.
        match self.codec.decode_live(&Bytes::from(data)) {
            Ok(entry) => Ok(entry),
            Err(err) => {
                // A bad value would fail every read until it expires; if the delete fails too,
                // the next read retries it.
                let _ = self.delete(&entry_key).await;
                Err(TierError::Decode(err))
            }
        }
    }

    async fn delete(&self, memcached_key: &str) -> Result<(), TierError> {
        self.call(async |client| match client.delete(memcached_key).await {
            Ok(()) | Err(McError::Protocol(Status::NotFound)) => Ok(()),
            Err(err) => Err(err),
        })
        .await
    }
}

impl Tier for MemcachedTier {
    async fn get(&self, key: &str) -> Result<Option<CachedEntry>, TierError> {
        self.breaker.guard(self.read(key)).await
    }

    async fn set(&self, key: &str, entry: &CachedEntry) -> Result<(), TierError> {
        let lifetime = entry.remaining_lifetime_at(SystemTime::now());
        if lifetime.is_zero() {
            return Ok(());
        }
        let bytes = self.codec.encode(entry)?;
        let entry_key = self.key("e", key);
        let size = (bytes.len() + entry_key.len()) as u64 + ITEM_OVERHEAD;
        let too_large = TierError::TooLarge {
            size,
            limit: self.max_item_size,
        };
        if size > self.max_item_size {
            return Err(too_large);
        }
        self.breaker
            .guard(async {
                let written = self
                    .call(async |client| {
                        client
                            .set(&entry_key, bytes.as_slice(), Some(expiry(lifetime)), None)
                            .await
                    })
                    .await;
                match written {
                    // The server's limit (`-I`) is lower than `l2.max_item_size`: the tier is
                    // working, the entry just does not fit.
                    Err(TierError::Backend(message)) if message.contains("too large") => {
                        Err(too_large)
                    }
                    other => other,
                }
            })
            .await
    }

    async fn remove(&self, key: &str) -> Result<(), TierError> {
        self.breaker.guard(self.delete(&self.key("e", key))).await
    }

    /// Memcached cannot list keys.
    async fn remove_prefix(&self, _prefix: &str) -> Result<u64, TierError> {
        Err(TierError::Unsupported {
            backend: "memcached",
            operation:
                "prefix invalidation and flush (Memcached cannot list keys); use tags, or Redis",
        })
    }
}

/// Memcached's expiry for `lifetime`: whole seconds, rounded up; beyond 30 days an absolute
/// Unix time, as the protocol requires.
fn expiry(lifetime: Duration) -> i64 {
    let seconds = u64::try_from(lifetime.as_millis().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1);
    let seconds = if seconds <= MAX_RELATIVE_EXPIRY_SECS {
        seconds
    } else {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        now.saturating_add(seconds)
    };
    i64::try_from(seconds).unwrap_or(i64::MAX)
}

fn tier_error(err: McError) -> TierError {
    match err {
        McError::Connect(_) | McError::Io(_) | McError::ConnectionClosed => {
            TierError::Unavailable(err.to_string())
        }
        McError::Protocol(Status::Error(ErrorKind::Server(message))) => TierError::Backend(message),
        other => TierError::Backend(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_round_up_to_seconds_and_become_absolute_beyond_30_days() {
        assert_eq!(expiry(Duration::from_millis(1)), 1);
        assert_eq!(expiry(Duration::from_millis(1001)), 2);
        assert_eq!(expiry(Duration::from_secs(3600)), 3600);
        let far = expiry(Duration::from_secs(31 * 24 * 3600));
        assert!(far > 1_700_000_000, "absolute Unix time, got {far}");
    }
}
