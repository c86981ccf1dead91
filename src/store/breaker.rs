//! Circuit breakers for the shared tier, one per shard (the one server, or each primary of a
//! Redis Cluster, so that one dead master does not switch off the healthy ones).
//!
//! After `threshold` consecutive failures (errors or timeouts) a breaker opens, and every
//! operation on its shard is skipped at once, without touching the network, until `cooldown` has
//! passed; then one probe goes through (half-open). A success closes it; a failure, or a probe
//! whose future is dropped before it answers, opens it for another cooldown. Time is monotonic
//! (Tokio's clock), so a step of the wall clock neither keeps a breaker open nor closes it early.
//!
//! Until its shard first connected, and at most until `l2.connect_wait` after start, failures do
//! not count: requests sent while the connection is being made are misses that do not open it.
//!
//! Each change of state starts a new generation, and an operation's result counts only in the
//! generation it was admitted in: a slow success admitted before the breaker opened does not close
//! it, and a slow failure admitted before a probe closed it does not open it again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::backend::Shard;
use super::tier::TierError;

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const STATE_BITS: u32 = 2;

/// A breaker's state and its generation, in one word so that both are read and changed at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Phase(u64);

impl Phase {
    fn state(self) -> u64 {
        self.0 & ((1 << STATE_BITS) - 1)
    }

    /// The phase a change from this one to `state` starts.
    fn next(self, state: u64) -> Self {
        let generation = (self.0 >> STATE_BITS).wrapping_add(1);
        Self((generation << STATE_BITS) | state)
    }
}

/// The breaker of one shard.
#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    /// A [`Phase`].
    phase: AtomicU64,
    /// Consecutive failures in the current phase.
    failures: AtomicU32,
    /// The clock's origin: `opened_at` is counted from it, so it fits in an atomic.
    epoch: Instant,
    opened_at_ms: AtomicU64,
    /// Set by the first connection or success; until then (and `grace_until`) failures do not
    /// count.
    armed: AtomicBool,
    grace_until: Instant,
    /// Woken when the breaker closes again, for work waiting on the tier to answer.
    recovered: Arc<Notify>,
}

/// What an operation's result says about the tier.
fn answered<T>(result: &Result<T, TierError>) -> bool {
    // A value that does not decode, one too large to store, or an operation the backend does not
    // have: the tier is working, not failing.
    matches!(
        result,
        Ok(_)
            | Err(TierError::Decode(_)
                | TierError::TooLarge { .. }
                | TierError::Unsupported { .. })
    )
}

impl Breaker {
    fn new(
        threshold: u32,
        cooldown: Duration,
        grace_until: Instant,
        recovered: Arc<Notify>,
    ) -> Self {
        let epoch = Instant::now();
        Self {
            threshold: threshold.max(1),
            cooldown,
            phase: AtomicU64::new(CLOSED),
            failures: AtomicU32::new(0),
            epoch,
            opened_at_ms: AtomicU64::new(0),
            armed: AtomicBool::new(false),
            grace_until,
            recovered,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn phase(&self) -> Phase {
        Phase(self.phase.load(Ordering::Acquire))
    }

    /// Moves from `from` to `state`, starting a new generation; `false` when the breaker has left
    /// `from` already (another result or a connection changed it first).
    fn change(&self, from: Phase, state: u64) -> bool {
        self.phase
            .compare_exchange(
                from.0,
                from.next(state).0,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Runs `operation` unless the circuit is open (then fails at once), and feeds the outcome
    /// to the breaker. If the future is dropped while it is the half-open probe, the breaker
    /// opens again for a fresh cooldown rather than waiting for an answer that never comes.
    pub(crate) async fn guard<T>(
        &self,
        operation: impl Future<Output = Result<T, TierError>>,
    ) -> Result<T, TierError> {
        let admission = self.admit().ok_or(TierError::CircuitOpen)?;
        let result = operation.await;
        admission.settle(answered(&result));
        result
    }

    /// Admission for one operation; `None` while open. After the cooldown exactly one caller is
    /// admitted as the probe.
    fn admit(&self) -> Option<Admission<'_>> {
        let phase = self.phase();
        let admitted = match phase.state() {
            CLOSED => phase,
            OPEN if self.cooled() && self.change(phase, HALF_OPEN) => phase.next(HALF_OPEN),
            _ => return None,
        };
        Some(Admission {
            breaker: self,
            phase: admitted,
            settled: false,
        })
    }

    fn cooled(&self) -> bool {
        let opened = self.opened_at_ms.load(Ordering::Acquire);
        self.now_ms().saturating_sub(opened)
            >= u64::try_from(self.cooldown.as_millis()).unwrap_or(u64::MAX)
    }

    /// A new connection to the shard: closed, counting from zero, whatever was in flight.
    fn connected(&self) {
        self.armed.store(true, Ordering::Release);
        loop {
            let phase = self.phase();
            if phase.state() == CLOSED {
                self.failures.store(0, Ordering::Release);
                return;
            }
            if self.close(phase) {
                return;
            }
        }
    }

    /// An operation admitted in `admitted` answered: closed, counting from zero, unless the
    /// breaker changed since (its answer is older than that change).
    fn answered(&self, admitted: Phase) {
        self.armed.store(true, Ordering::Release);
        if self.phase() != admitted {
            return;
        }
        match admitted.state() {
            HALF_OPEN => {
                self.close(admitted);
            }
            _ => self.failures.store(0, Ordering::Release),
        }
    }

    /// Closes the breaker if it is still in `from`.
    fn close(&self, from: Phase) -> bool {
        if !self.change(from, CLOSED) {
            return false;
        }
        self.failures.store(0, Ordering::Release);
        tracing::info!("shared tier answers again; circuit closed");
        self.recovered.notify_one();
        true
    }

    /// An operation admitted in `admitted` failed: counted, unless the breaker changed since.
    fn failed(&self, admitted: Phase) {
        let starting = !self.armed.load(Ordering::Acquire) && Instant::now() < self.grace_until;
        if (starting && admitted.state() != HALF_OPEN) || self.phase() != admitted {
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        match admitted.state() {
            HALF_OPEN => {
                self.open(admitted);
            }
            _ if failures >= self.threshold && self.open(admitted) => {
                tracing::warn!(failures, "shared tier failing; circuit open, skipping it");
            }
            _ => {}
        }
    }

    /// Opens the breaker for a cooldown from now if it is still in `from`.
    fn open(&self, from: Phase) -> bool {
        // Written before the change, so that whoever sees it open sees when it opened. Should the
        // change fail, the breaker changed an instant ago: the time is as good as its own.
        self.opened_at_ms.store(self.now_ms(), Ordering::Release);
        if !self.change(from, OPEN) {
            return false;
        }
        self.failures.store(0, Ordering::Release);
        true
    }

    pub(crate) fn is_open(&self) -> bool {
        self.phase().state() != CLOSED
    }
}

/// One operation let through in a phase of the breaker; settled with its outcome, or, dropped
/// unsettled while it was the probe, opening the breaker again.
struct Admission<'a> {
    breaker: &'a Breaker,
    phase: Phase,
    settled: bool,
}

impl Admission<'_> {
    fn settle(mut self, answered: bool) {
        self.settled = true;
        if answered {
            self.breaker.answered(self.phase);
        } else {
            self.breaker.failed(self.phase);
        }
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if self.phase.state() == HALF_OPEN && !self.settled {
            // Cancelled mid-probe: nobody else may probe while half-open, so without this the
            // circuit would stay half-open (closed to everyone) until a reconnection.
            self.breaker.open(self.phase);
        }
    }
}

/// The breakers of every shard of the shared tier, made on first use.
#[derive(Debug)]
pub(crate) struct Breakers {
    threshold: u32,
    cooldown: Duration,
    grace_until: Instant,
    shards: Mutex<HashMap<Shard, Arc<Breaker>>>,
    recovered: Arc<Notify>,
}

impl Breakers {
    /// `connect_wait` bounds the start-up grace: failures before the first connection count
    /// once it has passed.
    pub(crate) fn new(threshold: u32, cooldown: Duration, connect_wait: Duration) -> Self {
        Self {
            threshold,
            cooldown,
            grace_until: Instant::now() + connect_wait,
            shards: Mutex::new(HashMap::new()),
            recovered: Arc::new(Notify::new()),
        }
    }

    pub(crate) fn of(&self, shard: &Shard) -> Arc<Breaker> {
        let mut shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(breaker) = shards.get(shard) {
            return Arc::clone(breaker);
        }
        let breaker = Arc::new(Breaker::new(
            self.threshold,
            self.cooldown,
            self.grace_until,
            Arc::clone(&self.recovered),
        ));
        shards.insert(shard.clone(), Arc::clone(&breaker));
        breaker
    }

    /// A (re)connection to `shard`: it answers again, no need to wait for a probe.
    pub(crate) fn connected(&self, shard: &Shard) {
        self.of(shard).connected();
        self.recovered.notify_one();
    }

    /// Every shard answered (the tier was waited for and is up).
    pub(crate) fn all_connected(&self) {
        let shards: Vec<Arc<Breaker>> = self
            .shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for breaker in shards {
            breaker.connected();
        }
        self.recovered.notify_one();
    }

    pub(crate) fn any_open(&self) -> bool {
        self.shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .any(|breaker| breaker.is_open())
    }

    /// Resolves when a shard answers again after failing (or connects).
    pub(crate) async fn recovered(&self) {
        self.recovered.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A breaker past its start-up grace, so failures count at once.
    fn breaker(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker::new(threshold, cooldown, Instant::now(), Arc::new(Notify::new()))
    }

    async fn fail(breaker: &Breaker) {
        let _ = breaker
            .guard(async { Err::<(), _>(TierError::Timeout) })
            .await;
    }

    async fn succeed(breaker: &Breaker) -> Result<(), TierError> {
        breaker.guard(async { Ok(()) }).await
    }

    #[tokio::test]
    async fn opens_after_the_threshold_and_lets_one_probe_through_after_the_cooldown() {
        let breaker = breaker(3, Duration::ZERO);
        fail(&breaker).await;
        fail(&breaker).await;
        assert!(!breaker.is_open(), "still closed after 2 of 3 failures");
        fail(&breaker).await;
        assert!(breaker.is_open());
        // Cooldown zero: one probe, and only one, at a time.
        let probe = breaker.admit().expect("the probe");
        assert!(breaker.admit().is_none());
        probe.settle(false);
        assert!(breaker.is_open(), "a failed probe opens it again");
        assert!(succeed(&breaker).await.is_ok());
        assert!(!breaker.is_open());
        assert!(breaker.admit().is_some() && breaker.admit().is_some());
    }

    #[tokio::test]
    async fn stays_open_during_the_cooldown() {
        let breaker = breaker(1, Duration::from_secs(3600));
        fail(&breaker).await;
        assert!(matches!(
            succeed(&breaker).await,
            Err(TierError::CircuitOpen)
        ));
    }

    #[tokio::test]
    async fn a_success_resets_the_count() {
        let breaker = breaker(2, Duration::from_secs(3600));
        fail(&breaker).await;
        succeed(&breaker).await.unwrap();
        fail(&breaker).await;
        assert!(!breaker.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_recovers_after_a_cancelled_probe() {
        let breaker = breaker(1, Duration::from_secs(1));
        fail(&breaker).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        // The probe never answers; its caller gives up (a client that went away, a timeout
        // around the call) and the future is dropped inside `guard`.
        let probe = breaker.guard(std::future::pending::<Result<(), TierError>>());
        let cancelled = tokio::time::timeout(Duration::from_millis(10), probe).await;
        assert!(cancelled.is_err(), "the probe was cut short");
        assert!(
            matches!(succeed(&breaker).await, Err(TierError::CircuitOpen)),
            "open again for a fresh cooldown"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(succeed(&breaker).await.is_ok(), "a new probe went through");
        assert!(!breaker.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn the_cooldown_runs_on_the_monotonic_clock() {
        // Tokio's paused clock moves only when told: the wall clock (which may step backwards,
        // or forwards) plays no part in when the probe is let through.
        let breaker = breaker(1, Duration::from_secs(3600));
        fail(&breaker).await;
        tokio::time::advance(Duration::from_secs(3599)).await;
        assert!(matches!(
            succeed(&breaker).await,
            Err(TierError::CircuitOpen)
        ));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(succeed(&breaker).await.is_ok());
    }

    #[tokio::test]
    async fn a_late_success_does_not_close_a_breaker_that_opened_since() {
        let breaker = breaker(1, Duration::from_secs(3600));
        let slow = breaker.admit().expect("closed");
        fail(&breaker).await;
        assert!(breaker.is_open());
        slow.settle(true);
        assert!(
            breaker.is_open(),
            "admitted before it opened: not the probe"
        );
        assert!(matches!(
            succeed(&breaker).await,
            Err(TierError::CircuitOpen)
        ));
    }

    #[tokio::test]
    async fn a_late_failure_does_not_reopen_a_breaker_that_a_probe_closed() {
        let breaker = breaker(1, Duration::ZERO);
        let slow = breaker.admit().expect("closed");
        fail(&breaker).await;
        assert!(succeed(&breaker).await.is_ok(), "the probe closes it");
        slow.settle(false);
        assert!(!breaker.is_open(), "admitted before it opened: not counted");
        fail(&breaker).await;
        assert!(breaker.is_open(), "a failure of its own phase counts");
    }

    #[tokio::test]
    async fn a_late_failure_does_not_end_the_probe() {
        let breaker = breaker(1, Duration::ZERO);
        let slow = breaker.admit().expect("closed");
        fail(&breaker).await;
        let probe = breaker.admit().expect("the probe");
        slow.settle(false);
        assert!(breaker.admit().is_none(), "still one probe at a time");
        probe.settle(true);
        assert!(!breaker.is_open());
    }

    #[tokio::test]
    async fn a_probe_dropped_after_a_reconnection_leaves_the_breaker_closed() {
        let breaker = breaker(1, Duration::ZERO);
        fail(&breaker).await;
        let probe = breaker.admit().expect("the probe");
        breaker.connected();
        drop(probe);
        assert!(
            !breaker.is_open(),
            "the reconnection closed it; the probe is moot"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_before_the_first_connection_do_not_open_it() {
        let breakers = Breakers::new(1, Duration::from_secs(3600), Duration::from_secs(2));
        let shard = Shard::default();
        for _ in 0..10 {
            fail(&breakers.of(&shard)).await;
        }
        assert!(!breakers.any_open(), "start-up failures are misses only");
        breakers.connected(&shard);
        fail(&breakers.of(&shard)).await;
        assert!(breakers.any_open(), "counted once connected");

        let never_connected = Shard::named("other:1");
        tokio::time::advance(Duration::from_secs(2)).await;
        fail(&breakers.of(&never_connected)).await;
        assert!(
            breakers.of(&never_connected).is_open(),
            "counted after l2.connect_wait even without a connection"
        );
    }
}
