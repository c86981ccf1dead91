//! Configuration: TOML with `${VAR:-default}` placeholders, environment defaults, and a builder.
//!
//! Every key, its environment variable and its default:
//!
//! | key | env (used when the key is absent) | default | meaning |
//! |---|---|---|---|
//! | `l1.size` | `L1_CACHE_SIZE` | `100MB` | memory tier budget in bytes of entries; `0` disables L1 |
//! | `l1.max_ttl` | | `60s` | longest stay of any entry in memory, whatever its own TTL |
//! | `l2.url` | `REDIS_URL` | empty | Redis URL (`redis://[user:pass@]host:port[/db]`); empty = no L2 |
//! | `l2.prefix` | | `ttc` | prefix of every Redis key |
//! | `l2.timeout` | | `50ms` | bound on every Redis command; slower = miss |
//! | `l2.pool_size` | | `4` | Redis connections |
//! | `compression.enabled` | `CACHE_COMPRESSION` | `true` | brotli for bodies stored in Redis |
//! | `compression.min_size` | | `1KiB` | smallest body worth compressing |
//! | `compression.quality` | | `4` | brotli quality, 0–11 (11 is ~100× slower) |
//! | `http.max_entry_size` | | `8MB` | largest body stored; larger ones stream through uncached |
//! | `http.default_ttl` | | `0s` | freshness for storable responses without their own; `0s` = RFC 9111 only |
//! | `http.keep_stale` | | `10m` | how long stale entries are kept for revalidation |
//! | `http.status_header` | | `tiered-cache` | the cache's name in `Cache-Status` |
//! | `http.key_headers` | | `[]` | request headers added to every cache key |
//! | `[[route]] path` | | | glob on the request path (`*` within a segment, `**` across) |
//! | `[[route]] ttl` | | | freshness used instead of the origin's on this route |
//! | `[[route]] bypass` | | `false` | requests on this route pass straight through |
//! | `[[route]] key_headers` | | `[]` | request headers added to the key on this route |
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

mod de;
mod load;

use std::time::Duration;

use serde::Deserialize;

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

/// `[l2]`: the shared Redis tier.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct L2Config {
    /// Redis URL; `None` (or an empty string in TOML) runs memory only.
    #[serde(deserialize_with = "de::optional_string")]
    pub url: Option<String>,
    /// Prefix of every key this cache writes, so several caches can share one Redis.
    pub prefix: String,
    /// Bound on each Redis command. A slower answer is treated as a miss.
    #[serde(deserialize_with = "de::duration")]
    pub timeout: Duration,
    /// Number of Redis connections.
    #[serde(deserialize_with = "de::count")]
    pub pool_size: usize,
}

impl Default for L2Config {
    fn default() -> Self {
        Self {
            url: None,
            prefix: "ttc".to_owned(),
            timeout: Duration::from_millis(50),
            pool_size: 4,
        }
    }
}

/// `[compression]`: brotli for entry bodies stored in Redis.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CompressionConfig {
    /// Compress bodies of at least `min_size` bytes when that saves at least 10 %.
    #[serde(deserialize_with = "de::flag")]
    pub enabled: bool,
    /// Smallest body, in bytes, worth compressing.
    #[serde(deserialize_with = "de::size")]
    pub min_size: u64,
    /// Brotli quality, 0 (fastest) to 11 (smallest, far too slow for a request path).
    #[serde(deserialize_with = "de::count")]
    pub quality: u32,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_size: 1024,
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
    /// How long a stale entry is kept for revalidation (and, later, stale serving).
    #[serde(deserialize_with = "de::duration")]
    pub keep_stale: Duration,
    /// The cache's name in `Cache-Status` (RFC 9211).
    pub status_header: String,
    /// Request headers added to every cache key (e.g. a tenant header).
    pub key_headers: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_entry_size: 8_000_000,
            default_ttl: Duration::ZERO,
            keep_stale: Duration::from_secs(600),
            status_header: "tiered-cache".to_owned(),
            key_headers: Vec::new(),
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
}

impl RouteConfig {
    /// A rule for paths matching `path`, changing nothing until its fields are set.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            ttl: None,
            bypass: false,
            key_headers: Vec::new(),
        }
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
        if let Some(url) = &self.l2.url {
            validate_redis_url(url)?;
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
        validate_token("http.status_header", &self.http.status_header)?;
        crate::http::Routes::new(self)?;
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
fn validate_redis_url(url: &str) -> Result<(), ConfigError> {
    if !url.starts_with("redis://") {
        return Err(ConfigError::invalid(
            "l2.url",
            format!("invalid Redis URL {url:?}: use redis://[user:password@]host:port[/db]"),
        ));
    }
    fred::types::config::Config::from_url(url)
        .map(drop)
        .map_err(|err| {
            ConfigError::invalid(
                "l2.url",
                format!("invalid Redis URL {url:?}: {}", err.details()),
            )
        })
}

#[cfg(not(feature = "redis"))]
fn validate_redis_url(_url: &str) -> Result<(), ConfigError> {
    Err(ConfigError::invalid(
        "l2.url",
        "a Redis URL is set, but this build has no `redis` feature",
    ))
}

/// Builds a [`CacheConfig`] in code, starting from the defaults; [`build`](Self::build) validates.
///
/// ```
/// use std::time::Duration;
/// use tower_tiered_cache::CacheConfig;
///
/// let config = CacheConfig::builder()
///     .l1_size(32 * 1024 * 1024)
///     .l1_max_ttl(Duration::from_secs(10))
///     .compression(false)
///     .build()?;
/// assert!(config.l2.url.is_none());
/// # Ok::<(), tower_tiered_cache::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct CacheConfigBuilder {
    config: CacheConfig,
}

impl CacheConfigBuilder {
    /// `l1.size`: memory budget in bytes; `0` disables the memory tier.
    pub fn l1_size(mut self, bytes: u64) -> Self {
        self.config.l1.size = bytes;
        self
    }

    /// `l1.max_ttl`: longest stay of any entry in memory.
    pub fn l1_max_ttl(mut self, max_ttl: Duration) -> Self {
        self.config.l1.max_ttl = max_ttl;
        self
    }

    /// `l2.url`: the Redis to use as the shared tier.
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.config.l2.url = Some(url.into());
        self
    }

    /// `l2.prefix`: prefix of every Redis key.
    pub fn redis_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.l2.prefix = prefix.into();
        self
    }

    /// `l2.timeout`: bound on each Redis command.
    pub fn l2_timeout(mut self, timeout: Duration) -> Self {
        self.config.l2.timeout = timeout;
        self
    }

    /// `l2.pool_size`: number of Redis connections.
    pub fn l2_pool_size(mut self, connections: usize) -> Self {
        self.config.l2.pool_size = connections;
        self
    }

    /// `compression.enabled`: brotli for bodies stored in Redis.
    pub fn compression(mut self, enabled: bool) -> Self {
        self.config.compression.enabled = enabled;
        self
    }

    /// `compression.min_size`: smallest body worth compressing, in bytes.
    pub fn compression_min_size(mut self, bytes: u64) -> Self {
        self.config.compression.min_size = bytes;
        self
    }

    /// `compression.quality`: brotli quality, 0–11.
    pub fn compression_quality(mut self, quality: u32) -> Self {
        self.config.compression.quality = quality;
        self
    }

    /// `http.max_entry_size`: largest body stored, in bytes.
    pub fn max_entry_size(mut self, bytes: u64) -> Self {
        self.config.http.max_entry_size = bytes;
        self
    }

    /// `http.default_ttl`: freshness for storable responses without any of their own.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.config.http.default_ttl = ttl;
        self
    }

    /// `http.keep_stale`: how long stale entries are kept for revalidation.
    pub fn keep_stale(mut self, keep: Duration) -> Self {
        self.config.http.keep_stale = keep;
        self
    }

    /// `http.status_header`: the cache's name in `Cache-Status`.
    pub fn status_name(mut self, name: impl Into<String>) -> Self {
        self.config.http.status_header = name.into();
        self
    }

    /// `http.key_headers`: request headers added to every cache key.
    pub fn key_header(mut self, name: impl Into<String>) -> Self {
        self.config.http.key_headers.push(name.into());
        self
    }

    /// Appends a `[[route]]` rule.
    pub fn route(mut self, route: RouteConfig) -> Self {
        self.config.route.push(route);
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<CacheConfig, ConfigError> {
        self.config.validate()?;
        Ok(self.config)
    }
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
}
