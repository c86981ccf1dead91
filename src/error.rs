//! The crate's error type.

use crate::config::ConfigError;
use crate::BoxError;

/// Errors from building or driving a cache. Reads never fail because of Redis: they degrade to
/// misses. Invalidations report what did not reach the shared tier at once: a purge that did not
/// reach Redis leaves the entry there for other instances to serve until it does.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Something that runs background tasks (the Redis tier, write-behind workers) was created
    /// outside a Tokio runtime.
    #[error("background tasks (Redis connections, write-behind workers) need a Tokio runtime: create the cache inside one (e.g. under #[tokio::main])")]
    NoRuntime,
    /// An operation on the shared tier failed and is not retried; the memory tier was updated.
    #[error("L2 {operation} failed: {source}")]
    L2 {
        /// What was attempted, e.g. `invalidate`.
        operation: &'static str,
        /// The tier's error (a timeout, the circuit breaker, the backend's own error).
        source: BoxError,
    },
    /// The shared tier's backend cannot do this at all (prefix invalidation and flush on
    /// Memcached, which cannot list its keys); the memory tier was updated.
    #[error("L2 {operation} is not supported by the {backend} backend")]
    Unsupported {
        /// What was asked for, e.g. `invalidate_prefix`.
        operation: &'static str,
        /// The shared tier's backend, e.g. `memcached`.
        backend: &'static str,
    },
    /// An invalidation did not reach the shared tier now. It was applied to this instance's
    /// memory, is kept (up to `l2.outbox_capacity`) and retried in the background until the tier
    /// takes it, and until then this instance treats the shared entries it covers as gone.
    /// Other instances may serve their copies until it gets through. See
    /// [`Error::is_invalidation_pending`].
    #[error("L2 {operation} pending, retried in the background: {source}")]
    InvalidationPending {
        /// What was attempted, e.g. `invalidate`.
        operation: &'static str,
        /// Why the tier did not take it now.
        source: BoxError,
    },
}

impl Error {
    /// Whether this is an invalidation that will still be applied: the write went through and
    /// its invalidation is retried in the background (an HTTP response can say so, e.g. with a
    /// `Cache-Status` detail `invalidation-pending`).
    pub fn is_invalidation_pending(&self) -> bool {
        matches!(self, Self::InvalidationPending { .. })
    }
}
