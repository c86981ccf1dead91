//! One fill of a key at a time: the single place where a missing entry is loaded.
//!
//! Every read-through path — the HTTP layer's misses and background revalidations, gRPC,
//! [`TieredCache::get_or_set`] (and with it `SqlLoader` and warming) — asks
//! [`TieredCache::fill`] before it calls its loader. Within this instance one caller per key
//! leads and the others wait for its result ([`Coalescer`]); with `l2.lock` the leader also takes
//! the key's lock in the shared tier, so one instance loads and the others take its stored
//! entry.
//!
//! The leader holds a [`FillPermit`]. Finishing it publishes the loaded value (or the error) to
//! the waiters and hands back the shared lock, to be released once the entry is in the shared
//! tier. Dropping it — an error, a `?`, a cancelled request, a client that went away in the
//! middle of a streamed body — abandons the fill: a waiter takes over with its own load, and the
//! shared lock is released in the background, so no other instance waits out `l2.lock_wait`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::coalesce::{Coalescer, FlightGuard, Turn};
use super::TieredCache;
use crate::stats::Counter;

/// A caller's part in the fill of a key.
pub(crate) enum Fill<V: Clone + Send + Sync + 'static, E> {
    /// Another caller in this instance filled the key while this one waited.
    Shared(V),
    /// It was stored meanwhile (in this instance, or by the instance that held the lock).
    Found(V),
    /// Another caller's fill failed with this error.
    Failed(Arc<E>),
    /// Another caller's fill took longer than the wait allowed: load without sharing.
    Alone,
    /// This caller fills the key.
    Lead(FillPermit<V, E>),
}

/// How a caller takes part in a fill.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FillOptions {
    /// Take the key's lock in the shared tier when `l2.lock` is on (revalidations, which have
    /// a stale entry to serve meanwhile, do without).
    pub(crate) across_instances: bool,
    /// The longest wait for another caller's fill in this instance (a streamed fill lasts as
    /// long as its client reads); `None` waits as long as it takes.
    pub(crate) wait: Option<Duration>,
}

/// The right, and the duty, to fill one key; see the [module docs](self).
pub(crate) struct FillPermit<V: Clone + Send + Sync + 'static, E> {
    flight: FlightGuard<V, E>,
    lock: Option<SharedLock>,
}

impl<V: Clone + Send + Sync + 'static, E: Send + Sync + 'static> FillPermit<V, E> {
    /// This permit, holding `key`'s shared lock too when `l2.lock` is on; `None` when another
    /// instance holds it (it fills the key). For refreshes, which never wait for a lock.
    pub(crate) async fn across_instances(mut self, cache: &TieredCache, key: &str) -> Option<Self> {
        let Some((ttl, _)) = cache.lock_options() else {
            return Some(self);
        };
        match acquire(cache, key, super::random_id(), ttl).await {
            Acquired::Taken => None,
            Acquired::Held(lock) => {
                self.lock = Some(lock);
                Some(self)
            }
            // The shared tier cannot say: refresh without the lock.
            Acquired::Unknown => Some(self),
        }
    }

    /// Publishes the fill's result to the callers waiting in this instance. The shared lock, if
    /// one is held, comes back: release it once the entry is in the shared tier (dropping it
    /// releases it too, in the background).
    #[must_use = "release the shared lock once the entry is stored there"]
    pub(crate) fn finish(self, result: Result<V, Arc<E>>) -> Option<SharedLock> {
        let Self { flight, lock } = self;
        flight.finish(result);
        lock
    }
}

/// A key's lock in the shared tier (`l2.lock`), held by this instance: released with its token,
/// so an expired lock another instance took meanwhile is never released by mistake.
pub(crate) struct SharedLock {
    cache: TieredCache,
    key: String,
    token: String,
    released: bool,
}

impl SharedLock {
    /// Releases the lock now. Marked released only once the unlock has been answered: a
    /// release cancelled half way is finished by `Drop`, in the background (a second unlock
    /// of the same token does nothing).
    pub(crate) async fn release(mut self) {
        self.cache.unlock(&self.key, &self.token).await;
        self.released = true;
    }
}

/// What taking a key's shared lock gave.
enum Acquired {
    Held(SharedLock),
    /// Another instance holds it.
    Taken,
    /// The shared tier did not answer.
    Unknown,
}

/// Takes `key`'s lock for `ttl` with `token`, cancel-safe: the `SET NX` is sent from a task of
/// its own, which always reads the answer, so a caller that goes away between the command and
/// the guard cannot leave the lock held until it expires — the guard is made (and, nobody
/// taking it, dropped, which releases the lock) in that task. A lock whose answer timed out may
/// have been taken after all: it is released by its token at once.
async fn acquire(cache: &TieredCache, key: &str, token: String, ttl: Duration) -> Acquired {
    let (sender, answer) = tokio::sync::oneshot::channel();
    let (cache, key) = (cache.clone(), key.to_owned());
    tokio::spawn(async move {
        let acquired = match cache.try_lock(&key, &token, ttl).await {
            Some(true) => Acquired::Held(SharedLock {
                cache,
                key,
                token,
                released: false,
            }),
            Some(false) => Acquired::Taken,
            None => {
                cache.unlock(&key, &token).await;
                Acquired::Unknown
            }
        };
        // A caller that went away drops `acquired` here: the guard releases the lock.
        let _ = sender.send(acquired);
    });
    answer.await.unwrap_or(Acquired::Unknown)
}

impl Drop for SharedLock {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Dropped on an error path or with a cancelled request: release it in the background.
        // Without a runtime (a process shutting down) it expires after `l2.lock_ttl`.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let cache = self.cache.clone();
            let key = std::mem::take(&mut self.key);
            let token = std::mem::take(&mut self.token);
            runtime.spawn(async move { cache.unlock(&key, &token).await });
        }
    }
}

/// What trying the shared lock gave.
enum Locked<V> {
    /// No lock configured, Redis unavailable, or the wait ran out: load without one.
    Skipped,
    Held(SharedLock),
    /// Another instance stored it meanwhile.
    Found(V),
}

impl TieredCache {
    /// Takes part in the fill of `key` among the callers sharing `flights`. `stored` looks for
    /// an entry stored meanwhile (fresh, with every check a read makes); it is asked once this
    /// caller leads, and while it waits for another instance's lock.
    pub(crate) async fn fill<V, E, F, Fut>(
        &self,
        flights: &Arc<Coalescer<V>>,
        key: &str,
        options: FillOptions,
        stored: F,
    ) -> Fill<V, E>
    where
        V: Clone + Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: Fn() -> Fut,
        Fut: Future<Output = Option<V>>,
    {
        let turn = match options.wait {
            Some(wait) => match tokio::time::timeout(wait, flights.turn::<E>(key)).await {
                Ok(turn) => turn,
                Err(_) => return Fill::Alone,
            },
            None => flights.turn::<E>(key).await,
        };
        let flight = match turn {
            Turn::Lead(flight) => flight,
            Turn::Follow(result) => {
                self.count(Counter::CoalescedWaits);
                return match result {
                    Ok(value) => Fill::Shared(value),
                    Err(error) => Fill::Failed(error),
                };
            }
        };
        let lock = match self.lock_options().filter(|_| options.across_instances) {
            // The lock path looks for a stored entry itself, once it holds the lock.
            Some((ttl, wait)) => match self.lock(key, ttl, wait, &stored).await {
                Locked::Found(value) => {
                    flight.finish(Ok(value.clone()));
                    return Fill::Found(value);
                }
                Locked::Held(lock) => Some(lock),
                Locked::Skipped => None,
            },
            None => {
                // Another flight may have filled the tiers since the caller looked.
                if let Some(value) = stored().await {
                    flight.finish(Ok(value.clone()));
                    return Fill::Found(value);
                }
                None
            }
        };
        Fill::Lead(FillPermit { flight, lock })
    }

    /// Leads the fill of `key` if nobody fills it at the moment, without waiting and without a
    /// shared lock: for background revalidations, which are skipped when one runs already.
    pub(crate) fn try_fill<V, E>(
        &self,
        flights: &Arc<Coalescer<V>>,
        key: &str,
    ) -> Option<FillPermit<V, E>>
    where
        V: Clone + Send + Sync + 'static,
        E: Send + Sync + 'static,
    {
        flights
            .try_lead::<E>(key)
            .map(|flight| FillPermit { flight, lock: None })
    }

    /// Cross-instance coalescing (`l2.lock`): takes `key`'s lock in the shared tier. If another
    /// instance holds it, waits for that instance's entry (looked for with `stored`) until
    /// `wait`, then loads anyway. Locks expire after `ttl`, so a crashed holder delays others
    /// at most that long; a failing shared tier means loading without a lock.
    async fn lock<V, F, Fut>(
        &self,
        key: &str,
        ttl: Duration,
        wait: Duration,
        stored: &F,
    ) -> Locked<V>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Option<V>>,
    {
        let token = super::random_id();
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(10);
        loop {
            match acquire(self, key, token.clone(), ttl).await {
                Acquired::Held(lock) => {
                    // The previous holder may have stored it just before letting go.
                    if let Some(value) = stored().await {
                        lock.release().await;
                        self.count(Counter::LockWaitsFilled);
                        return Locked::Found(value);
                    }
                    return Locked::Held(lock);
                }
                Acquired::Taken => {}
                Acquired::Unknown => return Locked::Skipped,
            }
            if let Some(value) = stored().await {
                self.count(Counter::LockWaitsFilled);
                return Locked::Found(value);
            }
            if tokio::time::Instant::now() + pause > deadline {
                tracing::debug!(key, "lock wait over; loading without the lock");
                return Locked::Skipped;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CacheConfig;

    const LOCKING: FillOptions = FillOptions {
        across_instances: true,
        wait: None,
    };

    #[tokio::test]
    async fn a_dropped_permit_hands_the_fill_to_a_waiter() {
        let cache = TieredCache::new(CacheConfig::default()).unwrap();
        let flights = Arc::new(Coalescer::<u32>::new());
        let Fill::Lead(permit) = cache
            .fill::<u32, (), _, _>(&flights, "k", LOCKING, || async { None })
            .await
        else {
            panic!("the first caller leads");
        };
        let waiter = cache.fill::<u32, (), _, _>(&flights, "k", LOCKING, || async { None });
        let (waiter, ()) = tokio::join!(waiter, async {
            tokio::task::yield_now().await;
            drop(permit);
        });
        assert!(
            matches!(waiter, Fill::Lead(_)),
            "the waiter leads a new fill"
        );
    }

    #[tokio::test]
    async fn a_finished_fill_is_shared_and_a_stored_entry_is_found() {
        let cache = TieredCache::new(CacheConfig::default()).unwrap();
        let flights = Arc::new(Coalescer::<u32>::new());
        let Fill::Lead(permit) = cache
            .fill::<u32, (), _, _>(&flights, "k", LOCKING, || async { None })
            .await
        else {
            panic!("the first caller leads");
        };
        let waiter = cache.fill::<u32, (), _, _>(&flights, "k", LOCKING, || async { None });
        let (waiter, ()) = tokio::join!(waiter, async {
            tokio::task::yield_now().await;
            assert!(
                permit.finish(Ok(7)).is_none(),
                "no shared lock without l2.lock"
            );
        });
        assert!(matches!(waiter, Fill::Shared(7)));
        let found = cache
            .fill::<u32, (), _, _>(&flights, "k", LOCKING, || async { Some(8) })
            .await;
        assert!(matches!(found, Fill::Found(8)));
        assert!(
            cache.try_fill::<u32, ()>(&flights, "k").is_some(),
            "nothing in flight"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_goes_alone_after_the_wait() {
        let cache = TieredCache::new(CacheConfig::default()).unwrap();
        let flights = Arc::new(Coalescer::<u32>::new());
        let Fill::Lead(_permit) = cache
            .fill::<u32, (), _, _>(&flights, "k", LOCKING, || async { None })
            .await
        else {
            panic!("the first caller leads");
        };
        let bounded = FillOptions {
            wait: Some(Duration::from_secs(5)),
            ..LOCKING
        };
        let waiter = cache
            .fill::<u32, (), _, _>(&flights, "k", bounded, || async { None })
            .await;
        assert!(matches!(waiter, Fill::Alone));
    }
}
