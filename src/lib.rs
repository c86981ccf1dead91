//! A tiered cache for Rust services: an in-process memory tier (L1, [mini-moka]), a shared Redis
//! tier (L2, [fred]) and your own loader as the source of truth (L3).
//!
//! [`CacheLayer`] puts it in front of any tower service — axum, tonic, hyper — as an HTTP cache
//! with shared-cache RFC 9111 semantics, where the wrapped service is the loader:
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use tower_tiered_cache::{CacheConfig, CacheLayer};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let app = Router::new()
//!         .route("/", get(|| async { ([("cache-control", "max-age=60")], "hello") }))
//!         .layer(CacheLayer::new(CacheConfig::from_env()?)); // REDIS_URL set → Redis as L2
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     Ok(axum::serve(listener, app).await?)
//! }
//! ```
//!
//! Every response carries an RFC 9211 `Cache-Status` member, e.g. `tiered-cache; hit;
//! detail=memory` or `tiered-cache; fwd=miss; fwd-status=200; stored`.
//!
//! # With hyper
//!
//! Any `Service<http::Request<B>>` works, here a hyper 1 server around a plain function:
//!
//! ```no_run
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use hyper::body::Incoming;
//! use hyper_util::rt::{TokioExecutor, TokioIo};
//! use hyper_util::server::conn::auto;
//! use hyper_util::service::TowerToHyperService;
//! use tower::{Layer, ServiceBuilder};
//! use tower_tiered_cache::{CacheConfig, CacheLayer};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = tower::service_fn(|_request: Request<Incoming>| async {
//!     let response = Response::builder()
//!         .header("cache-control", "max-age=60")
//!         .body(Full::new(Bytes::from("hello")))
//!         .unwrap();
//!     Ok::<_, Infallible>(response)
//! });
//! let service = ServiceBuilder::new()
//!     .layer(CacheLayer::new(CacheConfig::from_env()?))
//!     .service(app);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! loop {
//!     let (stream, _) = listener.accept().await?;
//!     let service = TowerToHyperService::new(service.clone());
//!     tokio::spawn(async move {
//!         let _ = auto::Builder::new(TokioExecutor::new())
//!             .serve_connection(TokioIo::new(stream), service)
//!             .await;
//!     });
//! }
//! # }
//! ```
//!
//! # With tonic
//!
//! [`grpc::GrpcCacheLayer`] (feature `tonic`) caches allow-listed unary methods, keyed by the
//! method and a hash of the request message, with their trailers; calls carrying credentials
//! bypass it unless they are keyed per identity (`grpc.key_metadata`). `CatalogServer` stands
//! for your tonic-build generated server:
//!
//! ```text
//! let mut grpc = GrpcConfig::default();
//! grpc.methods = vec!["/shop.Catalog/GetProduct".into()];
//! let config = CacheConfig::builder().grpc(grpc).build()?;
//! Server::builder()
//!     .layer(GrpcCacheLayer::new(TieredCache::new(config.clone())?, &config))
//!     .add_service(CatalogServer::new(catalog))
//!     .serve(address)
//!     .await?;
//! ```
//!
//! (`examples/grpc.rs` runs this end to end.) HTTP services behind tonic's router can use
//! [`CacheLayer`] too.
//!
//! # As a library
//!
//! [`TieredCache`] is the multi-level cache as a plain library: look a key up in memory, then in
//! Redis (promoting a Redis hit into memory with its remaining lifetime), then call the loader —
//! once, however many callers ask for the same missing key at the same time.
//!
//! ```
//! use std::time::Duration;
//! use tower_tiered_cache::{CacheConfig, CachedEntry, TieredCache};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Memory only; set `l2.url` (or REDIS_URL with `CacheConfig::from_env`) to add Redis.
//! let config = CacheConfig::builder().l1_size(64 * 1024 * 1024).build()?;
//! let cache = TieredCache::new(config)?;
//!
//! let user = cache
//!     .get_or_set("user:42", || async {
//!         // The loader runs on a miss only: a database query, an HTTP call...
//!         Ok::<_, std::io::Error>(CachedEntry::new("Ada Lovelace", Duration::from_secs(60)))
//!     })
//!     .await?;
//! assert_eq!(user.body(), "Ada Lovelace");
//!
//! // The second call is answered from memory; the loader is not called.
//! let again = cache.get("user:42").await.expect("cached");
//! assert_eq!(again.body(), "Ada Lovelace");
//! assert_eq!(cache.stats().memory_hits, 1);
//! # Ok(())
//! # }
//! ```
//!
//! For `serde` types, [`TieredCache::get_or_set_value`], [`TieredCache::get_value`] and
//! [`TieredCache::set_value`] store the value (bincode) as the entry's body, with the same tiers,
//! single-flight, tags and invalidation; bytes of another type under the key are a miss.
//!
//! # Guarantees
//!
//! - An entry is never returned as fresh after its own time to live, in either tier; the memory tier
//!   additionally caps every entry's stay at `l1.max_ttl`.
//! - Redis is an optimisation, never a dependency: when it is refused, killed or slower than
//!   `l2.timeout`, reads degrade to misses (the loader answers), writes to it are skipped, and the
//!   failures are counted in [`Stats::l2_errors`] and logged with `tracing`.
//! - An invalidation that cannot reach the shared tier (a delete, a tag stamp, the event that
//!   tells the other instances) is kept, up to `l2.outbox_capacity`, and retried in the
//!   background until it gets through; until then this instance treats the shared entries it
//!   covers as gone, and the call returns [`Error::InvalidationPending`]. On Redis Cluster each
//!   primary has its own circuit breaker: one dead master does not switch off the others.
//! - Bytes under a cache key that do not decode (foreign, truncated, from a future format) are a
//!   miss: the key is deleted and [`Stats::l2_decode_errors`] counts it. Decoding never panics.
//! - Concurrent [`TieredCache::get_or_set`] calls for one key share one loader call; a loader error
//!   is returned to every caller waiting on it, and nothing is stored.
//!
//! [mini-moka]: https://docs.rs/mini-moka
//! [fred]: https://docs.rs/fred
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod bench_support;
mod body;
pub mod config;
#[cfg(any(feature = "memcached", feature = "tonic"))]
mod digest;
mod error;
mod framing;
mod future;
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub mod grpc;
mod http;
mod layer;
mod metrics;
mod origin;
mod service;
#[cfg(feature = "sqlx")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlx")))]
pub mod sql;
mod stats;
mod store;
mod tee;
mod warm;
mod write_behind;

#[doc(inline)]
pub use body::{BoxError, CacheBody};
#[doc(inline)]
pub use future::ResponseFuture;
#[doc(inline)]
pub use http::policy::remove_hop_by_hop;
#[doc(inline)]
pub use layer::CacheLayer;
#[doc(inline)]
pub use service::CacheService;
#[doc(inline)]
pub use warm::{spawn_warming, warm_paths, WarmReport};

#[doc(inline)]
pub use config::{CacheConfig, CacheConfigBuilder, ConfigError};
#[doc(inline)]
pub use error::Error;
#[doc(inline)]
pub use stats::Stats;
#[doc(inline)]
pub use store::{
    CachedEntry, Invalidation, Lookup, Purged, Source, TieredCache, ValueError, ValueOptions,
};
#[doc(inline)]
pub use write_behind::{
    DurableTarget, EnqueueError, WriteBehind, WriteBehindStats, WriteError, WriteJob, Writer,
};
