//! One bound on the work the cache starts in the background (`http.max_background`): the body
//! read for the cache after its client got an early `304` or `412`, background revalidations
//! and refresh-ahead. Each is optional — the cache does without it past the bound — and a
//! single request can start one, so unbounded, a burst of requests (cache-busting queries with
//! a matching `If-Modified-Since`) would start as many downloads as it has requests.
//!
//! A task holds its place from the moment it is reserved until it ends, however it ends: the
//! place is a semaphore permit owned by the task's future, given back when the future is
//! dropped — finished, panicked or aborted. Reserving never waits.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::TieredCache;
use crate::stats::Counter;

/// At most one warning per interval about skipped work; the rest are counted (and logged at
/// debug level), so a burst does not flood the log.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The places for background tasks, shared by every clone of a cache.
pub(crate) struct Background {
    places: Arc<Semaphore>,
    limit: u32,
    warned_at: Mutex<Option<Instant>>,
}

/// A reserved place for one background task ([`TieredCache::reserve_background`]).
pub(crate) struct Place {
    /// Never read: held for its drop, which gives the place back.
    _permit: OwnedSemaphorePermit,
}

impl Background {
    /// Room for `limit` tasks at once (`http.max_background`, validated to fit a semaphore).
    pub(crate) fn new(limit: u32) -> Self {
        Self {
            places: Arc::new(Semaphore::new(usize::try_from(limit).unwrap_or(usize::MAX))),
            limit,
            warned_at: Mutex::new(None),
        }
    }

    fn reserve(&self) -> Option<Place> {
        let permit = Arc::clone(&self.places).try_acquire_owned().ok()?;
        Some(Place { _permit: permit })
    }

    fn warn_skipped(&self, task: &'static str) {
        let mut warned_at = self
            .warned_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if warned_at.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            tracing::debug!(task, "background work skipped: http.max_background reached");
            return;
        }
        *warned_at = Some(Instant::now());
        drop(warned_at);
        tracing::warn!(
            task,
            limit = self.limit,
            "background work skipped: http.max_background tasks run already \
             (raise it if this is regular load; further skips are counted in \
             Stats::background_skipped)"
        );
    }
}

impl Place {
    /// Runs `task` on the Tokio runtime, holding this place until the task ends.
    pub(crate) fn spawn<F>(self, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(async move {
            // Owned by the task's future: dropped with it, whether it finishes, panics or is
            // aborted.
            let _place = self;
            task.await;
        })
    }
}

impl TieredCache {
    /// A place for one background `task` (named in the log and the metric), without waiting.
    /// `None` past `http.max_background`: the caller does without the work, which is counted
    /// (`Stats::background_skipped`, `tiered_cache_background_skipped_total{task}`) and logged
    /// (one warning per 10 s).
    pub(crate) fn reserve_background(&self, task: &'static str) -> Option<Place> {
        let place = self.background().reserve();
        if place.is_none() {
            self.count(Counter::BackgroundSkipped);
            crate::metrics::background_skipped(task);
            self.background().warn_skipped(task);
        }
        place
    }

    /// Runs `future` in the background when a place is free ([`reserve_background`]); whether
    /// it runs.
    ///
    /// [`reserve_background`]: Self::reserve_background
    pub(crate) fn try_spawn<F>(&self, task: &'static str, future: F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.reserve_background(task)
            .map(|place| place.spawn(future))
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CacheConfig;

    #[tokio::test]
    async fn a_place_is_given_back_when_its_task_ends_panics_or_is_aborted() {
        let background = Background::new(1);
        let finished = background.reserve().expect("one place").spawn(async {});
        assert!(
            background.reserve().is_none(),
            "held from the reservation on"
        );
        finished.await.unwrap();

        let panicked = background
            .reserve()
            .expect("free once the task ended")
            .spawn(async { panic!("a task that fails") });
        assert!(panicked.await.unwrap_err().is_panic());

        let aborted = background
            .reserve()
            .expect("free after a panic")
            .spawn(std::future::pending());
        aborted.abort();
        assert!(aborted.await.unwrap_err().is_cancelled());
        assert!(background.reserve().is_some(), "free after an abort");
    }

    #[tokio::test]
    async fn past_the_bound_nothing_runs_and_the_skip_is_counted() {
        let config = CacheConfig::builder().max_background(2).build().unwrap();
        let cache = TieredCache::new(config).unwrap();
        let (release, released) = tokio::sync::watch::channel(false);
        for _ in 0..2 {
            let mut released = released.clone();
            let held = async move {
                let _ = released.wait_for(|released| *released).await;
            };
            assert!(cache.try_spawn("test", held));
        }
        assert!(!cache.try_spawn("test", async {}));
        assert_eq!(cache.stats().background_skipped, 1);
        release.send_replace(true);
    }
}
