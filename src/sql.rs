//! A database as L3 (feature `sqlx`): [`SqlLoader`] reads entries with the configured
//! `l3.query` and writes them with `l3.write_query`, on SQLite or Postgres through sqlx's `Any`
//! driver, as the seed's `l3_query: SELECT * FROM cache_store WHERE key = ?`.
//!
//! Lookups go memory → Redis → database: [`SqlLoader::get_or_load`] is
//! [`TieredCache::get_or_set`] with the query as the loader, so concurrent misses for one key
//! run one query, and a key without a row is an error that caches nothing.
//! [`SqlLoader::write_through`] writes the row first, then both tiers. In
//! [`TieredCache::stats`], `loader_calls` counts the queries and `loader_errors` the failed
//! ones (missing rows included).
//!
//! ```
//! use tower_tiered_cache::config::L3Config;
//! use tower_tiered_cache::sql::SqlLoader;
//! use tower_tiered_cache::{CacheConfig, TieredCache};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut l3 = L3Config::default(); // SELECT value FROM cache_store WHERE key = $1
//! l3.url = Some("sqlite::memory:".into()); // or DATABASE_URL through CacheConfig::from_env
//! let loader = SqlLoader::connect(&l3).await?;
//! sqlx::query("CREATE TABLE cache_store (key TEXT PRIMARY KEY, value TEXT)")
//!     .execute(loader.pool())
//!     .await?;
//! sqlx::query("INSERT INTO cache_store VALUES ('user:1', 'Ada')")
//!     .execute(loader.pool())
//!     .await?;
//!
//! let cache = TieredCache::new(CacheConfig::default())?;
//! let user = loader.get_or_load(&cache, "user:1").await?; // from the database
//! assert_eq!(user.body(), "Ada");
//! let again = loader.get_or_load(&cache, "user:1").await?; // from memory
//! assert_eq!(again.body(), "Ada");
//! assert_eq!(cache.stats().loader_calls, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Queries and placeholders
//!
//! The `Any` driver sends the query text to the database unchanged, so placeholders are the
//! database's own:
//!
//! | placeholder | SQLite | Postgres |
//! |---|---|---|
//! | `$1`, `$2` | yes | yes |
//! | `?` (positional) | yes | no: a syntax error |
//! | `?1`, `?2` | yes | no |
//! | `:name`, `@name`, `$name` | no (sqlx binds by position only) | no |
//!
//! `$1`/`$2`, as in the defaults, work on both. `l3.query` gets one parameter, the key (as
//! text); `l3.write_query` gets two, the key and the body.
//!
//! The body is the column named `value` when the result has one (so `SELECT *` on a
//! `(key, value)` table works, as in the seed), otherwise the first column. It must be text
//! (`TEXT`, `VARCHAR`, Postgres `citext`) or bytes (`BLOB`, `bytea`); cast anything else
//! (`CAST(n AS TEXT)`, `payload::text` for Postgres `json`/`char(n)`). On Postgres the key is
//! sent as `text`: compare it with a text column, or cast it (`WHERE id = $1::int`).
//!
//! Bodies are written as text when they are UTF-8 and as bytes otherwise, which suits `TEXT`
//! columns and any SQLite column. A Postgres `bytea` column needs bytes every time:
//! [`SqlLoader::binary_values`].
//!
//! # Drivers and TLS
//!
//! [`SqlLoader::connect`] installs sqlx's compiled-in `Any` drivers with
//! [`sqlx::any::install_default_drivers`]: harmless when your code calls it too, but it panics
//! if your program installed a list of its own with `sqlx::any::install_drivers`.
//!
//! No TLS backend is compiled in: to reach Postgres over TLS, enable one of sqlx's `tls-*`
//! features in your own `Cargo.toml` (cargo unifies them) and use `?sslmode=require`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow, AnyTypeInfoKind};
use sqlx::{AnyPool, AssertSqlSafe, Column, ConnectOptions, Connection, Row, TypeInfo, ValueRef};

use crate::config::{ConfigError, L3Config};
use crate::{CachedEntry, TieredCache};

/// Errors from [`SqlLoader`]. Messages name the configuration key involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqlError {
    /// `l3.url` (or another `l3` key) is missing or cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database at `l3.url` could not be reached.
    #[error("l3.url: cannot connect to {url}: {source}")]
    Connect {
        /// The URL, without its password.
        url: String,
        /// Why.
        source: sqlx::Error,
    },
    /// `l3.query` returned no row for the key. [`SqlLoader::get_or_load`] caches nothing then.
    #[error("l3.query: no row for key {key:?}")]
    NotFound {
        /// The key asked for.
        key: String,
    },
    /// The value `l3.query` returned is neither text nor bytes (or is NULL).
    #[error("l3.query: the value for key {key:?} is {found}; return text or bytes (e.g. CAST(value AS TEXT))")]
    UnsupportedValue {
        /// The key asked for.
        key: String,
        /// The SQL type found, e.g. `BIGINT` or `NULL`.
        found: String,
    },
    /// `l3.write_query` ran but changed no row, so the database does not hold the value: it is
    /// not cached either.
    #[error("l3.write_query: no row was written for key {key:?} (an UPDATE of a missing row, or ON CONFLICT DO NOTHING?)")]
    NotWritten {
        /// The key written.
        key: String,
    },
    /// A query failed.
    #[error("{query}: {source}")]
    Database {
        /// The key of the query that failed: `l3.query` or `l3.write_query`.
        query: &'static str,
        /// The database's error.
        source: sqlx::Error,
    },
}

/// The database behind a [`TieredCache`]: reads one value per key with `l3.query`, writes it
/// with `l3.write_query`, on SQLite (`sqlite://file.db`, `sqlite::memory:`) or Postgres
/// (`postgres://…`). See the [module documentation](self) for placeholders and column types.
///
/// Cheap to clone: clones share the connection pool.
#[derive(Clone, Debug)]
pub struct SqlLoader {
    pool: AnyPool,
    query: Arc<str>,
    write_query: Arc<str>,
    ttl: Duration,
    binary_values: bool,
}

impl SqlLoader {
    /// Connects to `l3.url`. One connection is opened and closed at once, so that a wrong URL
    /// or an unreachable server fails here, with its reason, rather than on the first miss; the
    /// pool then opens connections as queries need them.
    ///
    /// Errors: [`SqlError::Config`] naming `l3.url` when it is missing, not a URL, or not
    /// `sqlite:`/`postgres:`, or naming `l3.query`/`l3.write_query` when one is empty;
    /// [`SqlError::Connect`] when the database cannot be reached.
    ///
    /// ```
    /// # use tower_tiered_cache::{config::L3Config, sql::SqlLoader};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let err = SqlLoader::connect(&L3Config::default()).await.unwrap_err();
    /// assert!(err.to_string().starts_with("l3.url: not set"));
    ///
    /// let mut l3 = L3Config::default();
    /// l3.url = Some("mysql://localhost/app".into());
    /// let err = SqlLoader::connect(&l3).await.unwrap_err();
    /// assert!(err.to_string().starts_with("l3.url: unsupported database \"mysql\""));
    /// # }
    /// ```
    pub async fn connect(config: &L3Config) -> Result<Self, SqlError> {
        let url = config
            .url
            .as_deref()
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .ok_or_else(|| {
                ConfigError::invalid(
                    "l3.url",
                    "not set: give a database URL (sqlite://cache.db?mode=rwc, \
                     postgres://user@host/db) or set DATABASE_URL",
                )
            })?;
        let parsed = url::Url::parse(url)
            .map_err(|err| ConfigError::invalid("l3.url", format!("not a URL: {err}")))?;
        let in_memory = match parsed.scheme() {
            "sqlite" => {
                parsed.path() == ":memory:"
                    || parsed
                        .query_pairs()
                        .any(|(name, value)| name == "mode" && value == "memory")
            }
            "postgres" | "postgresql" => false,
            other => {
                return Err(ConfigError::invalid(
                    "l3.url",
                    format!("unsupported database {other:?}: use sqlite:// or postgres://"),
                )
                .into())
            }
        };
        for (key, query) in [
            ("l3.query", &config.query),
            ("l3.write_query", &config.write_query),
        ] {
            if query.trim().is_empty() {
                return Err(ConfigError::invalid(key, "empty: give an SQL statement").into());
            }
        }

        sqlx::any::install_default_drivers();
        let options: AnyConnectOptions = url
            .parse()
            .map_err(|err: sqlx::Error| ConfigError::invalid("l3.url", err.to_string()))?;
        // One connection first, for its error: the pool would retry until its acquire timeout
        // (30 s) and then report only that it timed out.
        let probe = options.connect().await.map_err(|source| match source {
            sqlx::Error::Configuration(err) => {
                ConfigError::invalid("l3.url", err.to_string()).into()
            }
            source => SqlError::Connect {
                url: without_password(parsed),
                source,
            },
        })?;
        // Nothing to do if closing fails: the connection is dropped either way.
        let _ = probe.close().await;
        let mut pool = AnyPoolOptions::new();
        if in_memory {
            // Each SQLite connection would open its own empty in-memory database: keep one,
            // open for the pool's whole life.
            pool = pool
                .max_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = pool.connect_lazy_with(options);
        Ok(Self {
            pool,
            query: config.query.as_str().into(),
            write_query: config.write_query.as_str().into(),
            ttl: config.ttl,
            binary_values: false,
        })
    }

    /// Writes every body as bytes (`BLOB`, `bytea`), also when it is UTF-8 text. Needed when the
    /// value column is a Postgres `bytea`; without it, UTF-8 bodies are written as text.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_tiered_cache::{config::L3Config, sql::SqlLoader, CachedEntry};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut l3 = L3Config::default();
    /// l3.url = Some("sqlite::memory:".into());
    /// let loader = SqlLoader::connect(&l3).await?.binary_values(true);
    /// sqlx::query("CREATE TABLE cache_store (key TEXT PRIMARY KEY, value BLOB)")
    ///     .execute(loader.pool())
    ///     .await?;
    /// let entry = CachedEntry::new("text, stored as bytes", Duration::from_secs(60));
    /// loader.write("k", &entry).await?;
    /// let stored: String = sqlx::query_scalar("SELECT typeof(value) FROM cache_store")
    ///     .fetch_one(loader.pool())
    ///     .await?;
    /// assert_eq!(stored, "blob");
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn binary_values(mut self, binary: bool) -> Self {
        self.binary_values = binary;
        self
    }

    /// The connection pool, to create tables or run other queries on the same database.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Runs `l3.query` with `key` and returns its value as an entry fresh for `l3.ttl`.
    ///
    /// Errors: [`SqlError::NotFound`] when there is no row; [`SqlError::UnsupportedValue`]
    /// when the value is NULL or neither text nor bytes; [`SqlError::Database`] when the query
    /// fails.
    ///
    /// ```
    /// # use tower_tiered_cache::{config::L3Config, sql::{SqlError, SqlLoader}};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut l3 = L3Config::default();
    /// l3.url = Some("sqlite::memory:".into());
    /// // The seed's query: SQLite takes `?` as well as `$1`; `value` is picked out of `*`.
    /// l3.query = "SELECT * FROM cache_store WHERE key = ?".into();
    /// let loader = SqlLoader::connect(&l3).await?;
    /// sqlx::query("CREATE TABLE cache_store (key TEXT PRIMARY KEY, value BLOB)")
    ///     .execute(loader.pool())
    ///     .await?;
    /// sqlx::query("INSERT INTO cache_store VALUES ('logo', x'89504e47')")
    ///     .execute(loader.pool())
    ///     .await?;
    ///
    /// let logo = loader.load("logo").await?;
    /// assert_eq!(logo.body().as_ref(), b"\x89PNG");
    /// assert_eq!(logo.ttl(), l3.ttl);
    /// let missing = loader.load("nothing").await.unwrap_err();
    /// assert!(matches!(missing, SqlError::NotFound { key } if key == "nothing"));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn load(&self, key: &str) -> Result<CachedEntry, SqlError> {
        let row = sqlx::query(AssertSqlSafe(self.query.clone()))
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|source| SqlError::Database {
                query: "l3.query",
                source,
            })?
            .ok_or_else(|| SqlError::NotFound {
                key: key.to_owned(),
            })?;
        Ok(CachedEntry::new(value_of(&row, key)?, self.ttl))
    }

    /// Runs `l3.write_query` with `key` and the entry's body (the database alone: see
    /// [`write_through`](Self::write_through) for the tiers too).
    ///
    /// Errors: [`SqlError::NotWritten`] when the statement changed no row;
    /// [`SqlError::Database`] when it fails.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_tiered_cache::{config::L3Config, sql::{SqlError, SqlLoader}, CachedEntry};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut l3 = L3Config::default();
    /// l3.url = Some("sqlite::memory:".into());
    /// l3.write_query = "UPDATE cache_store SET value = $2 WHERE key = $1".into();
    /// let loader = SqlLoader::connect(&l3).await?;
    /// sqlx::query("CREATE TABLE cache_store (key TEXT PRIMARY KEY, value TEXT)")
    ///     .execute(loader.pool())
    ///     .await?;
    ///
    /// // An UPDATE of a row that does not exist writes nothing, and says so.
    /// let entry = CachedEntry::new("Ada", Duration::from_secs(60));
    /// let err = loader.write("user:1", &entry).await.unwrap_err();
    /// assert!(matches!(err, SqlError::NotWritten { .. }));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn write(&self, key: &str, entry: &CachedEntry) -> Result<(), SqlError> {
        let body = entry.body();
        let query = sqlx::query(AssertSqlSafe(self.write_query.clone())).bind(key);
        let query = match std::str::from_utf8(body) {
            Ok(text) if !self.binary_values => query.bind(text),
            _ => query.bind(body.as_ref()),
        };
        let done = query
            .execute(&self.pool)
            .await
            .map_err(|source| SqlError::Database {
                query: "l3.write_query",
                source,
            })?;
        if done.rows_affected() == 0 {
            return Err(SqlError::NotWritten {
                key: key.to_owned(),
            });
        }
        Ok(())
    }

    /// Cache-aside through the database: the fresh entry under `key` from memory or Redis, or
    /// else [`load`](Self::load)'s, stored in both tiers. Concurrent calls for one key run one
    /// query; an error (a missing row too) reaches every caller waiting on it and caches
    /// nothing.
    pub async fn get_or_load(
        &self,
        cache: &TieredCache,
        key: &str,
    ) -> Result<CachedEntry, Arc<SqlError>> {
        cache.get_or_set(key, || self.load(key)).await
    }

    /// Write-through: [`write`](Self::write)s the row, then stores `entry` in both tiers (other
    /// instances drop their memory copies). If the write fails, the error is returned and
    /// nothing is cached.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_tiered_cache::{config::L3Config, sql::SqlLoader};
    /// # use tower_tiered_cache::{CacheConfig, CachedEntry, TieredCache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut l3 = L3Config::default(); // the write query is an upsert into cache_store
    /// l3.url = Some("sqlite::memory:".into());
    /// let loader = SqlLoader::connect(&l3).await?;
    /// sqlx::query("CREATE TABLE cache_store (key TEXT PRIMARY KEY, value TEXT)")
    ///     .execute(loader.pool())
    ///     .await?;
    /// let cache = TieredCache::new(CacheConfig::default())?;
    ///
    /// let entry = CachedEntry::new("Grace", Duration::from_secs(60));
    /// loader.write_through(&cache, "user:2", entry).await?;
    ///
    /// let row: String = sqlx::query_scalar("SELECT value FROM cache_store WHERE key = 'user:2'")
    ///     .fetch_one(loader.pool())
    ///     .await?;
    /// assert_eq!(row, "Grace");
    /// assert_eq!(cache.get("user:2").await.unwrap().body(), "Grace");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn write_through(
        &self,
        cache: &TieredCache,
        key: &str,
        entry: CachedEntry,
    ) -> Result<(), SqlError> {
        cache
            .write_through(
                key,
                entry,
                |entry| async move { self.write(key, &entry).await },
            )
            .await
    }
}

/// The body in `row`: its `value` column if it has one, else its first column.
fn value_of(row: &AnyRow, key: &str) -> Result<Bytes, SqlError> {
    let column = row
        .columns()
        .iter()
        .position(|column| column.name().eq_ignore_ascii_case("value"))
        .unwrap_or(0);
    let decode_failed = |source| SqlError::Database {
        query: "l3.query",
        source,
    };
    let unsupported = |found: &str| SqlError::UnsupportedValue {
        key: key.to_owned(),
        found: found.to_owned(),
    };
    let value = row.try_get_raw(column).map_err(decode_failed)?;
    if value.is_null() {
        return Err(unsupported("NULL"));
    }
    let type_info = value.type_info();
    match type_info.kind() {
        AnyTypeInfoKind::Text => row.try_get::<String, _>(column).map(Bytes::from),
        AnyTypeInfoKind::Blob => row.try_get::<Vec<u8>, _>(column).map(Bytes::from),
        _ => return Err(unsupported(type_info.name())),
    }
    .map_err(decode_failed)
}

/// `url` for messages: without its password.
fn without_password(mut url: url::Url) -> String {
    if url.password().is_some() {
        // Fails only for URLs that cannot have a password, which then have none to hide.
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        let url = url::Url::parse("postgres://app:s3cret@db.internal:5432/app").unwrap();
        assert_eq!(
            without_password(url),
            "postgres://app:***@db.internal:5432/app"
        );
    }
}
