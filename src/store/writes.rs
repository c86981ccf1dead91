//! Shared-tier writes in flight, so that an invalidation can wait for the ones it must follow.
//!
//! A write checks, just before it goes out, that its entry is still current
//! ([`Versions`](super::versions::Versions)); it registers here before that check. An
//! invalidation marks its key first and then waits for that key's registered writes: each one
//! either went out before the invalidation reaches the shared tier (which then removes it) or
//! checks after the mark (and does not go out). Prefix invalidations and flushes wait for every
//! write registered before them, never for the ones that start meanwhile, so steady misses
//! cannot keep them waiting.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

#[derive(Default)]
struct Registry {
    /// Keys with writes in flight, and how many.
    keys: HashMap<String, usize>,
    /// The numbers of the writes in flight.
    running: BTreeSet<u64>,
    /// The number of the next write.
    next: u64,
}

#[derive(Default)]
pub(crate) struct BackgroundWrites {
    registry: Mutex<Registry>,
    done: Notify,
}

impl BackgroundWrites {
    /// Registers a write of `keys` until the returned guard is dropped (however it ends).
    pub(crate) fn start(self: &Arc<Self>, keys: Vec<String>) -> InFlight {
        let mut registry = self.lock();
        let number = registry.next;
        registry.next += 1;
        registry.running.insert(number);
        for key in &keys {
            *registry.keys.entry(key.clone()).or_default() += 1;
        }
        InFlight {
            writes: Arc::clone(self),
            keys,
            number,
        }
    }

    /// Waits until none of `key`'s writes is in flight: call it after marking the key
    /// invalidated, and none can land after.
    pub(crate) async fn settled(&self, key: &str) {
        self.wait_until(|registry| !registry.keys.contains_key(key))
            .await;
    }

    /// Waits until every write registered before this call has finished.
    pub(crate) async fn idle(&self) {
        let before = self.lock().next;
        self.wait_until(|registry| {
            registry
                .running
                .first()
                .is_none_or(|&first| first >= before)
        })
        .await;
    }

    async fn wait_until(&self, done: impl Fn(&Registry) -> bool) {
        loop {
            let finished = self.done.notified();
            if done(&self.lock()) {
                return;
            }
            finished.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A background write in flight; dropping it ends it.
pub(crate) struct InFlight {
    writes: Arc<BackgroundWrites>,
    keys: Vec<String>,
    number: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut registry = self.writes.lock();
        for key in &self.keys {
            if let Some(count) = registry.keys.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    registry.keys.remove(key);
                }
            }
        }
        registry.running.remove(&self.number);
        drop(registry);
        self.writes.done.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_invalidation_waits_for_the_writes_of_its_key_only() {
        let writes = Arc::new(BackgroundWrites::default());
        let write = writes.start(vec!["k".to_owned()]);
        let _other = writes.start(vec!["other".to_owned()]);
        let settled = writes.settled("k");
        let (_, ()) = tokio::join!(settled, async {
            tokio::task::yield_now().await;
            drop(write);
        });
    }

    #[tokio::test]
    async fn idle_waits_for_earlier_writes_not_for_later_ones() {
        let writes = Arc::new(BackgroundWrites::default());
        let earlier = writes.start(vec!["a".to_owned()]);
        let idle = writes.idle();
        let (_, _later) = tokio::join!(idle, async {
            tokio::task::yield_now().await;
            let later = writes.start(vec!["b".to_owned()]);
            drop(earlier);
            later
        });
    }
}
