//! Heap allocations per request: the layer against the bare service it wraps, same request,
//! same 1 KiB response, counted by a global allocator. The goal is no allocation per hit beyond
//! what the response needs, which is what the bare service allocates.
//!
//! Not a criterion bench: it counts, it does not time. `cargo bench --bench alloc`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use tower::Layer;
use tower_tiered_cache::{CacheConfig, CacheLayer};

mod support;
use support::{prime, request, runtime, send, Origin, KIB};

/// The system allocator, counting allocations (reallocations count as one) and bytes requested.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the counters are plain atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` through this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: as for `dealloc`; `new_size` is the caller's, checked by the same contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const WARM_UP: u64 = 1_000;
const MEASURED: u64 = 20_000;

/// Allocations and bytes per call of `request`, after a warm-up.
fn per_request<F, Fut>(runtime: &tokio::runtime::Runtime, mut request: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    runtime.block_on(async {
        for _ in 0..WARM_UP {
            request().await;
        }
        let allocations = ALLOCATIONS.load(Ordering::Relaxed);
        let bytes = BYTES.load(Ordering::Relaxed);
        for _ in 0..MEASURED {
            request().await;
        }
        (
            (ALLOCATIONS.load(Ordering::Relaxed) - allocations) as f64 / MEASURED as f64,
            (BYTES.load(Ordering::Relaxed) - bytes) as f64 / MEASURED as f64,
        )
    })
}

fn row(path: &str, bare: (f64, f64), layer: (f64, f64)) {
    println!(
        "| {path} | {:.1} | {:.1} | {:+.1} | {:.0} | {:.0} | {:+.0} |",
        bare.0,
        layer.0,
        layer.0 - bare.0,
        bare.1,
        layer.1,
        layer.1 - bare.1
    );
}

fn main() {
    // `cargo test --benches` runs bench binaries once with `--test`: nothing to check here.
    if std::env::args().any(|arg| arg == "--test" || arg == "--list") {
        return;
    }
    let runtime = runtime();
    println!("allocations per request, 1 KiB response ({MEASURED} requests after {WARM_UP})\n");
    println!(
        "| path | bare allocs | layer allocs | overhead | bare bytes | layer bytes | overhead |"
    );
    println!("|---|---|---|---|---|---|---|");

    let bare = Origin::new(KIB, "max-age=3600");
    let cached = CacheLayer::new(CacheConfig::default()).layer(bare.clone());
    runtime.block_on(prime(&cached, "tiered-cache; hit; detail=memory"));
    let bare_allocs = per_request(&runtime, || async {
        send(&bare).await;
    });
    let layer_allocs = per_request(&runtime, || async {
        send(&cached).await;
    });
    row("memory hit", bare_allocs, layer_allocs);

    let bare = Origin::new(KIB, "no-store");
    let cached = CacheLayer::new(CacheConfig::default()).layer(bare.clone());
    let bare_allocs = per_request(&runtime, || async {
        send(&bare).await;
    });
    let layer_allocs = per_request(&runtime, || async {
        send(&cached).await;
    });
    row("miss (no-store)", bare_allocs, layer_allocs);

    let empty = per_request(&runtime, || async {
        drop(std::hint::black_box(request()));
    });
    println!(
        "\nbuilding the request alone (in every row): {:.1} allocations, {:.0} bytes",
        empty.0, empty.1
    );
}
