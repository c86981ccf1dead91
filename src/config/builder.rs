//! [`CacheConfigBuilder`]: every configuration key as a setter.

use std::time::Duration;

use super::{
    CacheConfig, ConfigError, ForwardedHeaders, GrpcConfig, L3Config, RouteConfig, TagsConfig,
    WarmConfig, WriteBehindConfig,
};

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
    pub(super) config: CacheConfig,
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

    /// `l2.backend = "memcached"` and `l2.url`: the Memcached server (`memcache://host:port`) to
    /// use as the shared tier (feature `memcached`).
    pub fn memcached_url(mut self, url: impl Into<String>) -> Self {
        self.config.l2.backend = super::L2Backend::Memcached;
        self.config.l2.url = Some(url.into());
        self
    }

    /// `l2.max_item_size`: Memcached's item size limit in bytes (`memcached -I`).
    pub fn l2_max_item_size(mut self, bytes: u64) -> Self {
        self.config.l2.max_item_size = bytes;
        self
    }

    /// `l2.cluster`: Redis Cluster nodes to use as the shared tier (instead of `l2.url`).
    pub fn redis_cluster<I: IntoIterator<Item = S>, S: Into<String>>(mut self, nodes: I) -> Self {
        self.config.l2.cluster = nodes.into_iter().map(Into::into).collect();
        self
    }

    /// `l2.breaker_threshold` and `l2.breaker_cooldown`: the circuit breaker of the Redis tier.
    pub fn l2_breaker(mut self, threshold: u32, cooldown: Duration) -> Self {
        self.config.l2.breaker_threshold = threshold;
        self.config.l2.breaker_cooldown = cooldown;
        self
    }

    /// `l2.lock`, `l2.lock_ttl`, `l2.lock_wait`: coalescing of misses across instances.
    pub fn l2_lock(mut self, ttl: Duration, wait: Duration) -> Self {
        self.config.l2.lock = true;
        self.config.l2.lock_ttl = ttl;
        self.config.l2.lock_wait = wait;
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

    /// `l2.outbox_capacity`: invalidations kept for retry while the shared tier does not take
    /// them.
    pub fn l2_outbox_capacity(mut self, invalidations: usize) -> Self {
        self.config.l2.outbox_capacity = invalidations;
        self
    }

    /// `l2.connect_wait`: the start-up bound for connecting to the shared tier.
    pub fn l2_connect_wait(mut self, wait: Duration) -> Self {
        self.config.l2.connect_wait = wait;
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

    /// `compression.min_savings`: the compressed body is kept only if it is at least this
    /// fraction smaller (0 to 1).
    pub fn compression_min_savings(mut self, fraction: f64) -> Self {
        self.config.compression.min_savings = fraction;
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

    /// `http.stale_while_revalidate`: default window to serve stale while refreshing.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.config.http.stale_while_revalidate = window;
        self
    }

    /// `http.stale_if_error`: default window to serve stale when the origin fails.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.config.http.stale_if_error = window;
        self
    }

    /// `http.stale_if_unreachable`: how long past its freshness a stale entry answers when the
    /// `http.pass_ttl`: how long a key whose response could not be stored goes straight to
    /// the origin (hit-for-pass); `Duration::ZERO` turns it off.
    pub fn pass_ttl(mut self, ttl: Duration) -> Self {
        self.config.http.pass_ttl = ttl;
        self
    }

    /// `http.refresh_ahead`: a hit past this fraction of its freshness lifetime starts one
    /// background revalidation (0, the default, is off).
    pub fn refresh_ahead(mut self, fraction: f64) -> Self {
        self.config.http.refresh_ahead = fraction;
        self
    }

    /// `http.max_background`: most tasks the cache runs in the background at once (64 by
    /// default); past it, that optional work is skipped.
    pub fn max_background(mut self, tasks: u32) -> Self {
        self.config.http.max_background = tasks;
        self
    }

    /// `early_refresh.beta`: XFetch's β for `get_or_set` (0, the default, is off; 1.0 is the
    /// paper's choice).
    pub fn early_refresh_beta(mut self, beta: f64) -> Self {
        self.config.early_refresh.beta = beta;
        self
    }

    /// `http.coalesce_wait`: longest wait for another request's fill of the same key.
    pub fn coalesce_wait(mut self, wait: Duration) -> Self {
        self.config.http.coalesce_wait = wait;
        self
    }

    /// origin gives no answer (`Duration::ZERO` turns it off).
    pub fn stale_if_unreachable(mut self, window: Duration) -> Self {
        self.config.http.stale_if_unreachable = window;
        self
    }

    /// `http.targeted_fields`: the targeted cache-control fields (RFC 9213) this cache follows,
    /// in precedence order; an empty list follows none.
    pub fn targeted_fields<I, S>(mut self, fields: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.http.targeted_fields = Some(fields.into_iter().map(Into::into).collect());
        self
    }

    /// `http.origin_timeout`: longest wait for the origin's response headers.
    pub fn origin_timeout(mut self, timeout: Duration) -> Self {
        self.config.http.origin_timeout = timeout;
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

    /// `purge.token`: enables PURGE for requests with `Authorization: Bearer <token>`.
    pub fn purge_token(mut self, token: impl Into<String>) -> Self {
        self.config.purge.token = Some(token.into());
        self
    }

    /// `[write_behind]`: the write-behind queue's settings.
    pub fn write_behind(mut self, write_behind: WriteBehindConfig) -> Self {
        self.config.write_behind = write_behind;
        self
    }

    /// `[warm]`: the warming settings.
    pub fn warm(mut self, warm: WarmConfig) -> Self {
        self.config.warm = warm;
        self
    }

    /// Appends a `[[route]]` rule.
    pub fn route(mut self, route: RouteConfig) -> Self {
        self.config.route.push(route);
        self
    }

    /// `http.max_variants`: most `Vary` variants stored per URL.
    pub fn max_variants(mut self, variants: u32) -> Self {
        self.config.http.max_variants = variants;
        self
    }

    /// `http.store_set_cookie`: store responses that set cookies (off by default).
    pub fn store_set_cookie(mut self, store: bool) -> Self {
        self.config.http.store_set_cookie = store;
        self
    }

    /// `http.forwarded_headers`: key on URL-overriding request headers (the default) or strip
    /// them.
    pub fn forwarded_headers(mut self, policy: ForwardedHeaders) -> Self {
        self.config.http.forwarded_headers = policy;
        self
    }

    /// `http.heuristic_with_credentials`: heuristic freshness for responses to requests with
    /// `Cookie` or `Authorization` (off by default).
    pub fn heuristic_with_credentials(mut self, allow: bool) -> Self {
        self.config.http.heuristic_with_credentials = allow;
        self
    }

    /// `[tags]`: tag and invalidation headers, and how long invalidation stamps are kept.
    pub fn tags(mut self, tags: TagsConfig) -> Self {
        self.config.tags = tags;
        self
    }

    /// `tags.max_per_entry`: most tags kept on one entry; further ones are dropped and counted.
    pub fn max_tags_per_entry(mut self, tags: u32) -> Self {
        self.config.tags.max_per_entry = tags;
        self
    }

    /// `[grpc]`: unary gRPC methods to cache, and for how long.
    pub fn grpc(mut self, grpc: GrpcConfig) -> Self {
        self.config.grpc = grpc;
        self
    }

    /// `[l3]`: the database behind `SqlLoader` (feature `sqlx`).
    pub fn l3(mut self, l3: L3Config) -> Self {
        self.config.l3 = l3;
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<CacheConfig, ConfigError> {
        self.config.validate()?;
        Ok(self.config)
    }

    /// The configuration as set, not validated yet.
    pub(crate) fn into_config(self) -> CacheConfig {
        self.config
    }
}
