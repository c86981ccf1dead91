//! The proxy itself, apart from argument parsing, so that tests can run it in-process
//! (`#[path = "../examples/cache_proxy/server.rs"] mod server;`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, HOST, VIA};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_tiered_cache::config::WriteMode;
use tower_tiered_cache::{remove_hop_by_hop, CacheConfig, CacheLayer};

#[path = "../support/serve.rs"]
pub mod serve;

pub use serve::Timeouts;

const VIA_VALUE: &str = "1.1 tiered-cache";

/// How long an upstream connection may sit idle in the pool before it is closed rather than
/// reused: under the 5 s after which Node.js and Apache close an idle keep-alive connection.
/// Reusing a connection the upstream is closing at that moment fails the request ("connection
/// closed before message completed", a `502` here), which the client cannot retry once it has
/// written the request.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// How long queued writes (write-behind) may take to reach the upstream at shutdown.
const WRITE_BEHIND_DRAIN: Duration = Duration::from_secs(30);

/// Why the proxy cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The upstream URI has no authority to connect to.
    #[error("--upstream {0} needs a host, e.g. http://127.0.0.1:8000")]
    UpstreamWithoutHost(Uri),
    /// The cache configuration was refused.
    #[error(transparent)]
    Cache(#[from] tower_tiered_cache::Error),
    /// A worker could not start.
    #[error("cannot start a worker: {0}")]
    Worker(#[from] std::io::Error),
}

/// The cache in front of the upstream, ready to serve.
pub struct Proxy {
    layer: CacheLayer,
    scheme: Scheme,
    authority: Authority,
}

impl Proxy {
    /// A cache configured by `config` in front of `upstream` (`http://host:port`).
    pub fn new(upstream: &Uri, config: CacheConfig) -> Result<Self, ProxyError> {
        let (scheme, authority) = target(upstream)?;
        let writes_behind = config
            .route
            .iter()
            .any(|route| route.write == WriteMode::Behind);
        let mut layer = CacheLayer::try_new(config)?;
        if writes_behind {
            // Queued writes are replayed to the upstream directly, not through the cache.
            let replay = Upstream::<Full<Bytes>>::new(scheme.clone(), authority.clone());
            layer = layer.write_behind_to(replay)?;
        }
        Ok(Self {
            layer,
            scheme,
            authority,
        })
    }

    /// Serves on `listener` with `workers` workers ([`serve::serve_workers`]) until `shutdown`
    /// resolves; then lets open connections finish and drains the write-behind queue. Every
    /// worker has the one cache and an upstream pool of its own, so that a request and its
    /// upstream connection stay on one thread.
    pub async fn serve_workers(
        self,
        listener: TcpListener,
        workers: usize,
        timeouts: Timeouts,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        // Up to `l2.connect_wait`, so the first requests find the shared tier connected; it
        // logs whether it is up, and the proxy serves either way.
        self.layer.wait_for_l2_at_start().await;
        let Self {
            layer,
            scheme,
            authority,
        } = self;
        let services = || {
            let cache = layer.layer(Upstream::new(scheme.clone(), authority.clone()));
            tower::service_fn(move |request| proxy(cache.clone(), request))
        };
        let served = serve::serve_workers(listener, workers, services, timeouts, shutdown).await;
        layer.shutdown(WRITE_BEHIND_DRAIN).await;
        served
    }
}

/// The upstream: an HTTP/1.1 client with a keep-alive pool, sending origin-form requests.
/// Every request clones it (the cache takes its inner service by value), so the client sits
/// behind one `Arc`.
struct Upstream<B> {
    client: Arc<Client<HttpConnector, B>>,
    scheme: Scheme,
    authority: Authority,
}

impl<B> Clone for Upstream<B> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            scheme: self.scheme.clone(),
            authority: self.authority.clone(),
        }
    }
}

impl<B> Upstream<B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn new(scheme: Scheme, authority: Authority) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(UPSTREAM_IDLE_TIMEOUT)
            .build(connector);
        Self {
            client: Arc::new(client),
            scheme,
            authority,
        }
    }
}

impl<B> Service<Request<B>> for Upstream<B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The target's authority (absolute-form, or HTTP/2's :authority) is what the cache keyed
        // the request by, so it is the Host the upstream must answer for.
        if let Some(host) = request.uri().authority().and_then(host_of) {
            request.headers_mut().insert(HOST, host);
        }
        // The pool speaks HTTP/1.1 and refuses a request still marked as HTTP/2.
        *request.version_mut() = Version::HTTP_11;
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        // Scheme, authority and path are all set, so this holds; were it not to, the client
        // refuses the relative URI and the proxy answers 502.
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
        self.client.request(request)
    }
}

/// The scheme (HTTP unless given) and authority requests are sent to, from `--upstream`.
fn target(upstream: &Uri) -> Result<(Scheme, Authority), ProxyError> {
    let authority = upstream
        .authority()
        .cloned()
        .ok_or_else(|| ProxyError::UpstreamWithoutHost(upstream.clone()))?;
    Ok((
        upstream.scheme().cloned().unwrap_or(Scheme::HTTP),
        authority,
    ))
}

/// `authority` as a Host value: host and port, without any userinfo.
fn host_of(authority: &Authority) -> Option<HeaderValue> {
    let host = match authority.port() {
        Some(port) => format!("{}:{port}", authority.host()),
        None => authority.host().to_owned(),
    };
    HeaderValue::from_str(&host).ok()
}

type ProxyBody = BoxBody<Bytes, BoxError>;

/// Serves on `listener` like [`Proxy::serve_workers`], with no cache between the clients and
/// `upstream`: the same server, upstream client and header handling, for benchmarks to tell
/// the cache's cost from the proxy's (`cache_proxy --no-cache`).
pub async fn serve_uncached(
    upstream: Uri,
    listener: TcpListener,
    workers: usize,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProxyError> {
    let (scheme, authority) = target(&upstream)?;
    let services = || {
        let upstream = Upstream::<Incoming>::new(scheme.clone(), authority.clone());
        tower::service_fn(move |request| proxy(upstream.clone(), request))
    };
    serve::serve_workers(listener, workers, services, timeouts, shutdown).await?;
    Ok(())
}

/// One client request: hop-by-hop fields off, `Via` on, through `service` (the cache, or the
/// upstream itself) to the upstream.
async fn proxy<S, B>(
    service: S,
    mut request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Error: std::error::Error,
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    prepare(request.headers_mut());
    // HTTP/2 carries the authority as :authority and need not send Host; an HTTP/1.1 request
    // without Host is left for the cache to refuse.
    if request.version() == Version::HTTP_2 && !request.headers().contains_key(HOST) {
        if let Some(host) = request.uri().authority().and_then(host_of) {
            request.headers_mut().insert(HOST, host);
        }
    }
    match service.oneshot(request).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            prepare(&mut parts.headers);
            Ok(Response::from_parts(
                parts,
                body.map_err(Into::into).boxed(),
            ))
        }
        Err(err) => {
            tracing::warn!(error = %chain(&err), "upstream request failed");
            let body = Full::new(Bytes::from_static(b"bad gateway\n"))
                .map_err(|never| match never {})
                .boxed();
            let mut response = Response::new(body);
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            Ok(response)
        }
    }
}

/// `err` and every error under it, outermost first: the client's own message ("client error
/// (SendRequest)") does not say what happened to the connection.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn prepare(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    headers.append(VIA, HeaderValue::from_static(VIA_VALUE));
}
