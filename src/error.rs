//! The crate's error type.

use crate::config::ConfigError;

/// Errors from building or driving a cache. Reads never fail because of Redis: they degrade to
/// misses. Invalidations report L2 failures, because a purge that did not reach Redis leaves
/// the entry there for other instances to serve.
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
    /// An operation on the shared tier failed; the memory tier was updated.
    #[error("L2 {operation} failed: {source}")]
    L2 {
        /// What was attempted, e.g. `invalidate`.
        operation: &'static str,
        /// The tier's error.
        source: crate::store::TierError,
    },
}
