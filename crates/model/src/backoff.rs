//! The one exponential backoff used wherever cutover retries: journal writes, transient
//! provider errors and webhook deliveries.

use std::time::Duration;

/// Exponential backoff: the wait after the `n`th failed attempt is `base * 2^(n-1)`, never
/// more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failed attempt.
    pub base: Duration,
    /// The longest wait, whatever the attempt.
    pub max: Duration,
}

/// Doublings beyond this many cannot matter: `2^20` times any useful base exceeds any
/// useful cap.
const MAX_DOUBLINGS: u32 = 20;

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max }
    }

    /// The wait after failed attempt `attempt` (counted from 1) before the next one:
    /// `base * 2^(attempt-1)`, capped at `max`. Attempt 0 is treated as 1.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(MAX_DOUBLINGS);
        self.base.saturating_mul(1u32 << doublings).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_from_base_until_the_cap() {
        let b = Backoff::new(100 * MS, 1600 * MS);
        let waits: Vec<_> = (1..=7).map(|a| b.delay_after(a)).collect();
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1600, 1600, 1600].map(|ms| ms * MS)
        );
        assert_eq!(b.delay_after(0), 100 * MS);
    }

    #[test]
    fn huge_attempts_and_bases_saturate_instead_of_overflowing() {
        let b = Backoff::new(Duration::MAX / 2, Duration::MAX);
        assert_eq!(b.delay_after(u32::MAX), Duration::MAX);
        let capped = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        assert_eq!(capped.delay_after(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn a_cap_below_base_wins() {
        let b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(b.delay_after(1), Duration::from_secs(1));
    }
}
