//! A database as L3: memory, then Redis, then SQL (`SqlLoader`, feature `sqlx`).
//!
//! ```sh
//! cargo run --example database_l3 --features sqlx                  # SQLite in a temp dir, memory only
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example database_l3 --features sqlx
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --example database_l3 --features sqlx
//! ```
//!
//! It creates a `cache_store(key TEXT PRIMARY KEY, value TEXT)` table (if missing) with a few
//! rows, reads one key through the tiers, writes it through to the row and both tiers, and
//! prints the counters.

use std::time::{Duration, Instant};

use tower_tiered_cache::sql::SqlLoader;
use tower_tiered_cache::{CacheConfig, CachedEntry, Stats, TieredCache};

const ROWS: [(&str, &str); 3] = [
    ("product:1", r#"{"id":1,"name":"kettle","price":39}"#),
    ("product:2", r#"{"id":2,"name":"teapot","price":24}"#),
    ("product:3", r#"{"id":3,"name":"mug","price":9}"#),
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut config = CacheConfig::from_env()?; // REDIS_URL → l2.url, DATABASE_URL → l3.url
    let _dir = if config.l3.url.is_none() {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("database_l3.db");
        config.l3.url = Some(format!("sqlite://{}?mode=rwc", path.display()));
        Some(dir)
    } else {
        None
    };

    let loader = SqlLoader::connect(&config.l3).await?;
    create_table(&loader).await?;
    println!(
        "L3: {}",
        without_password(config.l3.url.as_deref().unwrap_or_default())
    );
    println!("    l3.query = {}", config.l3.query);

    let cache = connect_cache(&config, true).await?;
    println!("\n{:<44} {:<8} {:>10}  body", "call", "tier", "time");
    timed_get(&loader, &cache, "first read", "product:1").await;
    timed_get(&loader, &cache, "second read", "product:1").await;

    let restarted = connect_cache(&config, false).await?;
    timed_get(&loader, &restarted, "new instance, first read", "product:1").await;
    timed_get(
        &loader,
        &restarted,
        "new instance, second read",
        "product:1",
    )
    .await;

    match loader.get_or_load(&cache, "product:404").await {
        Ok(entry) => println!("product:404 unexpectedly found: {entry:?}"),
        Err(err) => println!(
            "{:<44} {:<8} {:>10}  {err}",
            "a key without a row", "error", "-"
        ),
    }

    let updated = r#"{"id":1,"name":"kettle","price":35}"#;
    let entry = CachedEntry::new(updated, config.l3.ttl);
    loader.write_through(&cache, "product:1", entry).await?;
    let row: String = sqlx::query_scalar("SELECT value FROM cache_store WHERE key = $1")
        .bind("product:1")
        .fetch_one(loader.pool())
        .await?;
    println!("\nwrite-through product:1 → row is now {row}");
    timed_get(&loader, &cache, "read after the write", "product:1").await;
    let third = connect_cache(&config, false).await?;
    timed_get(
        &loader,
        &third,
        "another new instance, first read",
        "product:1",
    )
    .await;

    println!("\nstats of the first instance: {:#?}", cache.stats());
    Ok(())
}

/// The table and its rows, reset to their original values so every run starts alike.
async fn create_table(loader: &SqlLoader) -> Result<(), sqlx::Error> {
    sqlx::query("CREATE TABLE IF NOT EXISTS cache_store (key TEXT PRIMARY KEY, value TEXT)")
        .execute(loader.pool())
        .await?;
    for (key, value) in ROWS {
        sqlx::query(
            "INSERT INTO cache_store (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(loader.pool())
        .await?;
    }
    Ok(())
}

/// A cache instance (empty memory tier), connected to Redis when `REDIS_URL` is set. The first
/// one also clears the demo keys from Redis, so that the first read comes from the database.
async fn connect_cache(
    config: &CacheConfig,
    first: bool,
) -> Result<TieredCache, Box<dyn std::error::Error>> {
    let cache = TieredCache::new(config.clone())?;
    let Some(url) = config.l2.url.as_deref() else {
        if first {
            println!("L2: none (set REDIS_URL to add Redis)");
        }
        return Ok(cache);
    };
    let connected = cache.wait_for_redis(Duration::from_secs(2)).await;
    if first {
        println!(
            "L2: {url} ({})",
            if connected {
                "connected"
            } else {
                "not reachable: running on memory and the database"
            }
        );
        cache.invalidate_prefix("product:").await.ok();
    }
    Ok(cache)
}

async fn timed_get(loader: &SqlLoader, cache: &TieredCache, label: &str, key: &str) {
    let before = cache.stats();
    let started = Instant::now();
    let result = loader.get_or_load(cache, key).await;
    let elapsed = started.elapsed().as_secs_f64() * 1e3;
    match result {
        Ok(entry) => println!(
            "{label:<44} {:<8} {elapsed:>7.3} ms  {}",
            answered_by(&before, &cache.stats()),
            String::from_utf8_lossy(entry.body())
        ),
        Err(err) => println!("{label:<44} {:<8} {elapsed:>7.3} ms  {err}", "error"),
    }
}

fn answered_by(before: &Stats, after: &Stats) -> &'static str {
    if after.memory_hits > before.memory_hits {
        "memory"
    } else if after.redis_hits > before.redis_hits {
        "redis"
    } else {
        "database"
    }
}

/// `url` for printing: its password, if any, masked.
fn without_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}
