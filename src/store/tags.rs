//! Tag invalidation stamps of the shared tier known to this instance, and the rules for tags.
//!
//! Invalidating a tag takes a new generation from the shared tier's one counter (Redis `INCR`)
//! and records it (a stamp) under `{prefix}:tag:{tag}`; an entry in the shared tier carries the
//! generation it was filled under, and is dead when one of its tags has a newer stamp. No
//! instance's clock takes part, so instances whose clocks differ agree. Invalidation is O(tags),
//! works the same on Redis Cluster, and costs untagged entries nothing. Stamps are cached here
//! for `l1.max_ttl` (and updated by invalidation events from other instances), so a shared-tier
//! hit stays one round trip. Memory entries and fills in progress are judged by this
//! instance's own record instead ([`Versions`](super::versions::Versions)).

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use mini_moka::sync::Cache;

use crate::config::TagsConfig;

/// Most tags remembered; beyond this the least used are re-read from Redis when needed.
const MAX_KNOWN_TAGS: u64 = 100_000;

/// Marks the stamps of soft purges: a tag's soft-purge stamp is kept as the stamp of this
/// pseudo-tag (the tag, then this). A unit separator cannot occur in a tag from a header.
const SOFT_SUFFIX: &str = "\u{1f}soft";

/// The pseudo-tag whose stamp is `tag`'s soft-purge time ([`TieredCache::expire_tags`]).
///
/// [`TieredCache::expire_tags`]: super::TieredCache::expire_tags
pub(crate) fn soft(tag: &str) -> String {
    [tag, SOFT_SUFFIX].concat()
}

thread_local! {
    /// The name a stamp is looked up by, built without allocating on every memory hit (the map
    /// is keyed by `String`).
    static PROBE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Whether `tag` is a soft-purge pseudo-tag.
pub(crate) fn is_soft(tag: &str) -> bool {
    soft_of(tag).is_some()
}

/// The tag whose soft-purge stamp the pseudo-tag `tag` holds.
pub(crate) fn soft_of(tag: &str) -> Option<&str> {
    tag.strip_suffix(SOFT_SUFFIX)
}

pub(crate) struct TagStamps {
    /// Tag → stamp (a generation); 0 when the tag was never invalidated (as far as the shared
    /// tier knew).
    known: Cache<String, u64>,
    /// Held while a stamp is recorded, so that two records cannot leave the older one.
    recording: Mutex<()>,
}

impl TagStamps {
    pub(crate) fn new(max_ttl: Duration) -> Self {
        Self {
            known: Cache::builder()
                .max_capacity(MAX_KNOWN_TAGS)
                .time_to_live(max_ttl)
                .build(),
            recording: Mutex::new(()),
        }
    }

    pub(crate) fn get(&self, tag: &str) -> Option<u64> {
        self.probe(tag, "")
    }

    /// The stamp of `tag`'s soft purges, as `get(&soft(tag))` without building the name.
    pub(crate) fn get_soft(&self, tag: &str) -> Option<u64> {
        self.probe(tag, SOFT_SUFFIX)
    }

    fn probe(&self, tag: &str, suffix: &str) -> Option<u64> {
        PROBE.with(|probe| match probe.try_borrow_mut() {
            Ok(mut name) => {
                name.clear();
                name.push_str(tag);
                name.push_str(suffix);
                self.known.get(&*name)
            }
            Err(_) => self.known.get(&[tag, suffix].concat()),
        })
    }

    /// Records a stamp, keeping the newer of two.
    pub(crate) fn record(&self, tag: &str, stamp: u64) {
        let _recording = self
            .recording
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tag = tag.to_owned();
        let newest = self.known.get(&tag).map_or(stamp, |known| known.max(stamp));
        self.known.insert(tag, newest);
    }

    /// Forgets everything (after missing invalidation events).
    pub(crate) fn clear(&self) {
        self.known.invalidate_all();
    }
}

/// A tag as entries carry it and invalidations name it: trimmed; `None` when blank or spanning
/// lines (invalidation events are line-based).
fn clean(tag: &str) -> Option<&str> {
    let tag = tag.trim();
    (!tag.is_empty() && !tag.contains('\n')).then_some(tag)
}

/// `tags` cleaned (see [`clean`]) and without duplicates, first occurrence first.
pub(crate) fn distinct<'a>(tags: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    tags.into_iter()
        .filter_map(clean)
        .filter(|tag| seen.insert(*tag))
        .collect()
}

/// The bounds on an entry's tags (`tags.max_per_entry`, `tags.max_length`). Every memory hit
/// checks each tag of the entry, and one whose stamps are not known here reads them from L2:
/// the number of tags is what a hit costs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TagLimits {
    max_per_entry: usize,
    max_length: usize,
}

/// An entry's tags after [`TagLimits::bound`] changed them.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Bounded {
    pub(crate) tags: Vec<String>,
    /// Tags left off for their length or number (not blanks or duplicates).
    pub(crate) dropped: u64,
}

impl TagLimits {
    pub(crate) fn new(config: &TagsConfig) -> Self {
        Self {
            max_per_entry: usize::try_from(config.max_per_entry).unwrap_or(usize::MAX),
            max_length: usize::try_from(config.max_length).unwrap_or(usize::MAX),
        }
    }

    /// `tags` as an entry keeps them: [`distinct`], at most `max_length` bytes each and
    /// `max_per_entry` in all, the first ones winning. `None` when `tags` already are that.
    pub(crate) fn bound(&self, tags: &[String]) -> Option<Bounded> {
        let mut kept = Vec::with_capacity(tags.len().min(self.max_per_entry));
        let mut dropped = 0;
        for tag in distinct(tags.iter().map(String::as_str)) {
            if tag.len() > self.max_length || kept.len() == self.max_per_entry {
                dropped += 1;
            } else {
                kept.push(tag);
            }
        }
        if kept.len() == tags.len() && kept.iter().zip(tags).all(|(kept, tag)| kept == tag) {
            return None;
        }
        Some(Bounded {
            tags: kept.into_iter().map(str::to_owned).collect(),
            dropped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_per_entry: u32, max_length: u64) -> TagLimits {
        TagLimits::new(&TagsConfig {
            max_per_entry,
            max_length,
            ..TagsConfig::default()
        })
    }

    #[test]
    fn soft_purge_stamps_are_their_own_pseudo_tags() {
        let stamps = TagStamps::new(Duration::from_secs(60));
        stamps.record(&soft("t"), 5);
        assert_eq!(stamps.get_soft("t"), Some(5));
        assert_eq!(stamps.get("t"), None, "a soft purge is no invalidation");
        stamps.record("t", 7);
        assert_eq!((stamps.get("t"), stamps.get_soft("t")), (Some(7), Some(5)));
        assert_eq!(soft_of(&soft("t")), Some("t"));
        assert!(!is_soft("t"));
    }

    fn strings(tags: &[&str]) -> Vec<String> {
        tags.iter().map(|tag| (*tag).to_owned()).collect()
    }

    #[test]
    fn conforming_tags_are_left_alone() {
        assert_eq!(limits(3, 8).bound(&strings(&["a", "b", "c"])), None);
        assert_eq!(limits(3, 8).bound(&[]), None);
    }

    #[test]
    fn the_first_distinct_tags_within_the_length_are_kept() {
        let bounded = limits(3, 4)
            .bound(&strings(&[
                " a ", "a", "", "toolong", "b", "x\ny", "c", "d", "e",
            ]))
            .unwrap();
        assert_eq!(bounded.tags, ["a", "b", "c"]);
        assert_eq!(
            bounded.dropped, 3,
            "toolong, d and e; not blanks or duplicates"
        );
    }

    #[test]
    fn invalidated_tags_are_cleaned_like_stored_ones() {
        assert_eq!(distinct([" a", "a ", "", "b", "x\ny"]), ["a", "b"]);
    }

    #[test]
    fn the_newest_stamp_wins() {
        let stamps = TagStamps::new(Duration::from_secs(60));
        stamps.record("a", 20);
        stamps.record("a", 10);
        assert_eq!(stamps.get("a"), Some(20));
        stamps.clear();
        assert_eq!(stamps.get("a"), None);
    }
}
