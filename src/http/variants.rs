//! Where HTTP entries go, with `Vary` (RFC 9111 §4.1): pure, the reads and writes are in
//! [`entries`](super::entries).
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
use crate::store::{random_id, CachedEntry, Lookup};

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
    pub(crate) fn of(marker: &CachedEntry) -> Option<Self> {
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
#[derive(Clone, Copy)]
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

/// Where `entry`, the response to a request with `request_headers`, is stored: the entries to
/// write (the variant and its marker, or the entry under the primary key) and what the request
/// finds there afterwards. `None` when the resource already has `max_variants` variants (a
/// client could otherwise fill the cache with variants of one URL by varying a header).
pub(crate) fn place(placement: Placement<'_>, entry: &CachedEntry) -> Option<Placed> {
    let Placement {
        primary,
        request_headers,
        known,
        new_variant,
        max_variants,
    } = placement;
    let fields = vary_fields(entry.headers());
    if fields.is_empty() {
        return Some(Placed {
            writes: vec![(primary.to_owned(), entry.clone())],
            stored: Stored {
                key: primary.to_owned(),
                variants: None,
            },
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
    Some(Placed {
        writes: vec![
            (key.clone(), entry.clone()),
            (primary.to_owned(), marker.clone()),
        ],
        stored: Stored {
            key,
            variants: Some(Variants {
                generation,
                count,
                fields,
                marker,
            }),
        },
    })
}

/// An entry placed: what to write, and where the request finds it.
pub(crate) struct Placed {
    /// The entries to store, in order (a variant before the marker that leads to it).
    pub(crate) writes: Vec<(String, CachedEntry)>,
    pub(crate) stored: Stored,
}
