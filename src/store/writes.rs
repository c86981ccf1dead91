//! Shared-tier writes running in the background, and what keeps them from undoing an
//! invalidation.
//!
//! The HTTP layer stores what it passed to a client in memory at once and in the shared tier in
//! the background. A write still on its way must not land after the key was invalidated, or the
//! old representation would come back from the shared tier. So an invalidation of a key records
//! when it happened and waits for that key's writes in flight; a write checks, before it goes
//! out, that its entry was obtained after the key's last invalidation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use mini_moka::sync::Cache;
use tokio::sync::Notify;

use super::entry::unix_ms;
use super::CachedEntry;

/// Most invalidations remembered; older ones are forgotten first.
const MAX_REMEMBERED: u64 = 100_000;

pub(crate) struct BackgroundWrites {
    /// Keys with writes in flight, and how many.
    in_flight: Mutex<HashMap<String, usize>>,
    running: AtomicU64,
    done: Notify,
    /// Key → when it was last invalidated here (Unix ms).
    invalidated: Cache<String, u64>,
}

impl BackgroundWrites {
    /// Invalidations are remembered for `remember`: longer than any write waits to go out.
    pub(crate) fn new(remember: Duration) -> Self {
        Self {
            in_flight: Mutex::new(HashMap::new()),
            running: AtomicU64::new(0),
            done: Notify::new(),
            invalidated: Cache::builder()
                .max_capacity(MAX_REMEMBERED)
                .time_to_live(remember)
                .build(),
        }
    }

    /// Registers a write of `keys` until the returned guard is dropped (however it ends).
    pub(crate) fn start(self: &Arc<Self>, keys: Vec<String>) -> InFlight {
        self.running.fetch_add(1, Ordering::AcqRel);
        let mut in_flight = self.lock();
        for key in &keys {
            *in_flight.entry(key.clone()).or_default() += 1;
        }
        InFlight {
            writes: Arc::clone(self),
            keys,
        }
    }

    /// Whether `entry`, to be written under `key`, was obtained after `key` was last
    /// invalidated here.
    pub(crate) fn is_current(&self, key: &str, entry: &CachedEntry) -> bool {
        self.invalidated
            .get(&key.to_owned())
            .is_none_or(|invalidated| invalidated < entry.inserted_at_ms())
    }

    /// Records that `key` is being invalidated now and waits until none of its writes is in
    /// flight: after this, none can land.
    pub(crate) async fn invalidating(&self, key: &str) {
        self.invalidated
            .insert(key.to_owned(), unix_ms(SystemTime::now()));
        loop {
            let done = self.done.notified();
            if !self.lock().contains_key(key) {
                return;
            }
            done.await;
        }
    }

    /// Waits until no write is in flight.
    pub(crate) async fn idle(&self) {
        loop {
            let done = self.done.notified();
            if self.running.load(Ordering::Acquire) == 0 {
                return;
            }
            done.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A background write in flight; dropping it ends it.
pub(crate) struct InFlight {
    writes: Arc<BackgroundWrites>,
    keys: Vec<String>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut in_flight = self.writes.lock();
        for key in &self.keys {
            if let Some(count) = in_flight.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    in_flight.remove(key);
                }
            }
        }
        drop(in_flight);
        self.writes.running.fetch_sub(1, Ordering::AcqRel);
        self.writes.done.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_invalidation_waits_for_the_writes_of_its_key_and_outdates_older_entries() {
        let writes = Arc::new(BackgroundWrites::new(Duration::from_secs(60)));
        let old = CachedEntry::new("old", Duration::from_secs(60))
            .with_inserted_at(SystemTime::now() - Duration::from_secs(1));
        let write = writes.start(vec!["k".to_owned()]);
        let invalidation = writes.invalidating("k");
        let (_, ()) = tokio::join!(invalidation, async {
            tokio::task::yield_now().await;
            assert!(!writes.is_current("k", &old), "stamped before it waits");
            drop(write);
        });
        assert!(writes.is_current("other", &old));
        let newer = CachedEntry::new("new", Duration::from_secs(60))
            .with_inserted_at(SystemTime::now() + Duration::from_millis(5));
        assert!(writes.is_current("k", &newer));
        writes.idle().await;
    }
}
