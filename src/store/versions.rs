//! What "current" means: the one record of invalidations that every store path checks.
//!
//! Every invalidation this instance makes or hears of (a key, a tag, a soft purge of a tag, a
//! prefix, a flush, an event from another instance, a reconnection that may have missed
//! events) takes the next number of one local sequence and is marked with it. A fill takes a
//! [`Ticket`] — the sequence as it stands — before it asks its loader (the origin, a database,
//! a warming source, the shared tier for a promotion); the one function
//! [`Versions::admit`] then stores its entry in memory only if nothing that applies to the key
//! or one of its tags was marked after the ticket, under a lock that invalidations take to
//! mark, so no invalidation can fall between the check and the write. The shared tier is
//! written only after the same check, and an invalidation of a key waits for that key's
//! shared-tier writes in flight ([`BackgroundWrites`](super::writes::BackgroundWrites)).
//!
//! No wall clock takes part: the sequence is this process's own. Between instances, the shared
//! tier orders tag invalidations by a generation it hands out (Redis `INCR`), which a ticket
//! also records ([`Ticket::shared`]) and a stored entry carries; see
//! [`TieredCache`](super::TieredCache)'s shared-tier checks.
//!
//! Marks are kept for twice [`Versions::new`]'s `horizon`, and a ticket older than the horizon
//! stores nothing: a fill that outlasts it cannot prove that no forgotten mark applies to it.
//! Past [`MAX_MARKS`] marks of one kind, the oldest beyond the retention are dropped, and if
//! that is not enough the floor is raised: every ticket (and memory entry) from before is then
//! treated as outdated, which costs misses, never a stale answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime};

use super::entry::Version;

/// Most marks of one kind (keys, tags, prefixes) kept.
const MAX_MARKS: usize = 100_000;

/// Where the sequence stood when a fill began; see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    seq: u64,
    /// The newest shared-tier generation this instance knew of then: the version a stored
    /// entry carries in the shared tier.
    shared: u64,
    taken: Instant,
}

impl Ticket {
    /// The local sequence number recorded with it.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// The version an entry filled under it carries.
    pub(crate) fn version(&self) -> Version {
        Version {
            local: self.seq,
            shared: self.shared,
        }
    }
}

/// What the record says of an entry, or of what a fill obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Currency {
    Current,
    /// A soft purge of one of its tags came after it, at this (local) time: stale from then.
    Expired(SystemTime),
    Outdated,
}

/// One invalidation: its number, and when it was made here.
#[derive(Clone, Copy, Debug)]
struct Mark {
    seq: u64,
    at: Instant,
    wall: SystemTime,
}

#[derive(Debug, Default)]
struct Book {
    keys: HashMap<String, Mark>,
    /// Tags and soft-purge pseudo-tags ([`super::tags::soft`]).
    tags: HashMap<String, Mark>,
    prefixes: HashMap<String, Mark>,
}

/// The record; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct Versions {
    /// The last number handed out.
    seq: AtomicU64,
    /// Tickets and entries below it are outdated: a flush, a reconnection, marks forgotten.
    floor: AtomicU64,
    /// The newest shared-tier generation known here.
    shared: AtomicU64,
    book: RwLock<Book>,
    horizon: Duration,
    /// Without a shared tier this instance is alone: its sequence is the generation too.
    alone: bool,
}

impl Versions {
    /// A record whose tickets store nothing once older than `horizon`; `alone` when there is
    /// no shared tier (then the local sequence serves as the generation).
    pub(crate) fn new(horizon: Duration, alone: bool) -> Self {
        Self {
            seq: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            shared: AtomicU64::new(0),
            book: RwLock::new(Book::default()),
            horizon,
            alone,
        }
    }

    /// The ticket of a fill that begins now.
    pub(crate) fn ticket(&self) -> Ticket {
        let seq = self.seq.load(Ordering::Acquire);
        let shared = if self.alone {
            seq
        } else {
            self.shared.load(Ordering::Acquire)
        };
        Ticket {
            seq,
            shared,
            taken: Instant::now(),
        }
    }

    /// Records that the shared tier handed out (or another instance used) `generation`.
    pub(crate) fn saw_shared(&self, generation: u64) {
        self.shared.fetch_max(generation, Ordering::AcqRel);
    }

    /// Marks `key` invalidated now; the mark's number.
    pub(crate) fn invalidate_key(&self, key: &str) -> u64 {
        self.mark(|book| &mut book.keys, [key])
    }

    /// Marks every key starting with `prefix` invalidated now; the mark's number.
    pub(crate) fn invalidate_prefix(&self, prefix: &str) -> u64 {
        self.mark(|book| &mut book.prefixes, [prefix])
    }

    /// Marks `tags` (or soft-purge pseudo-tags) invalidated now; the mark's number.
    pub(crate) fn invalidate_tags<'a>(&self, tags: impl IntoIterator<Item = &'a str>) -> u64 {
        self.mark(|book| &mut book.tags, tags)
    }

    /// Outdates everything obtained until now (a flush, or events that may have been missed);
    /// the mark's number.
    pub(crate) fn invalidate_all(&self) -> u64 {
        let _book = self.write();
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        self.floor.fetch_max(seq, Ordering::AcqRel);
        seq
    }

    /// The one check: runs `store` (and returns its result) only if, for every `(key, tags)`
    /// of `subjects`, nothing that applies to the key or to one of its tags was invalidated
    /// after `ticket`, and the ticket is within the horizon; invalidations wait meanwhile.
    /// `None` when it is outdated.
    pub(crate) fn admit<T>(
        &self,
        ticket: Ticket,
        subjects: &[(&str, &[String])],
        store: impl FnOnce() -> T,
    ) -> Option<T> {
        let book = self.read();
        let current = ticket.taken.elapsed() <= self.horizon
            && subjects.iter().all(|(key, tags)| {
                self.judge(&book, ticket.seq, Some(key), tags) == Currency::Current
            });
        current.then(store)
    }

    /// Whether what a fill obtained under `ticket` for `key` and `tags` is still current: for
    /// a write that goes out later ([`admit`](Self::admit)'s rule).
    pub(crate) fn is_current(&self, ticket: Ticket, key: &str, tags: &[String]) -> bool {
        self.admit(ticket, &[(key, tags)], || ()).is_some()
    }

    /// What the record says of a memory entry obtained at `seq` with `tags`. Keys, prefixes
    /// and flushes remove memory entries themselves; tags do not, so they are judged here.
    pub(crate) fn of_entry(&self, seq: u64, tags: &[String]) -> Currency {
        if seq < self.floor.load(Ordering::Acquire) {
            return Currency::Outdated;
        }
        if tags.is_empty() {
            return Currency::Current;
        }
        self.judge(&self.read(), seq, None, tags)
    }

    fn judge(&self, book: &Book, seq: u64, key: Option<&str>, tags: &[String]) -> Currency {
        let after = |mark: Option<&Mark>| mark.is_some_and(|mark| mark.seq > seq);
        if seq < self.floor.load(Ordering::Acquire) {
            return Currency::Outdated;
        }
        if let Some(key) = key {
            if after(book.keys.get(key))
                || book
                    .prefixes
                    .iter()
                    .any(|(prefix, mark)| mark.seq > seq && key.starts_with(prefix.as_str()))
            {
                return Currency::Outdated;
            }
        }
        let mut expired: Option<SystemTime> = None;
        for tag in tags {
            if after(book.tags.get(tag)) {
                return Currency::Outdated;
            }
            if let Some(mark) = book.tags.get(&super::tags::soft(tag)) {
                if mark.seq > seq {
                    expired = Some(expired.map_or(mark.wall, |at| at.min(mark.wall)));
                }
            }
        }
        match (key, expired) {
            (_, None) => Currency::Current,
            // A fill overtaken by a soft purge stores nothing: the purged entry answers while
            // a fill that began after it refreshes it.
            (Some(_), Some(_)) => Currency::Outdated,
            (None, Some(at)) => Currency::Expired(at),
        }
    }

    fn mark<'a>(
        &self,
        marks: impl Fn(&mut Book) -> &mut HashMap<String, Mark>,
        names: impl IntoIterator<Item = &'a str>,
    ) -> u64 {
        let mut book = self.write();
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        let mark = Mark {
            seq,
            at: Instant::now(),
            wall: SystemTime::now(),
        };
        let marks = marks(&mut book);
        for name in names {
            marks.insert(name.to_owned(), mark);
        }
        if marks.len() > MAX_MARKS {
            // Marks older than twice the horizon apply to no ticket that may still store, nor
            // to any memory entry (which lives at most `l1.max_ttl`, within the horizon).
            let keep = self.horizon.saturating_mul(2);
            marks.retain(|_, mark| mark.at.elapsed() <= keep);
            if marks.len() > MAX_MARKS {
                tracing::warn!(
                    marks = marks.len(),
                    "too many invalidations to remember: everything obtained before now is treated as outdated"
                );
                marks.clear();
                self.floor.fetch_max(seq, Ordering::AcqRel);
            }
        }
        seq
    }

    fn read(&self) -> RwLockReadGuard<'_, Book> {
        self.book.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Book> {
        self.book.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions() -> Versions {
        Versions::new(Duration::from_secs(60), false)
    }

    fn tags(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn a_fill_overtaken_by_an_invalidation_of_its_key_stores_nothing() {
        let versions = versions();
        let before = versions.ticket();
        versions.invalidate_key("k");
        let after = versions.ticket();
        assert_eq!(versions.admit(before, &[("k", &[])], || 1), None);
        assert_eq!(versions.admit(before, &[("other", &[])], || 1), Some(1));
        assert_eq!(versions.admit(after, &[("k", &[])], || 1), Some(1));
        assert_eq!(
            versions.admit(before, &[("other", &[]), ("k", &[])], || 1),
            None,
            "all or nothing"
        );
    }

    #[test]
    fn tags_prefixes_and_flushes_outdate_fills_that_began_before_them() {
        let versions = versions();
        let ticket = versions.ticket();
        versions.invalidate_tags(["t"]);
        assert!(!versions.is_current(ticket, "k", &tags(&["a", "t"])));
        assert!(versions.is_current(ticket, "k", &tags(&["a"])));
        versions.invalidate_prefix("http://h/a");
        assert!(!versions.is_current(ticket, "http://h/a/b", &[]));
        assert!(versions.is_current(ticket, "http://h/b", &[]));
        versions.invalidate_all();
        assert!(!versions.is_current(ticket, "http://h/b", &[]));
        assert!(versions.is_current(versions.ticket(), "http://h/a/b", &tags(&["t"])));
    }

    #[test]
    fn memory_entries_are_judged_by_their_tags_and_soft_purges_expire_them() {
        let versions = versions();
        let seq = versions.ticket().seq();
        versions.invalidate_tags([super::super::tags::soft("s").as_str()]);
        assert!(matches!(
            versions.of_entry(seq, &tags(&["s"])),
            Currency::Expired(_)
        ));
        assert!(
            !versions.is_current(versions.ticket().with_seq(seq), "k", &tags(&["s"])),
            "a fill overtaken by a soft purge is not stored"
        );
        versions.invalidate_tags(["t"]);
        assert_eq!(versions.of_entry(seq, &tags(&["t"])), Currency::Outdated);
        assert_eq!(versions.of_entry(seq, &tags(&["u"])), Currency::Current);
        versions.invalidate_all();
        assert_eq!(versions.of_entry(seq, &[]), Currency::Outdated);
    }

    #[test]
    fn a_ticket_past_the_horizon_stores_nothing() {
        let versions = Versions::new(Duration::ZERO, false);
        let ticket = versions.ticket();
        std::thread::sleep(Duration::from_millis(2));
        assert!(!versions.is_current(ticket, "k", &[]));
    }

    #[test]
    fn the_shared_generation_only_grows() {
        let versions = versions();
        versions.saw_shared(7);
        versions.saw_shared(3);
        assert_eq!(versions.ticket().version().shared, 7);
    }

    impl Ticket {
        fn with_seq(mut self, seq: u64) -> Self {
            self.seq = seq;
            self
        }
    }
}
