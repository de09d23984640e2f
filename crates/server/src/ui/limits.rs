//! What a login flood costs: attempts are rate-limited per client address and per user
//! name (governor's keyed GCRA limiters), and password hashing runs at most
//! [`HASHING_AT_ONCE`] at a time, so no flood occupies more than that many cores.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;

/// Attempts a client address may make at once, then one more every [`IP_REFILL`].
pub const IP_BURST: u32 = 10;
pub const IP_REFILL: Duration = Duration::from_secs(1);
/// Attempts at one user name at once, then one more every [`USER_REFILL`]: slower, since
/// guessing one account's password from many addresses is the attack it stops.
pub const USER_BURST: u32 = 5;
pub const USER_REFILL: Duration = Duration::from_secs(10);
/// Password checks (argon2) that may run at the same time.
pub const HASHING_AT_ONCE: usize = 2;

/// The login limits of one control plane.
pub struct LoginLimits {
    by_ip: DefaultKeyedRateLimiter<IpAddr>,
    by_user: DefaultKeyedRateLimiter<String>,
    hashing: Arc<Semaphore>,
}

impl Default for LoginLimits {
    fn default() -> Self {
        let quota = |burst: u32, refill: Duration| {
            Quota::with_period(refill)
                .expect("a positive refill period")
                .allow_burst(NonZeroU32::new(burst).expect("a positive burst"))
        };
        LoginLimits {
            by_ip: RateLimiter::keyed(quota(IP_BURST, IP_REFILL)),
            by_user: RateLimiter::keyed(quota(USER_BURST, USER_REFILL)),
            hashing: Arc::new(Semaphore::new(HASHING_AT_ONCE)),
        }
    }
}

impl LoginLimits {
    /// Take one attempt for this address and user name, or say how long to wait.
    pub fn attempt(&self, ip: IpAddr, user: Option<&str>) -> Result<(), Duration> {
        let clock = DefaultClock::default();
        let wait = |n: governor::NotUntil<_>| n.wait_time_from(clock.now());
        self.by_ip.check_key(&ip).map_err(wait)?;
        if let Some(user) = user {
            self.by_user.check_key(&user.to_string()).map_err(wait)?;
        }
        // Keys that have refilled completely are forgotten, so the maps stay small.
        self.by_ip.retain_recent();
        self.by_user.retain_recent();
        Ok(())
    }

    /// A permit to hash one password; waits while [`HASHING_AT_ONCE`] checks run.
    pub async fn hashing(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.hashing
            .clone()
            .acquire_owned()
            .await
            .expect("the hashing semaphore is never closed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_burst_then_waits() {
        let limits = LoginLimits::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..IP_BURST {
            limits.attempt(ip, None).unwrap();
        }
        let wait = limits.attempt(ip, None).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= IP_REFILL, "{wait:?}");
        // Another address is not affected.
        limits.attempt("127.0.0.2".parse().unwrap(), None).unwrap();
    }

    #[test]
    fn one_user_name_is_limited_across_addresses() {
        let limits = LoginLimits::default();
        for n in 0..USER_BURST {
            let ip: IpAddr = format!("127.0.1.{n}").parse().unwrap();
            limits.attempt(ip, Some("alice")).unwrap();
        }
        let wait = limits
            .attempt("127.0.2.1".parse().unwrap(), Some("alice"))
            .unwrap_err();
        assert!(wait <= USER_REFILL, "{wait:?}");
        limits
            .attempt("127.0.2.1".parse().unwrap(), Some("bob"))
            .unwrap();
    }
}
