//! [`CacheLayer`]: wraps a service in a [`CacheService`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service};

use crate::config::{CacheConfig, ConfigError};
use crate::http::state::State;
use crate::http::write_behind::ReplayTo;
use crate::service::CacheService;
use crate::store::TieredCache;
use crate::write_behind::WriteBehind;
use crate::Error;

/// A tower layer that caches the wrapped service's responses in memory and, when configured, in
/// Redis. Cheap to clone: clones share the cache.
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Full};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_tiered_cache::{CacheConfig, CacheLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let origin = service_fn(|_request: Request<Full<Bytes>>| async {
///     let response = Response::builder()
///         .header("cache-control", "max-age=60")
///         .body(Full::new(Bytes::from("hello")))
///         .unwrap();
///     Ok::<_, Infallible>(response)
/// });
/// let service = ServiceBuilder::new()
///     .layer(CacheLayer::new(CacheConfig::default()))
///     .service(origin);
///
/// let request = || Request::get("http://example.com/").body(Full::default()).unwrap();
/// let first = service.clone().oneshot(request()).await.unwrap();
/// assert_eq!(first.headers()["cache-status"], "tiered-cache; fwd=miss; fwd-status=200; stored");
/// let second = service.clone().oneshot(request()).await.unwrap();
/// assert_eq!(second.headers()["cache-status"], "tiered-cache; hit; detail=memory");
/// assert_eq!(second.into_body().collect().await.unwrap().to_bytes(), "hello");
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct CacheLayer {
    state: Arc<State>,
}

impl crate::CacheConfigBuilder {
    /// Validates the configuration and builds a [`CacheLayer`] from it (see
    /// [`CacheLayer::try_new`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_tiered_cache::Error> {
    /// use std::time::Duration;
    /// use tower_tiered_cache::CacheLayer;
    ///
    /// let layer = CacheLayer::builder()
    ///     .l1_size(64 * 1024 * 1024)
    ///     .stale_if_error(Duration::from_secs(300))
    ///     .build_layer()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn build_layer(self) -> Result<CacheLayer, Error> {
        // `try_new` validates it.
        CacheLayer::try_new(self.into_config())
    }
}

impl CacheLayer {
    /// A layer with its own [`TieredCache`] built from `config`.
    ///
    /// # Panics
    ///
    /// When the configuration is invalid, or Redis is configured outside a Tokio runtime: a
    /// start-up error, reported with the key at fault. Use [`CacheLayer::try_new`] to handle it.
    pub fn new(config: CacheConfig) -> Self {
        Self::try_new(config).unwrap_or_else(|err| panic!("tower-tiered-cache: {err}"))
    }

    /// A builder with a setter for every configuration key, ending in
    /// [`build_layer`](crate::CacheConfigBuilder::build_layer).
    pub fn builder() -> crate::CacheConfigBuilder {
        CacheConfig::builder()
    }

    /// Like [`CacheLayer::new`], returning configuration errors instead of panicking.
    pub fn try_new(config: CacheConfig) -> Result<Self, Error> {
        let cache = TieredCache::new(config.clone())?;
        Self::with_cache(cache, &config)
    }

    /// A layer over an existing cache (shared with library use of it); `config` supplies the
    /// HTTP settings (`[http]`, `[[route]]`).
    pub fn with_cache(cache: TieredCache, config: &CacheConfig) -> Result<Self, Error> {
        Ok(Self {
            state: Arc::new(State::new(cache, config)?),
        })
    }

    /// The cache behind the layer, for statistics and invalidation.
    pub fn cache(&self) -> &TieredCache {
        &self.state.cache
    }

    /// For a server before it accepts connections: waits for the shared tier up to
    /// `l2.connect_wait` and logs whether it is up; see
    /// [`TieredCache::wait_for_l2_at_start`]. The layer serves either way.
    pub async fn wait_for_l2_at_start(&self) -> bool {
        self.state.cache.wait_for_l2_at_start().await
    }

    /// Enables write-behind for `write = "behind"` routes: writes are answered `202` from the
    /// cache and replayed to `target` from the `[write_behind]` queue (in Redis when
    /// `write_behind.durable`). `target` is what the layer wraps (or an upstream client), without
    /// the cache in front, so replays do not loop. A write `target` refuses (`4xx`), or that is
    /// dropped after its last retry, is retracted from the cache. Routes that leave writes to the
    /// origin alone (`write_auth = "origin"`) are logged as a warning.
    ///
    /// Without a target, `behind` routes write through synchronously instead.
    pub fn write_behind_to<T, B>(self, target: T) -> Result<Self, Error>
    where
        T: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
        T::Future: Send,
        T::Error: std::fmt::Display,
        B: Send + 'static,
    {
        let state = &self.state;
        let queue = WriteBehind::start(
            &state.write_behind_config,
            state.durable_target.clone(),
            ReplayTo::new(target, state.cache.clone()),
        )?;
        for path in state.routes.open_write_paths() {
            tracing::warn!(
                route = %path,
                "write-behind route takes writes from anyone (write_auth = \"origin\"): they \
                 are served until the origin refuses their replay"
            );
        }
        state.write_behind.set(queue).map_err(|_| {
            ConfigError::invalid("write_behind", "a replay target was already given")
        })?;
        Ok(self)
    }

    /// The write-behind queue, when [`write_behind_to`](Self::write_behind_to) started one.
    pub fn write_behind(&self) -> Option<&WriteBehind> {
        self.state.write_behind.get()
    }

    /// Graceful shutdown: waits (at most `deadline`) until queued writes were replayed. Returns
    /// how many were still queued (0 when drained; durable ones stay in Redis for the next
    /// start).
    pub async fn shutdown(&self, deadline: Duration) -> usize {
        match self.state.write_behind.get() {
            Some(queue) => queue.shutdown(deadline).await,
            None => 0,
        }
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService::new(inner, self.state.clone())
    }
}
