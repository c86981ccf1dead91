//! `CacheService` against the bare service it wraps, same request, same 1 KiB response: the
//! difference between the two in one group is the layer's overhead on that path.
//!
//! - `memory_hit_1KiB`: a fresh entry in memory.
//! - `miss_no_store_1KiB`: every request goes to the origin, whose `no-store` answer is passed on
//!   (after the first, as a hit-for-pass: no lookup, no coalescing).
//! - `redis_hit/*`: memory tier off (`l1.size = 0`), every request a hit in a private
//!   `redis-server`; next to it, a plain fred `GET` of the same stored value.
//! - `axum_hit_1KiB`: an axum router with and without `CacheLayer`.
//!
//! `scripts/bench-report.sh` turns the results into overheads and ratios.

use std::fmt::Debug;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};
use tower_tiered_cache::{CacheConfig, CacheLayer};

mod support;
use support::{cache_status, prime, request, runtime, send, Origin, KIB};

/// The group `name`: the same request through `bare` and through `cached`.
fn compare<S, B, T, C>(c: &mut Criterion, runtime: &Runtime, name: &str, bare: &S, cached: &T)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: Debug,
    B: Body + Unpin,
    T: Service<Request<Full<Bytes>>, Response = Response<C>> + Clone,
    T::Error: Debug,
    C: Body + Unpin,
{
    let mut group = c.benchmark_group(name);
    group.bench_function("bare", |b| b.to_async(runtime).iter(|| send(bare)));
    group.bench_function("layer", |b| b.to_async(runtime).iter(|| send(cached)));
    group.finish();
}

fn memory_hit(c: &mut Criterion) {
    let runtime = runtime();
    let bare = Origin::new(KIB, "max-age=3600");
    let cached = CacheLayer::new(CacheConfig::default()).layer(bare.clone());
    runtime.block_on(prime(&cached, "tiered-cache; hit; detail=memory"));
    compare(c, &runtime, "memory_hit_1KiB", &bare, &cached);
}

fn miss_no_store(c: &mut Criterion) {
    let runtime = runtime();
    let bare = Origin::new(KIB, "no-store");
    let cached = CacheLayer::new(CacheConfig::default()).layer(bare.clone());
    runtime.block_on(async {
        // The first answer marks the key (hit-for-pass); every later request passes.
        for expected in ["fwd=miss", "fwd=bypass", "fwd=bypass"] {
            let response = cached.clone().oneshot(request()).await.unwrap();
            assert_eq!(
                cache_status(&response),
                format!("tiered-cache; {expected}; fwd-status=200")
            );
        }
    });
    compare(c, &runtime, "miss_no_store_1KiB", &bare, &cached);
}

#[cfg(feature = "redis")]
fn redis_hit(c: &mut Criterion) {
    use std::hint::black_box;

    use bytes::Bytes;
    use criterion::BenchmarkId;
    use fred::interfaces::{ClientLike, KeysInterface};

    let runtime = runtime();
    // The Redis tier spawns its connection tasks where it is built.
    let _context = runtime.enter();
    let server = support::RedisServer::start();
    let mut group = c.benchmark_group("redis_hit");
    for len in [KIB, 100 * KIB] {
        let size = format!("{}KiB", len / KIB);
        let config = CacheConfig::builder()
            .l1_size(0)
            .redis_url(server.url())
            .redis_prefix(format!("bench{size}"))
            .build()
            .unwrap();
        let cached = CacheLayer::new(config.clone()).layer(Origin::new(len, "max-age=3600"));
        let client = fred::clients::Client::new(
            fred::types::config::Config::from_url(&server.url()).unwrap(),
            None,
            None,
            None,
        );
        let stored_key = runtime.block_on(async {
            assert!(
                cached
                    .cache()
                    .wait_for_redis(std::time::Duration::from_secs(5))
                    .await
            );
            client.init().await.expect("bench client connects");
            // The miss writes Redis in the background: the hit is measured once it is there.
            support::send(&cached).await;
            cached.cache().wait_for_writes().await;
            prime(&cached, "tiered-cache; hit; detail=redis").await;
            let keys: Vec<String> = client
                .custom(fred::cmd!("KEYS"), vec![format!("bench{size}:e:*")])
                .await
                .unwrap();
            assert_eq!(keys.len(), 1, "one stored entry: {keys:?}");
            keys.into_iter().next().unwrap()
        });

        group.bench_function(BenchmarkId::new("layer", &size), |b| {
            b.to_async(&runtime).iter(|| send(&cached))
        });
        group.bench_function(BenchmarkId::new("fred_get", &size), |b| {
            b.to_async(&runtime).iter(|| async {
                let value: Bytes = client.get(&stored_key).await.unwrap();
                black_box(value)
            })
        });
        runtime.block_on(async { client.quit().await.ok() });
    }
    group.finish();
    drop(server);
}

#[cfg(not(feature = "redis"))]
fn redis_hit(_: &mut Criterion) {}

fn axum_hit(c: &mut Criterion) {
    let runtime = runtime();
    let body = support::body(KIB);
    let handler = move || {
        let body = body.clone();
        async move {
            (
                [
                    ("content-type", "application/json"),
                    ("cache-control", "max-age=3600"),
                ],
                body,
            )
        }
    };
    let bare = Router::new().route("/items/{id}", get(handler));
    let cached = bare.clone().layer(CacheLayer::new(CacheConfig::default()));
    runtime.block_on(prime(&cached, "tiered-cache; hit; detail=memory"));
    compare(c, &runtime, "axum_hit_1KiB", &bare, &cached);
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = memory_hit, miss_no_store, redis_hit, axum_hit
}
criterion_main!(benches);
