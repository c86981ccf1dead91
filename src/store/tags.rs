//! Tag invalidation stamps known to this instance.
//!
//! Invalidating a tag records the time (a stamp) under `{prefix}:tag:{tag}` in Redis and here;
//! an entry is dead when one of its tags has a stamp at or after the time its value was obtained.
//! Invalidation is therefore O(tags), works the same on Redis Cluster, and costs untagged
//! entries nothing. Stamps are cached here for `l1.max_ttl` (and updated by invalidation events
//! from other instances), so an L2 hit stays one round trip.

use std::time::Duration;

use mini_moka::sync::Cache;

/// Most tags remembered; beyond this the least used are re-read from Redis when needed.
const MAX_KNOWN_TAGS: u64 = 100_000;

pub(crate) struct TagStamps {
    /// Tag → stamp in Unix ms; 0 when the tag was never invalidated (as far as Redis knew).
    known: Cache<String, u64>,
}

impl TagStamps {
    pub(crate) fn new(max_ttl: Duration) -> Self {
        Self {
            known: Cache::builder()
                .max_capacity(MAX_KNOWN_TAGS)
                .time_to_live(max_ttl)
                .build(),
        }
    }

    pub(crate) fn get(&self, tag: &str) -> Option<u64> {
        self.known.get(&tag.to_owned())
    }

    /// Records a stamp, keeping the newer of two.
    pub(crate) fn record(&self, tag: &str, stamp: u64) {
        let tag = tag.to_owned();
        let newest = self.known.get(&tag).map_or(stamp, |known| known.max(stamp));
        self.known.insert(tag, newest);
    }

    /// Forgets everything (after missing invalidation events).
    pub(crate) fn clear(&self) {
        self.known.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
