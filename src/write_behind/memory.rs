//! The in-process queue: a channel to the workers, bounded by a semaphore whose permits travel
//! with the jobs, so a job holds its slot until it was written or dropped.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::worker::{Delivery, Outcome, Settle};
use super::{EnqueueError, WriteJob};

type Sender = mpsc::Sender<Delivery<OwnedSemaphorePermit>>;

pub(super) struct MemoryQueue {
    /// `None` once closed: the workers finish what the channel holds, then stop.
    sender: Mutex<Option<Sender>>,
    slots: Arc<Semaphore>,
    capacity: usize,
}

impl MemoryQueue {
    pub(super) fn new(capacity: usize) -> (Self, mpsc::Receiver<Delivery<OwnedSemaphorePermit>>) {
        // As large as the semaphore: a job that got a slot always finds room in the channel.
        let (sender, receiver) = mpsc::channel(capacity);
        let queue = Self {
            sender: Mutex::new(Some(sender)),
            slots: Arc::new(Semaphore::new(capacity)),
            capacity,
        };
        (queue, receiver)
    }

    pub(super) fn enqueue(&self, job: WriteJob) -> Result<(), EnqueueError> {
        let sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(sender) = sender.as_ref() else {
            return Err(EnqueueError::Closed);
        };
        let full = || EnqueueError::Full {
            capacity: self.capacity,
        };
        let slot = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| full())?;
        sender
            .try_send(Delivery { job, ticket: slot })
            .map_err(|_| full())
    }

    pub(super) fn close(&self) {
        self.sender
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
