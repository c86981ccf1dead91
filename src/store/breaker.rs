//! A circuit breaker for the shared tier: after `threshold` consecutive failures (errors or
//! timeouts) it opens, and every operation is skipped at once, without touching the network,
//! until `cooldown` has passed; then one probe goes through (half-open). A success closes it, a
//! failure opens it for another cooldown.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, SystemTime};

use super::entry::unix_ms;
use super::tier::TierError;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown_ms: u64,
    state: AtomicU8,
    failures: AtomicU32,
    opened_at_ms: AtomicU64,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown_ms: u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX),
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            opened_at_ms: AtomicU64::new(0),
        }
    }

    /// Whether an operation may go to the tier now. While open, `false` until the cooldown has
    /// passed; then exactly one caller gets `true` (the probe).
    pub(crate) fn allow(&self) -> bool {
        match self.state.load(Ordering::Acquire) {
            CLOSED => true,
            OPEN => {
                let opened = self.opened_at_ms.load(Ordering::Acquire);
                now_ms().saturating_sub(opened) >= self.cooldown_ms
                    && self
                        .state
                        .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
            }
            _ => false,
        }
    }

    pub(crate) fn succeeded(&self) {
        self.failures.store(0, Ordering::Release);
        if self.state.swap(CLOSED, Ordering::AcqRel) != CLOSED {
            tracing::info!("shared tier answers again; circuit closed");
        }
    }

    pub(crate) fn failed(&self) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let state = self.state.load(Ordering::Acquire);
        if state == HALF_OPEN || (state == CLOSED && failures >= self.threshold) {
            self.opened_at_ms.store(now_ms(), Ordering::Release);
            if self.state.swap(OPEN, Ordering::AcqRel) == CLOSED {
                tracing::warn!(failures, "shared tier failing; circuit open, skipping it");
            }
        }
    }

    /// Runs `operation` unless the circuit is open (then fails at once), and feeds the outcome
    /// to the breaker. A value that does not decode, or one too large to store, is the tier
    /// working, not failing.
    pub(crate) async fn guard<T>(
        &self,
        operation: impl std::future::Future<Output = Result<T, TierError>>,
    ) -> Result<T, TierError> {
        if !self.allow() {
            return Err(TierError::CircuitOpen);
        }
        let started = std::time::Instant::now();
        let result = operation.await;
        crate::metrics::l2_duration(started.elapsed());
        match &result {
            Ok(_) | Err(TierError::Decode(_) | TierError::TooLarge { .. }) => self.succeeded(),
            Err(_) => self.failed(),
        }
        result
    }

    pub(crate) fn is_open(&self) -> bool {
        self.state.load(Ordering::Acquire) != CLOSED
    }
}

fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_lets_one_probe_through_after_the_cooldown() {
        let breaker = Breaker::new(3, Duration::ZERO);
        breaker.failed();
        breaker.failed();
        assert!(breaker.allow(), "still closed after 2 of 3 failures");
        breaker.failed();
        assert!(breaker.is_open());
        // Cooldown zero: one probe, and only one, at a time.
        assert!(breaker.allow());
        assert!(!breaker.allow());
        breaker.failed();
        assert!(breaker.is_open(), "a failed probe opens it again");
        assert!(breaker.allow());
        breaker.succeeded();
        assert!(!breaker.is_open());
        assert!(breaker.allow() && breaker.allow());
    }

    #[test]
    fn stays_open_during_the_cooldown() {
        let breaker = Breaker::new(1, Duration::from_secs(3600));
        breaker.failed();
        assert!(!breaker.allow());
    }

    #[test]
    fn a_success_resets_the_count() {
        let breaker = Breaker::new(2, Duration::from_secs(3600));
        breaker.failed();
        breaker.succeeded();
        breaker.failed();
        assert!(breaker.allow());
    }
}
