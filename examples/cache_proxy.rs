//! A caching reverse proxy built on [`CacheLayer`]: memory (and Redis) in front of an upstream.
//!
//! ```sh
//! cargo run --release --example cache_proxy -- --listen 127.0.0.1:8080 --upstream http://127.0.0.1:8000
//! cargo run --release --example cache_proxy -- --upstream http://127.0.0.1:8000 \
//!     --config cache.toml --redis redis://127.0.0.1:6379
//! ```
//!
//! Requests are forwarded in origin-form over a keep-alive pool, with hop-by-hop fields removed
//! and `Via` added in both directions; bodies stream both ways. An unreachable upstream is a
//! `502`. SIGTERM or Ctrl-C stops accepting, lets open connections finish, then drains the
//! write-behind queue.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::header::{HeaderValue, HOST, VIA};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_tiered_cache::config::WriteMode;
use tower_tiered_cache::{remove_hop_by_hop, CacheConfig, CacheLayer, CacheService};

#[derive(Parser, Debug)]
#[command(about = "A caching reverse proxy: memory (L1), Redis (L2), the upstream (L3)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The upstream origin, e.g. http://127.0.0.1:8000.
    #[arg(long)]
    upstream: Uri,
    /// A TOML configuration file (see the README); without it, defaults plus environment.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Redis URL for the shared tier (overrides l2.url).
    #[arg(long)]
    redis: Option<String>,
}

const VIA_VALUE: &str = "1.1 tiered-cache";

/// The upstream: an HTTP/1.1 client with a keep-alive pool, sending origin-form requests.
struct Upstream<B> {
    client: Client<HttpConnector, B>,
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
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self {
            client,
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
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| "/".parse().expect("static path"));
        *request.uri_mut() = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .expect("scheme, authority and path are valid");
        self.client.request(request)
    }
}

type Cached = CacheService<Upstream<Incoming>>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// One client request: hop-by-hop fields off, `Via` on, through the cache to the upstream.
async fn proxy(
    cache: Cached,
    mut request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    prepare(request.headers_mut());
    if !request.headers().contains_key(HOST) {
        if let Some(authority) = request.uri().authority() {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                request.headers_mut().insert(HOST, host);
            }
        }
    }
    match cache.oneshot(request).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            prepare(&mut parts.headers);
            Ok(Response::from_parts(parts, body.boxed()))
        }
        Err(err) => {
            tracing::warn!(error = %err, "upstream request failed");
            let body = Full::new(Bytes::from_static(b"bad gateway\n"))
                .map_err(|never| match never {})
                .boxed();
            let mut response = Response::new(body);
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            Ok(response)
        }
    }
}

fn prepare(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    headers.append(VIA, HeaderValue::from_static(VIA_VALUE));
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => CacheConfig::from_path(path)?,
        None => CacheConfig::from_env()?,
    };
    if let Some(url) = args.redis {
        config.l2.url = Some(url);
    }
    config.validate()?;
    let authority = args
        .upstream
        .authority()
        .cloned()
        .ok_or("--upstream needs a host, e.g. http://127.0.0.1:8000")?;
    let scheme = args.upstream.scheme().cloned().unwrap_or(Scheme::HTTP);

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
    let cache = layer.layer(Upstream::new(scheme, authority));

    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, upstream = %args.upstream, "cache proxy ready");
    let graceful = GracefulShutdown::new();
    let mut shutdown = Box::pin(shutdown_signal());
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let cache = cache.clone();
        let service = hyper::service::service_fn(move |request| proxy(cache.clone(), request));
        let connection = auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    tracing::info!("shutting down: finishing open connections");
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 10 s");
    }
    Ok(())
}

fn shutdown_signal() -> Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(_) => return drop(ctrl_c.await),
                };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
    })
}
