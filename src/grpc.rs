//! gRPC caching (feature `tonic`): responses of allow-listed **unary** methods, keyed by the
//! method path and a SHA-256 of the request message, stored with their trailers and replayed
//! exactly. Only `grpc-status: 0` is stored; every other method (streaming ones included) and
//! every other request passes through untouched.
//!
//! Only uncompressed answers (`grpc-encoding` absent or `identity`) are stored: a stored answer
//! is replayed to every caller of its key, whatever the `grpc-accept-encoding` each sent, and
//! every client reads identity. A compressed answer reaches its own caller only.
//!
//! The rules of the HTTP layer apply to calls:
//! - A call carrying credentials (`authorization`, `cookie`, or metadata named in
//!   `grpc.credential_metadata`) bypasses the cache (`Cache-Status: …; fwd=bypass`): its answer
//!   may be meant for that caller only. Metadata named in `grpc.key_metadata` is part of the key
//!   instead (hashed with SHA-256, so no value appears in a Redis key name; a guessable secret
//!   could still be guessed from its hash by whoever can list the keys), and a call whose
//!   credentials are all keyed is cached per identity. `grpc-timeout` is never keyed.
//! - The client's `grpc-timeout` bounds the origin call (its answer's headers and whole
//!   message), capped by `http.origin_timeout`; past it the call is answered
//!   `DEADLINE_EXCEEDED` and nothing is stored.
//! - The request message is read up to `grpc.max_request_size` (4 MiB, tonic's default decoding
//!   limit); a larger one is answered `RESOURCE_EXHAUSTED`, as tonic itself would.
//! - A request body that fails is answered `CANCELLED` when the client cancelled the call and
//!   `INTERNAL` otherwise; the service is not called.
//!
//! These answers are trailers-only responses (HTTP 200, `content-type: application/grpc`, the
//! status in the headers), built by tonic, with `Cache-Status: …; detail=refused`.
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

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, AUTHORIZATION, CONTENT_TYPE, COOKIE};
use http::{HeaderMap, Method, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use tower::{Layer, Service, ServiceExt};

use crate::body::{BoxError, CacheBody};
use crate::config::CacheConfig;
use crate::http::buffer::{read_body, Unread};
use crate::http::cache_status::{Forward, Status};
use crate::http::{deadline, policy};
use crate::origin::Origin;
use crate::store::coalesce::Coalescer;
use crate::store::{CachedEntry, Fill, FillOptions, FillPermit, Kept, TieredCache};

/// A gRPC message's prefix: a compression flag and a 32-bit length.
const FRAME_HEADER: u64 = 5;

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
    max_request_size: u64,
    /// Metadata that makes a call private unless it is keyed.
    credentials: Vec<HeaderName>,
    /// Metadata whose values are part of the key, in configuration order.
    key_metadata: Vec<HeaderName>,
    cache_name: String,
    /// One backend call per key at a time; the others share its answer.
    flights: Arc<Coalescer<CachedEntry>>,
    coalesce_wait: Duration,
    /// `http.origin_timeout`: the longest any call waits for the origin (`None`: no limit).
    origin_timeout: Option<Duration>,
}

impl GrpcCacheLayer {
    /// A layer storing in `cache` the methods of `config.grpc`.
    pub fn new(cache: TieredCache, config: &CacheConfig) -> Self {
        let grpc = &config.grpc;
        let mut credentials = vec![AUTHORIZATION, COOKIE];
        credentials.extend(metadata_names(&grpc.credential_metadata));
        Self {
            state: Arc::new(State {
                cache,
                methods: grpc.methods.iter().cloned().collect(),
                ttl: grpc.ttl,
                max_message_size: config.http.max_entry_size,
                max_request_size: grpc.max_request_size,
                credentials,
                key_metadata: metadata_names(&grpc.key_metadata),
                cache_name: config.http.status_header.clone(),
                flights: Arc::new(Coalescer::new()),
                coalesce_wait: config.http.coalesce_wait,
                origin_timeout: Some(config.http.origin_timeout)
                    .filter(|timeout| !timeout.is_zero()),
            }),
        }
    }

    /// The cache behind the layer.
    pub fn cache(&self) -> &TieredCache {
        &self.state.cache
    }
}

/// The valid names among `names` (validation reports the others; a name that is not a valid
/// header name cannot occur in a call, so leaving it out changes nothing).
fn metadata_names(names: &[String]) -> Vec<HeaderName> {
    names
        .iter()
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect()
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
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = GrpcFuture<ResBody, S::Error>;

    /// Always ready, as [`CacheService`](crate::CacheService) is: the inner service's readiness
    /// is acquired by the calls that forward, when they do.
    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let origin = self.inner.clone();
        if !self.state.caches(&request) {
            return forward(origin.oneshot(request), None);
        }
        if self.state.is_private(request.headers()) {
            return forward(origin.oneshot(request), Some(self.state.clone()));
        }
        Box::pin(serve(self.state.clone(), Origin::new(origin), request))
    }
}

/// The service's answer, streaming through; with `Cache-Status: …; fwd=bypass` when the call was
/// `bypassed` (by that state's rules) rather than not cacheable at all.
fn forward<F, B, E>(future: F, bypassed: Option<Arc<State>>) -> GrpcFuture<B, E>
where
    F: Future<Output = Result<Response<B>, E>> + Send + 'static,
{
    Box::pin(async move {
        let mut response = future.await?;
        if let Some(state) = bypassed {
            state.status(Status::forward(Forward::Bypass), response.headers_mut());
        }
        Ok(response.map(CacheBody::streaming))
    })
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

    /// Whether the call carries credentials that are not part of its key, so its answer may be
    /// meant for that caller only.
    fn is_private(&self, headers: &HeaderMap) -> bool {
        self.credentials
            .iter()
            .any(|name| headers.contains_key(name) && !self.key_metadata.contains(name))
    }

    /// `grpc:{authority}{path}#{sha256 of the message}`, then `@{sha256 of the keyed metadata}`
    /// when metadata is keyed.
    fn key(&self, request: &http::request::Parts, message: &[u8]) -> String {
        let mut key = message_key(&request.uri, message);
        if !self.key_metadata.is_empty() {
            key.push('@');
            let identity = identity(&request.headers, &self.key_metadata);
            crate::digest::push_sha256_hex(&mut key, &identity);
        }
        key
    }

    /// How long the origin may take with this call: the client's `grpc-timeout` (past it the
    /// client has given up), capped by `http.origin_timeout`.
    fn call_limit(&self, headers: &HeaderMap) -> Option<Duration> {
        let client = headers
            .get("grpc-timeout")
            .and_then(|value| parse_timeout(value.as_bytes()));
        match (client, self.origin_timeout) {
            (Some(client), Some(own)) => Some(client.min(own)),
            (client, own) => client.or(own),
        }
    }

    fn status(&self, status: Status, headers: &mut HeaderMap) {
        status.append_to(&self.cache_name, headers);
    }

    /// A stored answer, replayed exactly: status, headers, message and trailers.
    fn replay<B>(&self, entry: &CachedEntry, status: Status) -> Response<CacheBody<B>> {
        let body = CacheBody::cached(entry.body().clone(), entry.trailers().clone());
        let mut response = Response::new(body);
        *response.status_mut() = entry.status();
        *response.headers_mut() = entry.headers().clone();
        self.status(status, response.headers_mut());
        response
    }

    /// The cache's own answer to a call it would not pass on: trailers-only, as tonic writes it.
    fn refuse<B>(&self, status: tonic::Status) -> Response<CacheBody<B>> {
        let mut response = status.into_http::<Empty<Bytes>>();
        self.status(Status::detail("refused"), response.headers_mut());
        response.map(|_| CacheBody::empty())
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
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Unpin,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let message = match read_message(&state, body).await {
        Ok(message) => message,
        Err(refused) => return Ok(refused),
    };
    let key = state.key(&parts, &message);
    let permit = match look_up(&state, &key).await {
        Ok(permit) => permit,
        Err(answer) => return Ok(answer),
    };

    let body = ReqBody::from_bytes(message);
    let limit = state.call_limit(&parts.headers);
    // Taken before the origin is asked: an invalidation while it answers outdates the answer.
    let ticket = state.cache.ticket();
    // The whole answer is read before anything is sent, so a call past its deadline can still
    // be answered with a status of its own.
    let call = async {
        let (response_parts, response_body) = origin
            .call(Request::from_parts(parts, body))
            .await?
            .into_parts();
        let buffered = buffer(response_body, state.max_message_size).await;
        Ok::<_, S::Error>((response_parts, buffered))
    };
    let Ok(answer) = deadline::within(limit, call).await else {
        let text = "the origin did not answer within the call's deadline (grpc-timeout, capped by http.origin_timeout)";
        return Ok(state.refuse(tonic::Status::deadline_exceeded(text)));
    };
    let (mut response_parts, buffered) = answer?;
    let mut status = Status::forward(Forward::Miss);
    let (body, entry) = match buffered {
        Buffered::Complete { data, trailers } => {
            let entry = entry_if_ok(&state, &response_parts, &data, &trailers);
            (CacheBody::cached(data, trailers), entry)
        }
        Buffered::TooLarge { prefix, rest } => (CacheBody::prefixed(prefix, rest), None),
        Buffered::Failed { prefix, error } => (CacheBody::failed(prefix, error), None),
    };
    let entry = match entry {
        Some(entry) => match state.cache.store(&key, &entry, ticket).await {
            Kept::Stored => {
                status.stored = true;
                Some(entry)
            }
            Kept::Unstorable => Some(entry),
            // Not for the calls waiting: they may have come after the invalidation.
            Kept::Outdated => None,
        },
        None => None,
    };
    let shared = entry.ok_or(Arc::new(Unshared));
    if let Some(lock) = permit.and_then(|permit| permit.finish(shared)) {
        lock.release().await;
    }
    state.status(status, &mut response_parts.headers);
    Ok(Response::from_parts(response_parts, body))
}

/// The whole request message: gRPC unary requests are one length-prefixed message. A message
/// over `grpc.max_request_size`, or a body that fails, is refused.
async fn read_message<ReqBody, B>(
    state: &State,
    body: ReqBody,
) -> Result<Bytes, Response<CacheBody<B>>>
where
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
{
    let limit = state.max_request_size;
    match read_body(body, limit.saturating_add(FRAME_HEADER)).await {
        Ok(message) => Ok(message),
        Err(Unread::TooLarge) => Err(state.refuse(tonic::Status::resource_exhausted(format!(
            "request message larger than grpc.max_request_size ({limit} bytes)"
        )))),
        Err(Unread::Failed(error)) => Err(state.refuse(body_failed(error.into()))),
    }
}

/// A fresh answer for `key` (stored, or shared by the call that fetched it), or the permit to
/// fetch it (`None`: fetch without one).
async fn look_up<B>(
    state: &State,
    key: &str,
) -> Result<Option<FillPermit<CachedEntry, Unshared>>, Response<CacheBody<B>>> {
    if let Some(hit) = state
        .cache
        .lookup(key)
        .await
        .filter(crate::Lookup::is_fresh)
    {
        return Err(state.replay(&hit.entry, Status::hit(hit.source)));
    }
    let options = FillOptions {
        across_instances: true,
        wait: Some(state.coalesce_wait),
    };
    let stored = || async {
        let found = state.cache.find(key).await;
        found
            .filter(crate::Lookup::is_fresh)
            .map(|found| found.entry)
    };
    match state.cache.fill(&state.flights, key, options, stored).await {
        Fill::Shared(entry) => {
            let mut status = Status::forward(Forward::Miss);
            status.collapsed = true;
            Err(state.replay(&entry, status))
        }
        Fill::Found(entry) => {
            let mut status = Status::hit(state.cache.shared_source());
            status.collapsed = true;
            Err(state.replay(&entry, status))
        }
        Fill::Failed(_) | Fill::Alone => Ok(None),
        Fill::Lead(permit) => Ok(Some(permit)),
    }
}

/// The fill's error when a call's answer is not stored: each waiting call asks itself.
#[derive(Debug)]
struct Unshared;

/// The status for a request body that failed: `CANCELLED` when the client cancelled the call
/// (tonic's bodies report that as a `CANCELLED` status), `INTERNAL` for anything else.
fn body_failed(error: BoxError) -> tonic::Status {
    let reason = match tonic::Status::try_from_error(error) {
        Ok(status) if status.code() == tonic::Code::Cancelled => {
            return tonic::Status::cancelled("the call was cancelled while its request was read");
        }
        Ok(status) => status.message().to_owned(),
        Err(error) => error.to_string(),
    };
    tracing::debug!(%reason, "gRPC request body failed");
    tonic::Status::internal(format!("the request message could not be read: {reason}"))
}

/// A body read up to a limit (a gRPC answer, stored whole).
pub(crate) enum Buffered<B> {
    /// The whole body (at most the limit) and its trailers.
    Complete { data: Bytes, trailers: HeaderMap },
    /// More than the limit: what was read, and the unread rest.
    TooLarge { prefix: Bytes, rest: B },
    /// The body failed after `prefix`.
    Failed { prefix: Bytes, error: BoxError },
}

/// Reads `body` until its end or until more than `limit` bytes arrived.
pub(crate) async fn buffer<B>(mut body: B, limit: u64) -> Buffered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut data = BytesMut::new();
    let mut trailers = HeaderMap::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                return Buffered::Failed {
                    prefix: data.freeze(),
                    error: error.into(),
                }
            }
        };
        match frame.into_data() {
            Ok(chunk) => {
                data.extend_from_slice(&chunk);
                if data.len() as u64 > limit {
                    return Buffered::TooLarge {
                        prefix: data.freeze(),
                        rest: body,
                    };
                }
            }
            Err(frame) => {
                if let Ok(more) = frame.into_trailers() {
                    trailers.extend(more);
                }
            }
        }
    }
    Buffered::Complete {
        data: data.freeze(),
        trailers,
    }
}

/// The entry for a successful, uncompressed answer (`grpc-status: 0`), the only kind stored.
fn entry_if_ok(
    state: &State,
    response: &http::response::Parts,
    data: &Bytes,
    trailers: &HeaderMap,
) -> Option<CachedEntry> {
    // `grpc-status` travels in the trailers, or in the headers of a trailers-only response.
    let grpc_status = trailers
        .get("grpc-status")
        .or_else(|| response.headers.get("grpc-status"));
    let ok = response.status.is_success() && grpc_status.is_some_and(|value| value == "0");
    if !(ok && uncompressed(&response.headers)) {
        return None;
    }
    let mut headers = response.headers.clone();
    policy::remove_hop_by_hop(&mut headers);
    Some(
        CachedEntry::new(data.clone(), state.ttl)
            .with_status(response.status)
            .with_headers(headers)
            .with_trailers(trailers.clone()),
    )
}

/// Whether an answer's message is sent uncompressed (`grpc-encoding` absent or `identity`),
/// so that every caller can read it, whatever the `grpc-accept-encoding` it sent.
fn uncompressed(headers: &HeaderMap) -> bool {
    headers
        .get("grpc-encoding")
        .is_none_or(|coding| coding.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// A `grpc-timeout` value: at most 8 digits and a unit, `H`, `M`, `S`, `m`, `u` or `n` (hours
/// to nanoseconds). `None` for anything else: the call is then bounded by the cache's own limit.
fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
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

/// The values of the keyed metadata `names`, in one byte string in which no two different sets
/// of values look alike: per name (in configuration order), the number of values, then each
/// value with its length. A missing name and an empty value therefore differ.
fn identity(headers: &HeaderMap, names: &[HeaderName]) -> Vec<u8> {
    let mut identity = Vec::new();
    for name in names {
        let values = headers.get_all(name);
        identity.extend_from_slice(&(values.iter().count() as u64).to_be_bytes());
        for value in values {
            identity.extend_from_slice(&(value.len() as u64).to_be_bytes());
            identity.extend_from_slice(value.as_bytes());
        }
    }
    identity
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use http_body_util::StreamBody;

    use super::*;

    #[tokio::test]
    async fn small_bodies_are_read_whole() {
        let Buffered::Complete { data, .. } =
            buffer(Full::new(Bytes::from_static(b"abc")), 3).await
        else {
            panic!("complete expected");
        };
        assert_eq!(data, "abc");
    }

    #[tokio::test]
    async fn reading_stops_just_past_the_limit() {
        let chunks = (0..10).map(|_| {
            Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from_static(b"0123456789")))
        });
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let Buffered::TooLarge { prefix, rest } = buffer(body, 25).await else {
            panic!("too large expected");
        };
        assert_eq!(prefix.len(), 30, "read one chunk past the limit, no more");
        assert_eq!(rest.collect().await.unwrap().to_bytes().len(), 70);
    }

    fn layer(toml: &str) -> GrpcCacheLayer {
        let config = CacheConfig::from_toml_str(toml).unwrap();
        GrpcCacheLayer::new(TieredCache::new(config.clone()).unwrap(), &config)
    }

    fn call(metadata: &[(&'static str, &'static str)]) -> http::request::Parts {
        let mut request = Request::post("http://api.local/demo.Users/Get");
        for (name, value) in metadata {
            request = request.header(*name, HeaderValue::from_static(value));
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn keys_hold_a_hash_of_the_identity_never_the_secret() {
        let layer = layer("[grpc]\nkey_metadata = [\"authorization\", \"x-tenant\"]");
        let state = &layer.state;
        let ada = state.key(&call(&[("authorization", "Bearer s3cret")]), b"m");
        assert!(!ada.contains("s3cret"), "{ada}");
        assert!(ada.starts_with("grpc:api.local/demo.Users/Get#"), "{ada}");
        let timed = call(&[("authorization", "Bearer s3cret"), ("grpc-timeout", "5S")]);
        assert_eq!(state.key(&timed, b"m"), ada, "grpc-timeout is not keyed");
        for other in [
            call(&[]),
            call(&[("authorization", "")]),
            call(&[("authorization", "Bearer other")]),
            call(&[("authorization", "Bearer s3cret"), ("x-tenant", "a")]),
        ] {
            assert_ne!(state.key(&other, b"m"), ada);
        }
    }

    #[test]
    fn grpc_timeouts_are_read_as_the_spec_writes_them() {
        for (value, expected) in [
            ("2H", Some(Duration::from_secs(7200))),
            ("3M", Some(Duration::from_secs(180))),
            ("99999999S", Some(Duration::from_secs(99_999_999))),
            ("250m", Some(Duration::from_millis(250))),
            ("7u", Some(Duration::from_micros(7))),
            ("0n", Some(Duration::ZERO)),
            ("123456789S", None),
            ("S", None),
            ("5", None),
            ("5s", None),
            ("-5S", None),
            (" 5S", None),
        ] {
            assert_eq!(parse_timeout(value.as_bytes()), expected, "{value:?}");
        }
    }

    #[test]
    fn the_client_deadline_is_capped_by_the_origin_timeout() {
        let layer = layer("[http]\norigin_timeout = \"10s\"");
        let limit = |metadata: &[(&'static str, &'static str)]| {
            layer.state.call_limit(&call(metadata).headers)
        };
        assert_eq!(limit(&[]), Some(Duration::from_secs(10)));
        assert_eq!(
            limit(&[("grpc-timeout", "500m")]),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            limit(&[("grpc-timeout", "1H")]),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            limit(&[("grpc-timeout", "bad")]),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn credentials_make_a_call_private_unless_every_one_is_keyed() {
        let open = layer("[grpc]\ncredential_metadata = [\"x-api-key\"]");
        assert!(!open.state.is_private(&call(&[("x-tenant", "a")]).headers));
        for credential in ["authorization", "cookie", "x-api-key"] {
            assert!(open.state.is_private(&call(&[(credential, "v")]).headers));
        }
        let keyed = layer("[grpc]\nkey_metadata = [\"authorization\"]");
        assert!(!keyed
            .state
            .is_private(&call(&[("authorization", "v")]).headers));
        let both = call(&[("authorization", "v"), ("cookie", "c")]);
        assert!(keyed.state.is_private(&both.headers));
    }
}
