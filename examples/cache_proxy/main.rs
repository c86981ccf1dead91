//! A caching reverse proxy built on [`CacheLayer`]: memory (and Redis) in front of an upstream.
//!
//! ```sh
//! cargo run --release --example cache_proxy -- --listen 127.0.0.1:8080 --upstream http://127.0.0.1:8000
//! cargo run --release --example cache_proxy -- --upstream http://127.0.0.1:8000 \
//!     --config cache.toml --redis redis://127.0.0.1:6379 --header-read-timeout 5s --idle-timeout 30s
//! ```
//!
//! Clients speak HTTP/1.1 or h2c (HTTP/2 with prior knowledge) on the same port; requests are
//! forwarded as HTTP/1.1 in origin-form over a keep-alive pool, with `Host` set to the target's
//! authority (the absolute-form or HTTP/2 `:authority`, when there is one), hop-by-hop fields
//! removed and `Via` added in both directions; bodies stream both ways. An unreachable upstream
//! is a `502`. SIGTERM or Ctrl-C stops accepting, lets open connections finish (up to 10 s), then
//! drains the write-behind queue (up to 30 s).
//!
//! Connection limits (a duration such as `500ms`, `10s`, `1m`; `0s` turns off any of the first
//! three):
//!
//! | option (environment)                                      | default | what it bounds |
//! |-----------------------------------------------------------|---------|----------------|
//! | `--header-read-timeout` (`PROXY_HEADER_READ_TIMEOUT`)     | `10s`   | HTTP/1: time to send a whole request head; hyper also runs it while a keep-alive connection waits for its next request, so idle HTTP/1.1 connections close after the shorter of this and the idle timeout. The connection is closed without a response. |
//! | `--idle-timeout` (`PROXY_IDLE_TIMEOUT`)                   | `60s`   | Both versions: time a connection stays open with no request in flight, from its accept or the end of its last response; closes connections that send nothing and idle HTTP/2 connections. |
//! | `--h2-keep-alive-interval` (`PROXY_H2_KEEP_ALIVE_INTERVAL`) | `20s` | HTTP/2: ping a client silent for this long, so dead peers are noticed while a request runs. |
//! | `--h2-keep-alive-timeout` (`PROXY_H2_KEEP_ALIVE_TIMEOUT`) | `20s`   | HTTP/2: close when a ping is not answered within this. |
//!
//! When `accept` fails (e.g. at the file-descriptor limit), the loop pauses 5 ms, doubling up to
//! 1 s until an accept succeeds, and logs at most one `accept failed` line a second, with the
//! number of errors it left out (`suppressed`).
//!
//! [`CacheLayer`]: tower_tiered_cache::CacheLayer

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use http::Uri;
use tower_tiered_cache::CacheConfig;

mod server;

use server::{Proxy, Timeouts};

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
    /// Forward every request without the cache: the same server and upstream client, as a
    /// baseline for benchmarks (`scripts/bench-proxy.sh`). The configuration is not read.
    #[arg(long)]
    no_cache: bool,
    /// Worker threads, each serving the connections dealt to it start to end on a
    /// single-threaded runtime; default: one per core.
    #[arg(long, env = "PROXY_WORKERS")]
    workers: Option<usize>,
    /// HTTP/1: time a client has to send a whole request head (0s: no limit).
    #[arg(long, env = "PROXY_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    header_read_timeout: Duration,
    /// Time a connection may stay open with no request in flight (0s: no limit).
    #[arg(long, env = "PROXY_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// HTTP/2: ping a client after this long without a frame from it (0s: no pings).
    #[arg(long, env = "PROXY_H2_KEEP_ALIVE_INTERVAL", default_value = "20s", value_parser = humantime::parse_duration)]
    h2_keep_alive_interval: Duration,
    /// HTTP/2: close the connection when a ping is not answered within this.
    #[arg(long, env = "PROXY_H2_KEEP_ALIVE_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    h2_keep_alive_timeout: Duration,
}

impl Args {
    fn timeouts(&self) -> Timeouts {
        let limit = |duration: Duration| Some(duration).filter(|duration| !duration.is_zero());
        Timeouts {
            header_read: limit(self.header_read_timeout),
            idle: limit(self.idle_timeout),
            h2_keep_alive_interval: limit(self.h2_keep_alive_interval),
            h2_keep_alive_timeout: self.h2_keep_alive_timeout,
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let workers = args
        .workers
        .filter(|workers| *workers > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
    // The first worker runs on this thread's runtime, with the cache's own background tasks.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args, workers))
}

async fn run(args: Args, workers: usize) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let listen = listener.local_addr()?;
    if args.no_cache {
        tracing::info!(%listen, upstream = %args.upstream, workers, "proxy without cache ready");
        let timeouts = args.timeouts();
        server::serve_uncached(
            args.upstream,
            listener,
            workers,
            timeouts,
            shutdown_signal(),
        )
        .await?;
        return Ok(());
    }
    let mut config = match &args.config {
        Some(path) => CacheConfig::from_path(path)?,
        None => CacheConfig::from_env()?,
    };
    if let Some(url) = args.redis.clone() {
        config.l2.url = Some(url);
    }
    config.validate()?;
    let proxy = Proxy::new(&args.upstream, config)?;
    tracing::info!(%listen, upstream = %args.upstream, workers, "cache proxy ready");
    proxy
        .serve_workers(listener, workers, args.timeouts(), shutdown_signal())
        .await?;
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        return;
    }
    let _ = tokio::signal::ctrl_c().await;
}
