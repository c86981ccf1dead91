//! Early refreshes of `get_or_set` (XFetch, `early_refresh.beta`): a caller that finds a fresh
//! entry reloads it anyway, with a probability that grows as expiry nears and with how long the
//! entry's load took (Vattani, Chierichetti and Lowenstein, "Optimal Probabilistic Cache
//! Stampede Prevention", VLDB 2015). Callers on different instances draw independently, so they
//! do not all reload at the same instant, and a hot key is reloaded before it expires.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::CachedEntry;

/// A uniform random number in (0, 1].
type Random = Box<dyn Fn() -> f64 + Send + Sync>;

pub(crate) struct EarlyRefresh {
    beta: f64,
    random: Random,
}

impl EarlyRefresh {
    pub(crate) fn new(beta: f64) -> Self {
        let state = AtomicU64::new(seed());
        Self::with_random(beta, Box::new(move || xorshift(&state)))
    }

    pub(crate) fn with_random(beta: f64, random: Random) -> Self {
        Self { beta, random }
    }

    /// Whether a caller that found `entry` fresh at `now` reloads it: XFetch's
    /// `now − Δ·β·ln(random) ≥ expiry`, with Δ the recorded load time. Never for an entry whose
    /// load time is not known, nor when β is 0.
    pub(crate) fn is_due(&self, entry: &CachedEntry, now: SystemTime) -> bool {
        let load = entry.load_time();
        if self.beta <= 0.0 || load.is_zero() {
            return false;
        }
        let expiry = entry.stored_at() + entry.ttl();
        let Ok(remaining) = expiry.duration_since(now) else {
            return false;
        };
        let gap = load.as_secs_f64() * self.beta * -(self.random)().ln();
        Duration::try_from_secs_f64(gap).is_ok_and(|gap| gap >= remaining)
    }
}

fn seed() -> u64 {
    let id = super::random_id();
    u64::from_str_radix(&id, 16).unwrap_or(0x9e37_79b9_7f4a_7c15) | 1
}

/// xorshift64*, mapped to (0, 1].
fn xorshift(state: &AtomicU64) -> f64 {
    let next = |mut x: u64| {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x
    };
    let previous = state
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(next(x)))
        .unwrap_or(1);
    let bits = next(previous).wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
    (bits as f64 + 1.0) / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ttl: Duration, load: Duration, stored_at: SystemTime) -> CachedEntry {
        CachedEntry::new("v", ttl)
            .with_stored_at(stored_at)
            .with_load_time(load)
    }

    #[test]
    fn refreshes_come_earlier_as_expiry_nears_and_never_without_a_load_time() {
        let stored = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ttl = Duration::from_secs(60);
        let load = Duration::from_secs(1);
        // A fixed draw: -ln(0.01) ≈ 4.6, so with β = 1 a 1 s load refreshes in the last 4.6 s.
        let fixed = || EarlyRefresh::with_random(1.0, Box::new(|| 0.01));
        let at = |seconds| stored + Duration::from_secs(seconds);
        assert!(
            !fixed().is_due(&entry(ttl, load, stored), at(50)),
            "10 s left"
        );
        assert!(
            fixed().is_due(&entry(ttl, load, stored), at(56)),
            "4 s left"
        );
        assert!(!fixed().is_due(&entry(ttl, Duration::ZERO, stored), at(59)));
        assert!(!EarlyRefresh::with_random(0.0, Box::new(|| 0.01))
            .is_due(&entry(ttl, load, stored), at(59)));
        assert!(
            !fixed().is_due(&entry(ttl, load, stored), at(61)),
            "expired: not early"
        );
        // A larger β refreshes earlier.
        let eager = EarlyRefresh::with_random(3.0, Box::new(|| 0.01));
        assert!(eager.is_due(&entry(ttl, load, stored), at(50)));
    }

    #[test]
    fn the_random_source_stays_in_its_range() {
        let state = AtomicU64::new(seed());
        for _ in 0..10_000 {
            let draw = xorshift(&state);
            assert!(draw > 0.0 && draw <= 1.0, "{draw}");
        }
    }
}
