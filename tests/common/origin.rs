//! HTTP fixtures: a CacheService in front of a wiremock origin, and a client helper.

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::util::BoxCloneService;
use tower::{BoxError, Layer, ServiceExt};
use tower_tiered_cache::{CacheConfig, CacheLayer, CacheService};
use wiremock::MockServer;

/// The inner service: forwards every request to the mock server.
pub type Origin = BoxCloneService<Request<Full<Bytes>>, Response<Incoming>, BoxError>;
/// The service under test.
pub type Cached = CacheService<Origin>;

/// Forwards requests (whatever their authority) to `server`, path and query kept.
pub fn origin(server: &MockServer) -> Origin {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let base = server.uri();
    BoxCloneService::new(tower::service_fn(move |request: Request<Full<Bytes>>| {
        let client = client.clone();
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        parts.uri = format!("{base}{path}").parse().expect("valid origin uri");
        parts.headers.remove(http::header::HOST);
        async move {
            client
                .request(Request::from_parts(parts, body))
                .await
                .map_err(BoxError::from)
        }
    }))
}

/// A cache layer built from `config` over the mock `server`.
pub fn cached(config: CacheConfig, server: &MockServer) -> Cached {
    CacheLayer::new(config).layer(origin(server))
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn cache_status(&self) -> &str {
        self.header("cache-status")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |value| value.to_str().expect("ascii header"))
    }
}

/// Sends `request` through a clone of `service` and reads the whole response.
pub async fn send(service: &Cached, request: Request<Full<Bytes>>) -> Reply {
    let response = service
        .clone()
        .oneshot(request)
        .await
        .expect("service answers");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body reads").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// `GET http://test.local{path}` with `headers`.
pub fn get(path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    request("GET", path, headers)
}

pub fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://test.local{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::default()).expect("valid request")
}
