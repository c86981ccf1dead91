//! Thin wrappers around crate-private internals, for the benchmarks in `benches/` only: not part
//! of the API, no stability promise.
#![doc(hidden)]

use ::http::request::Parts;
use ::http::HeaderName;
use bytes::Bytes;

use crate::config::CacheConfig;
use crate::store::CachedEntry;
use crate::BoxError;

/// The entry codec the shared tier uses, with `config`'s compression settings and size limit.
#[derive(Clone, Debug)]
pub struct Codec(crate::store::codec::Codec);

impl Codec {
    /// A codec as the Redis tier would build it from `config`.
    pub fn new(config: &CacheConfig) -> Self {
        Self(crate::store::codec::Codec::new(config))
    }

    /// The bytes stored in Redis for `entry`.
    pub fn encode(&self, entry: &CachedEntry) -> Result<Vec<u8>, BoxError> {
        Ok(self.0.encode(entry)?)
    }

    /// The entry read back from stored bytes.
    pub fn decode(&self, bytes: &Bytes) -> Result<CachedEntry, BoxError> {
        Ok(self.0.decode(bytes)?)
    }
}

/// The primary cache key of a request with the given key headers.
pub fn primary_key(parts: &Parts, key_headers: &[HeaderName]) -> String {
    crate::http::key::primary_key(parts, key_headers)
}
