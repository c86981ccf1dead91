//! HTTP entries in the [`TieredCache`], with `Vary` (RFC 9111 §4.1).
//!
//! A response without `Vary` is stored under the request's primary key. A response with `Vary`
//! is stored under a variant key (the primary key plus the request's values of the `Vary`
//! fields), and the primary key holds a small marker entry listing those fields and a random
//! generation. Lookups read the primary key, and for a marker, the variant key. Removing the
//! primary key therefore makes every variant unreachable at once, and a new marker (new
//! generation) never revives variants stored before it.

use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::key::variant_key;
use super::policy::vary_fields;
use crate::store::{random_id, CachedEntry, Lookup, TieredCache};

/// Internal header of marker entries: `<generation> <variant count> <field>,<field>`. Stripped
/// from responses before they are stored, so an origin cannot forge one.
pub(crate) static VARIANTS: HeaderName = HeaderName::from_static("x-tiered-cache-variants");

/// The variant list of a primary key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Variants {
    generation: String,
    /// Variants stored under this generation (approximate under concurrent stores).
    count: u32,
    fields: Vec<String>,
    marker: CachedEntry,
}

impl Variants {
    fn of(marker: &CachedEntry) -> Option<Self> {
        let value = marker.headers().get(&VARIANTS)?.to_str().ok()?;
        let mut parts = value.splitn(3, ' ');
        let generation = parts.next()?;
        let count = parts.next()?.parse().ok()?;
        let fields = parts.next().unwrap_or_default();
        Some(Self {
            generation: generation.to_owned(),
            count,
            fields: fields
                .split(',')
                .filter(|f| !f.is_empty())
                .map(str::to_owned)
                .collect(),
            marker: marker.clone(),
        })
    }

    /// The key of the variant `request_headers` select.
    pub(crate) fn key_for(&self, primary: &str, request_headers: &HeaderMap) -> String {
        variant_key(primary, &self.generation, &self.fields, request_headers)
    }
}

/// An entry found for a request, with the key it is stored under.
#[derive(Clone, Debug)]
pub(crate) struct Found {
    pub(crate) lookup: Lookup,
    pub(crate) key: String,
}

/// What a lookup learned: the entry (if any) and the variant list (if the resource has one).
#[derive(Clone, Debug, Default)]
pub(crate) struct Resolved {
    pub(crate) found: Option<Found>,
    pub(crate) variants: Option<Variants>,
}

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

/// What is stored for a request; the caller counts the lookup (once per request).
pub(crate) async fn resolve(
    cache: &TieredCache,
    primary: &str,
    request_headers: &HeaderMap,
) -> Resolved {
    let Some(primary_hit) = cache.find(primary).await else {
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
    let variant = cache.find(&key).await;
    Resolved {
        found: variant.map(|lookup| Found { lookup, key }),
        variants: Some(variants),
    }
}

/// Where an entry was stored.
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    pub(crate) key: String,
    pub(crate) variants: Option<Variants>,
}

impl Stored {
    pub(crate) fn at(key: String, variants: Option<Variants>) -> Self {
        Self { key, variants }
    }

    /// Whether a request for `primary` with `request_headers` selects this entry.
    pub(crate) fn selected_by(&self, primary: &str, request_headers: &HeaderMap) -> bool {
        match &self.variants {
            None => self.key == primary,
            Some(variants) => variants.key_for(primary, request_headers) == self.key,
        }
    }
}

/// How to store one response.
pub(crate) struct Placement<'a> {
    pub(crate) primary: &'a str,
    pub(crate) request_headers: &'a HeaderMap,
    /// The variant list found by the lookup, if any.
    pub(crate) known: Option<&'a Variants>,
    /// Whether the lookup found no entry for this variant (so storing adds one).
    pub(crate) new_variant: bool,
    /// Most variants kept per resource (`http.max_variants`).
    pub(crate) max_variants: u32,
}

/// Stores `entry`, the response to a request with `request_headers`; `None` when the resource
/// already has `max_variants` variants (a client could otherwise fill the cache with variants
/// of one URL by varying a header).
pub(crate) async fn store(
    cache: &TieredCache,
    placement: Placement<'_>,
    entry: &CachedEntry,
) -> Option<Stored> {
    let Placement {
        primary,
        request_headers,
        known,
        new_variant,
        max_variants,
    } = placement;
    let fields = vary_fields(entry.headers());
    if fields.is_empty() {
        cache.store(primary, entry).await;
        return Some(Stored {
            key: primary.to_owned(),
            variants: None,
        });
    }
    let now = SystemTime::now();
    let reusable = known.filter(|variants| variants.fields == fields);
    let count = match reusable {
        Some(variants) if new_variant && variants.count >= max_variants => return None,
        Some(variants) => variants.count + u32::from(new_variant),
        None => 1,
    };
    let generation = reusable.map_or_else(random_id, |variants| variants.generation.clone());
    let key = variant_key(primary, &generation, &fields, request_headers);
    cache.store(&key, entry).await;
    // The marker must outlive every variant it leads to.
    let lifetime = reusable
        .map(|variants| variants.marker.remaining_lifetime_at(now))
        .unwrap_or_default()
        .max(entry.remaining_lifetime_at(now));
    let value = format!("{generation} {count} {}", fields.join(","));
    let mut headers = HeaderMap::new();
    // Field names are tokens and the generation is hex, so the value is always valid.
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(VARIANTS.clone(), value);
    }
    let marker = CachedEntry::new(Bytes::new(), lifetime)
        .with_stored_at(now)
        .with_headers(headers);
    cache.store(primary, &marker).await;
    Some(Stored {
        key,
        variants: Some(Variants {
            generation,
            count,
            fields,
            marker,
        }),
    })
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
        store(&cache, placement(&request("gzip"), None), &response("gz")).await;
        let known = resolve(&cache, "p", &request("br")).await;
        assert!(known.found.is_none());
        store(
            &cache,
            placement(&request("br"), known.variants.as_ref()),
            &response("br"),
        )
        .await;

        let gzip = resolve(&cache, "p", &request("gzip")).await.found.unwrap();
        let brotli = resolve(&cache, "p", &request("br")).await.found.unwrap();
        assert_eq!(gzip.lookup.entry.body(), "gz");
        assert_eq!(brotli.lookup.entry.body(), "br");
    }

    #[tokio::test]
    async fn removing_the_primary_key_hides_all_variants_for_good() {
        let cache = TieredCache::new(CacheConfig::default()).unwrap();
        store(&cache, placement(&request("gzip"), None), &response("gz")).await;
        cache.invalidate("p").await.unwrap();
        assert!(resolve(&cache, "p", &request("gzip")).await.found.is_none());

        // A new variant list starts a new generation: the old gzip variant stays unreachable.
        store(&cache, placement(&request("br"), None), &response("br")).await;
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
            )
            .await;
            assert_eq!(stored.is_some(), encoding != "d", "{encoding}");
        }
        assert!(resolve(&cache, "p", &request("c")).await.found.is_some());
        assert!(resolve(&cache, "p", &request("d")).await.found.is_none());
    }
}
