//! Typed values: [`TieredCache::get_value`], [`TieredCache::set_value`] and
//! [`TieredCache::get_or_set_value`], for any type that serde can write and read back.
//!
//! A value is the body of an ordinary entry, encoded by the entry codec (bincode; brotli in the
//! shared tier above `compression.min_size`). So typed values share everything with the byte API:
//! both tiers, single-flight and `l2.lock` (through [`TieredCache::get_or_set`]), tags, and every
//! invalidation. The body starts with a format byte and a fingerprint of the type's name, so bytes
//! stored through the byte API, a value of another type, or a value that no longer decodes (its
//! type changed between deploys) is a miss: never garbage, an error or a panic.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{self, ValueMismatch};
use super::{CachedEntry, TieredCache};

/// How long a typed value is kept, and the tags it can be invalidated by.
///
/// A [`Duration`] converts into options with that time to live, no stale window and no tags, so
/// the typed methods take either.
///
/// ```
/// use std::time::Duration;
/// use tower_tiered_cache::ValueOptions;
///
/// let options = ValueOptions::new(Duration::from_secs(60)).with_tags(["users", "user:42"]);
/// assert_eq!(options, ValueOptions::new(Duration::from_secs(60)).with_tags(["users", "user:42"]));
/// assert_eq!(ValueOptions::from(Duration::from_secs(5)), ValueOptions::new(Duration::from_secs(5)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueOptions {
    ttl: Duration,
    stale_ttl: Duration,
    tags: Vec<String>,
}

impl ValueOptions {
    /// Fresh for `ttl` after it is stored; no stale window, no tags.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_tiered_cache::ValueOptions;
    /// let options = ValueOptions::new(Duration::from_secs(30));
    /// # let _ = options;
    /// ```
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            stale_ttl: Duration::ZERO,
            tags: Vec::new(),
        }
    }

    /// Sets the tags the value can be invalidated by
    /// ([`TieredCache::invalidate_tags`]); storing keeps the first `tags.max_per_entry`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_tiered_cache::{CacheConfig, TieredCache, ValueOptions};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = TieredCache::new(CacheConfig::default())?;
    /// let options = ValueOptions::new(Duration::from_secs(60)).with_tags(["users"]);
    /// cache.set_value("user:42", &"Ada".to_owned(), options).await?;
    /// cache.invalidate_tags(&["users"]).await?;
    /// assert_eq!(cache.get_value::<String>("user:42").await, None);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn with_tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Keeps the value for `stale_ttl` after it stops being fresh, for callers that serve stale
    /// data ([`TieredCache::lookup`]); the typed reads return fresh values only.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_tiered_cache::ValueOptions;
    /// let options = ValueOptions::new(Duration::from_secs(60)).with_stale_ttl(Duration::from_secs(600));
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn with_stale_ttl(mut self, stale_ttl: Duration) -> Self {
        self.stale_ttl = stale_ttl;
        self
    }

    fn entry(&self, body: Bytes) -> CachedEntry {
        CachedEntry::new(body, self.ttl)
            .with_stale_ttl(self.stale_ttl)
            .with_tags(self.tags.iter().cloned())
    }
}

impl From<Duration> for ValueOptions {
    fn from(ttl: Duration) -> Self {
        Self::new(ttl)
    }
}

/// Why a typed value was not loaded or stored.
///
/// ```
/// # use std::time::Duration;
/// # use tower_tiered_cache::{CacheConfig, TieredCache, ValueError};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = TieredCache::new(CacheConfig::default())?;
/// let failed = cache
///     .get_or_set_value("user:7", Duration::from_secs(60), || async {
///         Err::<String, _>(std::io::Error::other("database down"))
///     })
///     .await;
/// let Err(ValueError::Load { key, source }) = failed else { panic!("the loader failed") };
/// assert_eq!((key.as_str(), source.to_string().as_str()), ("user:7", "database down"));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError<E = Infallible> {
    /// The loader failed. Every caller that waited for the same load gets this error, and
    /// nothing is stored.
    #[error("loading the value for key {key:?} failed: {source}")]
    Load {
        /// The key.
        key: String,
        /// The loader's error, shared by the callers that waited for it.
        source: Arc<E>,
    },
    /// Values of this type cannot be cached: bincode (through serde) cannot write them, e.g. a
    /// sequence or map whose length is not known in advance, or cannot read them back, e.g. a
    /// type that needs `deserialize_any` (`#[serde(flatten)]`, untagged enums,
    /// `serde_json::Value`). Nothing is stored.
    #[error("a value of type {type_name} for key {key:?} cannot be cached: {reason}")]
    Unsupported {
        /// The key.
        key: String,
        /// The value's type.
        type_name: &'static str,
        /// What serde or bincode said.
        reason: String,
    },
}

// By hand: the loader's error is shared, so `E` need not be `Clone`.
impl<E> Clone for ValueError<E> {
    fn clone(&self) -> Self {
        match self {
            Self::Load { key, source } => Self::Load {
                key: key.clone(),
                source: Arc::clone(source),
            },
            Self::Unsupported {
                key,
                type_name,
                reason,
            } => Self::Unsupported {
                key: key.clone(),
                type_name,
                reason: reason.clone(),
            },
        }
    }
}

impl TieredCache {
    /// The fresh value of type `V` under `key`, from memory or the shared tier (see
    /// [`get`](Self::get)), or `None`: also when the key holds bytes stored through the byte
    /// API, a value of another type, or one that no longer decodes as `V`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_tiered_cache::{CacheConfig, CachedEntry, TieredCache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = TieredCache::new(CacheConfig::default())?;
    /// cache.set_value("answer", &42_u32, Duration::from_secs(60)).await?;
    /// assert_eq!(cache.get_value::<u32>("answer").await, Some(42));
    /// assert_eq!(cache.get_value::<String>("answer").await, None, "another type is a miss");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_value<V: DeserializeOwned>(&self, key: &str) -> Option<V> {
        let entry = self.get(key).await?;
        decoded(key, &entry).ok()
    }

    /// Stores `value` under `key` in both tiers, like [`set`](Self::set) stores an entry: a
    /// shared-tier failure is counted and logged, not returned.
    ///
    /// `V` must be readable too (`DeserializeOwned`), so what is stored is a type a reader can
    /// ask for: store a `String`, not a `&str`. The error says that `V` cannot be encoded.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_tiered_cache::{CacheConfig, TieredCache, ValueOptions};
    /// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    /// struct User {
    ///     name: String,
    ///     admin: bool,
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = TieredCache::new(CacheConfig::default())?;
    /// let ada = User { name: "Ada".into(), admin: true };
    /// let options = ValueOptions::new(Duration::from_secs(60)).with_tags(["users"]);
    /// cache.set_value("user:42", &ada, options).await?;
    /// assert_eq!(cache.get_value::<User>("user:42").await, Some(ada));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set_value<V>(
        &self,
        key: &str,
        value: &V,
        options: impl Into<ValueOptions>,
    ) -> Result<(), ValueError>
    where
        V: Serialize + DeserializeOwned,
    {
        let entry = options.into().entry(encoded(key, value)?);
        self.set(key, entry).await;
        Ok(())
    }

    /// Cache-aside for typed values: the fresh value of type `V` under `key`, or the loader's,
    /// stored in both tiers with `options` (a [`Duration`] or [`ValueOptions`]).
    ///
    /// This is [`get_or_set`](Self::get_or_set) with the value encoded as the entry's body, so
    /// its guarantees hold: concurrent calls for one key share one loader call (and one per
    /// cluster with `l2.lock`), the callers that waited get the value decoded from the shared
    /// entry, and a loader error reaches every one of them with nothing stored. Every caller,
    /// the one that loaded included, gets the value as the cache holds it (decoded).
    ///
    /// Bytes under `key` that are not a `V` — stored through the byte API, a value of another
    /// type, or one that no longer decodes because `V` changed between deploys — are a miss:
    /// they are removed (as by [`invalidate`](Self::invalidate)) and the loader's value replaces
    /// them. Should another type be stored again at once (instances of two deploys writing the
    /// key), the loader's value is returned without a fight over the key.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_tiered_cache::{CacheConfig, TieredCache};
    /// #[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
    /// struct Product {
    ///     name: String,
    ///     price_cents: u64,
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = TieredCache::new(CacheConfig::default())?;
    /// let load = || async {
    ///     // A database query, an HTTP call...: run on a miss only.
    ///     Ok::<_, std::io::Error>(Product { name: "Tea".into(), price_cents: 450 })
    /// };
    /// let product = cache.get_or_set_value("product:1", Duration::from_secs(60), load).await?;
    /// assert_eq!(product.price_cents, 450);
    /// assert_eq!(cache.get_value::<Product>("product:1").await, Some(product));
    /// assert_eq!(cache.stats().loader_calls, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_or_set_value<V, F, Fut, E>(
        &self,
        key: &str,
        options: impl Into<ValueOptions>,
        loader: F,
    ) -> Result<V, ValueError<E>>
    where
        V: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        let options = options.into();
        let mut loader = Some(loader);
        let mut removed = false;
        loop {
            let entry = self
                .get_or_set(key, || load_entry(key, &options, loader.take()))
                .await
                .map_err(Arc::unwrap_or_clone)?;
            let mismatch = match decoded::<V>(key, &entry) {
                Ok(value) => return Ok(value),
                Err(mismatch) => mismatch,
            };
            // Only a caller that still holds its loader can replace the other type (its own
            // value was checked to read back before it was stored).
            let Some(load) = loader.take() else {
                return Err(unsupported::<V, _>(key, mismatch.to_string()));
            };
            if removed {
                return load().await.map_err(|error| load_error(key, error));
            }
            loader = Some(load);
            // Removed from every tier, so that the callers that found the other type share the
            // next pass's load. A failure is counted and logged; that pass then finds the other
            // type again and loads without storing.
            let _ = self.invalidate(key).await;
            removed = true;
        }
    }
}

/// The entry for the loader's value. `get_or_set` calls this at most once per pass, and a pass
/// runs only while the caller still holds its loader.
async fn load_entry<V, F, Fut, E>(
    key: &str,
    options: &ValueOptions,
    loader: Option<F>,
) -> Result<CachedEntry, ValueError<E>>
where
    V: Serialize + DeserializeOwned,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<V, E>>,
{
    let Some(loader) = loader else {
        return Err(unsupported::<V, _>(
            key,
            "its loader was already used".into(),
        ));
    };
    let value = loader().await.map_err(|error| load_error(key, error))?;
    let body = encoded(key, &value)?;
    // Checked before it is stored: a type that cannot be read back would otherwise be stored,
    // missed by every reader and loaded again on every call.
    if let Err(mismatch) = codec::decode_value::<V>(&body) {
        return Err(unsupported::<V, _>(key, mismatch.to_string()));
    }
    Ok(options.entry(body))
}

fn encoded<V: Serialize, E>(key: &str, value: &V) -> Result<Bytes, ValueError<E>> {
    codec::encode_value(value).map_err(|reason| unsupported::<V, _>(key, reason))
}

/// `entry`'s body as a `V`; a mismatch is logged (at debug: after a deploy that changed a type,
/// every key of it is one).
fn decoded<V: DeserializeOwned>(key: &str, entry: &CachedEntry) -> Result<V, ValueMismatch> {
    codec::decode_value(entry.body()).inspect_err(|mismatch| {
        let type_name = std::any::type_name::<V>();
        tracing::debug!(key, type_name, %mismatch, "cached bytes are not a value of this type; a miss");
    })
}

fn load_error<E>(key: &str, error: E) -> ValueError<E> {
    ValueError::Load {
        key: key.to_owned(),
        source: Arc::new(error),
    }
}

fn unsupported<V, E>(key: &str, reason: String) -> ValueError<E> {
    ValueError::Unsupported {
        key: key.to_owned(),
        type_name: std::any::type_name::<V>(),
        reason,
    }
}
