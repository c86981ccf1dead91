//! The replay loop both queues share: take a delivery, hand it to the writer with retries and
//! backoff, then let the queue settle it (free its slot, or acknowledge its stream entry).

use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Counters, WriteError, WriteJob, Writer};

/// Longest wait between two attempts, however large `backoff` and the attempt number.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A job taken from a queue, with what the queue needs to settle it.
pub(super) struct Delivery<T> {
    pub(super) job: WriteJob,
    pub(super) ticket: T,
}

/// How a job ended.
pub(super) enum Outcome {
    Written,
    /// Given up, with the reason (already logged and counted).
    // Only the durable queue keeps the reason (in its dead stream).
    Dropped(#[cfg_attr(not(feature = "redis"), allow(dead_code))] String),
}

/// What a queue does with a job once it was written or dropped.
pub(super) trait Settle: Send + Sync + 'static {
    type Ticket: Send + 'static;

    fn settle(
        &self,
        ticket: Self::Ticket,
        job: WriteJob,
        outcome: Outcome,
    ) -> impl Future<Output = ()> + Send;
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Retry {
    pub(super) max_attempts: u32,
    pub(super) backoff: Duration,
}

impl Retry {
    /// Wait after failed attempt number `attempt` (from 1): `backoff`, doubling, at most 30 s.
    fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(31);
        self.backoff.saturating_mul(factor).min(MAX_BACKOFF)
    }
}

/// The workers' channels, one per worker. Every job of a key goes to the same worker, so a later
/// write of a key is never replayed before an earlier one has finished (with one shared channel,
/// an idle worker could take the later write while another was still retrying the earlier one).
pub(super) struct Lanes<T> {
    senders: Vec<mpsc::Sender<Delivery<T>>>,
}

impl<T> Lanes<T> {
    /// The channel of the worker that replays `key`'s jobs.
    pub(super) fn for_key(&self, key: &str) -> &mpsc::Sender<Delivery<T>> {
        // `DefaultHasher::new` has fixed keys: a key maps to the same worker for the whole run.
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        let index = hasher.finish() % self.senders.len() as u64;
        &self.senders[index as usize]
    }

    /// Waits until some worker can take a job; false when the workers are gone.
    #[cfg(feature = "redis")] // the durable queue's reader
    pub(super) async fn any_room(&self) -> bool {
        let reservations = self.senders.iter().map(|sender| Box::pin(sender.reserve()));
        let (reserved, _, _) = futures_util::future::select_all(reservations).await;
        reserved.is_ok()
    }

    /// How many jobs the workers can take now, summed over every worker.
    #[cfg(feature = "redis")] // the durable queue's reader
    pub(super) fn room(&self) -> usize {
        self.senders.iter().map(mpsc::Sender::capacity).sum()
    }
}

/// Spawns `workers` tasks, each with a channel of `lane_capacity` jobs; a task ends when its
/// channel is closed (the returned lanes dropped) and empty.
pub(super) fn spawn<S: Settle>(
    workers: usize,
    lane_capacity: usize,
    settle: Arc<S>,
    writer: Arc<dyn Writer>,
    counters: Arc<Counters>,
    retry: Retry,
) -> (Lanes<S::Ticket>, Vec<JoinHandle<()>>) {
    let (senders, tasks): (Vec<_>, Vec<_>) = (0..workers.max(1))
        .map(|_| {
            let (sender, deliveries) = mpsc::channel(lane_capacity.max(1));
            let task = tokio::spawn(work(
                deliveries,
                Arc::clone(&settle),
                Arc::clone(&writer),
                Arc::clone(&counters),
                retry,
            ));
            (sender, task)
        })
        .unzip();
    (Lanes { senders }, tasks)
}

/// One worker: replays its channel's jobs one after the other.
async fn work<S: Settle>(
    mut deliveries: mpsc::Receiver<Delivery<S::Ticket>>,
    settle: Arc<S>,
    writer: Arc<dyn Writer>,
    counters: Arc<Counters>,
    retry: Retry,
) {
    while let Some(Delivery { job, ticket }) = deliveries.recv().await {
        let outcome = replay(&*writer, &job, retry, &counters).await;
        if matches!(outcome, Outcome::Dropped(_)) {
            // Before settling: a durable job is then given up again if this instance dies in
            // between.
            give_up(&*writer, &job).await;
        }
        settle.settle(ticket, job, outcome).await;
    }
}

/// Hands `job` to the writer until it is written or given up, counting both and the retries.
async fn replay(writer: &dyn Writer, job: &WriteJob, retry: Retry, counters: &Counters) -> Outcome {
    let mut attempt = 1;
    loop {
        // A panicking writer must not take the worker down with it.
        let result = AssertUnwindSafe(async { writer.write(job.clone()).await })
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(WriteError::Permanent("the writer panicked".to_owned())));
        let reason = match result {
            Ok(()) => {
                Counters::add(&counters.written);
                return Outcome::Written;
            }
            Err(WriteError::Retry(reason)) if attempt < retry.max_attempts => {
                Counters::add(&counters.retried);
                let delay = retry.delay(attempt);
                tracing::debug!(key = %job.key, attempt, ?delay, %reason, "write-behind write failed, retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
                continue;
            }
            Err(WriteError::Retry(reason)) => {
                format!("still failing after {attempt} attempts: {reason}")
            }
            Err(WriteError::Permanent(reason)) => format!("permanent error: {reason}"),
        };
        Counters::add(&counters.dropped);
        tracing::error!(
            key = %job.key,
            method = %job.method,
            uri = %job.uri,
            attempts = attempt,
            %reason,
            "write-behind job dropped"
        );
        return Outcome::Dropped(reason);
    }
}

/// Tells the writer `job` was given up; a panic there must not take the worker down either.
async fn give_up(writer: &dyn Writer, job: &WriteJob) {
    if AssertUnwindSafe(writer.given_up(job))
        .catch_unwind()
        .await
        .is_err()
    {
        tracing::error!(key = %job.key, "write-behind: the writer panicked in given_up");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_thirty_seconds() {
        let retry = Retry {
            max_attempts: 100,
            backoff: Duration::from_millis(100),
        };
        assert_eq!(retry.delay(1), Duration::from_millis(100));
        assert_eq!(retry.delay(2), Duration::from_millis(200));
        assert_eq!(retry.delay(4), Duration::from_millis(800));
        assert_eq!(retry.delay(10), MAX_BACKOFF);
        assert_eq!(retry.delay(64), MAX_BACKOFF);
    }
}
