//! Invalidations that could not reach the shared tier yet, kept until they do.
//!
//! An invalidation that the shared tier did not take (its delete, tag stamp, or the event that
//! tells the other instances) is recorded here while it is tried, and retried in the
//! background by [`SharedTier`](super::shared::SharedTier) until it succeeds. Until then an
//! entry read from the shared tier that it names is treated as gone: the shared tier may still
//! hold what the invalidation removes. No time is compared: a pending invalidation hides every
//! shared entry it names, older or newer, until it is applied.
//!
//! The outbox holds at most `l2.outbox_capacity` invalidations (one per key, prefix or tag; a
//! newer invalidation of the same one replaces the older). When it is full, a new invalidation
//! is still tried once but not kept: if that attempt fails, the caller gets the error and it
//! is logged; the outbox never turns into a flush of the whole shared tier.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::events::Invalidation;
use super::CachedEntry;

/// One invalidation to bring to the shared tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Work {
    pub(crate) change: Change,
    /// Its place in this instance's order of invalidations ([`Versions`]'s sequence): of two
    /// pending invalidations of the same target, the later one stays when the earlier is done.
    ///
    /// [`Versions`]: super::versions::Versions
    pub(crate) order: u64,
}

/// What an invalidation does in the shared tier, and the event it sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Deletes the key (when `delete`), then sends [`Invalidation::Key`]. Without `delete` only
    /// the event is sent: a write stored the key's new entry itself.
    Key { key: String, delete: bool },
    /// Deletes every key with the prefix, then sends [`Invalidation::Prefix`].
    Prefix(String),
    /// Stamps the tags with a new generation, then sends [`Invalidation::Tags`] with it.
    Tags(Vec<String>),
    /// Deletes everything, then sends [`Invalidation::Flush`].
    Flush,
}

impl Work {
    /// The event that tells the other instances; `generation` is the one the tags were
    /// stamped with.
    pub(crate) fn event(&self, generation: u64) -> Invalidation {
        match &self.change {
            Change::Key { key, .. } => Invalidation::Key(key.clone()),
            Change::Prefix(prefix) => Invalidation::Prefix(prefix.clone()),
            Change::Tags(tags) => Invalidation::Tags {
                tags: tags.clone(),
                generation,
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

/// A pending key invalidation: its order, and whether it deletes the key or only announces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KeyMark {
    order: u64,
    delete: bool,
}

/// What [`Outbox::keep`] did with an invalidation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Kept {
    /// Pending.
    Pending,
    /// The outbox was full: tried once, not kept.
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
        let newest = |old: Option<u64>| old.map_or(work.order, |old| old.max(work.order));
        match work.change {
            Change::Key { key, delete } => {
                let old = self.keys.get(&key).copied();
                if old.is_some_and(|old| old.delete) && !delete {
                    // The pending delete sends the same event: it announces the key too.
                    return;
                }
                let mark = KeyMark {
                    order: newest(old.map(|mark| mark.order)),
                    delete: delete || old.is_some_and(|mark| mark.delete),
                };
                self.keys.insert(key, mark);
            }
            Change::Prefix(prefix) => {
                let order = newest(self.prefixes.get(&prefix).copied());
                self.prefixes.insert(prefix, order);
            }
            Change::Tags(tags) => {
                for tag in tags {
                    let order = newest(self.tags.get(&tag).copied());
                    self.tags.insert(tag, order);
                }
            }
            Change::Flush => self.flush = Some(newest(self.flush)),
        }
    }

    /// Everything pending, tags of the same order in one piece of work.
    fn work(&self) -> Vec<Work> {
        let mut work: Vec<Work> = self
            .keys
            .iter()
            .map(|(key, mark)| Work {
                change: Change::Key {
                    key: key.clone(),
                    delete: mark.delete,
                },
                order: mark.order,
            })
            .collect();
        work.extend(self.prefixes.iter().map(|(prefix, &order)| Work {
            change: Change::Prefix(prefix.clone()),
            order,
        }));
        let mut by_order: HashMap<u64, Vec<String>> = HashMap::new();
        for (tag, &order) in &self.tags {
            by_order.entry(order).or_default().push(tag.clone());
        }
        work.extend(by_order.into_iter().map(|(order, tags)| Work {
            change: Change::Tags(tags),
            order,
        }));
        work.extend(self.flush.map(|order| Work {
            change: Change::Flush,
            order,
        }));
        work
    }

    /// Forgets what `work` brought to the tier, unless a newer invalidation of it came meanwhile.
    fn done(&mut self, work: &Work) {
        let order = work.order;
        match &work.change {
            Change::Key { key, delete } => {
                // An announcement done leaves a pending delete of the key to do.
                let covered = |mark: &KeyMark| mark.order <= order && (*delete || !mark.delete);
                if self.keys.get(key).is_some_and(covered) {
                    self.keys.remove(key);
                }
            }
            Change::Prefix(prefix) => {
                if self.prefixes.get(prefix).is_some_and(|&old| old <= order) {
                    self.prefixes.remove(prefix);
                }
            }
            Change::Tags(tags) => {
                for tag in tags {
                    if self.tags.get(tag).is_some_and(|&old| old <= order) {
                        self.tags.remove(tag);
                    }
                }
            }
            Change::Flush => {
                // A flush removed everything older, and told every instance to drop its memory.
                if self.flush.is_some_and(|old| old <= order) {
                    self.flush = None;
                }
                self.keys.retain(|_, mark| mark.order > order);
                self.prefixes.retain(|_, old| *old > order);
                self.tags.retain(|_, old| *old > order);
            }
        }
    }

    /// Whether a pending invalidation names `entry`, read from the shared tier under `key`.
    fn covers(&self, key: &str, entry: &CachedEntry) -> bool {
        self.flush.is_some()
            || self.keys.get(key).is_some_and(|mark| mark.delete)
            || self
                .prefixes
                .keys()
                .any(|prefix| key.starts_with(prefix.as_str()))
            || entry.tags().iter().any(|tag| self.tags.contains_key(tag))
    }
}

/// The pending invalidations, bounded; see the module documentation.
#[derive(Debug)]
pub(crate) struct Outbox {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    pending: Pending,
    /// Whether the retry task runs; it stops when the outbox is empty.
    retrying: bool,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
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
    use std::time::Duration;

    use super::*;

    fn key(key: &str, order: u64) -> Work {
        Work {
            change: Change::Key {
                key: key.to_owned(),
                delete: true,
            },
            order,
        }
    }

    fn entry() -> CachedEntry {
        CachedEntry::new("v", Duration::from_secs(60))
    }

    #[test]
    fn a_pending_invalidation_hides_the_shared_entries_it_names() {
        let outbox = Outbox::new(10);
        assert_eq!(outbox.keep(key("k", 100)), Kept::Pending);
        assert!(outbox.covers("k", &entry()));
        assert!(!outbox.covers("other", &entry()));

        outbox.keep(Work {
            change: Change::Prefix("p/".to_owned()),
            order: 100,
        });
        assert!(outbox.covers("p/x", &entry()));
        outbox.keep(Work {
            change: Change::Tags(vec!["t".to_owned()]),
            order: 100,
        });
        assert!(outbox.covers("x", &entry().with_tags(["t"])));
        outbox.keep(Work {
            change: Change::Key {
                key: "w".to_owned(),
                delete: false,
            },
            order: 100,
        });
        assert!(
            !outbox.covers("w", &entry()),
            "an announcement deletes nothing"
        );
    }

    #[test]
    fn done_work_is_forgotten_unless_a_newer_invalidation_came() {
        let outbox = Outbox::new(10);
        outbox.keep(key("k", 100));
        let work = outbox.work().unwrap();
        outbox.keep(key("k", 200));
        outbox.done(&work[0]);
        assert!(outbox.covers("k", &entry()), "the newer one stays");
        outbox.done(&outbox.work().unwrap()[0]);
        assert!(outbox.start_retrying(), "started");
        assert!(!outbox.start_retrying(), "already running");
        assert_eq!(outbox.len(), 0);
        assert_eq!(outbox.work(), None, "the retry task stops");
        assert!(outbox.start_retrying(), "and starts again");
    }

    #[test]
    fn an_announcement_does_not_take_a_pending_delete_with_it() {
        let announce = |order| Work {
            change: Change::Key {
                key: "k".to_owned(),
                delete: false,
            },
            order,
        };
        let outbox = Outbox::new(10);
        outbox.keep(key("k", 100));
        outbox.keep(announce(200));
        outbox.done(&announce(200));
        assert!(outbox.covers("k", &entry()), "the delete is pending");
        outbox.done(&key("k", 100));
        assert_eq!(outbox.len(), 0);
    }

    #[test]
    fn a_full_outbox_refuses_new_invalidations_and_keeps_the_pending_ones() {
        let outbox = Outbox::new(2);
        outbox.keep(key("a", 1));
        outbox.keep(key("b", 2));
        assert_eq!(outbox.keep(key("a", 3)), Kept::Pending, "replaces a");
        assert_eq!(outbox.keep(key("c", 4)), Kept::Dropped);
        assert_eq!(outbox.len(), 2);
        assert!(!outbox.covers("c", &entry()));
        assert!(outbox.covers("a", &entry()));
    }

    #[test]
    fn a_flush_done_clears_what_it_covers() {
        let outbox = Outbox::new(10);
        outbox.keep(key("old", 90));
        outbox.keep(Work {
            change: Change::Flush,
            order: 100,
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
