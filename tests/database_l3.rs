//! A database as L3 (`SqlLoader`): a loaded row is cached and not queried again, a missing row
//! is an error that caches nothing, write-through updates the row and both tiers. On SQLite in
//! a temp file, and on Postgres when `DATABASE_URL` is set.
#![cfg(feature = "sqlx")]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::AssertSqlSafe;
use tower_tiered_cache::config::L3Config;
use tower_tiered_cache::sql::{SqlError, SqlLoader};
use tower_tiered_cache::{CacheConfig, CachedEntry, Source, TieredCache};

/// A `(key, value)` table with two rows, and a loader reading and writing it.
struct Table {
    loader: SqlLoader,
    name: String,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Table {
    /// A fresh SQLite database in a temp file, with a `TEXT` value column.
    async fn sqlite() -> Self {
        Self::sqlite_with("TEXT", |_, _| {}).await
    }

    /// A fresh SQLite database in a temp file; see [`Self::create`].
    async fn sqlite_with(value_type: &str, adjust: impl FnOnce(&mut L3Config, &str)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("l3.db").display());
        let mut table = Self::create(&url, value_type, adjust).await;
        table._dir = Some(dir);
        table
    }

    /// A table unique to this run on the Postgres at `DATABASE_URL`, or `None` (with the reason
    /// printed) when there is none.
    async fn postgres(value_type: &str) -> Option<Self> {
        let Ok(url) = std::env::var("DATABASE_URL") else {
            eprintln!("skipping Postgres: DATABASE_URL is not set");
            return None;
        };
        if !url.starts_with("postgres") {
            eprintln!("skipping Postgres: DATABASE_URL is not a postgres:// URL");
            return None;
        }
        Some(Self::create(&url, value_type, |_, _| {}).await)
    }

    /// Creates a table named uniquely (`key TEXT PRIMARY KEY, value <value_type>`) with rows
    /// `user:1` = Ada and `user:2` = Grace; `adjust` may change the loader's configuration
    /// first (it gets the table's name).
    async fn create(url: &str, value_type: &str, adjust: impl FnOnce(&mut L3Config, &str)) -> Self {
        let name = unique_table_name();
        let mut l3 = L3Config::default();
        l3.url = Some(url.to_owned());
        l3.query = format!("SELECT value FROM {name} WHERE key = $1");
        l3.write_query = format!(
            "INSERT INTO {name} (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        );
        l3.ttl = Duration::from_secs(60);
        adjust(&mut l3, &name);
        let loader = SqlLoader::connect(&l3).await.expect("connects");
        let table = Self {
            loader,
            name,
            url: url.to_owned(),
            _dir: None,
        };
        table
            .execute(&format!(
                "CREATE TABLE {} (key TEXT PRIMARY KEY, value {value_type})",
                table.name
            ))
            .await;
        table
            .execute(&format!(
                "INSERT INTO {} (key, value) VALUES ('user:1', 'Ada'), ('user:2', 'Grace')",
                table.name
            ))
            .await;
        table
    }

    async fn execute(&self, sql: &str) {
        sqlx::query(AssertSqlSafe(sql))
            .execute(self.loader.pool())
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"));
    }

    /// The row's value as text, read with sqlx rather than through the loader.
    async fn row(&self, key: &str) -> Option<String> {
        let sql = format!("SELECT value FROM {} WHERE key = $1", self.name);
        sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(key)
            .fetch_optional(self.loader.pool())
            .await
            .expect("reads the row")
    }

    /// Drops a Postgres table (SQLite's temp dir goes with it).
    async fn drop(self) {
        self.execute(&format!("DROP TABLE {}", self.name)).await;
    }
}

fn unique_table_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "ttc_l3_{}_{nanos}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The cache tiers: memory plus a private redis-server when the `redis` feature is on, memory
/// alone otherwise.
struct Tiers {
    #[cfg(feature = "redis")]
    redis: common::RedisServer,
    #[cfg(feature = "redis")]
    prefix: &'static str,
}

impl Tiers {
    fn start(prefix: &'static str) -> Self {
        #[cfg(not(feature = "redis"))]
        let _ = prefix;
        Self {
            #[cfg(feature = "redis")]
            redis: common::RedisServer::start(),
            #[cfg(feature = "redis")]
            prefix,
        }
    }

    /// A new cache instance (empty memory tier) on these tiers.
    async fn instance(&self) -> TieredCache {
        #[cfg(feature = "redis")]
        return common::cache_on(&self.redis, common::config(self.prefix)).await;
        #[cfg(not(feature = "redis"))]
        return memory_only();
    }

    /// Whether Redis holds an entry under `key`.
    #[cfg(feature = "redis")]
    async fn redis_has(&self, key: &str) -> bool {
        use fred::interfaces::KeysInterface;
        let client = self.redis.client().await;
        let exists: u64 = client
            .exists(format!("{}:e:{key}", self.prefix))
            .await
            .unwrap();
        exists == 1
    }
}

fn memory_only() -> TieredCache {
    TieredCache::new(CacheConfig::default()).unwrap()
}

async fn load_is_cached_and_not_queried_again(table: &Table) {
    let cache = memory_only();
    let first = table.loader.get_or_load(&cache, "user:1").await.unwrap();
    assert_eq!(first.body(), "Ada");
    assert_eq!(first.ttl(), Duration::from_secs(60), "l3.ttl");

    // Changed behind the cache's back: the cached value still answers, without a query.
    table
        .execute(&format!(
            "UPDATE {} SET value = 'Ada L.' WHERE key = 'user:1'",
            table.name
        ))
        .await;
    let second = table.loader.get_or_load(&cache, "user:1").await.unwrap();
    assert_eq!(second.body(), "Ada");
    let stats = cache.stats();
    assert_eq!((stats.loader_calls, stats.memory_hits), (1, 1));
}

async fn missing_row_is_an_error_and_caches_nothing(table: &Table) {
    let cache = memory_only();
    let err = table
        .loader
        .get_or_load(&cache, "user:404")
        .await
        .unwrap_err();
    assert!(
        matches!(&*err, SqlError::NotFound { key } if key == "user:404"),
        "{err}"
    );
    assert_eq!(err.to_string(), r#"l3.query: no row for key "user:404""#);
    assert!(cache.get("user:404").await.is_none());
    let stats = cache.stats();
    assert_eq!((stats.stores, stats.loader_errors), (0, 1));

    // Nothing negative was cached: once the row exists, the next read finds it.
    table
        .execute(&format!(
            "INSERT INTO {} (key, value) VALUES ('user:404', 'found')",
            table.name
        ))
        .await;
    let found = table.loader.get_or_load(&cache, "user:404").await.unwrap();
    assert_eq!(found.body(), "found");
    assert_eq!(cache.stats().loader_calls, 2);
}

async fn write_through_updates_the_row_and_both_tiers(table: &Table, tiers: &Tiers) {
    let cache = tiers.instance().await;
    let cached = table.loader.get_or_load(&cache, "user:2").await.unwrap();
    assert_eq!(cached.body(), "Grace");

    let entry = CachedEntry::new("Grace Hopper", Duration::from_secs(60));
    table
        .loader
        .write_through(&cache, "user:2", entry)
        .await
        .unwrap();
    assert_eq!(table.row("user:2").await.as_deref(), Some("Grace Hopper"));
    let found = cache.lookup("user:2").await.expect("in memory");
    assert_eq!(
        (found.entry.body().as_ref(), found.source),
        (&b"Grace Hopper"[..], Source::Memory)
    );

    // A new row through write-through (the write query inserts).
    let entry = CachedEntry::new("Katherine", Duration::from_secs(60));
    table
        .loader
        .write_through(&cache, "user:3", entry)
        .await
        .unwrap();
    assert_eq!(table.row("user:3").await.as_deref(), Some("Katherine"));
    assert_eq!(cache.stats().loader_calls, 1, "writes load nothing");

    // Redis holds it too: another instance (empty memory) reads it from there, not the database.
    #[cfg(feature = "redis")]
    {
        assert!(tiers.redis_has("user:2").await, "written to redis");
        let other = tiers.instance().await;
        let found = other.lookup("user:2").await.expect("in redis");
        assert_eq!(
            (found.entry.body().as_ref(), found.source),
            (&b"Grace Hopper"[..], Source::Redis)
        );
        let again = table.loader.get_or_load(&other, "user:3").await.unwrap();
        assert_eq!(again.body(), "Katherine");
        let stats = other.stats();
        assert_eq!((stats.redis_hits, stats.loader_calls), (2, 0));
    }
}

#[tokio::test]
async fn sqlite_load_is_cached_and_the_second_read_runs_no_query() {
    load_is_cached_and_not_queried_again(&Table::sqlite().await).await;
}

#[tokio::test]
async fn sqlite_missing_row_is_an_error_and_nothing_is_cached() {
    missing_row_is_an_error_and_caches_nothing(&Table::sqlite().await).await;
}

#[tokio::test]
async fn sqlite_write_through_updates_the_row_and_both_tiers() {
    let tiers = Tiers::start("l3_sqlite");
    write_through_updates_the_row_and_both_tiers(&Table::sqlite().await, &tiers).await;
}

#[tokio::test]
async fn postgres_load_missing_row_and_write_through() {
    let Some(table) = Table::postgres("TEXT").await else {
        return;
    };
    load_is_cached_and_not_queried_again(&table).await;
    missing_row_is_an_error_and_caches_nothing(&table).await;
    let tiers = Tiers::start("l3_postgres");
    write_through_updates_the_row_and_both_tiers(&table, &tiers).await;
    table.drop().await;
}

#[tokio::test]
async fn postgres_bytea_values_round_trip_with_binary_values() {
    let Some(mut table) = Table::postgres("BYTEA").await else {
        return;
    };
    table.loader = table.loader.clone().binary_values(true);
    let cache = memory_only();
    let loaded = table.loader.get_or_load(&cache, "user:1").await.unwrap();
    assert_eq!(loaded.body(), "Ada");

    for body in [&b"\xff\x00 not utf-8"[..], &b"plain text"[..]] {
        let entry = CachedEntry::new(body.to_vec(), Duration::from_secs(60));
        table
            .loader
            .write_through(&cache, "blob", entry)
            .await
            .unwrap();
        assert_eq!(table.loader.load("blob").await.unwrap().body(), body);
    }
    table.drop().await;
}

#[tokio::test]
async fn postgres_rejects_question_mark_placeholders() {
    let Some(table) = Table::postgres("TEXT").await else {
        return;
    };
    let err = loader_with_query(&table, "?")
        .await
        .load("user:1")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SqlError::Database {
                query: "l3.query",
                ..
            }
        ),
        "{err}"
    );
    table.drop().await;
}

/// A loader on `table`'s database whose `l3.query` uses `placeholder` for the key.
async fn loader_with_query(table: &Table, placeholder: &str) -> SqlLoader {
    let mut l3 = L3Config::default();
    l3.url = Some(table.url.clone());
    l3.query = format!("SELECT value FROM {} WHERE key = {placeholder}", table.name);
    SqlLoader::connect(&l3).await.unwrap()
}

#[tokio::test]
async fn concurrent_misses_for_one_key_run_one_query() {
    let table = Table::sqlite().await;
    let cache = memory_only();
    let loads = (0..20).map(|_| table.loader.get_or_load(&cache, "user:1"));
    for loaded in futures_util::future::join_all(loads).await {
        assert_eq!(loaded.unwrap().body(), "Ada");
    }
    assert_eq!(cache.stats().loader_calls, 1);
}

#[tokio::test]
async fn sqlite_takes_question_mark_numbered_and_dollar_placeholders() {
    let table = Table::sqlite().await;
    for placeholder in ["?", "?1", "$1"] {
        let loader = loader_with_query(&table, placeholder).await;
        assert_eq!(loader.load("user:1").await.unwrap().body(), "Ada");
    }
}

#[tokio::test]
async fn seed_select_star_query_returns_the_value_column() {
    let table = Table::sqlite_with("TEXT", |l3, name| {
        l3.query = format!("SELECT * FROM {name} WHERE key = ?");
    })
    .await;
    assert_eq!(table.loader.load("user:2").await.unwrap().body(), "Grace");
}

#[tokio::test]
async fn blob_values_load_and_write_as_bytes() {
    let table = Table::sqlite_with("BLOB", |_, _| {}).await;
    table
        .execute(&format!(
            "INSERT INTO {} (key, value) VALUES ('png', x'89504e470d0a1a0a')",
            table.name
        ))
        .await;
    assert_eq!(
        table.loader.load("png").await.unwrap().body().as_ref(),
        b"\x89PNG\r\n\x1a\n"
    );

    let cache = memory_only();
    let bytes = vec![0xff, 0xfe, 0x00, 0x01];
    let entry = CachedEntry::new(bytes.clone(), Duration::from_secs(60));
    table
        .loader
        .write_through(&cache, "raw", entry)
        .await
        .unwrap();
    assert_eq!(
        table.loader.load("raw").await.unwrap().body().as_ref(),
        bytes
    );
    assert_eq!(cache.get("raw").await.unwrap().body().as_ref(), bytes);
}

#[tokio::test]
async fn a_value_that_is_neither_text_nor_bytes_is_an_error() {
    // No declared type: SQLite keeps each value's own type.
    let table = Table::sqlite_with("", |_, _| {}).await;
    table
        .execute(&format!(
            "INSERT INTO {} (key, value) VALUES ('n', 42), ('null', NULL)",
            table.name
        ))
        .await;
    let cache = memory_only();
    for (key, found) in [("n", "BIGINT"), ("null", "NULL")] {
        let err = table.loader.get_or_load(&cache, key).await.unwrap_err();
        assert!(
            matches!(&*err, SqlError::UnsupportedValue { found: f, .. } if f == found),
            "{key}: {err}"
        );
        assert!(err.to_string().contains("CAST(value AS TEXT)"), "{err}");
    }
    assert_eq!(cache.stats().stores, 0);
}

#[tokio::test]
async fn a_write_that_changes_no_row_is_an_error_and_caches_nothing() {
    let table = Table::sqlite_with("TEXT", |l3, name| {
        l3.write_query = format!("UPDATE {name} SET value = $2 WHERE key = $1");
    })
    .await;
    let cache = memory_only();
    let entry = CachedEntry::new("nobody", Duration::from_secs(60));
    let err = table
        .loader
        .write_through(&cache, "user:9", entry)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SqlError::NotWritten { key } if key == "user:9"),
        "{err}"
    );
    assert!(cache.get("user:9").await.is_none());
    assert_eq!(table.row("user:9").await, None);
}

#[tokio::test]
async fn connect_names_l3_url_when_it_is_missing_or_unusable() {
    let mut l3 = L3Config::default();
    for (url, message) in [
        (None, "l3.url: not set"),
        (Some(" "), "l3.url: not set"),
        (Some("no scheme here"), "l3.url: not a URL"),
        (
            Some("mysql://localhost/app"),
            "l3.url: unsupported database",
        ),
        (Some("sqlite://x.db?mode=sideways"), "l3.url: "),
    ] {
        l3.url = url.map(str::to_owned);
        let err = SqlLoader::connect(&l3).await.unwrap_err();
        assert!(
            matches!(err, SqlError::Config(_)),
            "{url:?} is a config error: {err}"
        );
        assert!(err.to_string().starts_with(message), "{url:?}: {err}");
    }

    l3.url = Some("sqlite::memory:".into());
    l3.query = " ".into();
    let err = SqlLoader::connect(&l3).await.unwrap_err();
    assert!(err.to_string().starts_with("l3.query: empty"), "{err}");
}

#[tokio::test]
async fn an_unreachable_database_is_a_connect_error_without_the_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut l3 = L3Config::default();
    l3.url = Some(format!("postgres://app:s3cret@127.0.0.1:{port}/app"));
    let err = tokio::time::timeout(Duration::from_secs(5), SqlLoader::connect(&l3))
        .await
        .expect("connect gives up")
        .unwrap_err();
    assert!(matches!(err, SqlError::Connect { .. }), "{err}");
    let message = err.to_string();
    assert!(message.starts_with("l3.url: cannot connect to postgres://app:***@127.0.0.1"));
    assert!(!message.contains("s3cret"), "{message}");
}
