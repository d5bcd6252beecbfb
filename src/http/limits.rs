//! Rate limits: a token bucket per key, and a stricter one per client address for failed
//! authentication. Both are `governor` keyed limiters whose state is pruned periodically, so
//! a flood of distinct keys or addresses cannot grow memory without bound.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use crate::config::RateLimitSettings;

pub struct RateLimits {
    per_key: DefaultKeyedRateLimiter<String>,
    failed_auth: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

/// Refused: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds for the `Retry-After` header, at least 1.
    pub fn seconds(self) -> u64 {
        self.0.as_secs_f64().ceil().max(1.0) as u64
    }
}

fn nonzero(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).unwrap_or(NonZeroU32::MIN)
}

impl RateLimits {
    pub fn new(settings: &RateLimitSettings) -> Arc<RateLimits> {
        let per_key = Quota::per_second(nonzero(settings.per_key_per_second))
            .allow_burst(nonzero(settings.per_key_burst));
        let failed_auth = Quota::per_minute(nonzero(settings.failed_auth_per_minute))
            .allow_burst(nonzero(settings.failed_auth_burst));
        Arc::new(RateLimits {
            per_key: RateLimiter::keyed(per_key),
            failed_auth: RateLimiter::keyed(failed_auth),
            clock: DefaultClock::default(),
        })
    }

    /// Takes one request from the key's bucket.
    pub fn check_key(&self, key: &str) -> Result<(), RetryAfter> {
        self.per_key
            .check_key(&key.to_owned())
            .map_err(|not_until| RetryAfter(not_until.wait_time_from(self.clock.now())))
    }

    /// Counts one failed authentication from `address`; `Err` once it is over its allowance.
    pub fn check_failed_auth(&self, address: IpAddr) -> Result<(), RetryAfter> {
        self.failed_auth
            .check_key(&address)
            .map_err(|not_until| RetryAfter(not_until.wait_time_from(self.clock.now())))
    }

    /// Drops the state of keys and addresses that are back to a full bucket.
    pub fn prune(&self) {
        self.per_key.retain_recent();
        self.per_key.shrink_to_fit();
        self.failed_auth.retain_recent();
        self.failed_auth.shrink_to_fit();
    }

    /// Entries held, for tests and metrics.
    pub fn tracked(&self) -> usize {
        self.per_key.len() + self.failed_auth.len()
    }
}

/// Prunes the limiters every `every` until `stop` is cancelled.
pub async fn prune_periodically(limits: Arc<RateLimits>, every: Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => limits.prune(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_second: u32, burst: u32) -> Arc<RateLimits> {
        RateLimits::new(&RateLimitSettings {
            per_key_per_second: per_second,
            per_key_burst: burst,
            failed_auth_per_minute: 1,
            failed_auth_burst: 2,
            prune_interval_secs: 60,
        })
    }

    #[test]
    fn a_key_over_its_burst_is_told_when_to_retry() {
        let limits = limits(1, 2);
        assert!(limits.check_key("a").is_ok());
        assert!(limits.check_key("a").is_ok());
        let refused = limits.check_key("a");
        assert!(refused.is_err_and(|retry| retry.seconds() >= 1));
        assert!(
            limits.check_key("b").is_ok(),
            "keys have buckets of their own"
        );
    }

    #[test]
    fn failed_authentication_is_counted_per_address() {
        let limits = limits(1, 1);
        let address = IpAddr::from([10, 0, 0, 1]);
        assert!(limits.check_failed_auth(address).is_ok());
        assert!(limits.check_failed_auth(address).is_ok());
        assert!(limits.check_failed_auth(address).is_err());
        assert!(
            limits
                .check_failed_auth(IpAddr::from([10, 0, 0, 2]))
                .is_ok()
        );
    }

    #[test]
    fn pruning_forgets_keys_whose_buckets_have_refilled() {
        // 1000 per second: a spent token is back within a millisecond.
        let limits = limits(1000, 1);
        for i in 0..500 {
            assert!(limits.check_key(&format!("key-{i}")).is_ok());
        }
        assert!(limits.tracked() >= 500);
        std::thread::sleep(Duration::from_millis(20));
        limits.prune();
        assert_eq!(limits.tracked(), 0);
    }
}
