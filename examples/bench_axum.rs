//! One axum handler served twice, for `scripts/bench-axum.sh`: bare on `--bare`, behind
//! `CacheLayer` (memory tier only) on `--cached`. Both answer `GET /items/{id}` with a body of
//! `--size` bytes and `Cache-Control: max-age=3600`, so after one request every request to the
//! cached port is a memory hit.
//!
//! ```sh
//! cargo run --release --example bench_axum -- --bare 127.0.0.1:8001 --cached 127.0.0.1:8002
//! ```

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use clap::Parser;
use tower_tiered_cache::{CacheConfig, CacheLayer};

#[derive(Parser, Debug)]
#[command(about = "An axum handler with and without CacheLayer, on two ports")]
struct Args {
    /// Address of the bare handler.
    #[arg(long)]
    bare: SocketAddr,
    /// Address of the same handler behind `CacheLayer`.
    #[arg(long)]
    cached: SocketAddr,
    /// Response body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let body = Bytes::from(vec![b'x'; args.size]);
    let handler = move || {
        let body = body.clone();
        async move {
            (
                [
                    ("content-type", "application/octet-stream"),
                    ("cache-control", "max-age=3600"),
                ],
                body,
            )
        }
    };
    let bare = Router::new().route("/items/{id}", get(handler));
    let config = CacheConfig::builder().build()?;
    let cached = bare.clone().layer(CacheLayer::try_new(config)?);

    let bare_listener = tokio::net::TcpListener::bind(args.bare).await?;
    let cached_listener = tokio::net::TcpListener::bind(args.cached).await?;
    println!("ready");
    tokio::try_join!(async { axum::serve(bare_listener, bare).await }, async {
        axum::serve(cached_listener, cached).await
    },)?;
    Ok(())
}
