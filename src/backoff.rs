//! Per-object exponential backoff with jitter. kube-runtime requeues at whatever delay the
//! reconciler asks for and keeps no per-object history, so the controller keeps the failure count
//! of each object here and resets it when the object makes progress.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// An exponential backoff schedule: `base * 2^attempt`, capped at `max`, with "equal jitter"
/// (the delay is drawn uniformly from the upper half of that value, so retries of many objects
/// that failed together spread out, yet no retry comes sooner than half the schedule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Schedule {
    /// Delay before the first retry (before jitter).
    pub base: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
}

impl Schedule {
    /// For transient failures: throttling, network, 5xx.
    pub(crate) const TRANSIENT: Schedule = Schedule {
        base: Duration::from_secs(1),
        max: Duration::from_secs(300),
    };
    /// For failures that need a person to change something (a missing Secret, a wrong key): look
    /// again now and then, since the fix may come without a spec change.
    pub(crate) const BLOCKED: Schedule = Schedule {
        base: Duration::from_secs(15),
        max: Duration::from_secs(600),
    };

    /// The delay before retry number `attempt` (0 for the first), with `jitter` in `[0, 1)`.
    pub(crate) fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exponential = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.min(31)));
        let ceiling = exponential.min(self.max);
        let half = ceiling / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// Failure counts by object, shared by the reconciler and the error policy.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    attempts: Mutex<HashMap<String, u32>>,
}

impl Tracker {
    /// Records one more failure of `key` and returns the delay before its next try.
    pub(crate) fn next(&self, key: &str, schedule: Schedule) -> Duration {
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
            let n = attempts.entry(key.to_owned()).or_insert(0);
            let attempt = *n;
            *n = n.saturating_add(1);
            attempt
        };
        schedule.delay(attempt, rand::random::<f64>())
    }

    /// Forgets the failures of `key` (it made progress, or is gone).
    pub(crate) fn reset(&self, key: &str) {
        self.attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// How many failures in a row `key` has had.
    #[cfg(test)]
    pub(crate) fn attempts(&self, key: &str) -> u32 {
        self.attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_until_the_cap_and_stay_within_the_upper_half() {
        let s = Schedule {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        assert_eq!(s.delay(0, 0.0), Duration::from_millis(500));
        assert!(s.delay(0, 0.999_999) < Duration::from_secs(1));
        assert_eq!(s.delay(3, 0.0), Duration::from_secs(4));
        assert_eq!(s.delay(10, 0.0), Duration::from_secs(30));
        assert!(s.delay(10, 0.999) <= Duration::from_secs(60));
        assert_eq!(
            s.delay(u32::MAX, 0.0),
            Duration::from_secs(30),
            "no overflow"
        );
    }

    #[test]
    fn jitter_spreads_delays_of_the_same_attempt() {
        let s = Schedule::TRANSIENT;
        assert!(s.delay(4, 0.1) < s.delay(4, 0.9));
    }

    #[test]
    fn tracker_counts_per_object_and_resets() {
        let t = Tracker::default();
        t.next("a", Schedule::TRANSIENT);
        t.next("a", Schedule::TRANSIENT);
        t.next("b", Schedule::TRANSIENT);
        assert_eq!(t.attempts("a"), 2);
        assert_eq!(t.attempts("b"), 1);
        t.reset("a");
        assert_eq!(t.attempts("a"), 0);
        let third = t.next("b", Schedule::TRANSIENT);
        assert!(third >= Duration::from_secs(1) && third <= Duration::from_secs(2));
    }
}
