//! gRPC caching with a real tonic server and client: an allow-listed unary method is answered
//! from the cache the second time, with the same message and trailers; errors, and methods not
//! listed, always reach the backend.
#![cfg(feature = "tonic")]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use tonic::server::{NamedService, UnaryService};
use tonic::transport::{Channel, Server};
use tonic_prost::ProstCodec;
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

async fn start(users: Users) -> (Channel, TieredCache) {
    let mut grpc = GrpcConfig::default();
    grpc.methods = vec!["/demo.Users/Get".to_owned()];
    let config = CacheConfig::builder().grpc(grpc).build().unwrap();
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
    let mut client = tonic::client::Grpc::new(channel.clone());
    client.ready().await.unwrap();
    let request = tonic::Request::new(GetUser { id: id.to_owned() });
    client
        .unary(
            request,
            PathAndQuery::from_static(path),
            ProstCodec::default(),
        )
        .await
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
