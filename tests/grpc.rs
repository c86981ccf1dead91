//! gRPC caching with a real tonic server and client: an allow-listed unary method is answered
//! from the cache the second time, with the same message and trailers; errors, and methods not
//! listed, always reach the backend; calls with credentials are not shared unless keyed per
//! identity; oversized and failing requests fail the call without reaching the backend;
//! compressed answers are not shared; `grpc-timeout` bounds the backend call.
#![cfg(feature = "tonic")]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http_body::Frame;
use http_body_util::StreamBody;
use tonic::server::{NamedService, UnaryService};
use tonic::transport::{Channel, Server};
use tonic_prost::ProstCodec;
use tower::{Layer, ServiceExt};
use tower_tiered_cache::config::GrpcConfig;
use tower_tiered_cache::grpc::GrpcCacheLayer;
use tower_tiered_cache::{CacheConfig, TieredCache};

#[derive(Clone, PartialEq, prost::Message)]
struct GetUser {
    #[prost(string, tag = "1")]
    id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct User {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(uint64, tag = "2")]
    served: u64,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A hand-written tonic service (what tonic-build would generate) with two unary methods.
#[derive(Clone, Default)]
struct Users {
    calls: Arc<AtomicUsize>,
}

impl NamedService for Users {
    const NAME: &'static str = "demo.Users";
}

struct Method(Users, &'static str);

impl UnaryService<GetUser> for Method {
    type Response = User;
    type Future = BoxFuture<Result<tonic::Response<User>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<GetUser>) -> Self::Future {
        let served = self.0.calls.fetch_add(1, Ordering::SeqCst) as u64 + 1;
        let method = self.1;
        Box::pin(async move {
            let id = request.into_inner().id;
            if id == "missing" {
                return Err(tonic::Status::not_found("no such user"));
            }
            Ok(tonic::Response::new(User {
                name: format!("{method} {id}"),
                served,
            }))
        })
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Users {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let users = self.clone();
        Box::pin(async move {
            let method = match request.uri().path() {
                "/demo.Users/Get" => "get",
                _ => "lookup",
            };
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<User, GetUser>::default());
            Ok(grpc.unary(Method(users, method), request).await)
        })
    }
}

/// The default configuration, caching `/demo.Users/Get`.
fn get_cached() -> CacheConfig {
    let mut grpc = GrpcConfig::default();
    grpc.methods = vec!["/demo.Users/Get".to_owned()];
    CacheConfig::builder().grpc(grpc).build().unwrap()
}

async fn start(users: Users) -> (Channel, TieredCache) {
    start_with(users, get_cached()).await
}

async fn start_with(users: Users, config: CacheConfig) -> (Channel, TieredCache) {
    let cache = TieredCache::new(config.clone()).unwrap();
    let layer = GrpcCacheLayer::new(cache.clone(), &config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .layer(layer)
            .add_service(users)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (channel, cache)
}

async fn call(
    channel: &Channel,
    path: &'static str,
    id: &str,
) -> Result<tonic::Response<User>, tonic::Status> {
    call_with(channel, path, id, tonic::Request::new).await
}

/// A call of `path` for `id`, its request adjusted by `prepare` (metadata, timeout).
async fn call_with(
    channel: &Channel,
    path: &'static str,
    id: &str,
    prepare: impl FnOnce(GetUser) -> tonic::Request<GetUser>,
) -> Result<tonic::Response<User>, tonic::Status> {
    let mut client = tonic::client::Grpc::new(channel.clone());
    client.ready().await.unwrap();
    let request = prepare(GetUser { id: id.to_owned() });
    client
        .unary(
            request,
            PathAndQuery::from_static(path),
            ProstCodec::default(),
        )
        .await
}

/// A request carrying `metadata`.
fn with_metadata(
    metadata: &'static [(&'static str, &'static str)],
) -> impl FnOnce(GetUser) -> tonic::Request<GetUser> {
    move |message| {
        let mut request = tonic::Request::new(message);
        for (name, value) in metadata {
            request.metadata_mut().insert(*name, value.parse().unwrap());
        }
        request
    }
}

/// `served` of a successful call: which backend call produced the answer.
fn served(response: &Result<tonic::Response<User>, tonic::Status>) -> u64 {
    response.as_ref().expect("call succeeds").get_ref().served
}

fn cache_status(response: &Result<tonic::Response<User>, tonic::Status>) -> &str {
    let response = response.as_ref().expect("call succeeds");
    response
        .metadata()
        .get("cache-status")
        .unwrap()
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn two_calls_make_one_backend_call_with_the_same_message_and_trailers() {
    let users = Users::default();
    let (channel, cache) = start(users.clone()).await;

    let first = call(&channel, "/demo.Users/Get", "42").await.unwrap();
    let second = call(&channel, "/demo.Users/Get", "42").await.unwrap();

    assert_eq!(users.calls.load(Ordering::SeqCst), 1);
    assert_eq!(first.get_ref(), second.get_ref(), "identical message");
    assert_eq!(
        second.get_ref(),
        &User {
            name: "get 42".into(),
            served: 1
        }
    );
    assert_eq!(
        first.metadata().get("cache-status").unwrap(),
        "tiered-cache; fwd=miss; stored"
    );
    assert_eq!(
        second.metadata().get("cache-status").unwrap(),
        "tiered-cache; hit; detail=memory"
    );
    assert_eq!(cache.stats().stores, 1);

    // Another message is another key.
    let other = call(&channel, "/demo.Users/Get", "7").await.unwrap();
    assert_eq!(other.get_ref().name, "get 7");
    assert_eq!(users.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn errors_and_unlisted_methods_always_reach_the_backend() {
    let users = Users::default();
    let (channel, _cache) = start(users.clone()).await;

    for _ in 0..2 {
        let error = call(&channel, "/demo.Users/Get", "missing")
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::NotFound);
        assert_eq!(error.message(), "no such user");
    }
    for _ in 0..2 {
        call(&channel, "/demo.Users/Lookup", "1").await.unwrap();
    }
    assert_eq!(users.calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_call_with_authorization_metadata_is_not_shared() {
    let users = Users::default();
    let (channel, _cache) = start(users.clone()).await;
    const ADA: &[(&str, &str)] = &[("authorization", "Bearer ada")];
    const GRACE: &[(&str, &str)] = &[("authorization", "Bearer grace")];

    let ada = call_with(&channel, "/demo.Users/Get", "42", with_metadata(ADA)).await;
    let grace = call_with(&channel, "/demo.Users/Get", "42", with_metadata(GRACE)).await;
    assert_eq!(
        (served(&ada), served(&grace)),
        (1, 2),
        "grace got her own answer"
    );
    assert_eq!(cache_status(&grace), "tiered-cache; fwd=bypass");

    // An anonymous answer is shared among anonymous callers, and with nobody else.
    let anonymous = call(&channel, "/demo.Users/Get", "42").await;
    assert_eq!(cache_status(&anonymous), "tiered-cache; fwd=miss; stored");
    let ada = call_with(&channel, "/demo.Users/Get", "42", with_metadata(ADA)).await;
    assert_eq!(served(&ada), 4);
    let cookie = call_with(
        &channel,
        "/demo.Users/Get",
        "42",
        with_metadata(&[("cookie", "session=ada")]),
    )
    .await;
    assert_eq!(served(&cookie), 5);
    assert_eq!(users.calls.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn calls_keyed_by_configured_metadata_are_cached_per_identity() {
    let config = CacheConfig::from_toml_str(
        r#"
        [grpc]
        methods = ["/demo.Users/Get"]
        key_metadata = ["authorization", "x-tenant"]
        "#,
    )
    .unwrap();
    let users = Users::default();
    let (channel, _cache) = start_with(users.clone(), config).await;
    const ADA_T1: &[(&str, &str)] = &[("authorization", "Bearer ada"), ("x-tenant", "t1")];
    const GRACE_T1: &[(&str, &str)] = &[("authorization", "Bearer grace"), ("x-tenant", "t1")];
    const ADA_T2: &[(&str, &str)] = &[("authorization", "Bearer ada"), ("x-tenant", "t2")];
    let get = |metadata| call_with(&channel, "/demo.Users/Get", "42", with_metadata(metadata));

    let first = get(ADA_T1).await;
    assert_eq!(cache_status(&first), "tiered-cache; fwd=miss; stored");
    // Another deadline (grpc-timeout) is the same call.
    let again = call_with(&channel, "/demo.Users/Get", "42", |message| {
        let mut request = with_metadata(ADA_T1)(message);
        request.set_timeout(Duration::from_secs(7));
        request
    })
    .await;
    assert_eq!(cache_status(&again), "tiered-cache; hit; detail=memory");
    assert_eq!(served(&again), 1);

    assert_eq!(served(&get(GRACE_T1).await), 2, "another caller");
    assert_eq!(served(&get(ADA_T2).await), 3, "another tenant");
    assert_eq!(
        served(&get(ADA_T1).await),
        1,
        "ada's own answer, from the cache"
    );
    assert_eq!(
        served(&get(GRACE_T1).await),
        2,
        "grace's own answer, from the cache"
    );
    assert_eq!(users.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_request_message_over_the_limit_is_refused() {
    let users = Users::default();
    let (channel, _cache) = start(users.clone()).await;
    // The default limit is tonic's: 4 MiB.
    let id = "x".repeat(4 * 1024 * 1024 + 1);

    let refused = call(&channel, "/demo.Users/Get", &id).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        refused.message(),
        "request message larger than grpc.max_request_size (4194304 bytes)"
    );
    assert_eq!(
        users.calls.load(Ordering::SeqCst),
        0,
        "never reached the backend"
    );

    // The connection still serves the next call.
    call(&channel, "/demo.Users/Get", "42").await.unwrap();
    assert_eq!(users.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_failing_request_body_fails_the_call_instead_of_calling_the_origin_with_an_empty_message()
{
    let config = get_cached();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let origin = tower::service_fn(move |_request: http::Request<tonic::body::Body>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty())) }
    });
    let service =
        GrpcCacheLayer::new(TieredCache::new(config.clone()).unwrap(), &config).layer(origin);

    for (error, grpc_status) in [
        (tonic::Status::unknown("connection reset"), "13"),
        (tonic::Status::cancelled("client went away"), "1"),
    ] {
        // The first bytes of a message, then the stream fails.
        let frames: Vec<Result<Frame<Bytes>, tonic::Status>> = vec![
            Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x04\x0a"))),
            Err(error),
        ];
        let body = tonic::body::Body::new(StreamBody::new(futures_util::stream::iter(frames)));
        let request = http::Request::post("http://users.local/demo.Users/Get")
            .header("content-type", "application/grpc")
            .body(body)
            .unwrap();

        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200, "a gRPC error travels in a 200");
        let headers = response.headers();
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["grpc-status"], grpc_status, "{headers:?}");
        assert_eq!(headers["cache-status"], "tiered-cache; detail=refused");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the origin was never called"
    );
}

/// A unary call of `/demo.Users/Get` as a client sends it, with `metadata`.
fn raw_call(metadata: &[(&str, &str)]) -> http::Request<tonic::body::Body> {
    let mut request = http::Request::post("http://users.local/demo.Users/Get")
        .header("content-type", "application/grpc");
    for (name, value) in metadata {
        request = request.header(*name, *value);
    }
    let message = Bytes::from_static(b"\0\0\0\0\x04\x0a\x0242");
    request
        .body(tonic::body::Body::new(http_body_util::Full::new(message)))
        .unwrap()
}

#[tokio::test]
async fn a_compressed_answer_is_not_replayed_to_a_caller_that_cannot_read_it() {
    let config = get_cached();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    // A backend that compresses for the callers that accept it, as tonic does.
    let origin = tower::service_fn(move |request: http::Request<tonic::body::Body>| {
        counted.fetch_add(1, Ordering::SeqCst);
        let gzip = request
            .headers()
            .get("grpc-accept-encoding")
            .is_some_and(|accepted| accepted.to_str().unwrap().contains("gzip"));
        let mut response = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "0");
        if gzip {
            response = response.header("grpc-encoding", "gzip");
        }
        let response = response.body(tonic::body::Body::empty()).unwrap();
        async { Ok::<_, Infallible>(response) }
    });
    let service =
        GrpcCacheLayer::new(TieredCache::new(config.clone()).unwrap(), &config).layer(origin);

    let gzipped = service
        .clone()
        .oneshot(raw_call(&[("grpc-accept-encoding", "gzip")]))
        .await
        .unwrap();
    assert_eq!(gzipped.headers()["grpc-encoding"], "gzip");
    assert_eq!(gzipped.headers()["cache-status"], "tiered-cache; fwd=miss");

    for _ in 0..2 {
        let plain = service.clone().oneshot(raw_call(&[])).await.unwrap();
        assert_eq!(plain.headers().get("grpc-encoding"), None);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the compressed answer was not stored; the uncompressed one was"
    );
}

#[tokio::test(start_paused = true)]
async fn a_backend_past_the_callers_grpc_timeout_is_answered_deadline_exceeded() {
    let config = CacheConfig::from_toml_str(
        "[http]\norigin_timeout = \"10s\"\n[grpc]\nmethods = [\"/demo.Users/Get\"]\n",
    )
    .unwrap();
    let origin = tower::service_fn(|_request: http::Request<tonic::body::Body>| {
        std::future::pending::<Result<http::Response<tonic::body::Body>, Infallible>>()
    });
    let service =
        GrpcCacheLayer::new(TieredCache::new(config.clone()).unwrap(), &config).layer(origin);

    // The caller's own deadline; and without one, the cache's own limit.
    for metadata in [&[("grpc-timeout", "50m")][..], &[]] {
        // Bounded (in paused time) so that a call nothing ends fails instead of hanging.
        let answer = service.clone().oneshot(raw_call(metadata));
        let response = tokio::time::timeout(Duration::from_secs(86_400), answer)
            .await
            .expect("the call is answered")
            .unwrap();
        let headers = response.headers();
        assert_eq!(response.status(), 200, "a gRPC error travels in a 200");
        assert_eq!(headers["grpc-status"], "4", "{metadata:?}: {headers:?}");
        assert_eq!(headers["cache-status"], "tiered-cache; detail=refused");
    }
}
