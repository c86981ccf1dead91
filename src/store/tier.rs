//! The interface every tier implements, and its error.

use std::future::Future;

use super::codec::{DecodeError, EncodeError};
use super::CachedEntry;

/// One level of the cache. `get` returns entries that are fresh or stale but still kept; each
/// tier enforces entry lifetimes itself.
pub(crate) trait Tier: Send + Sync {
    fn get(&self, key: &str)
        -> impl Future<Output = Result<Option<CachedEntry>, TierError>> + Send;
    fn set(
        &self,
        key: &str,
        entry: &CachedEntry,
    ) -> impl Future<Output = Result<(), TierError>> + Send;
    fn remove(&self, key: &str) -> impl Future<Output = Result<(), TierError>> + Send;
    /// Removes every key starting with `prefix`; returns how many were removed.
    fn remove_prefix(&self, prefix: &str) -> impl Future<Output = Result<u64, TierError>> + Send;
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
    /// Any other error from the backend.
    #[error("{0}")]
    Backend(String),
}
