//! Shared fixtures: a private `redis-server` per test, a wiremock origin behind the cache.
#![allow(dead_code, unused_imports)]

pub mod origin;
mod process;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
pub use redis::*;

#[cfg(feature = "redis")]
pub mod load;

#[cfg(feature = "memcached")]
pub mod memcached;
