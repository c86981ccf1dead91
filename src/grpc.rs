//! gRPC caching (feature `tonic`): responses of allow-listed **unary** methods, keyed by the
//! method path and a SHA-256 of the request message, stored with their trailers and replayed
//! exactly. Only `grpc-status: 0` is stored; every other method (streaming ones included) and
//! every other request passes through untouched.
//!
//! ```no_run
//! # async fn run(service: impl Clone) {}
//! use std::time::Duration;
//! use tower_tiered_cache::config::GrpcConfig;
//! use tower_tiered_cache::grpc::GrpcCacheLayer;
//! use tower_tiered_cache::{CacheConfig, TieredCache};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut grpc = GrpcConfig::default();
//! grpc.methods = vec!["/shop.Catalog/GetProduct".into()];
//! grpc.ttl = Duration::from_secs(30);
//! let config = CacheConfig::builder().grpc(grpc).build()?;
//! let layer = GrpcCacheLayer::new(TieredCache::new(config.clone())?, &config);
//! // tonic::transport::Server::builder().layer(layer).add_service(...)
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, Method, Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::{Layer, Service};

use crate::body::{BoxError, CacheBody};
use crate::config::CacheConfig;
use crate::http::buffer::{buffer, read_body, Buffered};
use crate::http::cache_status::{Forward, Status};
use crate::http::policy;
use crate::store::{CachedEntry, TieredCache};

/// Request bodies the gRPC cache can rebuild after reading them to hash the message.
pub trait RebuildBody: Sized {
    /// A body yielding `bytes`.
    fn from_bytes(bytes: Bytes) -> Self;
}

impl RebuildBody for tonic::body::Body {
    fn from_bytes(bytes: Bytes) -> Self {
        tonic::body::Body::new(Full::new(bytes))
    }
}

impl RebuildBody for Full<Bytes> {
    fn from_bytes(bytes: Bytes) -> Self {
        Full::new(bytes)
    }
}

/// A tower layer caching allow-listed unary gRPC methods; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct GrpcCacheLayer {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    cache: TieredCache,
    methods: HashSet<String>,
    ttl: Duration,
    max_message_size: u64,
    cache_name: String,
}

impl GrpcCacheLayer {
    /// A layer storing in `cache` the methods of `config.grpc`.
    pub fn new(cache: TieredCache, config: &CacheConfig) -> Self {
        Self {
            state: Arc::new(State {
                cache,
                methods: config.grpc.methods.iter().cloned().collect(),
                ttl: config.grpc.ttl,
                max_message_size: config.http.max_entry_size,
                cache_name: config.http.status_header.clone(),
            }),
        }
    }

    /// The cache behind the layer.
    pub fn cache(&self) -> &TieredCache {
        &self.state.cache
    }
}

impl<S> Layer<S> for GrpcCacheLayer {
    type Service = GrpcCacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcCacheService {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The service of [`GrpcCacheLayer`].
#[derive(Clone, Debug)]
pub struct GrpcCacheService<S> {
    inner: S,
    state: Arc<State>,
}

type GrpcFuture<B, E> = Pin<Box<dyn Future<Output = Result<Response<CacheBody<B>>, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GrpcCacheService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ReqBody: Body<Data = Bytes> + RebuildBody + Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = GrpcFuture<ResBody, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let fresh = self.inner.clone();
        let mut origin = std::mem::replace(&mut self.inner, fresh);
        if !self.state.caches(&request) {
            let future = origin.call(request);
            return Box::pin(async move {
                let response = future.await?;
                Ok(response.map(CacheBody::streaming))
            });
        }
        Box::pin(serve(self.state.clone(), origin, request))
    }
}

impl State {
    /// A POST of `application/grpc` to an allow-listed method.
    fn caches<B>(&self, request: &Request<B>) -> bool {
        let grpc = request
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
        request.method() == Method::POST && grpc && self.methods.contains(request.uri().path())
    }

    fn status(&self, status: Status, headers: &mut HeaderMap) {
        status.append_to(&self.cache_name, headers);
    }
}

async fn serve<S, ReqBody, ResBody>(
    state: Arc<State>,
    mut origin: S,
    request: Request<ReqBody>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Body<Data = Bytes> + RebuildBody,
    ResBody: Body<Data = Bytes> + Unpin,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    // The whole request message (gRPC unary requests are one length-prefixed message); `None`
    // when the body fails.
    let message = read_body(body, u64::MAX).await;
    let key = message
        .as_ref()
        .map(|message| message_key(&parts.uri, message));

    let hit = match &key {
        Some(key) => state
            .cache
            .lookup(key)
            .await
            .filter(crate::Lookup::is_fresh),
        None => None,
    };
    if let Some(hit) = hit {
        let entry = hit.entry;
        let body = CacheBody::cached(entry.body().clone(), entry.trailers().clone());
        let mut response = Response::new(body);
        *response.status_mut() = entry.status();
        *response.headers_mut() = entry.headers().clone();
        state.status(Status::hit(hit.source), response.headers_mut());
        return Ok(response);
    }

    let body = ReqBody::from_bytes(message.unwrap_or_default());
    let (mut response_parts, response_body) = origin
        .call(Request::from_parts(parts, body))
        .await?
        .into_parts();
    let mut status = Status::forward(Forward::Miss);
    let body = match key {
        None => CacheBody::streaming(response_body),
        Some(key) => match buffer(response_body, state.max_message_size).await {
            Buffered::Complete { data, trailers } => {
                status.stored = store_if_ok(&state, &key, &response_parts, &data, &trailers).await;
                CacheBody::cached(data, trailers)
            }
            Buffered::TooLarge { prefix, rest } => CacheBody::prefixed(prefix, rest),
            Buffered::Failed { prefix, error } => CacheBody::failed(prefix, error),
        },
    };
    state.status(status, &mut response_parts.headers);
    Ok(Response::from_parts(response_parts, body))
}

/// Stores a successful answer (`grpc-status: 0`) under `key`; whether it did.
async fn store_if_ok(
    state: &State,
    key: &str,
    response: &http::response::Parts,
    data: &Bytes,
    trailers: &HeaderMap,
) -> bool {
    // `grpc-status` travels in the trailers, or in the headers of a trailers-only response.
    let grpc_status = trailers
        .get("grpc-status")
        .or_else(|| response.headers.get("grpc-status"));
    if !(response.status.is_success() && grpc_status.is_some_and(|value| value == "0")) {
        return false;
    }
    let mut headers = response.headers.clone();
    policy::remove_hop_by_hop(&mut headers);
    let entry = CachedEntry::new(data.clone(), state.ttl)
        .with_status(response.status)
        .with_headers(headers)
        .with_trailers(trailers.clone());
    state.cache.set(key, entry).await;
    true
}

/// `grpc:{authority}{path}#{sha256 of the message}`.
fn message_key(uri: &http::Uri, message: &[u8]) -> String {
    let mut key = format!(
        "grpc:{}{}#",
        uri.authority().map_or("", |authority| authority.as_str()),
        uri.path()
    );
    crate::digest::push_sha256_hex(&mut key, message);
    key
}
