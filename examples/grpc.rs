//! A tonic gRPC server with `GrpcCacheLayer` on one unary method, and a client calling it twice:
//! the second answer comes from the cache.
//!
//! ```sh
//! cargo run --example grpc --features tonic
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use tonic::server::{NamedService, UnaryService};
use tonic::transport::{Channel, Server};
use tonic_prost::ProstCodec;
use tower_tiered_cache::config::GrpcConfig;
use tower_tiered_cache::grpc::GrpcCacheLayer;
use tower_tiered_cache::{CacheConfig, TieredCache};

#[derive(Clone, PartialEq, prost::Message)]
struct ProductRequest {
    #[prost(string, tag = "1")]
    sku: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Product {
    #[prost(string, tag = "1")]
    name: String,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// `shop.Catalog/GetProduct`, written out as tonic-build would generate it (no protoc needed).
#[derive(Clone)]
struct Catalog;

impl NamedService for Catalog {
    const NAME: &'static str = "shop.Catalog";
}

impl UnaryService<ProductRequest> for Catalog {
    type Response = Product;
    type Future = BoxFuture<Result<tonic::Response<Product>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<ProductRequest>) -> Self::Future {
        Box::pin(async move {
            // A slow backend, e.g. a database query.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let sku = request.into_inner().sku;
            Ok(tonic::Response::new(Product {
                name: format!("product {sku}"),
            }))
        })
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Catalog {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<Product, ProductRequest>::default());
            Ok(grpc.unary(Catalog, request).await)
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut grpc = GrpcConfig::default();
    grpc.methods = vec!["/shop.Catalog/GetProduct".to_owned()];
    let config = CacheConfig::builder().grpc(grpc).build()?;
    let layer = GrpcCacheLayer::new(TieredCache::new(config.clone())?, &config);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(
        Server::builder()
            .layer(layer)
            .add_service(Catalog)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let channel = Channel::from_shared(format!("http://{address}"))?
        .connect()
        .await?;
    for attempt in 1..=2 {
        let mut client = tonic::client::Grpc::new(channel.clone());
        client.ready().await?;
        let started = std::time::Instant::now();
        let request = tonic::Request::new(ProductRequest { sku: "A-1".into() });
        let path = PathAndQuery::from_static("/shop.Catalog/GetProduct");
        let response = client
            .unary(
                request,
                path,
                ProstCodec::<ProductRequest, Product>::default(),
            )
            .await?;
        let status = response
            .metadata()
            .get("cache-status")
            .map(|v| v.to_str().unwrap_or("").to_owned());
        println!(
            "call {attempt}: {:?} in {:.1} ms, cache-status: {}",
            response.get_ref().name,
            started.elapsed().as_secs_f64() * 1e3,
            status.unwrap_or_default()
        );
    }
    Ok(())
}
