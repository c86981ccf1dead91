//! The interface every tier implements, and its error.

use std::future::Future;

use super::codec::{DecodeError, EncodeError};
use super::CachedEntry;

/// How the read paths reach the memory tier (the shared tier is its own type, whose operations
/// go through breakers and can be pending); `get` returns entries that are fresh or stale but
/// still kept. Writes go through [`Versions::admit`](super::versions::Versions::admit) only.
pub(crate) trait Tier: Send + Sync {
    fn get(&self, key: &str)
        -> impl Future<Output = Result<Option<CachedEntry>, TierError>> + Send;
}

/// A failed operation on a tier.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TierError {
    /// No answer within `l2.timeout`.
    #[error("timed out")]
    Timeout,
    /// Skipped: the circuit breaker is open after repeated failures.
    #[error("skipped: circuit open after repeated failures")]
    CircuitOpen,
    /// Not connected (refused, killed, reconnecting).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The stored bytes are not an entry; the key was deleted.
    #[error("stored value is not an entry: {0}")]
    Decode(#[from] DecodeError),
    /// The entry could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The encoded entry exceeds the backend's item size limit (Memcached's `l2.max_item_size`):
    /// not written, counted in [`Stats::l2_too_large`](crate::Stats::l2_too_large).
    #[error("entry of {size} bytes exceeds the item size limit of {limit} bytes")]
    #[cfg_attr(not(feature = "memcached"), allow(dead_code))]
    TooLarge {
        /// Encoded size including the key.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The backend cannot do this (e.g. prefix invalidation on Memcached, which cannot list keys).
    #[error("not supported by the {backend} backend: {operation}")]
    #[cfg_attr(not(feature = "memcached"), allow(dead_code))]
    Unsupported {
        /// The L2 backend, `memcached`.
        backend: &'static str,
        /// What was asked for.
        operation: &'static str,
    },
    /// Any other error from the backend.
    #[error("{0}")]
    Backend(String),
}
