//! [`CachedEntry`]: a body with the metadata that says how long it may be served.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

/// A cached value: a body, optional HTTP metadata (status, headers, trailers), tags, and its
/// lifetime.
///
/// An entry is *fresh* for `ttl` after `stored_at`, then *stale* for `stale_ttl` more (kept for
/// stale-while-revalidate, stale-if-error and revalidation), then gone. Times are kept at
/// millisecond precision, which is what the shared tier stores.
///
/// Cloning is cheap: the body is a [`Bytes`] and the metadata is shared.
///
/// ```
/// use std::time::Duration;
/// use http::{header, HeaderMap, HeaderValue, StatusCode};
/// use tower_tiered_cache::CachedEntry;
///
/// let mut headers = HeaderMap::new();
/// headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
/// let entry = CachedEntry::new(r#"{"id":42}"#, Duration::from_secs(30))
///     .with_status(StatusCode::OK)
///     .with_headers(headers)
///     .with_tags(["users", "user:42"])
///     .with_stale_ttl(Duration::from_secs(300));
/// assert!(entry.is_fresh());
/// assert_eq!(entry.tags(), ["users", "user:42"]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedEntry {
    meta: Arc<EntryMeta>,
    body: Bytes,
    version: Version,
}

/// Under which versions an entry was obtained ([`Versions`](super::versions::Versions)): the
/// local sequence number, and the shared-tier generation it carries there. Bookkeeping, not
/// content: two entries that differ only here are equal.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Version {
    pub(crate) local: u64,
    pub(crate) shared: u64,
}

impl PartialEq for Version {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Version {}

/// Everything but the body; shared between clones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EntryMeta {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) trailers: HeaderMap,
    pub(crate) stored_at_ms: u64,
    pub(crate) ttl_ms: u64,
    pub(crate) stale_ttl_ms: u64,
    pub(crate) tags: Vec<String>,
    /// When it was expired early (a soft purge): stale since then, and meant to be served stale
    /// while it is refreshed.
    pub(crate) expired_at_ms: Option<u64>,
    /// How long its load took, for early refreshes (XFetch); 0 when not known.
    pub(crate) load_ms: u64,
    /// The body is the brotli bytes the shared tier holds, with the fields that say so
    /// (`Content-Encoding: br`), read for a client that accepts them; such an entry is served,
    /// never stored.
    pub(crate) encoded: bool,
}

impl CachedEntry {
    /// A `200 OK` entry with no headers, stored now, fresh for `ttl`.
    pub fn new(body: impl Into<Bytes>, ttl: Duration) -> Self {
        let now = unix_ms(SystemTime::now());
        Self::from_parts(
            EntryMeta {
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                trailers: HeaderMap::new(),
                stored_at_ms: now,
                ttl_ms: duration_ms(ttl),
                stale_ttl_ms: 0,
                tags: Vec::new(),
                expired_at_ms: None,
                load_ms: 0,
                encoded: false,
            },
            body.into(),
        )
    }

    pub(crate) fn from_parts(meta: EntryMeta, body: Bytes) -> Self {
        Self {
            meta: Arc::new(meta),
            body,
            version: Version::default(),
        }
    }

    /// The versions it was obtained under.
    pub(crate) fn version(&self) -> Version {
        self.version
    }

    /// Marks it as obtained under `version` (as the fill that stores it took its ticket).
    pub(crate) fn with_version(mut self, version: Version) -> Self {
        self.version = version;
        self
    }

    /// Whether the body is the shared tier's brotli bytes, sent as they are (see
    /// [`Codec::decode_for`](super::codec::Codec::decode_for)).
    pub(crate) fn is_encoded(&self) -> bool {
        self.meta.encoded
    }

    pub(crate) fn meta(&self) -> &EntryMeta {
        &self.meta
    }

    /// Sets the HTTP status.
    #[must_use]
    pub fn with_status(mut self, status: StatusCode) -> Self {
        Arc::make_mut(&mut self.meta).status = status;
        self
    }

    /// Sets the HTTP headers.
    #[must_use]
    pub fn with_headers(mut self, headers: HeaderMap) -> Self {
        Arc::make_mut(&mut self.meta).headers = headers;
        self
    }

    /// Sets the HTTP trailers (e.g. `grpc-status`).
    #[must_use]
    pub fn with_trailers(mut self, trailers: HeaderMap) -> Self {
        Arc::make_mut(&mut self.meta).trailers = trailers;
        self
    }

    /// Sets the tags the entry can be invalidated by. Storing keeps the first
    /// `tags.max_per_entry` of them (see [`TieredCache::set`](crate::TieredCache::set)).
    #[must_use]
    pub fn with_tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        Arc::make_mut(&mut self.meta).tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Keeps the entry for `stale_ttl` after it stops being fresh.
    #[must_use]
    pub fn with_stale_ttl(mut self, stale_ttl: Duration) -> Self {
        Arc::make_mut(&mut self.meta).stale_ttl_ms = duration_ms(stale_ttl);
        self
    }

    /// Sets when the entry was stored (or, for HTTP, when the response was generated, so that
    /// its age counts from then). Times before 1970 count as 1970.
    #[must_use]
    pub fn with_stored_at(mut self, stored_at: SystemTime) -> Self {
        Arc::make_mut(&mut self.meta).stored_at_ms = unix_ms(stored_at);
        self
    }

    /// This entry expired at `at` without being removed (a soft purge): stale from then on,
    /// kept at least `keep` longer so that it can be served stale while it is refreshed. An
    /// entry already stale by then keeps its own freshness.
    pub(crate) fn expired_at(mut self, at: SystemTime, keep: Duration) -> Self {
        let at = unix_ms(at);
        let keep_until = at
            .saturating_add(duration_ms(keep))
            .max(self.retain_until_ms());
        let meta = Arc::make_mut(&mut self.meta);
        meta.ttl_ms = meta.ttl_ms.min(at.saturating_sub(meta.stored_at_ms));
        let fresh_until = meta.stored_at_ms.saturating_add(meta.ttl_ms);
        meta.stale_ttl_ms = keep_until.saturating_sub(fresh_until);
        meta.expired_at_ms = Some(meta.expired_at_ms.map_or(at, |earlier| earlier.min(at)));
        self
    }

    /// When it was expired early by a soft purge, if it was.
    pub fn expired_early_at(&self) -> Option<SystemTime> {
        self.meta
            .expired_at_ms
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// Records how long loading the value took (for early refreshes).
    pub(crate) fn with_load_time(mut self, took: Duration) -> Self {
        Arc::make_mut(&mut self.meta).load_ms = duration_ms(took);
        self
    }

    /// How long loading the value took, when this instance or another recorded it.
    pub(crate) fn load_time(&self) -> Duration {
        Duration::from_millis(self.meta.load_ms)
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The HTTP status (`200 OK` unless set).
    pub fn status(&self) -> StatusCode {
        self.meta.status
    }

    /// The HTTP headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.meta.headers
    }

    /// The HTTP trailers.
    pub fn trailers(&self) -> &HeaderMap {
        &self.meta.trailers
    }

    /// The tags.
    pub fn tags(&self) -> &[String] {
        &self.meta.tags
    }

    /// When the entry was stored.
    pub fn stored_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.meta.stored_at_ms)
    }

    /// How long the entry is fresh after `stored_at`.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.meta.ttl_ms)
    }

    /// How long the entry is kept after it stops being fresh.
    pub fn stale_ttl(&self) -> Duration {
        Duration::from_millis(self.meta.stale_ttl_ms)
    }

    /// Time since `stored_at` at `now` (zero if `stored_at` is in the future).
    pub fn age_at(&self, now: SystemTime) -> Duration {
        Duration::from_millis(unix_ms(now).saturating_sub(self.meta.stored_at_ms))
    }

    /// Whether the entry is fresh now.
    pub fn is_fresh(&self) -> bool {
        self.is_fresh_at(SystemTime::now())
    }

    /// Whether the entry is fresh at `now`.
    pub fn is_fresh_at(&self, now: SystemTime) -> bool {
        unix_ms(now) < self.fresh_until_ms()
    }

    /// How long, from `now`, the entry is still kept (fresh or stale); zero once it is gone.
    pub fn remaining_lifetime_at(&self, now: SystemTime) -> Duration {
        Duration::from_millis(self.retain_until_ms().saturating_sub(unix_ms(now)))
    }

    fn fresh_until_ms(&self) -> u64 {
        self.meta.stored_at_ms.saturating_add(self.meta.ttl_ms)
    }

    fn retain_until_ms(&self) -> u64 {
        self.fresh_until_ms().saturating_add(self.meta.stale_ttl_ms)
    }

    /// Approximate bytes the entry holds in memory: body, headers, trailers, tags, fixed overhead.
    pub(crate) fn weight(&self) -> u64 {
        const FIXED_OVERHEAD: usize = 160;
        const PER_FIELD_OVERHEAD: usize = 32;
        let fields = |map: &HeaderMap| -> usize {
            map.iter()
                .map(|(name, value)| name.as_str().len() + value.len() + PER_FIELD_OVERHEAD)
                .sum()
        };
        let tags: usize = self
            .meta
            .tags
            .iter()
            .map(|tag| tag.len() + PER_FIELD_OVERHEAD)
            .sum();
        (FIXED_OVERHEAD
            + self.body.len()
            + fields(&self.meta.headers)
            + fields(&self.meta.trailers)
            + tags) as u64
    }
}

/// Milliseconds since the Unix epoch; times before it count as 0.
pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, duration_ms)
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_then_stale_then_gone() {
        let stored = UNIX_EPOCH + Duration::from_secs(1_000);
        let entry = CachedEntry::new("x", Duration::from_secs(10))
            .with_stale_ttl(Duration::from_secs(5))
            .with_stored_at(stored);
        assert!(entry.is_fresh_at(stored + Duration::from_millis(9_999)));
        assert!(!entry.is_fresh_at(stored + Duration::from_secs(10)));
        assert_eq!(
            entry.remaining_lifetime_at(stored + Duration::from_secs(12)),
            Duration::from_secs(3)
        );
        assert_eq!(
            entry.remaining_lifetime_at(stored + Duration::from_secs(16)),
            Duration::ZERO
        );
        assert_eq!(
            entry.age_at(stored + Duration::from_secs(4)),
            Duration::from_secs(4)
        );
        assert_eq!(
            entry.age_at(stored - Duration::from_secs(4)),
            Duration::ZERO
        );
    }

    #[test]
    fn huge_ttl_saturates_instead_of_overflowing() {
        let entry = CachedEntry::new("x", Duration::MAX).with_stale_ttl(Duration::MAX);
        assert!(entry.is_fresh());
        assert!(entry.remaining_lifetime_at(SystemTime::now()) > Duration::from_secs(1 << 40));
    }

    #[test]
    fn clones_share_body_and_metadata() {
        let entry = CachedEntry::new(vec![7u8; 1024], Duration::from_secs(1));
        let clone = entry.clone();
        assert_eq!(entry.body().as_ptr(), clone.body().as_ptr());
        assert!(Arc::ptr_eq(&entry.meta, &clone.meta));
    }
}
