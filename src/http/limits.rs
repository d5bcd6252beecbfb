//! Rate limits: a token bucket per key, one per team shared by all of its keys, and a stricter
//! one per client address for failed authentication. All are `governor` keyed limiters whose state is pruned periodically, so
//! a flood of distinct keys or addresses cannot grow memory without bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use crate::config::RateLimitSettings;

pub struct RateLimits {
    per_key: DefaultKeyedRateLimiter<String>,
    /// Keyed by team id: a team's keys draw from one bucket, so a flood from one team is held
    /// to the team's rate however many keys it mints, and other teams keep theirs.
    per_team: DefaultKeyedRateLimiter<String>,
    failed_auth: DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses over their failed-authentication allowance, and until when. While listed, an
    /// address gets 429 before any credential it sends is even looked at, so a correct guess
    /// is refused like a wrong one and guessing gains nothing.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    clock: DefaultClock,
}

/// The unit the failed-authentication limiter counts: one IPv4 address, or one IPv6 /64 (a
/// single host usually holds a whole /64, so counting /128s would be no limit at all).
fn client_unit(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::from(segments)
        }
    }
}

/// Refused: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds for the `Retry-After` header, rounded up, at least 1.
    pub fn seconds(self) -> u64 {
        let whole = self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0);
        whole.max(1)
    }
}

fn nonzero(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).unwrap_or(NonZeroU32::MIN)
}

impl RateLimits {
    pub fn new(settings: &RateLimitSettings) -> Arc<RateLimits> {
        let per_key = Quota::per_second(nonzero(settings.per_key_per_second))
            .allow_burst(nonzero(settings.per_key_burst));
        let per_team = Quota::per_second(nonzero(settings.per_team_per_second))
            .allow_burst(nonzero(settings.per_team_burst));
        let failed_auth = Quota::per_minute(nonzero(settings.failed_auth_per_minute))
            .allow_burst(nonzero(settings.failed_auth_burst));
        Arc::new(RateLimits {
            per_key: RateLimiter::keyed(per_key),
            per_team: RateLimiter::keyed(per_team),
            failed_auth: RateLimiter::keyed(failed_auth),
            blocked: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
        })
    }

    /// Takes one request from the key's bucket.
    pub fn check_key(&self, key: &str) -> Result<(), RetryAfter> {
        self.per_key
            .check_key(&key.to_owned())
            .map_err(|not_until| RetryAfter(not_until.wait_time_from(self.clock.now())))
    }

    /// Takes one request from the team's shared bucket.
    pub fn check_team(&self, team: &str) -> Result<(), RetryAfter> {
        self.per_team
            .check_key(&team.to_owned())
            .map_err(|not_until| RetryAfter(not_until.wait_time_from(self.clock.now())))
    }

    /// `Err` while `address` is blocked for failing authentication too often.
    pub fn check_blocked(&self, address: IpAddr) -> Result<(), RetryAfter> {
        let unit = client_unit(address);
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        match blocked.get(&unit) {
            Some(until) => {
                let now = Instant::now();
                if now < *until {
                    Err(RetryAfter(*until - now))
                } else {
                    blocked.remove(&unit);
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    /// Counts one failed authentication from `address`; `Err` once it is over its allowance,
    /// which also blocks the address until its bucket has a token again.
    pub fn check_failed_auth(&self, address: IpAddr) -> Result<(), RetryAfter> {
        let unit = client_unit(address);
        self.failed_auth.check_key(&unit).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            self.blocked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(unit, Instant::now() + wait);
            RetryAfter(wait)
        })
    }

    /// Drops the state of keys and addresses that are back to a full bucket.
    pub fn prune(&self) {
        let now = Instant::now();
        self.blocked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, until| *until > now);
        self.per_key.retain_recent();
        self.per_key.shrink_to_fit();
        self.per_team.retain_recent();
        self.per_team.shrink_to_fit();
        self.failed_auth.retain_recent();
        self.failed_auth.shrink_to_fit();
    }

    /// Entries held, for tests and metrics.
    pub fn tracked(&self) -> usize {
        let blocked = self.blocked.lock().map_or(0, |b| b.len());
        self.per_key.len() + self.per_team.len() + self.failed_auth.len() + blocked
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
            per_team_per_second: per_second,
            per_team_burst: burst * 2,
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
    fn a_teams_keys_share_its_bucket_and_other_teams_keep_theirs() {
        // Each key alone is within its own burst of 2; the team's burst is 4.
        let limits = limits(1, 2);
        for key in ["a1", "a2"] {
            assert!(limits.check_key(key).is_ok());
            assert!(limits.check_team("a").is_ok());
            assert!(limits.check_key(key).is_ok());
            assert!(limits.check_team("a").is_ok());
        }
        assert!(limits.check_key("a3").is_ok(), "a fresh key of team a");
        assert!(
            limits.check_team("a").is_err(),
            "a new key buys the team no more"
        );
        assert!(limits.check_team("b").is_ok(), "team b has its own bucket");
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
    fn an_ipv6_host_counts_as_its_slash_64() {
        let limits = limits(1, 1);
        let a: IpAddr = "2001:db8:1:2:aaaa::1"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let b: IpAddr = "2001:db8:1:2:bbbb::9"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(limits.check_failed_auth(a).is_ok());
        assert!(limits.check_failed_auth(b).is_ok());
        assert!(limits.check_failed_auth(a).is_err(), "same /64");
        assert!(limits.check_blocked(b).is_err());
        assert!(limits.check_failed_auth(other).is_ok());
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
