//! L2: Memcached through a small pool of async-memcached connections.
//!
//! The same fail-safe rules as the Redis tier: every operation (connecting included) is bounded
//! by `l2.timeout`, and a failure is a miss or a skipped write for the caller (the shared tier
//! applies the circuit breaker). A connection that failed or timed out is dropped (the client
//! closes it when an operation is cut short) and made again by the next operation that needs it.
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
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use async_memcached::{AsciiProtocol, Client, Error as McError, ErrorKind, MetaProtocol, Status};
use bytes::Bytes;
use tokio::sync::Mutex;

use super::backend::{Answer, Backend, Shard};
use super::events::Invalidation;
use super::tier::TierError;
use super::Source;
use crate::config::{CacheConfig, ConfigError};
use crate::Error;

/// Memcached reads expiries above 30 days as absolute Unix times.
const MAX_RELATIVE_EXPIRY_SECS: u64 = 30 * 24 * 3600;
/// Bytes Memcached adds to every item besides key and value (item header, CAS, suffix).
const ITEM_OVERHEAD: u64 = 64;
/// Pause between connection attempts in `wait_connected`.
const CONNECT_RETRY: Duration = Duration::from_millis(50);

pub(crate) struct MemcachedBackend {
    /// `tcp://host:port`.
    address: String,
    /// Each connection serves one operation at a time; `None` until (re)connected.
    connections: Vec<Mutex<Option<Client>>>,
    next: AtomicUsize,
    timeout: Duration,
    prefix: String,
    max_item_size: u64,
}

impl MemcachedBackend {
    /// Prepares the pool; connections are made by the first operations, never here.
    pub(crate) fn connect(config: &CacheConfig) -> Result<Self, Error> {
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
            prefix: config.l2.prefix.clone(),
            max_item_size: config.l2.max_item_size,
        })
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

    /// The size Memcached would account for `len` bytes under the entry key `key`.
    fn item_size(&self, key: &str, len: usize) -> u64 {
        (len + self.key("e", key).len()) as u64 + ITEM_OVERHEAD
    }
}

impl Backend for MemcachedBackend {
    fn source(&self) -> Source {
        Source::Memcached
    }

    fn check_size(&self, key: &str, len: usize) -> Result<(), TierError> {
        let size = self.item_size(key, len);
        if size > self.max_item_size {
            return Err(TierError::TooLarge {
                size,
                limit: self.max_item_size,
            });
        }
        Ok(())
    }

    /// Retries until one connection answers `version`, or `timeout` passes.
    fn wait_connected(&self, timeout: Duration) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            let answered = async {
                while self
                    .call(async |client| client.version().await)
                    .await
                    .is_err()
                {
                    tokio::time::sleep(CONNECT_RETRY).await;
                }
            };
            tokio::time::timeout(timeout, answered).await.is_ok()
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> Answer<'a, Option<Bytes>> {
        Box::pin(async move {
            let entry_key = self.key("e", key);
            let value = self
                .call(async |client| client.get(&entry_key).await)
                .await?;
            Ok(value.and_then(|value| value.data).map(Bytes::from))
        })
    }

    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> Answer<'a, ()> {
        Box::pin(async move {
            let entry_key = self.key("e", key);
            let written = self
                .call(async |client| {
                    client
                        .set(&entry_key, value.as_ref(), Some(expiry(ttl)), None)
                        .await
                })
                .await;
            match written {
                // The server's limit (`-I`) is lower than `l2.max_item_size`: the tier is
                // working, the entry just does not fit.
                Err(TierError::Backend(message)) if message.contains("too large") => {
                    Err(TierError::TooLarge {
                        size: self.item_size(key, value.len()),
                        limit: self.max_item_size,
                    })
                }
                other => other,
            }
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> Answer<'a, ()> {
        Box::pin(async move {
            let entry_key = self.key("e", key);
            self.call(async |client| match client.delete(&entry_key).await {
                Ok(()) | Err(McError::Protocol(Status::NotFound)) => Ok(()),
                Err(err) => Err(err),
            })
            .await
        })
    }

    /// Memcached cannot list keys.
    fn delete_prefix<'a>(&'a self, _shard: &'a Shard, _prefix: &'a str) -> Answer<'a, u64> {
        Box::pin(std::future::ready(Err(TierError::Unsupported {
            backend: "memcached",
            operation:
                "prefix invalidation and flush (Memcached cannot list keys); use tags, or Redis",
        })))
    }

    /// One multi-get.
    fn tag_stamps<'a>(&'a self, tags: &'a [&'a str]) -> Answer<'a, Vec<u64>> {
        Box::pin(async move {
            let keys: Vec<String> = tags.iter().map(|tag| self.key("t", tag)).collect();
            let values = self
                .call(async |client| {
                    match client.get_multi(&keys).await {
                        Ok(values) => Ok(values),
                        // The client reports a multi-get that found nothing as an error; for
                        // stamps it is the common answer (no tag invalidated yet), not a failure.
                        Err(McError::Protocol(Status::NotFound)) => Ok(Vec::new()),
                        Err(err) => Err(err),
                    }
                })
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
        })
    }

    /// A multi-get, then one pipelined multi-set of the stamps that are older. Memcached
    /// cannot compare on the server: two invalidations of one tag racing between the read and
    /// the write may leave the older generation, which outdates fewer entries than it should
    /// until the tag is invalidated again (Redis compares in a script).
    fn stamp_tags<'a>(&'a self, tags: &'a [&'a str], stamp: u64, ttl: Duration) -> Answer<'a, ()> {
        Box::pin(async move {
            let known = self.tag_stamps(tags).await?;
            let value = stamp.to_string();
            let writes: Vec<(String, &str)> = tags
                .iter()
                .zip(known)
                .filter(|(_, old)| *old < stamp)
                .map(|(tag, _)| (self.key("t", tag), value.as_str()))
                .collect();
            if writes.is_empty() {
                return Ok(());
            }
            self.call(async |client| {
                let results = client.set_multi(&writes, Some(expiry(ttl)), None).await?;
                results.into_values().collect::<Result<(), McError>>()
            })
            .await
        })
    }

    /// `add` of 0 (kept until evicted), then `incr`: the counter starts at the first use.
    fn next_generation(&self) -> Answer<'_, u64> {
        Box::pin(async move {
            let key = self.key("g", "generation");
            self.call(async |client| {
                match client.add(&key, "0", None, None).await {
                    Ok(()) | Err(McError::Protocol(Status::NotStored | Status::Exists)) => {}
                    Err(err) => return Err(err),
                }
                client.increment(&key, 1).await
            })
            .await
        })
    }

    fn generation(&self) -> Answer<'_, u64> {
        Box::pin(async move {
            let key = self.key("g", "generation");
            let value = self
                .call(async |client| match client.get(&key).await {
                    Ok(value) => Ok(value),
                    Err(McError::Protocol(Status::NotFound)) => Ok(None),
                    Err(err) => Err(err),
                })
                .await?;
            Ok(value
                .and_then(|value| {
                    std::str::from_utf8(value.data.as_deref()?)
                        .ok()?
                        .parse()
                        .ok()
                })
                .unwrap_or_default())
        })
    }

    /// `add` stores only when the key is absent; the lifetime is in whole seconds, at least one.
    fn try_lock<'a>(&'a self, key: &'a str, token: &'a str, ttl: Duration) -> Answer<'a, bool> {
        Box::pin(async move {
            let lock_key = self.key("l", key);
            self.call(async |client| {
                match client.add(&lock_key, token, Some(expiry(ttl)), None).await {
                    Ok(()) => Ok(true),
                    Err(McError::Protocol(Status::NotStored | Status::Exists)) => Ok(false),
                    Err(err) => Err(err),
                }
            })
            .await
        })
    }

    /// Read with its CAS, then delete only if the CAS is unchanged (`md … C<cas>`), so a lock
    /// taken meanwhile stays.
    fn unlock<'a>(&'a self, key: &'a str, token: &'a str) -> Answer<'a, ()> {
        Box::pin(async move {
            let lock_key = self.key("l", key);
            self.call(async |client| {
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
            })
            .await
        })
    }

    /// Memcached has no channel: other instances drop their memory copies by `l1.max_ttl`.
    fn publish<'a>(&'a self, _event: &'a Invalidation) -> Answer<'a, ()> {
        Box::pin(std::future::ready(Ok(())))
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
