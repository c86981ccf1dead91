//! The library API on its own: memory, then Redis, then a (slow) loader.
//!
//! ```sh
//! cargo run --example tiered                                       # memory only
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example tiered      # memory + Redis
//! ```

use std::convert::Infallible;
use std::time::{Duration, Instant};

use tower_tiered_cache::{CacheConfig, CachedEntry, Stats, TieredCache};

/// Stands in for a database query that takes 200 ms.
async fn load_user(id: u32) -> Result<CachedEntry, Infallible> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let body = format!(r#"{{"id":{id},"name":"user {id}"}}"#);
    Ok(CachedEntry::new(body, Duration::from_secs(60)))
}

async fn timed_get(cache: &TieredCache, label: &str, id: u32) {
    let before = cache.stats();
    let started = Instant::now();
    let entry = cache
        .get_or_set(&format!("demo:user:{id}"), || load_user(id))
        .await
        .unwrap_or_else(|never| match *never {});
    let tier = answered_by(&before, &cache.stats());
    println!(
        "{label:<38} {tier:<8} {:>9.3} ms  {}",
        started.elapsed().as_secs_f64() * 1e3,
        String::from_utf8_lossy(entry.body())
    );
}

fn answered_by(before: &Stats, after: &Stats) -> &'static str {
    if after.memory_hits > before.memory_hits {
        "memory"
    } else if after.redis_hits > before.redis_hits {
        "redis"
    } else {
        "loader"
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let config = CacheConfig::from_env()?;
    let with_redis = config.l2.url.is_some();
    let cache = TieredCache::new(config.clone())?;
    if with_redis {
        let connected = cache.wait_for_redis(Duration::from_secs(2)).await;
        println!(
            "L2: {} ({})",
            config.l2.url.as_deref().unwrap_or_default(),
            if connected {
                "connected"
            } else {
                "not reachable: running on memory and loader"
            }
        );
        cache.invalidate_prefix("demo:").await.ok();
    } else {
        println!("L2: none (set REDIS_URL to add Redis)");
    }
    println!("{:<38} {:<8} {:>12}  body", "call", "tier", "time");

    timed_get(&cache, "first call", 1).await;
    timed_get(&cache, "second call", 1).await;

    let restarted = TieredCache::new(config)?;
    if with_redis {
        restarted.wait_for_redis(Duration::from_secs(2)).await;
    }
    timed_get(&restarted, "new instance, first call", 1).await;
    timed_get(&restarted, "new instance, second call", 1).await;

    let started = Instant::now();
    let calls = (0..100).map(|_| cache.get_or_set("demo:user:2", || load_user(2)));
    futures_util::future::join_all(calls).await;
    println!(
        "{:<38} {:<8} {:>9.3} ms  (100 callers, {} loader call)",
        "100 concurrent calls, one key",
        "loader",
        started.elapsed().as_secs_f64() * 1e3,
        cache.stats().loader_calls - 1
    );

    println!("\nstats of the first instance: {:#?}", cache.stats());
    Ok(())
}
