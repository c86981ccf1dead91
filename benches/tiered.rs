//! Memory-tier hits through the public API: `get` and `get_or_set` on a cached 1 KiB entry.
//! (Codec, HTTP layer and Redis benches arrive with the performance work.)

use std::convert::Infallible;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tower_tiered_cache::{CacheConfig, CachedEntry, TieredCache};

fn memory_hits(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache = TieredCache::new(CacheConfig::default()).unwrap();
    runtime.block_on(cache.set(
        "k",
        CachedEntry::new(vec![b'x'; 1024], Duration::from_secs(3600)),
    ));

    let mut group = c.benchmark_group("memory_hit_1KiB");
    group.bench_function("get", |b| b.to_async(&runtime).iter(|| cache.get("k")));
    group.bench_function("get_or_set", |b| {
        b.to_async(&runtime).iter(|| {
            cache.get_or_set("k", || async {
                Ok::<_, Infallible>(CachedEntry::new("unused", Duration::from_secs(1)))
            })
        })
    });
    group.finish();
}

criterion_group!(benches, memory_hits);
criterion_main!(benches);
