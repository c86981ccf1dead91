//! Invalidations that could not reach the shared tier yet, kept until they do.
//!
//! An invalidation that the shared tier did not take (its delete, tag stamp, or the event that
//! tells the other instances) is recorded here with the time it was made, and retried in the
//! background by [`SharedTier`](super::shared::SharedTier) until it succeeds. Until then an entry
//! read from the shared tier that it covers and that was obtained before it is treated as gone:
//! the pending invalidation works like a tag stamp, for keys, prefixes and flushes too.
//!
//! The outbox holds at most `l2.outbox_capacity` invalidations (one per key, prefix or tag; a
//! newer invalidation of the same one replaces the older). When it is full and the backend can
//! list keys (Redis), everything pending collapses into one pending flush: nothing is lost, at
//! the price of emptying the shared tier once it answers. Memcached cannot flush: there the new
//! invalidation is dropped and logged as an error.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::events::Invalidation;
use super::CachedEntry;

/// One invalidation to bring to the shared tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Work {
    pub(crate) change: Change,
    /// When it was made, Unix milliseconds: entries obtained until then are covered.
    pub(crate) stamp_ms: u64,
}

/// What an invalidation does in the shared tier, and the event it sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Deletes the key (when `delete`), then sends [`Invalidation::Key`]. Without `delete` only
    /// the event is sent: a write stored the key's new entry itself.
    Key { key: String, delete: bool },
    /// Deletes every key with the prefix, then sends [`Invalidation::Prefix`].
    Prefix(String),
    /// Stamps the tags with `stamp_ms`, then sends [`Invalidation::Tags`].
    Tags(Vec<String>),
    /// Deletes everything, then sends [`Invalidation::Flush`].
    Flush,
}

impl Work {
    /// The event that tells the other instances.
    pub(crate) fn event(&self) -> Invalidation {
        match &self.change {
            Change::Key { key, .. } => Invalidation::Key(key.clone()),
            Change::Prefix(prefix) => Invalidation::Prefix(prefix.clone()),
            Change::Tags(tags) => Invalidation::Tags {
                tags: tags.clone(),
                stamp_ms: self.stamp_ms,
            },
            Change::Flush => Invalidation::Flush,
        }
    }

    /// What the logs call it.
    pub(crate) fn describe(&self) -> String {
        match &self.change {
            Change::Key { key, .. } => format!("key {key:?}"),
            Change::Prefix(prefix) => format!("prefix {prefix:?}"),
            Change::Tags(tags) => format!("tags {tags:?}"),
            Change::Flush => "flush".to_owned(),
        }
    }
}

/// A pending key invalidation: when, and whether it deletes the key or only announces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KeyMark {
    stamp_ms: u64,
    delete: bool,
}

/// What [`Outbox::keep`] did with an invalidation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Kept {
    /// Pending.
    Pending,
    /// The outbox was full: everything pending (this many) became one flush.
    Collapsed(usize),
    /// The outbox was full and the backend cannot flush: dropped.
    Dropped,
}

#[derive(Debug, Default)]
struct Pending {
    keys: HashMap<String, KeyMark>,
    prefixes: HashMap<String, u64>,
    tags: HashMap<String, u64>,
    flush: Option<u64>,
}

impl Pending {
    fn len(&self) -> usize {
        self.keys.len() + self.prefixes.len() + self.tags.len() + usize::from(self.flush.is_some())
    }

    /// How many new places `work` takes (none where it replaces a pending one of the same target).
    fn growth(&self, work: &Work) -> usize {
        match &work.change {
            Change::Key { key, .. } => usize::from(!self.keys.contains_key(key)),
            Change::Prefix(prefix) => usize::from(!self.prefixes.contains_key(prefix)),
            Change::Tags(tags) => tags
                .iter()
                .filter(|tag| !self.tags.contains_key(*tag))
                .count(),
            Change::Flush => usize::from(self.flush.is_none()),
        }
    }

    fn insert(&mut self, work: Work) {
        let newest = |old: Option<u64>| old.map_or(work.stamp_ms, |old| old.max(work.stamp_ms));
        match work.change {
            Change::Key { key, delete } => {
                let old = self.keys.get(&key).copied();
                if old.is_some_and(|old| old.delete) && !delete {
                    // The pending delete sends the same event: it announces the key too.
                    return;
                }
                let mark = KeyMark {
                    stamp_ms: newest(old.map(|mark| mark.stamp_ms)),
                    delete: delete || old.is_some_and(|mark| mark.delete),
                };
                self.keys.insert(key, mark);
            }
            Change::Prefix(prefix) => {
                let stamp = newest(self.prefixes.get(&prefix).copied());
                self.prefixes.insert(prefix, stamp);
            }
            Change::Tags(tags) => {
                for tag in tags {
                    let stamp = newest(self.tags.get(&tag).copied());
                    self.tags.insert(tag, stamp);
                }
            }
            Change::Flush => self.flush = Some(newest(self.flush)),
        }
    }

    /// Everything pending, tags with the same stamp in one piece of work.
    fn work(&self) -> Vec<Work> {
        let mut work: Vec<Work> = self
            .keys
            .iter()
            .map(|(key, mark)| Work {
                change: Change::Key {
                    key: key.clone(),
                    delete: mark.delete,
                },
                stamp_ms: mark.stamp_ms,
            })
            .collect();
        work.extend(self.prefixes.iter().map(|(prefix, &stamp_ms)| Work {
            change: Change::Prefix(prefix.clone()),
            stamp_ms,
        }));
        let mut by_stamp: HashMap<u64, Vec<String>> = HashMap::new();
        for (tag, &stamp) in &self.tags {
            by_stamp.entry(stamp).or_default().push(tag.clone());
        }
        work.extend(by_stamp.into_iter().map(|(stamp_ms, tags)| Work {
            change: Change::Tags(tags),
            stamp_ms,
        }));
        work.extend(self.flush.map(|stamp_ms| Work {
            change: Change::Flush,
            stamp_ms,
        }));
        work
    }

    /// Forgets what `work` brought to the tier, unless a newer invalidation of it came meanwhile.
    fn done(&mut self, work: &Work) {
        let stamp = work.stamp_ms;
        match &work.change {
            Change::Key { key, delete } => {
                // An announcement done leaves a pending delete of the key to do.
                let covered = |mark: &KeyMark| mark.stamp_ms <= stamp && (*delete || !mark.delete);
                if self.keys.get(key).is_some_and(covered) {
                    self.keys.remove(key);
                }
            }
            Change::Prefix(prefix) => {
                if self.prefixes.get(prefix).is_some_and(|&old| old <= stamp) {
                    self.prefixes.remove(prefix);
                }
            }
            Change::Tags(tags) => {
                for tag in tags {
                    if self.tags.get(tag).is_some_and(|&old| old <= stamp) {
                        self.tags.remove(tag);
                    }
                }
            }
            Change::Flush => {
                // A flush removed everything older, and told every instance to drop its memory.
                if self.flush.is_some_and(|old| old <= stamp) {
                    self.flush = None;
                }
                self.keys.retain(|_, mark| mark.stamp_ms > stamp);
                self.prefixes.retain(|_, old| *old > stamp);
                self.tags.retain(|_, old| *old > stamp);
            }
        }
    }

    /// Whether a pending invalidation covers `entry`, read from the shared tier under `key`.
    fn covers(&self, key: &str, entry: &CachedEntry) -> bool {
        let obtained = entry.inserted_at_ms();
        let covers = |stamp: u64| stamp >= obtained;
        self.flush.is_some_and(covers)
            || self
                .keys
                .get(key)
                .is_some_and(|mark| mark.delete && covers(mark.stamp_ms))
            || self
                .prefixes
                .iter()
                .any(|(prefix, &stamp)| key.starts_with(prefix.as_str()) && covers(stamp))
            || entry
                .tags()
                .iter()
                .any(|tag| self.tags.get(tag).is_some_and(|&stamp| covers(stamp)))
    }
}

/// The pending invalidations, bounded; see the module documentation.
#[derive(Debug)]
pub(crate) struct Outbox {
    capacity: usize,
    /// Whether full means collapsing into a flush (the backend can list keys).
    can_flush: bool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    pending: Pending,
    /// Whether the retry task runs; it stops when the outbox is empty.
    retrying: bool,
}

impl Outbox {
    pub(crate) fn new(capacity: usize, can_flush: bool) -> Self {
        Self {
            capacity: capacity.max(1),
            can_flush,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `work` until it is [`done`](Self::done).
    pub(crate) fn keep(&self, work: Work) -> Kept {
        let mut state = self.state();
        if state.pending.len() + state.pending.growth(&work) <= self.capacity {
            state.pending.insert(work);
            Kept::Pending
        } else if self.can_flush {
            let collapsed = state.pending.len() + 1;
            state.pending = Pending::default();
            state.pending.insert(Work {
                change: Change::Flush,
                stamp_ms: work.stamp_ms,
            });
            Kept::Collapsed(collapsed)
        } else {
            Kept::Dropped
        }
    }

    /// Marks the retry task as running; true if it was not, and so must be started.
    pub(crate) fn start_retrying(&self) -> bool {
        let mut state = self.state();
        !std::mem::replace(&mut state.retrying, true)
    }

    /// Undoes [`start_retrying`](Self::start_retrying) when the task could not be started.
    pub(crate) fn stop_retrying(&self) {
        self.state().retrying = false;
    }

    /// Everything pending now; `None` when nothing is, and then the retry task is to stop (a
    /// later [`keep`](Self::keep) starts it again).
    pub(crate) fn work(&self) -> Option<Vec<Work>> {
        let mut state = self.state();
        if state.pending.len() == 0 {
            state.retrying = false;
            return None;
        }
        Some(state.pending.work())
    }

    pub(crate) fn done(&self, work: &Work) {
        self.state().pending.done(work);
    }

    /// Whether a pending invalidation covers `entry`, read from the shared tier under `key`.
    pub(crate) fn covers(&self, key: &str, entry: &CachedEntry) -> bool {
        let state = self.state();
        state.pending.len() > 0 && state.pending.covers(key, entry)
    }

    pub(crate) fn len(&self) -> usize {
        self.state().pending.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn key(key: &str, stamp_ms: u64) -> Work {
        Work {
            change: Change::Key {
                key: key.to_owned(),
                delete: true,
            },
            stamp_ms,
        }
    }

    fn obtained_at(ms: u64) -> CachedEntry {
        CachedEntry::new("v", Duration::from_secs(60))
            .with_inserted_at(UNIX_EPOCH + Duration::from_millis(ms))
    }

    #[test]
    fn a_pending_invalidation_covers_entries_obtained_before_it() {
        let outbox = Outbox::new(10, true);
        assert_eq!(outbox.keep(key("k", 100)), Kept::Pending);
        assert!(outbox.covers("k", &obtained_at(99)));
        assert!(outbox.covers("k", &obtained_at(100)));
        assert!(
            !outbox.covers("k", &obtained_at(101)),
            "newer: a later write"
        );
        assert!(!outbox.covers("other", &obtained_at(99)));

        outbox.keep(Work {
            change: Change::Prefix("p/".to_owned()),
            stamp_ms: 100,
        });
        assert!(outbox.covers("p/x", &obtained_at(50)));
        outbox.keep(Work {
            change: Change::Tags(vec!["t".to_owned()]),
            stamp_ms: 100,
        });
        assert!(outbox.covers("x", &obtained_at(50).with_tags(["t"])));
        outbox.keep(Work {
            change: Change::Key {
                key: "w".to_owned(),
                delete: false,
            },
            stamp_ms: 100,
        });
        assert!(
            !outbox.covers("w", &obtained_at(50)),
            "an announcement deletes nothing"
        );
    }

    #[test]
    fn done_work_is_forgotten_unless_a_newer_invalidation_came() {
        let outbox = Outbox::new(10, true);
        outbox.keep(key("k", 100));
        let work = outbox.work().unwrap();
        outbox.keep(key("k", 200));
        outbox.done(&work[0]);
        assert!(outbox.covers("k", &obtained_at(150)), "the newer one stays");
        outbox.done(&outbox.work().unwrap()[0]);
        assert!(outbox.start_retrying(), "started");
        assert!(!outbox.start_retrying(), "already running");
        assert_eq!(outbox.len(), 0);
        assert_eq!(outbox.work(), None, "the retry task stops");
        assert!(outbox.start_retrying(), "and starts again");
    }

    #[test]
    fn an_announcement_does_not_take_a_pending_delete_with_it() {
        let announce = |stamp_ms| Work {
            change: Change::Key {
                key: "k".to_owned(),
                delete: false,
            },
            stamp_ms,
        };
        let outbox = Outbox::new(10, true);
        outbox.keep(key("k", 100));
        outbox.keep(announce(200));
        outbox.done(&announce(200));
        assert!(
            outbox.covers("k", &obtained_at(100)),
            "the delete is pending"
        );
        assert!(!outbox.covers("k", &obtained_at(150)), "with its own stamp");
        outbox.done(&key("k", 100));
        assert_eq!(outbox.len(), 0);
    }

    #[test]
    fn a_full_outbox_collapses_into_a_flush_or_drops_without_one() {
        let outbox = Outbox::new(2, true);
        outbox.keep(key("a", 1));
        outbox.keep(key("b", 2));
        assert_eq!(outbox.keep(key("a", 3)), Kept::Pending, "replaces a");
        assert_eq!(outbox.keep(key("c", 4)), Kept::Collapsed(3));
        assert_eq!(
            outbox.work().unwrap(),
            [Work {
                change: Change::Flush,
                stamp_ms: 4
            }]
        );
        assert!(outbox.covers("anything", &obtained_at(4)));

        let memcached = Outbox::new(1, false);
        memcached.keep(key("a", 1));
        assert_eq!(memcached.keep(key("b", 2)), Kept::Dropped);
        assert!(!memcached.covers("b", &obtained_at(1)));
    }

    #[test]
    fn a_flush_done_clears_what_it_covers() {
        let outbox = Outbox::new(10, true);
        outbox.keep(key("old", 90));
        outbox.keep(Work {
            change: Change::Flush,
            stamp_ms: 100,
        });
        outbox.keep(key("new", 110));
        let flush = outbox
            .work()
            .unwrap()
            .into_iter()
            .find(|work| work.change == Change::Flush)
            .unwrap();
        outbox.done(&flush);
        let left: Vec<String> = outbox.work().unwrap().iter().map(Work::describe).collect();
        assert_eq!(left, ["key \"new\""]);
    }
}
