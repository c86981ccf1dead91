//! Configuration: TOML with `${VAR:-default}` placeholders, environment defaults, and a builder.
//!
//! Every key, its environment variable and its default:
//!
//! | key | env (used when the key is absent) | default | meaning |
//! |---|---|---|---|
//! | `l1.size` | `L1_CACHE_SIZE` | `100MB` | memory tier budget in bytes of entries; `0` disables L1 |
//! | `l1.max_ttl` | | `60s` | longest stay of any entry in memory, whatever its own TTL |
//! | `l2.backend` | | `redis` | `redis`, or `memcached` (feature `memcached`; see the README's Backends table) |
//! | `l2.url` | `REDIS_URL`, `REDIS_URI` | empty | `redis://[user:pass@]host:port[/db]` or `memcache://host:port`; empty = no L2 |
//! | `l2.cluster` | | `[]` | Redis Cluster node URLs, instead of `l2.url` |
//! | `l2.prefix` | | `ttc` | prefix of every Redis key |
//! | `l2.timeout` | | `50ms` | bound on every Redis command; slower = miss |
//! | `l2.pool_size` | | `4` | Redis connections |
//! | `l2.breaker_threshold` | | `5` | consecutive failures that open the circuit (Redis skipped) |
//! | `l2.breaker_cooldown` | | `1s` | time before a probe is let through an open circuit |
//! | `l2.lock` | | `false` | coalesce misses across instances with a Redis lock |
//! | `l2.lock_ttl` | | `5s` | lifetime of that lock (a crashed holder frees it by then) |
//! | `l2.lock_wait` | | `2s` | longest wait for another instance's load |
//! | `l2.max_item_size` | | `1MiB` | Memcached's item size limit (`memcached -I`); larger entries stay out of L2 |
//! | `l2.outbox_capacity` | | `10000` | invalidations kept for retry while L2 does not take them; when full, a new one is tried once and not kept (its error is returned and logged) |
//! | `l2.connect_wait` | | `2s` | start-up: how long `TieredCache::wait_for_l2_at_start` waits, and how long failures before the first connection do not count towards the breaker |
//! | `compression.enabled` | `CACHE_COMPRESSION` | `true` | brotli for bodies stored in Redis |
//! | `compression.min_size` | | `4KiB` | smallest body worth compressing |
//! | `compression.min_savings` | | `0.3` | the compressed body is kept only if it is at least this fraction smaller |
//! | `compression.quality` | | `4` | brotli quality, 0–11 (11 is ~100× slower) |
//! | `http.max_entry_size` | | `8MB` | largest body stored; larger ones stream through uncached |
//! | `http.default_ttl` | | `0s` | freshness for storable responses without their own; `0s` = RFC 9111 only |
//! | `http.keep_stale` | | `10m` | how long stale entries with validators are kept for revalidation |
//! | `http.stale_while_revalidate` | | `0s` | default `stale-while-revalidate` (RFC 5861) |
//! | `http.stale_if_error` | | `0s` | default `stale-if-error` (RFC 5861) |
//! | `http.stale_if_unreachable` | | `10s` | serve a stale entry this long past its freshness when the origin gives no answer (connection refused or closed, `http.origin_timeout`), unless its directives forbid stale (RFC 9111 §4.2.4); `0s` = only with `stale-if-error` |
//! | `http.origin_timeout` | | `30s` | longest wait for the origin's headers, and for a background revalidation or a body read for the cache; also caps a gRPC call's `grpc-timeout` (`0s`: no limit) |
//! | `http.pass_ttl` | | `30s` | how long a key whose response could not be stored (`no-store`, `private`, `Set-Cookie`, …) goes straight to the origin, without lookup or coalescing (hit-for-pass); `0s` = off |
//! | `http.refresh_ahead` | | `0` (off) | a hit past this fraction of its freshness lifetime (e.g. `0.8`) starts one background revalidation |
//! | `http.max_background` | | `64` | most tasks the cache runs in the background at once (bodies read for the cache after an early `304`/`412`, background revalidations, refresh-ahead); past it that work is skipped: the client of a matching conditional gets the full response, a stale or aging entry is served without revalidating it |
//! | `early_refresh.beta` | | `0` (off) | `get_or_set` refreshes early with a probability growing as expiry nears (XFetch, Vattani et al.); `1.0` is the paper's choice |
//! | `http.coalesce_wait` | | `5s` | longest wait for another request's fill of the same key (it streams to its own client meanwhile); then a request asks the origin itself |
//! | `http.status_header` | | `tiered-cache` | the cache's name in `Cache-Status` |
//! | `http.targeted_fields` | | `["<status_header>-cache-control", "cdn-cache-control"]` | targeted cache-control fields this cache follows instead of `Cache-Control` and `Expires` (RFC 9213), first valid one wins; `[]` = none |
//! | `http.key_headers` | | `[]` | request headers added to every cache key |
//! | `http.max_variants` | | `32` | most `Vary` variants stored per URL |
//! | `http.store_set_cookie` | | `false` | store responses that set cookies (RFC-allowed, unsafe for per-user cookies) |
//! | `http.forwarded_headers` | | `key` | `key`: URL-overriding request headers (`X-Forwarded-Host`, `Forwarded`, ...) are part of the key; `strip`: they are removed before keying and forwarding |
//! | `http.heuristic_with_credentials` | | `false` | give heuristic freshness and `http.default_ttl` to responses to requests with `Cookie` or `Authorization` |
//! | `write_behind.capacity` | | `10000` | queued writes at most; full → `503` + `Retry-After` |
//! | `write_behind.workers` | | `4` | concurrent replays; each key's writes go to one worker, in order |
//! | `write_behind.durable` | | `false` | queue in a Redis Stream (needs `l2.url`): survives crashes, at least once |
//! | `write_behind.max_attempts` | | `5` | attempts per write before it is dropped (logged, counted, dead-lettered when durable) |
//! | `write_behind.backoff` | | `100ms` | delay before the first retry, doubling, at most 30 s |
//! | `write_behind.dead_max` | | `10000` | durable mode: entries kept, about, in the `{prefix}:wb:{queue}:dead` stream; older ones are trimmed and counted |
//! | `grpc.methods` | | `[]` | unary gRPC methods cached by `GrpcCacheLayer` (feature `tonic`) |
//! | `grpc.ttl` | | `60s` | freshness of a cached gRPC response |
//! | `grpc.max_request_size` | | `4MiB` | largest request message read; larger calls fail with `RESOURCE_EXHAUSTED` |
//! | `grpc.credential_metadata` | | `[]` | metadata carrying credentials, besides `authorization` and `cookie` |
//! | `grpc.key_metadata` | | `[]` | metadata whose values (hashed) are part of the key; keyed credentials are cached per identity |
//! | `l3.url` | `DATABASE_URL` | empty | database for `SqlLoader` (feature `sqlx`): `sqlite://…` or `postgres://…` |
//! | `l3.query` | | `SELECT value FROM cache_store WHERE key = $1` | reads one value by key |
//! | `l3.write_query` | | upsert into `cache_store` | writes one value (key, value) |
//! | `l3.ttl` | | `60s` | freshness of values read from the database |
//! | `tags.max_per_entry` | | `128` | most tags kept on one entry; further ones are dropped and counted |
//! | `tags.max_length` | | `256` | longest tag kept, in bytes |
//! | `tags.max_header_bytes` | | `16KiB` | bytes of a response's `Cache-Tag` (and of its `Surrogate-Key`) read for tags |
//! | `[[route]] path` | | | glob on the request path (`*` within a segment, `**` across) |
//! | `[[route]] ttl` | | | freshness used instead of the origin's on this route |
//! | `[[route]] bypass` | | `false` | requests on this route pass straight through |
//! | `[[route]] key_headers` | | `[]` | request headers added to the key on this route |
//! | `[[route]] write_token` | | empty | `write = "behind"` only: writes need `Authorization: Bearer <token>`, else `401` |
//! | `[[route]] write_requires` | | `[]` | `write = "behind"` only: request headers writes need (verified by the origin on replay), else `401` |
//! | `[[route]] write_auth` | | `cache` | `write = "behind"` only: `cache` = the route must set `write_token` or `write_requires`; `origin` = writes from anyone are accepted and served until the origin refuses their replay |
//! | `[[route]] content_type` | | `application/octet-stream` | `write = "behind"` only: the `Content-Type` a stored write is served with (never the writer's) |
//!
//! Sizes take `bytesize` units: `MB` = 10⁶ bytes, `MiB` = 2²⁰ bytes, plain numbers are bytes.
//! Durations take `humantime` units: `50ms`, `60s`, `5m`, `1h 30m`.
//!
//! ```
//! use std::time::Duration;
//! use tower_tiered_cache::CacheConfig;
//!
//! let config = CacheConfig::from_toml_str(r#"
//!     [l1]
//!     size = "16MiB"
//!     max_ttl = "30s"
//!     [l2]
//!     url = "${MY_UNSET_REDIS_URL:-redis://127.0.0.1:6379}"
//! "#)?;
//! assert_eq!(config.l1.size, 16 * 1024 * 1024);
//! assert_eq!(config.l1.max_ttl, Duration::from_secs(30));
//! assert_eq!(config.l2.url.as_deref(), Some("redis://127.0.0.1:6379"));
//!
//! let err = CacheConfig::from_toml_str("[l1]\nsize = \"10XB\"").unwrap_err();
//! assert_eq!(err.key(), Some("l1.size"));
//! assert!(err.to_string().starts_with("l1.size: invalid size \"10XB\""));
//! # Ok::<(), tower_tiered_cache::ConfigError>(())
//! ```

mod address;
mod builder;
mod de;
mod load;

use std::time::Duration;

use serde::Deserialize;

#[cfg_attr(not(feature = "memcached"), allow(unused_imports))]
pub(crate) use address::memcached_address;
pub use builder::CacheConfigBuilder;
pub use load::ConfigError;

/// The whole configuration. Build it from TOML ([`CacheConfig::from_toml_str`],
/// [`CacheConfig::from_path`]), from the environment alone ([`CacheConfig::from_env`]) or in code
/// ([`CacheConfig::builder`]).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CacheConfig {
    /// The in-process memory tier.
    pub l1: L1Config,
    /// The shared Redis tier.
    pub l2: L2Config,
    /// Compression of entries stored in Redis.
    pub compression: CompressionConfig,
    /// What the HTTP layer stores and how it labels responses.
    pub http: HttpConfig,
    /// Per-route rules, first match wins.
    pub route: Vec<RouteConfig>,
    /// Tags and invalidation headers.
    pub tags: TagsConfig,
    /// The write-behind queue.
    pub write_behind: WriteBehindConfig,
    /// The PURGE method.
    pub purge: PurgeConfig,
    /// Cache warming.
    pub warm: WarmConfig,
    /// gRPC caching (feature `tonic`).
    pub grpc: GrpcConfig,
    /// A database as the source of truth for the library API (feature `sqlx`).
    pub l3: L3Config,
    /// Early refreshes of `get_or_set` (XFetch).
    pub early_refresh: EarlyRefreshConfig,
}

/// `[early_refresh]`: `get_or_set` reloads a fresh entry before it expires, with a probability
/// that grows as expiry nears and with how long its load took (XFetch: Vattani, Chierichetti and
/// Lowenstein, "Optimal Probabilistic Cache Stampede Prevention", VLDB 2015), so that callers —
/// on every instance — do not all reload at the same instant.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct EarlyRefreshConfig {
    /// XFetch's β: `0` (the default) turns early refreshes off; `1.0` is the paper's choice,
    /// larger values refresh earlier.
    #[serde(deserialize_with = "de::number")]
    pub beta: f64,
}

/// `[l3]`: a database that `SqlLoader` (feature `sqlx`) reads entries from, and writes through
/// to, as the seed's `l3_query`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct L3Config {
    /// `sqlite://path.db` or `postgres://…`; empty means no database.
    #[serde(deserialize_with = "de::optional_string")]
    pub url: Option<String>,
    /// Reads one value: one parameter (the key), one column in the result.
    pub query: String,
    /// Writes one value: two parameters (the key, then the value).
    pub write_query: String,
    /// How long values read from the database are fresh in the cache.
    #[serde(deserialize_with = "de::duration")]
    pub ttl: Duration,
}

impl Default for L3Config {
    fn default() -> Self {
        Self {
            url: None,
            query: "SELECT value FROM cache_store WHERE key = $1".to_owned(),
            write_query: "INSERT INTO cache_store (key, value) VALUES ($1, $2) \
                ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                .to_owned(),
            ttl: Duration::from_secs(60),
        }
    }
}

/// `[grpc]`: unary gRPC methods whose responses are cached (with `GrpcCacheLayer`, feature
/// `tonic`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct GrpcConfig {
    /// Full method paths, e.g. `/shop.Catalog/GetProduct`. Only unary methods belong here.
    pub methods: Vec<String>,
    /// How long a successful (`grpc-status: 0`) response is fresh.
    #[serde(deserialize_with = "de::duration")]
    pub ttl: Duration,
    /// Largest request message read, in bytes on the wire (without the 5-byte frame header),
    /// as tonic's `max_decoding_message_size` (4 MiB by default there too). A larger call on a
    /// cached method fails with `RESOURCE_EXHAUSTED` and never reaches the service.
    #[serde(deserialize_with = "de::size")]
    pub max_request_size: u64,
    /// Metadata that carries credentials, besides `authorization` and `cookie` (which always
    /// do), e.g. `x-api-key`. A call carrying any of them bypasses the cache, unless every one
    /// it carries is in [`key_metadata`](Self::key_metadata).
    pub credential_metadata: Vec<String>,
    /// Metadata whose values are part of the key, hashed (so no secret appears in a Redis key
    /// name), e.g. `["authorization", "x-tenant"]`: calls are then cached per identity.
    /// `grpc-timeout`, which changes with every call, cannot be keyed.
    pub key_metadata: Vec<String>,
}

impl GrpcConfig {
    /// Method paths and metadata names, each an error naming its key.
    fn validate(&self) -> Result<(), ConfigError> {
        for (index, method) in self.methods.iter().enumerate() {
            let parts: Vec<&str> = method.split('/').collect();
            if parts.len() != 3
                || !parts[0].is_empty()
                || parts[1].is_empty()
                || parts[2].is_empty()
            {
                return Err(ConfigError::invalid(
                    format!("grpc.methods[{index}]"),
                    format!("{method:?} is not a method path like \"/package.Service/Method\""),
                ));
            }
        }
        if self.max_request_size == 0 || self.max_request_size > u64::from(u32::MAX) {
            return Err(ConfigError::invalid(
                "grpc.max_request_size",
                format!(
                    "must be between 1 byte and 4GiB (a gRPC frame's length is 32 bits), got {}",
                    self.max_request_size
                ),
            ));
        }
        for (field, names) in [
            ("credential_metadata", &self.credential_metadata),
            ("key_metadata", &self.key_metadata),
        ] {
            for (index, name) in names.iter().enumerate() {
                let key = format!("grpc.{field}[{index}]");
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(ConfigError::invalid(
                        key,
                        format!("invalid metadata name {name:?}"),
                    ));
                }
                // The deadline left, different on every call: keyed, nothing would ever hit.
                if field == "key_metadata" && name.eq_ignore_ascii_case("grpc-timeout") {
                    return Err(ConfigError::invalid(
                        key,
                        "grpc-timeout differs on every call and cannot be part of the key",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            methods: Vec::new(),
            ttl: Duration::from_secs(60),
            max_request_size: 4 * 1024 * 1024,
            credential_metadata: Vec::new(),
            key_metadata: Vec::new(),
        }
    }
}

/// `[tags]`: tag headers and invalidation.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TagsConfig {
    /// Response header listing an entry's tags, comma-separated.
    pub tag_header: String,
    /// Response header listing an entry's tags, space-separated (Fastly style).
    pub surrogate_key_header: String,
    /// Response header of a mutating request naming tags to invalidate, comma-separated.
    pub invalidate_header: String,
    /// Remove the three headers above from responses to clients.
    #[serde(deserialize_with = "de::flag")]
    pub strip_headers: bool,
    /// How long an invalidation stamp is kept in Redis; entries stored for longer than this
    /// before an invalidation of their tag would not see it.
    #[serde(deserialize_with = "de::duration")]
    pub stamp_ttl: Duration,
    /// Most tags kept on one entry (route tags first, then the tag headers in order); the rest
    /// are dropped and counted in [`Stats::tags_dropped`](crate::Stats::tags_dropped). Every
    /// memory hit checks each tag, and a hit whose stamps are not known here reads them from L2.
    #[serde(deserialize_with = "de::count")]
    pub max_per_entry: u32,
    /// Longest tag kept on an entry, in bytes; longer ones are dropped and counted.
    #[serde(deserialize_with = "de::size")]
    pub max_length: u64,
    /// Bytes of each tag field of a response (`Cache-Tag`, `Surrogate-Key`) that its entry takes
    /// tags from; tags not entirely within them are dropped and counted (as Fastly ignores them
    /// in `Surrogate-Key`). Lists of tags to invalidate are read whole.
    #[serde(deserialize_with = "de::size")]
    pub max_header_bytes: u64,
}

impl TagsConfig {
    /// The tag bounds, each an error naming its key.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("tags.max_per_entry", u64::from(self.max_per_entry)),
            ("tags.max_length", self.max_length),
            ("tags.max_header_bytes", self.max_header_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        Ok(())
    }
}

impl Default for TagsConfig {
    fn default() -> Self {
        Self {
            tag_header: "cache-tag".to_owned(),
            surrogate_key_header: "surrogate-key".to_owned(),
            invalidate_header: "cache-invalidate".to_owned(),
            strip_headers: true,
            stamp_ttl: Duration::from_secs(30 * 24 * 3600),
            max_per_entry: 128,
            max_length: 256,
            max_header_bytes: 16 * 1024,
        }
    }
}

/// `[write_behind]`: the bounded queue of writes replayed to the origin in the background.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct WriteBehindConfig {
    /// Writes queued at most; a full queue refuses new writes (`503` + `Retry-After`).
    #[serde(deserialize_with = "de::count")]
    pub capacity: usize,
    /// Concurrent replays.
    #[serde(deserialize_with = "de::count")]
    pub workers: usize,
    /// Keep the queue in a Redis Stream (needs `l2.url`): survives a crash, at-least-once.
    #[serde(deserialize_with = "de::flag")]
    pub durable: bool,
    /// Attempts per write before it is dropped (and counted, and logged).
    #[serde(deserialize_with = "de::count")]
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each attempt, at most 30 s.
    #[serde(deserialize_with = "de::duration")]
    pub backoff: Duration,
    /// Durable mode: entries kept in the dead stream, about (`MAXLEN ~`); older ones are trimmed
    /// and counted in `WriteBehindStats::dead_trimmed`, so given-up writes cannot fill Redis.
    #[serde(deserialize_with = "de::count")]
    pub dead_max: usize,
}

impl WriteBehindConfig {
    /// The bounds of the queue and its workers, each an error naming its key. (Whether a
    /// durable queue has a Redis is checked where that is known.)
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.workers == 0 {
            return Err(ConfigError::invalid(
                "write_behind.workers",
                "must be at least 1",
            ));
        }
        let max_capacity = tokio::sync::Semaphore::MAX_PERMITS;
        if self.capacity == 0 || self.capacity > max_capacity {
            return Err(ConfigError::invalid(
                "write_behind.capacity",
                format!(
                    "must be between 1 and {max_capacity}, got {}",
                    self.capacity
                ),
            ));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::invalid(
                "write_behind.max_attempts",
                "must be at least 1",
            ));
        }
        if self.dead_max == 0 {
            return Err(ConfigError::invalid(
                "write_behind.dead_max",
                "must be at least 1: given-up writes are kept for inspection",
            ));
        }
        Ok(())
    }
}

impl Default for WriteBehindConfig {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            workers: 4,
            durable: false,
            max_attempts: 5,
            backoff: Duration::from_millis(100),
            dead_max: 10_000,
        }
    }
}

/// `[purge]`: the PURGE method.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PurgeConfig {
    /// Bearer token that PURGE requests must carry; empty disables PURGE (405).
    #[serde(deserialize_with = "de::optional_string")]
    pub token: Option<String>,
}

/// `[warm]`: requests sent through the cache at start and on an interval.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct WarmConfig {
    /// Absolute URLs (`http://host/path`) or paths (sent with `Host: warm.host`).
    pub paths: Vec<String>,
    /// Host for paths without one.
    pub host: String,
    /// Repeat every interval; `0s` warms once, at start.
    #[serde(deserialize_with = "de::duration")]
    pub interval: Duration,
    /// Warming requests in flight at once.
    #[serde(deserialize_with = "de::count")]
    pub concurrency: usize,
}

impl Default for WarmConfig {
    fn default() -> Self {
        Self {
            paths: Vec::new(),
            host: "localhost".to_owned(),
            interval: Duration::ZERO,
            concurrency: 4,
        }
    }
}

/// How a route treats successful mutating requests (`[[route]] write`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum WriteMode {
    /// Drop the cached representation (RFC 9111 §4.4).
    #[default]
    Invalidate,
    /// Store the response as the new representation: the next GET is a hit.
    Through,
    /// Store the request body as the representation, answer `202` at once, replay the write to
    /// the origin from a bounded queue.
    Behind,
}

/// Who checks a write-behind route's writes before they are served (`[[route]] write_auth`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum WriteAuth {
    /// The cache: the route must demand credentials (`write_token` or `write_requires`).
    #[default]
    Cache,
    /// Only the origin, on replay: anyone's write is served to everyone until the origin
    /// refuses it. Must be chosen explicitly.
    Origin,
}

/// `[l1]`: the in-process memory tier.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct L1Config {
    /// Budget in bytes, weighed by each entry's body, headers and key. `0` disables the tier.
    #[serde(deserialize_with = "de::size")]
    pub size: u64,
    /// Longest time any entry stays in memory, so a missed invalidation cannot last forever.
    #[serde(deserialize_with = "de::duration")]
    pub max_ttl: Duration,
}

impl Default for L1Config {
    fn default() -> Self {
        Self {
            size: 100_000_000,
            max_ttl: Duration::from_secs(60),
        }
    }
}

/// The store behind the shared tier (`l2.backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum L2Backend {
    /// Redis or Redis Cluster (feature `redis`, on by default): everything.
    #[default]
    Redis,
    /// Memcached (feature `memcached`): entries, tag stamps and the miss lock; no cross-instance
    /// invalidation events, no prefix invalidation, no durable write-behind.
    Memcached,
}

impl L2Backend {
    /// The name used in configuration and `Cache-Status`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Memcached => "memcached",
        }
    }
}

/// `[l2]`: the shared tier, Redis (default) or Memcached.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct L2Config {
    /// The store: `redis` (default) or `memcached`.
    pub backend: L2Backend,
    /// Redis URL (`redis://…`) or Memcached URL (`memcache://host:port`); `None` (or an empty
    /// string in TOML) runs memory only.
    #[serde(deserialize_with = "de::optional_string")]
    pub url: Option<String>,
    /// Redis Cluster node URLs (one is enough, the others are discovered), instead of `url`.
    pub cluster: Vec<String>,
    /// Prefix of every key this cache writes, so several caches can share one Redis.
    pub prefix: String,
    /// Bound on each Redis command. A slower answer is treated as a miss.
    #[serde(deserialize_with = "de::duration")]
    pub timeout: Duration,
    /// Number of Redis connections.
    #[serde(deserialize_with = "de::count")]
    pub pool_size: usize,
    /// Consecutive failures (errors or timeouts) that open the circuit: Redis is then skipped,
    /// without waiting, until a probe succeeds.
    #[serde(deserialize_with = "de::count")]
    pub breaker_threshold: u32,
    /// How long the circuit stays open before one probe is let through.
    #[serde(deserialize_with = "de::duration")]
    pub breaker_cooldown: Duration,
    /// Coalesce misses across instances with a Redis lock: one instance loads, the others wait
    /// for its entry (at most `lock_wait`, then they load themselves).
    #[serde(deserialize_with = "de::flag")]
    pub lock: bool,
    /// Lifetime of the lock, so a crashed holder cannot block a key for longer.
    #[serde(deserialize_with = "de::duration")]
    pub lock_ttl: Duration,
    /// Longest wait for another instance's load before loading anyway.
    #[serde(deserialize_with = "de::duration")]
    pub lock_wait: Duration,
    /// Memcached only: the server's item size limit (`memcached -I`, 1 MiB by default). Entries
    /// whose encoding and key exceed it are kept out of Memcached (and counted), not sent.
    #[serde(deserialize_with = "de::size")]
    pub max_item_size: u64,
    /// Invalidations (keys, prefixes, tags) kept, and retried in the background, while the
    /// shared tier does not take them. When full, a new invalidation is tried once and not
    /// kept: if that fails, its error is returned and logged.
    #[serde(deserialize_with = "de::count")]
    pub outbox_capacity: usize,
    /// The start-up bound: how long [`TieredCache::wait_for_l2_at_start`](crate::TieredCache::wait_for_l2_at_start)
    /// waits for the shared tier, and how long failures before its first connection do not
    /// count towards the circuit breaker (requests meanwhile wait for the connection within
    /// `timeout`).
    #[serde(deserialize_with = "de::duration")]
    pub connect_wait: Duration,
}

impl L2Config {
    /// Whether a shared tier is configured (`url` or `cluster`).
    pub fn enabled(&self) -> bool {
        self.url.is_some() || !self.cluster.is_empty()
    }
}

impl Default for L2Config {
    fn default() -> Self {
        Self {
            backend: L2Backend::Redis,
            url: None,
            cluster: Vec::new(),
            prefix: "ttc".to_owned(),
            timeout: Duration::from_millis(50),
            pool_size: 4,
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(1),
            lock: false,
            lock_ttl: Duration::from_secs(5),
            lock_wait: Duration::from_secs(2),
            max_item_size: 1024 * 1024,
            outbox_capacity: 10_000,
            connect_wait: Duration::from_secs(2),
        }
    }
}

/// `[compression]`: brotli for entry bodies stored in Redis.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CompressionConfig {
    /// Compress bodies of at least `min_size` bytes when that saves at least `min_savings`.
    #[serde(deserialize_with = "de::flag")]
    pub enabled: bool,
    /// Smallest body, in bytes, worth compressing.
    #[serde(deserialize_with = "de::size")]
    pub min_size: u64,
    /// The compressed body is stored only if it is at least this fraction smaller (0 to 1,
    /// default 0.3): every shared-tier hit pays for decompressing it, which is not worth a
    /// small saving (random-looking text, e.g. base64, shrinks by about a quarter and costs
    /// ~3 µs per KiB to decode).
    #[serde(deserialize_with = "de::number")]
    pub min_savings: f64,
    /// Brotli quality, 0 (fastest) to 11 (smallest, far too slow for a request path).
    #[serde(deserialize_with = "de::count")]
    pub quality: u32,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_size: 4096,
            min_savings: 0.3,
            quality: 4,
        }
    }
}

/// `[http]`: what the HTTP layer stores and how it labels responses.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HttpConfig {
    /// Largest body stored, in bytes; larger responses stream through and are not cached.
    #[serde(deserialize_with = "de::size")]
    pub max_entry_size: u64,
    /// Freshness given to storable responses that carry no explicit freshness (no `max-age`,
    /// `s-maxage` or `Expires`) and get none from the heuristic; `0s` keeps to RFC 9111.
    #[serde(deserialize_with = "de::duration")]
    pub default_ttl: Duration,
    /// How long a stale entry with validators is kept for revalidation.
    #[serde(deserialize_with = "de::duration")]
    pub keep_stale: Duration,
    /// `stale-while-revalidate` for responses that do not give one (RFC 5861): serve a stale
    /// entry this long past its freshness while one background request refreshes it.
    #[serde(deserialize_with = "de::duration")]
    pub stale_while_revalidate: Duration,
    /// `stale-if-error` for responses that do not give one (RFC 5861): serve a stale entry this
    /// long past its freshness when the origin answers 5xx, fails or times out.
    #[serde(deserialize_with = "de::duration")]
    pub stale_if_error: Duration,
    /// How long past its freshness a stale entry may answer when the origin gives no answer at
    /// all (connection refused or closed, `origin_timeout`): RFC 9111 §4.2.4 lets a
    /// disconnected cache serve stale. Never for entries whose directives forbid it
    /// (`must-revalidate`, `proxy-revalidate`, `s-maxage`, `no-cache`), never for a 5xx answer
    /// (that takes `stale-if-error`); `0s` turns it off. Entries are kept this long past their
    /// freshness for it.
    #[serde(deserialize_with = "de::duration")]
    pub stale_if_unreachable: Duration,
    /// Longest wait for the origin's response headers; `0s` waits as long as the origin takes.
    /// On timeout, a stale entry (within `stale-if-error`) answers, or the cache's own 504.
    #[serde(deserialize_with = "de::duration")]
    pub origin_timeout: Duration,
    /// Longest wait for another request's fill of the same key: a fill streams to its own
    /// client, and the requests waiting for it get the stored entry once the body has passed;
    /// past this wait a request asks the origin itself (as nginx's `proxy_cache_lock_timeout`).
    #[serde(deserialize_with = "de::duration")]
    pub coalesce_wait: Duration,
    /// How long a key whose response could not be stored (for what the response says:
    /// `no-store`, `private`, `Set-Cookie`, …) is passed straight to the origin, without a
    /// lookup or coalescing (hit-for-pass); a storable response clears it. `0s` turns it off.
    #[serde(deserialize_with = "de::duration")]
    pub pass_ttl: Duration,
    /// Refresh-ahead: a hit on an entry past this fraction of its freshness lifetime answers
    /// from the cache and starts one background revalidation (one per cluster with `l2.lock`),
    /// so a hot key never expires under traffic. `0` (the default) turns it off.
    #[serde(deserialize_with = "de::number")]
    pub refresh_ahead: f64,
    /// Most tasks the cache runs in the background at once: the body read for the cache after
    /// its client got an early `304` or `412`, background revalidations (`stale-while-revalidate`,
    /// soft purges) and refresh-ahead. One request can start one, so a burst of requests
    /// (cache-busting queries with a matching `If-Modified-Since`, say) would otherwise start as
    /// many downloads. Past the bound the work is skipped (counted in
    /// `Stats::background_skipped`): the client of a matching conditional gets the full
    /// response as it streams instead of an early `304`, and a stale or aging entry is served
    /// without a revalidation (the next request tries again). 1 to 65,536.
    #[serde(deserialize_with = "de::count")]
    pub max_background: u32,
    /// The cache's name in `Cache-Status` (RFC 9211).
    pub status_header: String,
    /// Targeted cache-control fields (RFC 9213) this cache follows, in precedence order: the
    /// first that is present and a valid, non-empty Structured Field Dictionary replaces
    /// `Cache-Control` and `Expires` (and `Surrogate-Control`) for this cache; the fields are
    /// passed on unchanged, for caches further downstream. `None` (the default) is
    /// [`HttpConfig::default_targeted_fields`]; an empty list follows none.
    #[serde(default)]
    pub targeted_fields: Option<Vec<String>>,
    /// Request headers added to every cache key (e.g. a tenant header).
    pub key_headers: Vec<String>,
    /// Most `Vary` variants kept per URL; more are served but not stored.
    #[serde(deserialize_with = "de::count")]
    pub max_variants: u32,
    /// Store responses carrying `Set-Cookie` (and replay the cookie to every client served from
    /// them), as RFC 9111 allows. Off by default: a cookie is usually meant for one client.
    #[serde(deserialize_with = "de::flag")]
    pub store_set_cookie: bool,
    /// What the cache does with request headers that change the URL a framework believes it
    /// serves (`X-Forwarded-Host`, `Forwarded`, `X-Original-URL`, ...): key on them, or strip
    /// them. See the README's security model.
    pub forwarded_headers: ForwardedHeaders,
    /// Give heuristic freshness (RFC 9111 §4.2.2) and `http.default_ttl` to responses to
    /// requests carrying `Cookie` or `Authorization`. Off by default: such a response is
    /// stored only with explicit freshness (or a route's `ttl`), since a page without any is
    /// often personal.
    #[serde(deserialize_with = "de::flag")]
    pub heuristic_with_credentials: bool,
}

impl HttpConfig {
    /// The targeted fields followed when `targeted_fields` is not set: this cache's own
    /// (`<status_header>-cache-control`, e.g. `tiered-cache-cache-control`), then
    /// `cdn-cache-control`, the field RFC 9213 §3 defines for every CDN.
    pub fn default_targeted_fields(&self) -> Vec<String> {
        vec![
            format!("{}-cache-control", self.status_header.to_ascii_lowercase()),
            "cdn-cache-control".to_owned(),
        ]
    }

    /// The targeted fields this cache follows: `targeted_fields`, or the default list.
    pub fn effective_targeted_fields(&self) -> Vec<String> {
        self.targeted_fields
            .clone()
            .unwrap_or_else(|| self.default_targeted_fields())
    }
}

/// `http.forwarded_headers`: what happens to request headers that change the URL an
/// application believes it serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ForwardedHeaders {
    /// Part of the key when present, so a response made from them is served only to requests
    /// carrying the same values (of `Forwarded`, the `host` and `proto` parameters).
    #[default]
    Key,
    /// Removed from the request before it is keyed and forwarded: for a cache at the edge,
    /// with no trusted proxy in front of it.
    Strip,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_entry_size: 8_000_000,
            default_ttl: Duration::ZERO,
            keep_stale: Duration::from_secs(600),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            stale_if_unreachable: Duration::from_secs(10),
            origin_timeout: Duration::from_secs(30),
            coalesce_wait: Duration::from_secs(5),
            pass_ttl: Duration::from_secs(30),
            refresh_ahead: 0.0,
            max_background: 64,
            status_header: "tiered-cache".to_owned(),
            targeted_fields: None,
            key_headers: Vec::new(),
            store_set_cookie: false,
            max_variants: 32,
            forwarded_headers: ForwardedHeaders::Key,
            heuristic_with_credentials: false,
        }
    }
}

/// `[[route]]`: rules for request paths matching a glob, first match wins.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteConfig {
    /// Glob on the request path: `*` stays within one segment, `**` crosses segments.
    pub path: String,
    /// Freshness lifetime used instead of the origin's for storable responses.
    #[serde(default, deserialize_with = "de::optional_duration")]
    pub ttl: Option<Duration>,
    /// Never look up or store: requests pass straight through.
    #[serde(default, deserialize_with = "de::flag")]
    pub bypass: bool,
    /// Request headers added to the cache key on this route.
    #[serde(default)]
    pub key_headers: Vec<String>,
    /// Tags given to every entry stored on this route.
    #[serde(default)]
    pub tags: Vec<String>,
    /// What successful PUT/POST/PATCH/DELETE requests do to the cache.
    #[serde(default)]
    pub write: WriteMode,
    /// `write = "behind"` only: the bearer token writes must carry
    /// (`Authorization: Bearer <token>`, compared in constant time); a write without it is
    /// answered `401` and neither stored nor queued. Empty means no token is demanded. (Without
    /// a replay target, `behind` routes write through, and the origin checks every write.)
    #[serde(default, deserialize_with = "de::optional_string")]
    pub write_token: Option<String>,
    /// `write = "behind"` only: request headers a write must carry (e.g. `["authorization"]`)
    /// to be accepted; the origin verifies them when the write is replayed, and a write it
    /// refuses is retracted. A write missing one is answered `401`.
    #[serde(default)]
    pub write_requires: Vec<String>,
    /// `write = "behind"` only: `origin` accepts writes without credentials (see [`WriteAuth`]);
    /// otherwise a route without `write_token` or `write_requires` is a configuration error.
    #[serde(default)]
    pub write_auth: WriteAuth,
    /// `write = "behind"` only: the `Content-Type` stored writes are served with; the writer's
    /// own is never stored, so a write cannot turn a resource into a page that runs script.
    /// Empty means `application/octet-stream`.
    #[serde(default, deserialize_with = "de::optional_string")]
    pub content_type: Option<String>,
}

impl RouteConfig {
    /// A rule for paths matching `path`, changing nothing until its fields are set.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            ttl: None,
            bypass: false,
            key_headers: Vec::new(),
            tags: Vec::new(),
            write: WriteMode::Invalidate,
            write_token: None,
            write_requires: Vec::new(),
            write_auth: WriteAuth::Cache,
            content_type: None,
        }
    }

    /// Sets who checks writes on this (`write = "behind"`) route.
    #[must_use]
    pub fn write_auth(mut self, auth: WriteAuth) -> Self {
        self.write_auth = auth;
        self
    }

    /// Sets the `Content-Type` writes on this (`write = "behind"`) route are served with.
    #[must_use]
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Demands `Authorization: Bearer <token>` of writes on this (`write = "behind"`) route.
    #[must_use]
    pub fn write_token(mut self, token: impl Into<String>) -> Self {
        self.write_token = Some(token.into());
        self
    }

    /// Demands these request headers of writes on this (`write = "behind"`) route.
    #[must_use]
    pub fn write_requires<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        headers: I,
    ) -> Self {
        self.write_requires
            .extend(headers.into_iter().map(Into::into));
        self
    }

    /// Tags every entry stored on this route.
    #[must_use]
    pub fn tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Sets what mutating requests do on this route.
    #[must_use]
    pub fn write(mut self, mode: WriteMode) -> Self {
        self.write = mode;
        self
    }

    /// Sets the freshness lifetime used on this route.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Makes the route bypass the cache.
    #[must_use]
    pub fn bypass(mut self) -> Self {
        self.bypass = true;
        self
    }

    /// Adds request headers to the cache key on this route.
    #[must_use]
    pub fn key_headers<I: IntoIterator<Item = S>, S: Into<String>>(mut self, headers: I) -> Self {
        self.key_headers.extend(headers.into_iter().map(Into::into));
        self
    }
}

/// Largest `http.max_entry_size` accepted: entry weights are 32-bit in the memory tier.
const MAX_ENTRY_SIZE_LIMIT: u64 = 1 << 31;

/// Largest `http.max_background` accepted: far more than any instance needs, and within what a
/// Tokio semaphore can count on every platform.
const MAX_BACKGROUND_LIMIT: u32 = 65_536;

impl CacheConfig {
    /// A builder starting from the built-in defaults (no environment is read).
    pub fn builder() -> CacheConfigBuilder {
        CacheConfigBuilder {
            config: Self::default(),
        }
    }

    /// Checks values that parse but cannot work, naming the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.l1.max_ttl.is_zero() {
            return Err(ConfigError::invalid("l1.max_ttl", "must be greater than 0"));
        }
        self.validate_l2_backend()?;
        if let (Some(url), L2Backend::Redis) = (&self.l2.url, self.l2.backend) {
            validate_redis_url("l2.url", url)?;
        }
        if self.l2.url.is_some() && !self.l2.cluster.is_empty() {
            return Err(ConfigError::invalid(
                "l2.cluster",
                "set either l2.url (one Redis) or l2.cluster (Redis Cluster), not both",
            ));
        }
        for (index, url) in self.l2.cluster.iter().enumerate() {
            validate_redis_url(&format!("l2.cluster[{index}]"), url)?;
        }
        if self.l2.breaker_threshold == 0 {
            return Err(ConfigError::invalid(
                "l2.breaker_threshold",
                "must be at least 1",
            ));
        }
        if self.l2.lock && (self.l2.lock_ttl.is_zero() || self.l2.lock_wait.is_zero()) {
            return Err(ConfigError::invalid(
                "l2.lock_ttl",
                "lock_ttl and lock_wait must be greater than 0",
            ));
        }
        if self.l2.prefix.is_empty() || self.l2.prefix.chars().any(char::is_whitespace) {
            return Err(ConfigError::invalid(
                "l2.prefix",
                format!(
                    "must be non-empty and without spaces, got {:?}",
                    self.l2.prefix
                ),
            ));
        }
        if self.l2.timeout.is_zero() {
            return Err(ConfigError::invalid("l2.timeout", "must be greater than 0"));
        }
        if self.l2.outbox_capacity == 0 {
            return Err(ConfigError::invalid(
                "l2.outbox_capacity",
                "must be at least 1: invalidations the shared tier does not take are kept there",
            ));
        }
        if !(1..=256).contains(&self.l2.pool_size) {
            return Err(ConfigError::invalid(
                "l2.pool_size",
                format!("must be between 1 and 256, got {}", self.l2.pool_size),
            ));
        }
        if self.compression.quality > 11 {
            return Err(ConfigError::invalid(
                "compression.quality",
                format!("must be between 0 and 11, got {}", self.compression.quality),
            ));
        }
        if !(0.0..1.0).contains(&self.compression.min_savings) {
            return Err(ConfigError::invalid(
                "compression.min_savings",
                format!(
                    "a fraction of the body size from 0 up to 1, e.g. 0.3; got {}",
                    self.compression.min_savings
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.http.refresh_ahead) {
            return Err(ConfigError::invalid(
                "http.refresh_ahead",
                format!(
                    "a fraction of the freshness lifetime from 0 (off) up to 1, e.g. 0.8; got {}",
                    self.http.refresh_ahead
                ),
            ));
        }
        if !(1..=MAX_BACKGROUND_LIMIT).contains(&self.http.max_background) {
            return Err(ConfigError::invalid(
                "http.max_background",
                format!(
                    "must be between 1 and {MAX_BACKGROUND_LIMIT} tasks, got {}",
                    self.http.max_background
                ),
            ));
        }
        validate_token("http.status_header", &self.http.status_header)?;
        validate_targeted_fields(&self.http.effective_targeted_fields())?;
        crate::http::Routes::new(self)?;
        for (key, name) in [
            ("tags.tag_header", &self.tags.tag_header),
            ("tags.surrogate_key_header", &self.tags.surrogate_key_header),
            ("tags.invalidate_header", &self.tags.invalidate_header),
        ] {
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConfigError::invalid(key, format!("invalid header name {name:?}")))?;
        }
        self.tags.validate()?;
        self.validate_route_tags()?;
        self.write_behind.validate()?;
        if self.write_behind.durable && self.l2.url.is_none() {
            return Err(ConfigError::invalid(
                "write_behind.durable",
                "a durable queue lives in one Redis: set l2.url (Redis Cluster is not supported for it)",
            ));
        }
        self.grpc.validate()?;
        if self.http.max_variants == 0 {
            return Err(ConfigError::invalid(
                "http.max_variants",
                "must be at least 1",
            ));
        }
        if self.warm.concurrency == 0 {
            return Err(ConfigError::invalid(
                "warm.concurrency",
                "must be at least 1",
            ));
        }
        if self.http.max_entry_size == 0 || self.http.max_entry_size > MAX_ENTRY_SIZE_LIMIT {
            return Err(ConfigError::invalid(
                "http.max_entry_size",
                format!(
                    "must be between 1 byte and 2GiB, got {}",
                    self.http.max_entry_size
                ),
            ));
        }
        Ok(())
    }

    /// Route tags go first on every entry of the route, so they must fit the tag bounds; and a
    /// write-behind route needs a lifetime for what it serves before the origin has the write.
    fn validate_route_tags(&self) -> Result<(), ConfigError> {
        for (index, route) in self.route.iter().enumerate() {
            let no_lifetime = route.ttl.is_none_or(|ttl| ttl.is_zero());
            if route.write == WriteMode::Behind && no_lifetime && self.http.default_ttl.is_zero() {
                return Err(ConfigError::invalid(
                    format!("route[{index}].ttl"),
                    "write = \"behind\" serves the written body until the origin has the write: \
                     give the route a ttl (or set http.default_ttl) longer than the queue takes",
                ));
            }
            let key = || format!("route[{index}].tags");
            if route.tags.len() > self.tags.max_per_entry as usize {
                return Err(ConfigError::invalid(
                    key(),
                    format!(
                        "{} tags exceed tags.max_per_entry ({})",
                        route.tags.len(),
                        self.tags.max_per_entry
                    ),
                ));
            }
            if let Some(long) = route
                .tags
                .iter()
                .find(|tag| tag.len() as u64 > self.tags.max_length)
            {
                return Err(ConfigError::invalid(
                    key(),
                    format!(
                        "tag {long:?} is longer than tags.max_length ({} bytes)",
                        self.tags.max_length
                    ),
                ));
            }
        }
        Ok(())
    }

    /// What the chosen backend cannot do is an error naming the key that asked for it.
    fn validate_l2_backend(&self) -> Result<(), ConfigError> {
        if self.l2.backend != L2Backend::Memcached {
            return Ok(());
        }
        if !cfg!(feature = "memcached") {
            return Err(ConfigError::invalid(
                "l2.backend",
                "memcached is selected, but this build has no `memcached` feature",
            ));
        }
        if let Some(url) = &self.l2.url {
            address::memcached_address(url)
                .map_err(|reason| ConfigError::invalid("l2.url", reason))?;
        }
        if !self.l2.cluster.is_empty() {
            return Err(ConfigError::invalid(
                "l2.cluster",
                "Redis Cluster needs backend = \"redis\"",
            ));
        }
        if self.write_behind.durable {
            return Err(ConfigError::invalid(
                "write_behind.durable",
                "the durable queue is a Redis Stream: use backend = \"redis\", or durable = false",
            ));
        }
        if self.l2.prefix.len() > 100 || !self.l2.prefix.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::invalid(
                "l2.prefix",
                "Memcached keys need a prefix of at most 100 printable ASCII characters",
            ));
        }
        if self.l2.max_item_size < 1024 {
            return Err(ConfigError::invalid(
                "l2.max_item_size",
                "must be at least 1KiB (Memcached's smallest -I)",
            ));
        }
        Ok(())
    }
}

/// Each targeted field must be a header name, and not one of the fields a targeted field is
/// an alternative to (their syntax and targeting differ).
fn validate_targeted_fields(fields: &[String]) -> Result<(), ConfigError> {
    const KEY: &str = "http.targeted_fields";
    for field in fields {
        let name = http::HeaderName::from_bytes(field.as_bytes()).map_err(|_| {
            ConfigError::invalid(
                KEY,
                format!(
                    "{field:?} is not a header name (the default list derives one from \
                     http.status_header; then set http.targeted_fields explicitly)"
                ),
            )
        })?;
        if name == http::header::CACHE_CONTROL || name == "surrogate-control" {
            return Err(ConfigError::invalid(
                KEY,
                format!("{field:?} is what targeted fields override; list others, such as cdn-cache-control"),
            ));
        }
    }
    Ok(())
}

/// RFC 9211 names the cache with an sf-token (or sf-string; a token is enough here).
fn validate_token(key: &str, value: &str) -> Result<(), ConfigError> {
    let mut chars = value.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '*');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~:/".contains(c));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{value:?} is not a token (letters, digits and -._:/ starting with a letter)"),
        ))
    }
}

#[cfg(feature = "redis")]
fn validate_redis_url(key: &str, url: &str) -> Result<(), ConfigError> {
    if !url.starts_with("redis://") {
        return Err(ConfigError::invalid(
            key,
            format!("invalid Redis URL {url:?}: use redis://[user:password@]host:port[/db]"),
        ));
    }
    fred::types::config::Config::from_url(url)
        .map(drop)
        .map_err(|err| {
            ConfigError::invalid(key, format!("invalid Redis URL {url:?}: {}", err.details()))
        })
}

#[cfg(not(feature = "redis"))]
fn validate_redis_url(key: &str, _url: &str) -> Result<(), ConfigError> {
    Err(ConfigError::invalid(
        key,
        "a Redis URL is set, but this build has no `redis` feature",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        CacheConfig::default().validate().unwrap();
    }

    #[test]
    fn builder_rejects_out_of_range_values_naming_the_key() {
        let err = CacheConfig::builder()
            .compression_quality(12)
            .build()
            .unwrap_err();
        assert_eq!(err.key(), Some("compression.quality"));
        let err = CacheConfig::builder().l2_pool_size(0).build().unwrap_err();
        assert_eq!(err.key(), Some("l2.pool_size"));
        let err = CacheConfig::builder()
            .redis_prefix("has space")
            .build()
            .unwrap_err();
        assert_eq!(err.key(), Some("l2.prefix"));
    }

    #[test]
    fn tag_bounds_are_read_and_checked_naming_the_key() {
        let config = CacheConfig::from_toml_str(
            "[tags]\nmax_per_entry = 64\nmax_length = \"1KiB\"\nmax_header_bytes = \"8KiB\"",
        )
        .unwrap();
        let tags = &config.tags;
        assert_eq!((tags.max_per_entry, tags.max_length), (64, 1024));
        assert_eq!(tags.max_header_bytes, 8192);
        let err = CacheConfig::builder()
            .max_tags_per_entry(0)
            .build()
            .unwrap_err();
        assert_eq!(err.key(), Some("tags.max_per_entry"));
        let err = CacheConfig::builder()
            .max_tags_per_entry(1)
            .route(RouteConfig::new("/a").tags(["x", "y"]))
            .build()
            .unwrap_err();
        assert_eq!(err.key(), Some("route[0].tags"));
    }
}
