//! The entry codec (what every Redis write and read pays) at 1 KiB and 100 KiB, with and without
//! brotli, and primary-key derivation (what every GET pays).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{HeaderName, Request};
use tower_tiered_cache::bench_support::{primary_key, Codec};
use tower_tiered_cache::CacheConfig;

mod support;
use support::KIB;

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for len in [KIB, 100 * KIB] {
        // JSON-like text (brotli saves ~90 %) and base64-like random text (~25 %, the files the
        // proxy bench serves): brotli decoding speed depends on how much is literal data.
        let bodies = [
            ("", support::body(len)),
            ("-random", support::random_text(len)),
        ];
        for (text, body) in bodies {
            let entry = support::entry_with_body(body);
            group.throughput(Throughput::Bytes(len as u64));
            for (label, compress) in [("plain", false), ("brotli", true)] {
                if !compress && !text.is_empty() {
                    continue; // a plain body costs the same whatever its bytes
                }
                let config = CacheConfig::builder()
                    .compression(compress)
                    .build()
                    .unwrap();
                let codec = Codec::new(&config);
                let size = format!("{}KiB{text}", len / KIB);
                group.bench_function(BenchmarkId::new(format!("encode_{label}"), &size), |b| {
                    b.iter(|| codec.encode(black_box(&entry)).unwrap())
                });
                let encoded = Bytes::from(codec.encode(&entry).unwrap());
                group.bench_function(BenchmarkId::new(format!("decode_{label}"), &size), |b| {
                    b.iter(|| codec.decode(black_box(&encoded)).unwrap())
                });
            }
        }
    }
    group.finish();
}

fn key(c: &mut Criterion) {
    let mut group = c.benchmark_group("key");
    let (parts, _) = support::request().into_parts();
    group.bench_function("primary", |b| {
        b.iter(|| primary_key(black_box(&parts), &[]))
    });
    let (parts, _) = Request::get("/items/42?page=1")
        .header("host", "bench.example")
        .header("x-tenant", "acme")
        .header("accept-language", "en-GB, en;q=0.8")
        .body(())
        .unwrap()
        .into_parts();
    let key_headers = [
        HeaderName::from_static("x-tenant"),
        HeaderName::from_static("accept-language"),
    ];
    group.bench_function("primary_with_2_key_headers", |b| {
        b.iter(|| primary_key(black_box(&parts), &key_headers))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = codec, key
}
criterion_main!(benches);
