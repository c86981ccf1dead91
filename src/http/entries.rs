//! HTTP entries in the [`TieredCache`]: what is stored for a request (following a `Vary`
//! variant list to the variant, see [`variants`](super::variants)), and storing a response.

use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderMap;

use super::admit::NotStored;
use super::policy::{self, Reuse};
use super::range;
use super::variants::{self, Found, Placed, Placement, Resolved, Stored, Variants, VARIANTS};
use crate::store::codec::Reading;
use crate::store::{CachedEntry, FillPermit, Source, Ticket, TieredCache};

/// A stored response shared with the requests that waited for it.
#[derive(Clone)]
pub(crate) struct Fetched {
    pub(crate) entry: CachedEntry,
    pub(crate) stored: Stored,
    /// Where it was found; a fill's own entry is in memory.
    pub(crate) source: Source,
}

/// The fill's error when the leader's response could not be shared (not storable, too large,
/// failed): each waiting request then asks the origin itself.
#[derive(Debug)]
pub(crate) struct Unshared;

/// The right to fill an HTTP key ([`TieredCache::fill`]).
pub(crate) type Permit = FillPermit<Fetched, Unshared>;

/// The fresh entry in memory for a request, following a variant list to the variant; `None`
/// when memory alone cannot tell (nothing fresh there, or a tag stamp not known here).
#[allow(clippy::ptr_arg)] // the memory map is keyed by `String`
pub(crate) fn fresh_in_memory(
    cache: &TieredCache,
    primary: &String,
    request_headers: &HeaderMap,
    now: SystemTime,
) -> Option<CachedEntry> {
    let entry = cache.fresh_in_memory(primary, now)?;
    if !entry.headers().contains_key(&VARIANTS) {
        return Some(entry);
    }
    let key = Variants::of(&entry)?.key_for(primary, request_headers);
    cache.fresh_in_memory(&key, now)
}

/// What `entry` can do at `now` for a request with `request_headers` (RFC 9111 §4).
pub(crate) fn reuse_at(entry: &CachedEntry, request_headers: &HeaderMap, now: SystemTime) -> Reuse {
    policy::reuse(
        request_headers,
        entry.headers(),
        entry.age_at(now),
        entry.ttl(),
    )
}

/// Whether `entry` answers a request with `request_headers` as it is, at `now`: a complete
/// response (not a stored part of one) that is fresh for that request.
pub(crate) fn answers_fresh(
    entry: &CachedEntry,
    request_headers: &HeaderMap,
    now: SystemTime,
) -> bool {
    !range::is_partial(entry) && reuse_at(entry, request_headers, now) == Reuse::Fresh
}

/// What is stored for a request; the caller counts the lookup (once per request).
pub(crate) async fn resolve(
    cache: &TieredCache,
    primary: &str,
    request_headers: &HeaderMap,
) -> Resolved {
    resolve_for(cache, primary, request_headers, Reading::Decoded).await
}

/// [`resolve`], for `reading` (see [`TieredCache::find_for`]).
pub(crate) async fn resolve_for(
    cache: &TieredCache,
    primary: &str,
    request_headers: &HeaderMap,
    reading: Reading,
) -> Resolved {
    let Some(primary_hit) = cache.find_for(primary, reading).await else {
        return Resolved::default();
    };
    let Some(variants) = Variants::of(&primary_hit.entry) else {
        return Resolved {
            found: Some(Found {
                lookup: primary_hit,
                key: primary.to_owned(),
            }),
            variants: None,
        };
    };
    let key = variants.key_for(primary, request_headers);
    let variant = cache.find_for(&key, reading).await.map(|mut lookup| {
        // A soft purge of the resource expired its variant list, and with it every variant
        // filled under an older shared-tier generation than the one the purge took (no clock
        // is compared: instances' clocks differ).
        let list = &primary_hit.entry;
        if let Some(at) = list.expired_early_at() {
            if lookup.entry.version().shared < list.version().shared {
                lookup.entry = lookup.entry.expired_at(at, cache.soft_keep());
            }
        }
        lookup
    });
    Resolved {
        found: variant.map(|lookup| Found { lookup, key }),
        variants: Some(variants),
    }
}

/// Stores `entry`, filled under `ticket`, where `placement` puts it — in memory now, in the
/// shared tier in the background — and finishes `permit` with it: the requests waiting get it
/// at once, and the shared lock is released once the shared tier has it. Not stored when the
/// entry has no place (too many variants) or an invalidation overtook the fill; the waiting
/// requests then ask the origin themselves.
pub(crate) fn store(
    cache: &TieredCache,
    placement: Placement<'_>,
    entry: &CachedEntry,
    permit: Option<Permit>,
    ticket: Ticket,
) -> Result<Stored, NotStored> {
    let unshared = |permit: Option<Permit>| {
        if let Some(permit) = permit {
            drop(permit.finish(Err(Arc::new(Unshared))));
        }
    };
    let Some(Placed { writes, stored }) = variants::place(placement, entry) else {
        unshared(permit);
        return Err(NotStored::Variants);
    };
    let Ok(writes) = cache.store_in_memory_now(writes, ticket) else {
        unshared(permit);
        return Err(NotStored::Outdated);
    };
    let lock = permit.and_then(|permit| {
        permit.finish(Ok(Fetched {
            entry: entry.clone(),
            stored: stored.clone(),
            source: Source::Memory,
        }))
    });
    cache.store_shared_later(writes, lock, ticket);
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::CacheConfig;

    fn request(accept_encoding: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("accept-encoding", accept_encoding.parse().unwrap());
        headers
    }

    fn placement<'a>(headers: &'a HeaderMap, known: Option<&'a Variants>) -> Placement<'a> {
        Placement {
            primary: "p",
            request_headers: headers,
            known,
            new_variant: true,
            max_variants: 32,
        }
    }

    fn response(body: &'static str) -> CachedEntry {
        let mut headers = HeaderMap::new();
        headers.insert("vary", "Accept-Encoding".parse().unwrap());
        CachedEntry::new(body, Duration::from_secs(60)).with_headers(headers)
    }

    #[tokio::test]
    async fn each_variant_has_its_own_entry() {
        let cache = TieredCache::new(CacheConfig::default()).unwrap();
        store(
            &cache,
            placement(&request("gzip"), None),
            &response("gz"),
            None,
            cache.ticket(),
        )
        .unwrap();
        let known = resolve(&cache, "p", &request("br")).await;
        assert!(known.found.is_none());
        store(
            &cache,
            placement(&request("br"), known.variants.as_ref()),
            &response("br"),
            None,
            cache.ticket(),
        )
        .unwrap();

        let gzip = resolve(&cache, "p", &request("gzip")).await.found.unwrap();
        let brotli = resolve(&cache, "p", &request("br")).await.found.unwrap();
        assert_eq!(gzip.lookup.entry.body(), "gz");
        assert_eq!(brotli.lookup.entry.body(), "br");
    }

    #[tokio::test]
    async fn removing_the_primary_key_hides_all_variants_for_good() {
        let cache = TieredCache::new(CacheConfig::default()).unwrap();
        store(
            &cache,
            placement(&request("gzip"), None),
            &response("gz"),
            None,
            cache.ticket(),
        )
        .unwrap();
        cache.invalidate("p").await.unwrap();
        assert!(resolve(&cache, "p", &request("gzip")).await.found.is_none());

        // A new variant list starts a new generation: the old gzip variant stays unreachable.
        store(
            &cache,
            placement(&request("br"), None),
            &response("br"),
            None,
            cache.ticket(),
        )
        .unwrap();
        assert!(resolve(&cache, "p", &request("gzip")).await.found.is_none());
    }

    #[tokio::test]
    async fn variants_per_resource_are_capped() {
        let cache = TieredCache::new(CacheConfig::default()).unwrap();
        let no_headers = HeaderMap::new();
        let mut max = placement(&no_headers, None);
        max.max_variants = 3;
        for encoding in ["a", "b", "c", "d"] {
            let headers = request(encoding);
            let known = resolve(&cache, "p", &headers).await.variants;
            let stored = store(
                &cache,
                Placement {
                    request_headers: &headers,
                    known: known.as_ref(),
                    ..max
                },
                &response("x"),
                None,
                cache.ticket(),
            );
            assert_eq!(stored.is_ok(), encoding != "d", "{encoding}");
        }
        assert!(resolve(&cache, "p", &request("c")).await.found.is_some());
        assert!(resolve(&cache, "p", &request("d")).await.found.is_none());
    }
}
