//! The in-process queue: the workers' channels, bounded by a semaphore whose permits travel with
//! the jobs, so a job holds its slot until it was written or dropped.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::worker::{Delivery, Lanes, Outcome, Settle};
use super::{EnqueueError, WriteJob};

pub(super) struct MemoryQueue {
    /// `None` once closed: the workers finish what their channels hold, then stop.
    lanes: Mutex<Option<Lanes<OwnedSemaphorePermit>>>,
    slots: Arc<Semaphore>,
    capacity: usize,
}

impl MemoryQueue {
    /// `lanes` must each hold `capacity` jobs: a job that got a slot then always finds room in
    /// its worker's channel, however many jobs share that worker.
    pub(super) fn new(capacity: usize, lanes: Lanes<OwnedSemaphorePermit>) -> Self {
        Self {
            lanes: Mutex::new(Some(lanes)),
            slots: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    pub(super) fn enqueue(&self, job: WriteJob) -> Result<(), EnqueueError> {
        let lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(lanes) = lanes.as_ref() else {
            return Err(EnqueueError::Closed);
        };
        let full = || EnqueueError::Full {
            capacity: self.capacity,
        };
        let slot = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| full())?;
        lanes
            .for_key(&job.key)
            .try_send(Delivery { job, ticket: slot })
            .map_err(|_| full())
    }

    pub(super) fn close(&self) {
        self.lanes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Jobs accepted and not yet written or dropped.
    pub(super) fn queued(&self) -> usize {
        self.capacity - self.slots.available_permits()
    }
}

/// Settling a memory job frees its slot.
pub(super) struct ReleaseSlot;

impl Settle for ReleaseSlot {
    type Ticket = OwnedSemaphorePermit;

    fn settle(
        &self,
        slot: OwnedSemaphorePermit,
        _job: WriteJob,
        _outcome: Outcome,
    ) -> impl Future<Output = ()> + Send {
        drop(slot);
        std::future::ready(())
    }
}
