//! Single-flight: concurrent loads of one key share one run of the work.
//!
//! The first caller of a key (the leader) runs its work; callers arriving while it runs (the
//! followers) wait for its result. If the leader is cancelled (its future dropped), the flight is
//! abandoned and one of the followers becomes the next leader with its own work, so no caller
//! waits on work that nobody drives. This is moka's `get_with` contract, without `'static`
//! bounds or spawned tasks.
//!
//! Flights are keyed by the key and the error type, so callers with different error types never
//! receive each other's errors. The leader's [`FlightGuard`] owns a handle on the coalescer, so a
//! flight can outlive the request that started it: a streaming fill finishes it when the body
//! ends, and a dropped body abandons it.

use std::any::{Any, TypeId};
use std::collections::HashMap;
#[cfg(test)]
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

type SharedError = Arc<dyn Any + Send + Sync>;

#[derive(Clone)]
enum State<V> {
    Running,
    Done(Result<V, SharedError>),
    Abandoned,
}

type FlightKey = (String, TypeId);

/// How a caller took part in a flight.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Ran the work.
    Leader,
    /// Waited for another caller's work.
    Follower,
}

pub(crate) struct Coalescer<V> {
    flights: Mutex<HashMap<FlightKey, watch::Sender<State<V>>>>,
}

impl<V> std::fmt::Debug for Coalescer<V> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flights = self.flights.lock().map_or(0, |flights| flights.len());
        formatter
            .debug_struct("Coalescer")
            .field("flights", &flights)
            .finish()
    }
}

impl<V: Clone + Send + Sync + 'static> Coalescer<V> {
    pub(crate) fn new() -> Self {
        Self {
            flights: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `work` unless a flight for `key` is running, in which case its result is shared.
    #[cfg(test)]
    pub(crate) async fn run<E, F, Fut>(
        self: &Arc<Self>,
        key: &str,
        work: F,
    ) -> (Result<V, Arc<E>>, Role)
    where
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        match self.turn::<E>(key).await {
            Turn::Lead(guard) => {
                let result = work().await.map_err(Arc::new);
                guard.finish(result.clone());
                (result, Role::Leader)
            }
            Turn::Follow(result) => (result, Role::Follower),
        }
    }

    /// Waits for a running flight of `key` and returns its result, or, when there is none (or
    /// it was abandoned), makes the caller the leader of a new one.
    pub(crate) async fn turn<E: Send + Sync + 'static>(self: &Arc<Self>, key: &str) -> Turn<V, E> {
        let flight_key = (key.to_owned(), TypeId::of::<E>());
        loop {
            let mut receiver = match self.join::<E>(&flight_key) {
                Joined::Leader(guard) => return Turn::Lead(guard),
                Joined::Follower(receiver) => receiver,
            };
            let outcome = receiver
                .wait_for(|state| !matches!(state, State::Running))
                .await
                .map(|state| state.clone());
            match outcome {
                Ok(State::Done(Ok(value))) => return Turn::Follow(Ok(value)),
                Ok(State::Done(Err(err))) => {
                    // The flight key includes E's TypeId, so the downcast holds.
                    if let Ok(err) = err.downcast::<E>() {
                        return Turn::Follow(Err(err));
                    }
                }
                // Abandoned (or the sender vanished): try to lead a new flight.
                Ok(State::Abandoned | State::Running) | Err(_) => {}
            }
        }
    }

    /// Leads a new flight of `key` if none is running; never waits.
    pub(crate) fn try_lead<E: Send + Sync + 'static>(
        self: &Arc<Self>,
        key: &str,
    ) -> Option<FlightGuard<V, E>> {
        match self.join::<E>(&(key.to_owned(), TypeId::of::<E>())) {
            Joined::Leader(guard) => Some(guard),
            Joined::Follower(_) => None,
        }
    }

    fn join<E>(self: &Arc<Self>, key: &FlightKey) -> Joined<V, E> {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = flights.get(key) {
            return Joined::Follower(sender.subscribe());
        }
        let (sender, _) = watch::channel(State::Running);
        flights.insert(key.clone(), sender.clone());
        Joined::Leader(FlightGuard {
            coalescer: Arc::clone(self),
            error_type: PhantomData,
            key: key.clone(),
            sender,
            finished: false,
        })
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    #[cfg(test)]
    fn followers(&self) -> usize {
        let flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        flights.values().map(watch::Sender::receiver_count).sum()
    }
}

/// A caller's part in a flight, from [`Coalescer::turn`].
pub(crate) enum Turn<V: Clone + Send + Sync + 'static, E> {
    /// Do the work, then [`FlightGuard::finish`] with its result.
    Lead(FlightGuard<V, E>),
    /// Another caller's result.
    Follow(Result<V, Arc<E>>),
}

enum Joined<V: Clone + Send + Sync + 'static, E> {
    Leader(FlightGuard<V, E>),
    Follower(watch::Receiver<State<V>>),
}

/// Held by the leader; publishes the result, or `Abandoned` if dropped first.
pub(crate) struct FlightGuard<V: Clone + Send + Sync + 'static, E> {
    coalescer: Arc<Coalescer<V>>,
    error_type: PhantomData<fn() -> E>,
    key: FlightKey,
    sender: watch::Sender<State<V>>,
    finished: bool,
}

impl<V: Clone + Send + Sync + 'static, E: Send + Sync + 'static> FlightGuard<V, E> {
    /// Publishes the result to the followers.
    pub(crate) fn finish(mut self, result: Result<V, Arc<E>>) {
        let result = result.map_err(|err| err as SharedError);
        self.finished = true;
        self.close(State::Done(result));
    }
}

impl<V: Clone + Send + Sync + 'static, E> FlightGuard<V, E> {
    /// Unregisters the flight (so later callers start afresh) and wakes the followers.
    fn close(&self, state: State<V>) {
        let mut flights = self
            .coalescer
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if flights
            .get(&self.key)
            .is_some_and(|sender| sender.same_channel(&self.sender))
        {
            flights.remove(&self.key);
        }
        drop(flights);
        self.sender.send_replace(state);
    }
}

impl<V: Clone + Send + Sync + 'static, E> Drop for FlightGuard<V, E> {
    fn drop(&mut self) {
        if !self.finished {
            self.close(State::Abandoned);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let coalescer = Arc::new(Coalescer::<u32>::new());
        let runs = AtomicUsize::new(0);
        let release = Notify::new();
        let calls = (0..50).map(|_| {
            coalescer.run::<(), _, _>("k", || async {
                runs.fetch_add(1, Ordering::SeqCst);
                release.notified().await;
                Ok(7)
            })
        });
        let all = futures_util::future::join_all(calls);
        let releaser = async {
            // Every caller has joined once the single flight is registered and polled.
            tokio::task::yield_now().await;
            release.notify_one();
        };
        let (results, ()) = tokio::join!(all, releaser);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(results
            .iter()
            .all(|(result, _)| *result.as_ref().unwrap() == 7));
        let leaders = results
            .iter()
            .filter(|(_, role)| *role == Role::Leader)
            .count();
        assert_eq!(leaders, 1);
        assert_eq!(coalescer.in_flight(), 0);
    }

    #[tokio::test]
    async fn errors_reach_every_follower() {
        let coalescer = Arc::new(Coalescer::<u32>::new());
        let release = Notify::new();
        let leader = coalescer.run("k", || async {
            release.notified().await;
            Err::<u32, _>("boom")
        });
        let follower = coalescer.run("k", || async { Ok::<u32, &str>(1) });
        let (leader, follower, ()) = tokio::join!(leader, follower, async {
            tokio::task::yield_now().await;
            release.notify_one();
        });
        assert_eq!(*leader.0.unwrap_err(), "boom");
        assert_eq!(*follower.0.unwrap_err(), "boom");
        assert_eq!(follower.1, Role::Follower);
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_over_to_a_follower() {
        let coalescer = Arc::new(Coalescer::<u32>::new());
        let started = Arc::new(Notify::new());
        let leader = tokio::spawn({
            let (coalescer, started) = (coalescer.clone(), started.clone());
            async move {
                coalescer
                    .run::<(), _, _>("k", || async move {
                        started.notify_one();
                        std::future::pending::<Result<u32, ()>>().await
                    })
                    .await
            }
        });
        started.notified().await;
        let follower = tokio::spawn({
            let coalescer = coalescer.clone();
            async move { coalescer.run::<(), _, _>("k", || async { Ok(2) }).await }
        });
        while coalescer.followers() == 0 {
            tokio::task::yield_now().await;
        }
        leader.abort();
        let (result, _) = follower.await.unwrap();
        assert_eq!(*result.as_ref().unwrap(), 2);
        assert_eq!(coalescer.in_flight(), 0);
    }

    #[tokio::test]
    async fn try_lead_never_waits_and_leads_only_a_free_key() {
        let coalescer = Arc::new(Coalescer::<u32>::new());
        let leader = coalescer.try_lead::<()>("k").expect("free");
        assert!(coalescer.try_lead::<()>("k").is_none(), "taken");
        drop(leader);
        assert!(
            coalescer.try_lead::<()>("k").is_some(),
            "abandoned, free again"
        );
    }

    #[tokio::test]
    async fn different_error_types_do_not_share_flights() {
        let coalescer = Arc::new(Coalescer::<u32>::new());
        let release = Notify::new();
        let a = coalescer.run::<String, _, _>("k", || async {
            release.notified().await;
            Ok(1)
        });
        let b = coalescer.run::<std::io::Error, _, _>("k", || async { Ok(2) });
        let (a, b, ()) = tokio::join!(a, b, async {
            tokio::task::yield_now().await;
            release.notify_one();
        });
        assert_eq!((*a.0.as_ref().unwrap(), a.1), (1, Role::Leader));
        assert_eq!((*b.0.as_ref().unwrap(), b.1), (2, Role::Leader));
    }
}
