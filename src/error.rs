//! The crate's error type.

use crate::config::ConfigError;

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
    /// An operation on the shared tier failed and is not retried (e.g. prefix invalidation on
    /// Memcached); the memory tier was updated.
    #[error("L2 {operation} failed: {source}")]
    L2 {
        /// What was attempted, e.g. `invalidate`.
        operation: &'static str,
        /// The tier's error.
        source: crate::store::TierError,
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
        source: crate::store::TierError,
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
